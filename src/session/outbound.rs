//! The session's side of the room's [`Peer`] trait: frames go straight into the socket
//! from the thread that produced them, and queue only when the socket cannot take them.
//!
//! A push from the room (on its own thread) locks the connection's [`Outbound`] state:
//! if nothing is queued it writes the frame at once with one non-blocking vectored
//! write (its 2–10 header bytes, then the broadcast's shared payload), so an update
//! reaches a reader's socket with no thread hop, no task wake and no copy. Only when the
//! kernel's send buffer is full does the rest wait in a bounded queue, drained by a
//! writer task spawned on the connection's own thread for as long as there is a
//! backlog, several frames per vectored write. A push that does not fit in the queue
//! means the client reads slower than the room writes: the room closes it with
//! [`SLOW_CONSUMER`](crate::protocol::close::SLOW_CONSUMER) rather than grow memory or
//! skip an update.
//!
//! An idle connection holds no buffer at all: the queue is empty and the writer task
//! does not exist.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::Recipient;
use bytes::Bytes;
use tokio::runtime::Handle;
use yrs::ClientID;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

use crate::config::Settings;
use crate::metrics::metrics;
use crate::protocol;
use crate::protocol::websocket::{self, Head, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};
use crate::room::fanout::{Peer, PeerError};
use crate::room::messages::CloseSession;

use super::wire::Wire;

/// How long a closing connection waits for the client's close after sending its own; it
/// is dropped at the latest twice this long after the close was ordered (a client that
/// does not read never gets the close frame).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames per vectored write when draining a backlog (two slices each).
const FRAMES_PER_WRITE: usize = 32;

/// WebSocket connections open now, on either wire (shutdown waits for them).
pub static OPEN_SOCKETS: AtomicUsize = AtomicUsize::new(0);

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Over `outbound_queue_messages` or `outbound_queue_bytes`: a slow consumer.
    Full,
    /// The connection is closing or has gone.
    Closed,
}

impl From<QueueError> for PeerError {
    fn from(e: QueueError) -> PeerError {
        match e {
            QueueError::Full => PeerError::Full,
            QueueError::Closed => PeerError::Closed,
        }
    }
}

/// One frame waiting: its header, its payload, and how much of both is written.
struct Pending {
    head: Head,
    payload: Bytes,
    written: usize,
    /// A data frame: counted in the queue's byte bound and gauges.
    data: bool,
}

impl Pending {
    fn len(&self) -> usize {
        self.head.as_slice().len() + self.payload.len()
    }

