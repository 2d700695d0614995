//! Group commit: one background thread makes many appends durable with one flush.
//!
//! A room appends to the store (visible, not yet durable), then calls [`Flusher::mark`]
//! with the room's id, its newest seq and a callback. The flusher thread wakes on the
//! first mark, flushes — at most once per `flush_interval`, so under load every flush
//! covers everything appended meanwhile — and then calls each marked room's callback once
//! with a [`FlushReport`]: the highest seq that flush made durable, or the failure.
//!
//! Flushes are numbered. `mark` answers the number of the flush that will cover the
//! mark (the next one to start), so a room can tell a flush that was already running when
//! it wrote something (a snapshot, say) from one that covers it.
//!
//! A failed flush is final: the store refuses every later write (see
//! [`super::StoreError::Failed`]), and every waiting room hears of it, so no seq is shown
//! for what may not be on disk. A store that is only unavailable
//! ([`super::StoreError::Unavailable`]: a database that went away) keeps what it did
//! not write; the flusher retries with exponential backoff and full jitter, and the rooms
//! waiting hear nothing until a flush covers them. Nothing here depends on actix.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error};

use super::Store;

/// What a room hears after a flush that covered its marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlushReport {
    /// The room's log is durable up to and including `seq`, by flush number `flush`.
    Durable { seq: u64, flush: u64 },
    /// The flush failed; nothing the room appended since its last report is durable.
    Failed(String),
}

/// Where a room hears its [`FlushReport`]s; called on the flusher thread, so it must only
/// hand the report on (e.g. to an actor's mailbox).
pub type FlushNotify = Arc<dyn Fn(FlushReport) + Send + Sync>;

struct Dirty {
    seq: u64,
    notify: FlushNotify,
}

#[derive(Default)]
struct Pending {
    /// Room instance id → newest unflushed seq and whom to tell.
    dirty: HashMap<u64, Dirty>,
    /// The number the next flush to start will have (the first is 1).
    next_flush: u64,
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
            pending: Mutex::new(Pending {
                next_flush: 1,
                ..Pending::default()
            }),
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

