//! The session's side of the room's [`Peer`] trait: a bounded outbound queue that rooms
//! push encoded frames into (no actor hop per frame), the writer task that drains it into
//! the socket, and the close order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::Recipient;
use actix_ws::CloseReason;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::metrics::metrics;
use crate::room::fanout::{Peer, PeerError};
use crate::room::messages::CloseSession;

/// How long the writer waits to deliver a close frame before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Over `outbound_queue_messages` or `outbound_queue_bytes`: a slow consumer.
    Full,
    /// The session has ended.
    Closed,
}

/// What the writer task sends.
#[derive(Debug)]
pub enum Outgoing {
    /// An encoded y-websocket frame; only these count towards `outbound_queue_bytes`.
    Binary(Bytes),
    /// The heartbeat.
    Ping,
    /// The answer to a client's ping, with its payload.
    Pong(Bytes),
}

/// A session's bounded outbound queue. The room (and the session itself, for pings,
/// pongs and permission-denied answers) pushes encoded frames; the session's writer task
/// drains them into the socket. An empty frame means "ping".
#[derive(Clone)]
pub struct OutboundQueue {
    frames: mpsc::Sender<Outgoing>,
    /// Bytes queued; the writer subtracts what it has written.
    pub(super) bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl OutboundQueue {
    pub fn new(settings: &Settings) -> (OutboundQueue, mpsc::Receiver<Outgoing>) {
        let (frames, receiver) = mpsc::channel(settings.outbound_queue_messages);
        let queue = OutboundQueue {
            frames,
            bytes: Arc::new(AtomicUsize::new(0)),
            max_bytes: settings.outbound_queue_bytes,
        };
        (queue, receiver)
    }

    /// Queues one frame without waiting. One frame larger than the byte bound is still
    /// taken when nothing else is queued (a big document's first sync).
    pub fn push(&self, frame: Bytes) -> Result<(), QueueError> {
        let len = frame.len();
        let queued = self.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued + len > self.max_bytes {
            return Err(QueueError::Full);
        }
        self.send(if len == 0 {
            Outgoing::Ping
        } else {
            Outgoing::Binary(frame)
        })?;
        if len > 0 {
            self.bytes.fetch_add(len, Ordering::Relaxed);
            let m = metrics();
            m.outbound_queued_frames.inc();
            m.outbound_queued_bytes.add(len as i64);
        }
        Ok(())
    }

    /// Queues `item` without waiting; bounded in frames here (`push` checks the bytes).
    pub(super) fn send(&self, item: Outgoing) -> Result<(), QueueError> {
        self.frames.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    /// Frames and bytes waiting, for the slow-consumer log line.
    pub fn depth(&self) -> (usize, usize) {
        let frames = self.frames.max_capacity() - self.frames.capacity();
        (frames, self.bytes.load(Ordering::Relaxed))
    }
}

impl From<QueueError> for PeerError {
    fn from(e: QueueError) -> PeerError {
        match e {
            QueueError::Full => PeerError::Full,
            QueueError::Closed => PeerError::Closed,
        }
    }
}

/// A session as a room sees it: its queue and where to send the order to close.
pub struct SessionPeer {
    pub queue: OutboundQueue,
    pub outbox: Recipient<CloseSession>,
}

impl Peer for SessionPeer {
    fn push(&self, frame: Bytes) -> Result<(), PeerError> {
        Ok(self.queue.push(frame)?)
    }

    fn close(&self, code: u16, reason: String) {
        self.outbox.do_send(CloseSession { code, reason });
    }

    fn depth(&self) -> (usize, usize) {
        self.queue.depth()
    }
}

/// Drains the outbound queue into the socket.
pub(super) async fn write_loop(
    mut socket: actix_ws::Session,
    mut queue: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<CloseReason>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let m = metrics();
    let sent_bytes = m.bytes_out.with_label_values(&["ws"]);
    let dequeued = |frame: &Outgoing| {
        if let Outgoing::Binary(frame) = frame {
            queued_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
            m.outbound_queued_frames.dec();
            m.outbound_queued_bytes.sub(frame.len() as i64);
        }
    };
    // Both waits watch `close`, so a writer stuck on a client that stopped reading still
    // gets the order to close.
    let reason = loop {
        let frame = tokio::select! {
            biased;
            reason = &mut close => break reason.ok(),
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break None,
            },
        };
        dequeued(&frame);
        let sent = tokio::select! {
            biased;
            reason = &mut close => break reason.ok(),
            sent = async {
                match frame {
                    Outgoing::Binary(frame) => {
                        sent_bytes.inc_by(frame.len() as u64);
                        socket.binary(frame).await
                    }
                    Outgoing::Ping => socket.ping(b"").await,
                    Outgoing::Pong(payload) => socket.pong(&payload).await,
                }
            } => sent,
        };
        if sent.is_err() {
            break None;
        }
    };
    // What was never sent leaves the queue gauges; nothing can be queued after `close`.
    queue.close();
    while let Ok(frame) = queue.try_recv() {
        dequeued(&frame);
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(reason)).await;
}
