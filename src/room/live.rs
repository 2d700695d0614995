//! The room's SSE streams: each gets every durable update and every presence change as
//! ready-to-send SSE bytes (encoded once per room, shared by every stream), through a
//! queue bounded in events (`sse_queue_events`, the channel) and in bytes
//! (`outbound_queue_bytes`). A stream that cannot take an event is ended; its client
//! resumes from its last event id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::warn;
use tokio::sync::mpsc;

use super::messages::LiveEvent;

struct Stream {
    events: mpsc::Sender<LiveEvent>,
    /// Bytes sent and not yet taken by the stream (it subtracts what it takes).
    queued: Arc<AtomicUsize>,
}

/// The room's SSE streams.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<u64, Stream>,
    next: u64,
}

impl Streams {
    pub fn add(&mut self, events: mpsc::Sender<LiveEvent>, queued: Arc<AtomicUsize>) {
        self.next += 1;
        self.streams.insert(self.next, Stream { events, queued });
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Ends every stream.
    pub fn clear(&mut self) {
        self.streams.clear();
    }

    /// Forgets streams whose client has gone.
    pub fn prune_closed(&mut self) {
        self.streams.retain(|_, s| !s.events.is_closed());
    }

    /// Sends `event` to every stream; ends those that cannot take it within `budget`
    /// bytes queued or within their channel.
    pub fn publish(&mut self, room: &str, event: LiveEvent, budget: usize) {
        let len = event.bytes().len();
        self.streams.retain(|id, stream| {
            let queued = stream.queued.load(Ordering::Relaxed);
            let sent = if queued + len > budget {
                Err("bytes")
            } else {
                match stream.events.try_send(event.clone()) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => Err("events"),
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            };
            match sent {
                Ok(()) => {
                    stream.queued.fetch_add(len, Ordering::Relaxed);
                    true
                }
                Err(what) => {
                    warn!(
                        "room {room:?}: SSE stream {id} fell behind ({queued} bytes queued, \
                         limit reached in {what}); ending it (the client resumes)"
                    );
                    false
                }
            }
        });
    }
}