    /// Asks for `seq` of room instance `room_id` to be made durable and reported to
    /// `notify`. Returns the number of the flush that will cover everything the room
    /// wrote before this call.
    pub fn mark(&self, room_id: u64, seq: u64, notify: &FlushNotify) -> u64 {
        let mut pending = lock(&self.shared.pending);
        let was_idle = pending.dirty.is_empty();
        let entry = pending.dirty.entry(room_id).or_insert_with(|| Dirty {
            seq,
            notify: notify.clone(),
        });
        entry.seq = entry.seq.max(seq);
        if was_idle {
            self.shared.wake.notify_one();
        }
        pending.next_flush
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

/// Delay before retrying an unavailable store: full jitter over an exponential cap
/// (100 ms doubling up to 5 s).
fn retry_delay(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100).saturating_mul(1 << attempt.min(6));
    let cap = cap.min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // Full jitter, from the clock's nanoseconds (random enough to spread retries).
    cap.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

fn run(shared: &Shared, store: &dyn Store, interval: Duration) {
    let mut last_flush: Option<Instant> = None;
    let mut outages = 0u32;
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
        let (batch, flush) = {
            let mut pending = lock(&shared.pending);
            let flush = pending.next_flush;
            pending.next_flush += 1;
            (std::mem::take(&mut pending.dirty), flush)
        };
        let started = Instant::now();
        last_flush = Some(started);
        match store.flush() {
            Ok(()) => {
                outages = 0;
                crate::metrics::metrics()
                    .oplog_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                debug!(
                    "flush {flush}: {} rooms in {} µs",
                    batch.len(),
                    started.elapsed().as_micros()
                );
                for dirty in batch.into_values() {
                    (dirty.notify)(FlushReport::Durable {
                        seq: dirty.seq,
                        flush,
                    });
                }
            }
            Err(super::StoreError::Unavailable(why)) if stopping => {
                // Shutting down with the store away: what is not written is not durable.
                error!("final flush {flush}: the store is unavailable ({why})");
                for dirty in batch.into_values() {
                    (dirty.notify)(FlushReport::Failed(why.clone()));
                }
                return;
            }
            Err(super::StoreError::Unavailable(why)) => {
                let delay = retry_delay(outages);
                outages += 1;
                log::warn!(
                    "flush {flush}: the store is unavailable ({why}); {} rooms wait, retrying in {} ms",
                    batch.len(),
                    delay.as_millis()
                );
                // Back into the queue, newest seqs kept: the next flush covers them.
                let mut pending = lock(&shared.pending);
                for (room, dirty) in batch {
                    let entry = pending.dirty.entry(room).or_insert(Dirty {
                        seq: dirty.seq,
                        notify: dirty.notify.clone(),
                    });
                    entry.seq = entry.seq.max(dirty.seq);
                }
                drop(pending);
                std::thread::sleep(delay);
                continue;
            }
            Err(e) => {
                // No retry: after a failed fsync the kernel may have marked the lost pages
                // clean, so a second fsync can succeed without the data being on disk.
                error!(
                    "flush {flush} failed; {} rooms lose what they appended since their last flush: {e}",
                    batch.len()
                );
                for dirty in batch.into_values() {
                    (dirty.notify)(FlushReport::Failed(e.to_string()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::mpsc;

    fn reporter() -> (FlushNotify, mpsc::Receiver<FlushReport>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let notify: FlushNotify = Arc::new(move |r| {
            let _ = lock(&tx).send(r);
        });
        (notify, rx)
    }

    #[test]
    fn a_mark_is_covered_by_the_flush_number_it_was_given() {
        let store = Arc::new(MemoryStore::new());
        let flusher = Flusher::start(store, Duration::from_millis(1));
        let (notify, reports) = reporter();
        let mut last = 0;
        for seq in 1..=20 {
            let ticket = flusher.mark(7, seq, &notify);
            let report = reports.recv().unwrap();
            let FlushReport::Durable { seq: got, flush } = report else {
                panic!("{report:?}");
            };
            assert_eq!(got, seq);
            assert!(flush >= ticket && flush > last, "{flush} {ticket} {last}");
            last = flush;
        }
        flusher.shutdown();
    }

    #[test]
    fn an_unavailable_store_is_retried_and_its_rooms_hear_only_success() {
        let store = Arc::new(MemoryStore::new());
        store.set_unavailable(Some("database away"));
        let flusher = Flusher::start(store.clone(), Duration::from_millis(1));
        let (notify, reports) = reporter();
        flusher.mark(1, 5, &notify);
        flusher.mark(2, 3, &notify);
        // Nothing is reported while the store is away: no ack, and no failure either.
        assert!(reports.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(store.failure().is_none());
        store.append("r", 6, b"x").unwrap();
        flusher.mark(1, 6, &notify);
        store.set_unavailable(None);
        let mut heard: Vec<u64> = (0..2)
            .map(
                |_| match reports.recv_timeout(Duration::from_secs(20)).unwrap() {
                    FlushReport::Durable { seq, .. } => seq,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        heard.sort();
        assert_eq!(heard, [3, 6], "each room once, with its newest seq");
        assert_eq!(store.load("r").unwrap().last_seq(), 6);
        flusher.shutdown();
    }

    #[test]
    fn a_failed_flush_is_reported_and_never_retried_into_success() {
        let store = Arc::new(MemoryStore::new());
        store.fail_flushes("disk on fire");
        let flusher = Flusher::start(store.clone(), Duration::from_millis(1));
        let (notify, reports) = reporter();
        flusher.mark(1, 5, &notify);
        assert_eq!(
            reports.recv().unwrap(),
            FlushReport::Failed("the store failed to make writes durable earlier and refuses further writes: disk on fire".into())
        );
        flusher.mark(1, 6, &notify);
        assert!(matches!(reports.recv().unwrap(), FlushReport::Failed(_)));
        assert!(store.append("r", 7, b"x").is_err());
        flusher.shutdown();
    }
}
