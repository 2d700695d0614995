//! Messages between sessions, HTTP handlers, the registry and rooms.

use std::sync::Arc;

use actix::{Addr, Message};
use bytes::Bytes;

use crate::protocol::ClientMessage;
use crate::protocol::json::RoomInfo;

use super::Room;

/// Identifies one session (one WebSocket connection) across its life.
pub type SessionId = u64;

/// The room tells a session to close with this WebSocket close code and reason (frames
/// go through its [`super::fanout::Peer`], not through messages).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: String,
}

/// A session enters the room; the room answers through `peer` with sync step 1 and
/// awareness. Cloneable so that [`super::ask`] can resend it to a room's next instance.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Join {
    pub session: SessionId,
    /// Where the room pushes the frames it sends this session, and the close order.
    pub peer: std::sync::Arc<dyn super::fanout::Peer>,
    /// The session's token `sub`: the author of its updates in the history.
    pub subject: Option<Arc<str>>,
}

/// A session leaves; the awareness states it announced are removed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session: SessionId,
}

/// Decoded messages from one WebSocket frame, in order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromClient {
    pub session: SessionId,
    pub messages: Vec<ClientMessage>,
    /// Updates the session dropped from this frame (read-only access): the session's
    /// next ack must not say "stored".
    pub dropped: usize,
    /// The frame's size on the wire: an upper bound for what its updates can add.
    pub bytes: usize,
}

/// The flusher's report for this room (see [`crate::store::commit`]).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Flushed(pub crate::store::commit::FlushReport);

/// The room's metadata for `GET /rooms/{room}`.
#[derive(Message, Clone)]
#[rtype(result = "RoomInfo")]
pub struct GetInfo;

/// The full document (for `GET /rooms/{room}/state` and snapshots on every transport),
/// through a receiver that resolves once its seq is durable.
#[derive(Message, Clone)]
#[rtype(result = "tokio::sync::oneshot::Receiver<DocState>")]
pub struct GetState;

/// The room's full state as a Yjs update v1: every update up to `seq`, and nothing the
/// room had not accepted by then.
#[derive(Debug, Clone)]
pub struct DocState {
    pub state: Bytes,
    pub seq: u64,
}

/// Close every session with 1001, flush, and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// What an SSE stream receives from the room, in order, as ready-to-send SSE bytes
/// (encoded once per room, shared by every stream). Updates come only once durable.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// `event` is the SSE form; `update` the update itself (for server-side followers).
    Update {
        seq: u64,
        event: Bytes,
        update: Bytes,
    },
    Awareness {
        event: Bytes,
    },
    /// The room was deleted: the stream sends this `event: reset` and ends.
    Reset {
        event: Bytes,
    },
}

impl LiveEvent {
    /// The SSE bytes to send.
    pub fn bytes(&self) -> &Bytes {
        match self {
            LiveEvent::Update { event, .. }
            | LiveEvent::Awareness { event }
            | LiveEvent::Reset { event } => event,
        }
    }
}

/// Registers an SSE stream: it will get every update with a seq above the returned
/// `durable_seq`, as each becomes durable, and every awareness change. `queued` counts
/// the bytes sent to `events` and not yet taken; the stream subtracts what it takes. A
/// stream whose queue would pass `outbound_queue_bytes` (or whose channel is full) is
/// dropped, and its client resumes from its `Last-Event-ID`.
#[derive(Message, Clone)]
#[rtype(result = "Subscribed")]
pub struct Subscribe {
    pub events: tokio::sync::mpsc::Sender<LiveEvent>,
    pub queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone)]
pub struct Subscribed {
    /// Updates up to here are the caller's to replay from the store; above it, live.
    pub durable_seq: u64,
    /// The room's epoch: a cursor below its base is from a deleted one.
    pub epoch: EpochAt,
    /// The current awareness states, if anyone is present.
    pub awareness: Option<Bytes>,
}

/// Presence posted over HTTP (`POST /rooms/{room}/awareness`) by `owner`, a presence
/// session of its own (see `http::rooms::presence_owner`), under the same rules as a
/// WebSocket session's. Answers what was refused: (client id, reason).
#[derive(Message, Clone)]
#[rtype(result = "Vec<(u64, crate::room::presence::Refusal)>")]
pub struct PostAwareness {
    pub owner: SessionId,
    pub update: yrs::sync::AwarenessUpdate,
}