    /// The unwritten parts as up to two slices, put at `out[0..]`; returns how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let head = self.head.as_slice();
        if self.written < head.len() {
            out[0] = IoSlice::new(&head[self.written..]);
            out[1] = IoSlice::new(&self.payload);
            2
        } else {
            out[0] = IoSlice::new(&self.payload[self.written - head.len()..]);
            1
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Pending>,
    /// Presence that arrived while frames were waiting, merged (each client's latest
    /// state): sent as one frame when the queue empties. Bounded by the room's presence,
    /// never by how long the client does not read.
    presence: HashMap<ClientID, AwarenessUpdateEntry>,
    /// Data bytes queued.
    bytes: usize,
    /// A writer task is draining the queue (it alone writes while the queue is not empty).
    writer: bool,
    /// A close frame is queued or sent: nothing more is accepted.
    closing: bool,
    /// The connection is finished (lost, or closed): pushes fail.
    closed: bool,
}

/// The write half of a WebSocket connection, shared by the room (pushing frames), the
/// session (pings, pongs, close) and, while there is a backlog, the writer task.
pub struct Outbound {
    wire: Wire,
    state: Mutex<State>,
    /// The connection's home thread, where its writer task runs.
    home: Handle,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbound {
    /// Must be called on the connection's home runtime (its writer task runs there).
    pub fn new(wire: Wire, settings: &Settings) -> Arc<Outbound> {
        OPEN_SOCKETS.fetch_add(1, Ordering::Relaxed);
        Arc::new(Outbound {
            wire,
            state: Mutex::new(State::default()),
            home: Handle::current(),
            max_frames: settings.outbound_queue_messages,
            max_bytes: settings.outbound_queue_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one y-websocket message as a binary frame. The byte bound applies to what
    /// waits behind the frame being written, so one frame larger than the bound is taken
    /// when nothing else waits (a big document's first sync).
    pub fn push(self: &Arc<Self>, message: Bytes) -> Result<(), QueueError> {
        self.send(OP_BINARY, message, true)
    }

    /// Sends presence (`message` is `update` encoded): at once when nothing waits,
    /// else merged into the presence that waits for the queue to empty.
    pub fn push_presence(
        self: &Arc<Self>,
        message: Bytes,
        update: &AwarenessUpdate,
    ) -> Result<(), QueueError> {
        let mut state = self.lock();
        if state.queue.is_empty() || state.closed || state.closing {
            drop(state);
            return self.push(message);
        }
        for (client, entry) in &update.clients {
            match state.presence.get(client) {
                Some(held) if held.clock > entry.clock => {}
                _ => {
                    state.presence.insert(*client, entry.clone());
                }
            }
        }
        Ok(())
    }

    /// The heartbeat: a ping behind whatever is queued, so it never overtakes an update.
    pub fn ping(self: &Arc<Self>) -> Result<(), QueueError> {
        self.send(OP_PING, Bytes::new(), false)
    }

    /// The answer to a client's ping, with its payload (RFC 6455 §5.5.2).
    pub fn pong(self: &Arc<Self>, payload: Bytes) -> Result<(), QueueError> {
        self.send(OP_PONG, payload, false)
    }

    fn send(self: &Arc<Self>, opcode: u8, payload: Bytes, data: bool) -> Result<(), QueueError> {
        let mut state = self.lock();
        if state.closed || state.closing {
            return Err(QueueError::Closed);
        }
        let frame = Pending {
            head: Head::new(opcode, payload.len()),
            payload,
            written: 0,
            data,
        };
        if state.queue.is_empty() {
            return self.write_now(state, frame);
        }
        // The frame being written does not count against what may queue behind it: a
        // document's first sync can be larger than the bound (and is one buffer shared
        // by every joiner), and updates that arrive meanwhile must still fit.
        let front = state
            .queue
            .front()
            .filter(|f| f.data)
            .map_or(0, |f| f.payload.len());
        let behind = state.bytes - front;
        let len = frame.payload.len();
        if state.queue.len() >= self.max_frames
            || (data && behind > 0 && behind + len > self.max_bytes)
        {
            return Err(QueueError::Full);
        }
        self.enqueue(&mut state, frame);
        Ok(())
    }

    /// Nothing queued: writes `frame` straight into the socket; whatever the kernel does
    /// not take waits for the writer task.
    fn write_now(
        self: &Arc<Self>,
        mut state: MutexGuard<'_, State>,
        mut frame: Pending,
    ) -> Result<(), QueueError> {
        let mut slices = [IoSlice::new(&[]); 2];
        let n = frame.slices(&mut slices);
        match self.wire.try_write_vectored(&slices[..n]) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => frame.written = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                // The connection is gone; the session's reader hears it too.
                state.closed = true;
                return Err(QueueError::Closed);
            }
        }
        self.enqueue(&mut state, frame);
        Ok(())
    }

    fn enqueue(self: &Arc<Self>, state: &mut State, frame: Pending) {
        if frame.data {
            let len = frame.payload.len();
            state.bytes += len;
            let m = metrics();
            m.outbound_queued_frames.inc();
            m.outbound_queued_bytes.add(len as i64);
        }
        state.queue.push_back(frame);
        if !state.writer {
            state.writer = true;
            self.home.spawn(drain(self.clone()));
        }
    }

    /// Queues a close frame behind what is queued and ends the connection once it is out
    /// (or after [`CLOSE_GRACE`]). Nothing is accepted after it.
    pub fn close(self: &Arc<Self>, code: u16, reason: &str) {
        let mut state = self.lock();
        if state.closed || state.closing {
            return;
        }
        state.closing = true;
        let payload = websocket::close_payload(code, reason);
        let frame = Pending {
            head: Head::new(OP_CLOSE, payload.len()),
            payload,
            written: 0,
            data: false,
        };
        self.enqueue(&mut state, frame);
        // However the client behaves (it may not read at all), the connection ends. A
        // weak reference: a connection that ends sooner is not kept alive by this.
        let out = Arc::downgrade(self);
        self.home.spawn(async move {
            tokio::time::sleep(2 * CLOSE_GRACE).await;
            if let Some(out) = out.upgrade() {
                out.abort();
            }
        });
    }

    /// The connection is lost (or the session ended without a close): drop what is
    /// queued and shut the socket.
    pub fn abort(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.closed = true;
            self.discard(&mut state);
            self.wire.shutdown();
        }
    }

    fn discard(&self, state: &mut State) {
        state.presence = HashMap::new();
        let m = metrics();
        for frame in state.queue.drain(..) {
            if frame.data {
                m.outbound_queued_frames.dec();
                m.outbound_queued_bytes.sub(frame.payload.len() as i64);
            }
        }
        state.bytes = 0;
    }

    /// Frames and data bytes waiting, for the slow-consumer log line.
    pub fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queue.len(), state.bytes)
    }

