//! Messages between sessions, HTTP handlers, the registry and rooms.

use actix::{Message, Recipient};
use bytes::Bytes;

use crate::protocol::ClientMessage;
use crate::protocol::json::RoomInfo;

/// Identifies one session (one WebSocket connection) across its life.
pub type SessionId = u64;

/// What a room sends a session: bytes to write, or the order to close.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// One encoded y-websocket frame, shared by every session it goes to.
    Frame(Bytes),
    /// Close the connection with this WebSocket close code and reason.
    Close { code: u16, reason: String },
}

/// A session enters the room; the room answers on `outbox` with sync step 1 and awareness.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Join {
    pub session: SessionId,
    pub outbox: Recipient<Outbound>,
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
}

/// The room's metadata for `GET /rooms/{room}`.
#[derive(Message, Clone)]
#[rtype(result = "RoomInfo")]
pub struct GetInfo;

/// The full document for `GET /rooms/{room}/state`.
#[derive(Message, Clone)]
#[rtype(result = "DocState")]
pub struct GetState;

/// The room's full state as a Yjs update v1; it contains at least every update up to `seq`.
#[derive(Debug, Clone)]
pub struct DocState {
    pub state: Bytes,
    pub seq: u64,
}

/// Close every session with 1001, flush, and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;