/// Every present state as one awareness update (`GET /rooms/{room}/awareness`), or
/// `None` when nobody is present.
#[derive(Message, Clone)]
#[rtype(result = "Option<Bytes>")]
pub struct GetAwareness;

/// The room's durable seq, for polling, with its epoch.
#[derive(Message, Clone)]
#[rtype(result = "Durable")]
pub struct GetDurableSeq;

/// A room's durable seq and the epoch it belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durable {
    pub seq: u64,
    pub epoch: EpochAt,
}

/// Which epoch a room is in (see [`crate::store::Epoch`]): its number, and the seq it
/// began at. A client's cursor below `base` is from a deleted epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochAt {
    pub number: u64,
    pub base: u64,
}

impl EpochAt {
    /// Whether a client at `cursor` holds a deleted epoch's document.
    pub fn is_stale(&self, cursor: Option<u64>) -> bool {
        cursor.is_some_and(|c| c < self.base)
    }
}

/// Deletes the room (`DELETE /rooms/{room}`): every session is closed with 4410, every
/// SSE stream gets `event: reset` and ends, the room stops. Answers, once no task of the
/// room can write any more, the seq it reached and its document's state vector.
#[derive(Message)]
#[rtype(result = "tokio::sync::oneshot::Receiver<(u64, yrs::StateVector)>")]
pub struct Delete;

/// Deletes a room through the registry (see [`crate::store::Store::delete_room`]):
/// `Ok(None)` when it has nothing to delete.
#[derive(Message)]
#[rtype(result = "Result<Option<crate::store::Epoch>, crate::store::StoreError>")]
pub struct DeleteRoom {
    pub name: Arc<str>,
}

/// Cluster mode: resolves once the room applied what a read of its log, begun after this
/// message arrived, found (at once on one node). A write that builds on an update another
/// node acknowledged may arrive before that update did.
#[derive(Message, Clone)]
#[rtype(result = "tokio::sync::oneshot::Receiver<()>")]
pub struct SyncWithLog;

/// Resolves once the room's durable seq reaches `seq` (with the durable seq then).
#[derive(Message, Clone)]
#[rtype(result = "tokio::sync::oneshot::Receiver<u64>")]
pub struct WaitDurable {
    pub seq: u64,
}

/// An update from HTTP (`POST /rooms/{room}/updates`): applied like a WebSocket one.
/// Answers a receiver that resolves to the update's seq once it is durable; `Err` says
/// why it was refused.
#[derive(Message, Clone)]
#[rtype(result = "Result<tokio::sync::oneshot::Receiver<u64>, super::actor::Refused>")]
pub struct ApplyUpdate {
    pub update: Bytes,
    /// The writer's token `sub`, recorded as the update's author.
    pub author: Option<Arc<str>>,
}

/// The document's root types as JSON (`GET /rooms/{room}/state?format=json`).
#[derive(Message, Clone)]
#[rtype(result = "serde_json::Value")]
pub struct GetJson;

// Between the registry and everyone who needs a room.

/// Finds the room, spawning it if it is not running.
#[derive(Message)]
#[rtype(result = "Result<Addr<Room>, NoRoom>")]
pub struct GetRoom {
    pub name: Arc<str>,
}

/// Finds the room if it is running; never spawns one.
#[derive(Message)]
#[rtype(result = "Option<Addr<Room>>")]
pub struct FindRoom {
    pub name: Arc<str>,
}

/// Why [`GetRoom`] has no room to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// Shutdown has begun.
    Stopping,
    /// `max_rooms` rooms are loaded; this one would be one too many.
    Full(usize),
    /// The room is being deleted.
    Deleting,
}

/// A room actor stopped (evicted, failed or shut down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomStopped {
    pub name: Arc<str>,
    pub id: u64,
}

/// How many rooms are running; for health and metrics.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountRooms;

/// Stop every room (each flushes and closes its sessions with 1001) and answer when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShutdownAll;
