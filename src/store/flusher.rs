//! Group commit: one background thread makes many appends durable with one flush.
//!
//! A room appends to the store (visible, not yet durable), then calls [`Flusher::mark`]
//! with the room's id, its newest seq and where to hear back. The flusher thread wakes on
//! the first mark, flushes — at most once per `flush_interval`, so under load every flush
//! covers everything appended meanwhile — and then sends each marked room one
//! [`Flushed`] with the highest seq that flush made durable.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::{Message, Recipient};
use log::{debug, error};

use super::Store;

/// Tells a room that its log is durable up to and including `seq`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Flushed {
    pub seq: u64,
}

struct Dirty {
    seq: u64,
    notify: Recipient<Flushed>,
}

#[derive(Default)]
struct Pending {
    /// Room instance id → newest unflushed seq and whom to tell.
    dirty: HashMap<u64, Dirty>,
    stopping: bool,
}

struct Shared {
    /// A std mutex: held only to insert or swap the map, never across the flush.
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// Handle to the flusher thread; cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Flusher {
    /// Starts the flusher thread over `store`.
    pub fn start(store: Arc<dyn Store>, interval: Duration) -> Flusher {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("collabd-flusher".into())
            .spawn(move || run(&thread_shared, &*store, interval))
            .expect("spawning the flusher thread");
        Flusher {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    /// Asks for `seq` of room instance `room_id` to be made durable and reported to `notify`.
    pub fn mark(&self, room_id: u64, seq: u64, notify: Recipient<Flushed>) {
        let mut pending = lock(&self.shared.pending);
        let was_idle = pending.dirty.is_empty();
        let entry = pending.dirty.entry(room_id).or_insert(Dirty {
            seq,
            notify: notify.clone(),
        });
        entry.seq = entry.seq.max(seq);
        if was_idle {
            self.shared.wake.notify_one();
        }
    }

    /// Flushes what is pending, stops the thread and waits for it.
    pub fn shutdown(&self) {
        lock(&self.shared.pending).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(shared: &Shared, store: &dyn Store, interval: Duration) {
    let mut last_flush: Option<Instant> = None;
    loop {
        let mut pending = lock(&shared.pending);
        while pending.dirty.is_empty() && !pending.stopping {
            pending = shared.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        let stopping = pending.stopping;
        if pending.dirty.is_empty() && stopping {
            return;
        }
        drop(pending);
        if let Some(wait) = last_flush.and_then(|t| interval.checked_sub(t.elapsed()))
            && !stopping
        {
            std::thread::sleep(wait);
        }
        // Everything in the swapped-out map was appended before this flush starts.
        let batch = std::mem::take(&mut lock(&shared.pending).dirty);
        let started = Instant::now();
        last_flush = Some(started);
        match store.flush() {
            Ok(()) => {
                crate::metrics::metrics()
                    .oplog_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                debug!(
                    "flushed {} rooms in {} µs",
                    batch.len(),
                    started.elapsed().as_micros()
                );
                for dirty in batch.into_values() {
                    dirty.notify.do_send(Flushed { seq: dirty.seq });
                }
            }
            Err(e) => {
                error!("flush failed, will retry: {e}");
                if stopping {
                    return;
                }
                let mut pending = lock(&shared.pending);
                for (id, dirty) in batch {
                    let entry = pending.dirty.entry(id).or_insert(Dirty {
                        seq: dirty.seq,
                        notify: dirty.notify.clone(),
                    });
                    entry.seq = entry.seq.max(dirty.seq);
                }
                drop(pending);
                std::thread::sleep(interval.max(Duration::from_millis(100)));
            }
        }
    }
}