    /// Writes as much of the backlog as the socket takes. `Ok(true)`: the queue is empty
    /// (and the writer flag is cleared, under the same lock); `Ok(false)`: the socket is
    /// full.
    fn write_backlog(&self) -> io::Result<bool> {
        let mut state = self.lock();
        loop {
            if state.queue.is_empty() && !state.presence.is_empty() {
                let clients = std::mem::take(&mut state.presence);
                let payload = protocol::encode_awareness(&AwarenessUpdate { clients });
                let frame = Pending {
                    head: Head::new(OP_BINARY, payload.len()),
                    payload,
                    written: 0,
                    data: true,
                };
                state.bytes += frame.payload.len();
                let m = metrics();
                m.outbound_queued_frames.inc();
                m.outbound_queued_bytes.add(frame.payload.len() as i64);
                state.queue.push_back(frame);
            }
            if state.queue.is_empty() {
                state.writer = false;
                return Ok(true);
            }
            let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
            let mut used = 0;
            for frame in state.queue.iter().take(FRAMES_PER_WRITE) {
                used += frame.slices(&mut slices[used..]);
            }
            let mut n = match self.wire.try_write_vectored(&slices[..used]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            let m = metrics();
            while let Some(front) = state.queue.front_mut() {
                let left = front.len() - front.written;
                if n < left {
                    front.written += n;
                    break;
                }
                n -= left;
                let done = state.queue.pop_front().expect("front exists");
                if done.data {
                    state.bytes -= done.payload.len();
                    m.outbound_queued_frames.dec();
                    m.outbound_queued_bytes.sub(done.payload.len() as i64);
                }
            }
        }
    }
}

/// The writer task: runs while there is a backlog, on the connection's home thread.
async fn drain(out: Arc<Outbound>) {
    let drained = async {
        loop {
            match out.write_backlog() {
                Ok(true) => return Ok(()),
                Ok(false) => out.wire.writable().await?,
                Err(e) => return Err(e),
            }
        }
    };
    if drained.await.is_err() {
        out.abort();
    } else if out.lock().closing {
        finish_close(&out).await;
    }
}

/// The close frame is out: half-close, wait briefly for the client's side, then shut.
async fn finish_close(out: &Outbound) {
    out.wire.shutdown_write();
    let _ = tokio::time::timeout(CLOSE_GRACE, out.wire.await_peer_close()).await;
    out.abort();
}

impl Drop for Outbound {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let m = metrics();
        for frame in state.queue.drain(..).filter(|f| f.data) {
            m.outbound_queued_frames.dec();
            m.outbound_queued_bytes.sub(frame.payload.len() as i64);
        }
        OPEN_SOCKETS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session as a room sees it: its socket's write half and where to send the order to
/// close (through the session actor, which stops with it).
pub struct SessionPeer {
    pub out: Arc<Outbound>,
    pub outbox: Recipient<CloseSession>,
}

impl Peer for SessionPeer {
    fn push(&self, frame: Bytes) -> Result<(), PeerError> {
        Ok(self.out.push(frame)?)
    }

    fn push_presence(&self, frame: Bytes, update: &Arc<AwarenessUpdate>) -> Result<(), PeerError> {
        Ok(self.out.push_presence(frame, update)?)
    }

    fn close(&self, code: u16, reason: String) {
        self.outbox.do_send(CloseSession { code, reason });
    }

    fn depth(&self) -> (usize, usize) {
        self.out.depth()
    }
}
