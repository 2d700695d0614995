//! The y-websocket wire codec, sans-IO, for both ends: the server decodes what clients
//! send ([`decode_frame`], hardened) and clients decode what the server sends
//! ([`decode_server_frame`]); each side encodes with the `encode_*` functions.
//!
//! A WebSocket frame carries one or more messages back to back. Each message starts with
//! a lib0 varuint tag (y-protocols):
//!
//! | tag | message | body |
//! |-----|---------|------|
//! | 0 | sync | varuint subtype: 0 step 1 (varbuf state vector), 1 step 2 (varbuf update v1), 2 update (varbuf update v1) |
//! | 1 | awareness | varbuf: varuint count, then per client varuint id, varuint clock, varstring JSON state |
//! | 2 | auth | varuint 0 + varstring reason (permission denied) or 1 (granted) |
//! | 3 | query awareness | nothing |
//! | 100 | collabd write ack (see [`MSG_ACK`]) | varbuf: varuint token (client → server); varuint token, varuint seq, varuint status (server → client; 0 stored, 1 something since the previous request was refused) |
//! | 101 | collabd access token (see [`MSG_TOKEN`]) | varbuf: varstring token (client → server); varuint status, varstring detail (server → client; 0 accepted, detail `read` or `write`; 1 refused, detail the reason) |
//! | other ≥ 4 | custom, ignored | varbuf payload |
//!
//! Decoding checks every length against what is left of the frame, decodes updates and
//! state vectors fully (so a room only ever sees well-formed ones) and never panics.
//!
//! [`websocket`] is the layer below: RFC 6455 framing, server side.
//!
//! Layout: [`lib0`] (varuint and varbuf reader and writer), `from_client` (what clients
//! send: the server's decoder, the client-only encoders), `from_server` (what the server
//! sends: the server-only encoders, the client's decoder); the encoders both sides use
//! are here. Everything is re-exported at this level.

pub mod close;
mod from_client;
mod from_server;
pub mod json;
pub mod lib0;
pub mod sse;
pub mod websocket;

pub use from_client::{
    ClientMessage, decode_awareness, decode_frame, decode_update, encode_ack_request,
    encode_query_awareness, encode_token,
};
pub use from_server::{
    ServerMessage, ServerMessages, decode_server_frame, encode_ack, encode_permission_denied,
    encode_token_answer,
};
pub use lib0::{write_buf, write_var};

use bytes::Bytes;
use yrs::StateVector;
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;

/// Message tag: sync (y-protocols sync, three subtypes).
pub const MSG_SYNC: u64 = 0;
/// Message tag: awareness (presence).
pub const MSG_AWARENESS: u64 = 1;
/// Message tag: auth (permission denied).
pub const MSG_AUTH: u64 = 2;
/// Message tag: query awareness (ask for everyone's presence).
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// collabd's write acknowledgement, outside y-protocols' 0–3 so stock clients never send
/// it. A writer sends `[100, varbuf(varuint token)]` after its updates; once every update
/// the session sent before it is durable, the server answers `[100, varbuf(varuint
/// token, varuint seq, varuint status)]`, where `seq` is the room's durable seq covering
/// them and the status is [`ACK_STORED`] or [`ACK_REFUSED`].
pub const MSG_ACK: u64 = 100;
/// collabd's access change without reconnecting, outside y-protocols' 0–3. A client sends
/// `[101, varbuf(varstring token)]` with a fresh access token for its room (before the
/// current one expires, or to change read to write); the server checks it as it checks
/// a connection's token and answers `[101, varbuf(varuint status, varstring detail)]`:
/// [`TOKEN_ACCEPTED`] with `read` or `write` (the session now runs under the new token:
/// its access and expiry), or [`TOKEN_REFUSED`] with the reason (the session keeps its
/// current token, and closes with 4401 when that expires).
pub const MSG_TOKEN: u64 = 101;
/// Token answer: the session now runs under the new token.
pub const TOKEN_ACCEPTED: u64 = 0;
/// Token answer: refused; the session keeps its current token.
pub const TOKEN_REFUSED: u64 = 1;
/// Ack status: everything sent since the previous ack request is stored.
pub const ACK_STORED: u64 = 0;
/// Ack status: something sent since the previous ack request was refused (invalid, too
/// large, missing dependencies, read-only); what was accepted is stored.
pub const ACK_REFUSED: u64 = 1;

/// Auth message: permission denied, followed by a reason.
pub const AUTH_PERMISSION_DENIED: u64 = 0;

/// Sync subtype: step 1, a state vector.
pub const SYNC_STEP1: u64 = 0;
/// Sync subtype: step 2, the update the other side lacks.
pub const SYNC_STEP2: u64 = 1;
/// Sync subtype: an update.
pub const SYNC_UPDATE: u64 = 2;

/// Why a frame was refused. Every variant means "the frame is not y-websocket".
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    /// The frame ends inside the named field.
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    /// A varuint longer than 64 bits.
    #[error("varint too long")]
    VarintOverflow,
    /// A sync subtype other than 0, 1 and 2.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An update yrs cannot decode.
    #[error("update does not decode: {0}")]
    BadUpdate(String),
    /// A state vector yrs cannot decode.
    #[error("state vector does not decode: {0}")]
    BadStateVector(String),
    /// An awareness update that is not well formed.
    #[error("awareness update invalid: {0}")]
    BadAwareness(String),
    /// A frame with no message in it.
    #[error("empty frame")]
    Empty,
    /// Only a client's decoder refuses these: the server ignores auth messages.
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    /// An ack status other than stored or refused.
    #[error("unknown ack status {0}")]
    UnknownAckStatus(u64),
    /// A string field that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
}

/// `tags`, then `payload` as a varbuf.
fn frame(tags: &[u64], payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 2 + 10);
    for &tag in tags {
        write_var(&mut out, tag);
    }
    write_buf(&mut out, payload);
    Bytes::from(out)
}

/// Sync step 1: our state vector.
pub fn encode_sync_step1(sv: &StateVector) -> Bytes {
    frame(&[MSG_SYNC, SYNC_STEP1], &sv.encode_v1())
}

/// Sync step 2: everything the peer's state vector lacks.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    frame(&[MSG_SYNC, SYNC_STEP2], update)
}

/// A document update: from the server, for every peer of the room; from a client, its
/// own edit.
pub fn encode_update(update: &[u8]) -> Bytes {
    frame(&[MSG_SYNC, SYNC_UPDATE], update)
}

/// An awareness update.
pub fn encode_awareness(update: &AwarenessUpdate) -> Bytes {
    frame(&[MSG_AWARENESS], &update.encode_v1())
}
