//! Every WebSocket close code collabd sends, in one table (the README lists them too).

/// The server is going away (shutdown); clients reconnect.
pub const GOING_AWAY: u16 = 1001;
/// Text frames: y-websocket is binary.
pub const UNSUPPORTED: u16 = 1003;
/// A frame or update that does not decode or apply.
pub const INVALID_DATA: u16 = 1007;
/// Inbound frames or bytes faster than the session's budget allows.
pub const RATE_LIMIT: u16 = 1008;
/// A frame over `max_frame_bytes`.
pub const TOO_BIG: u16 = 1009;
/// The room is unavailable or its store failed; reconnecting reloads it from the store.
pub const INTERNAL_ERROR: u16 = 1011;
/// Nothing heard (not even a pong) within `client_timeout_ms`.
pub const TIMEOUT: u16 = 4000;
/// The outbound queue overflowed: the client reads slower than the room writes.
pub const SLOW_CONSUMER: u16 = 4008;
/// The session's access token expired; reconnect with a fresh one.
pub const TOKEN_EXPIRED: u16 = 4401;
/// The session's token or subject was revoked (`POST /admin/revoke`).
pub const REVOKED: u16 = 4403;
/// The room was deleted (`DELETE /rooms/{room}`), or the client sent content of a deleted
/// room: drop the document (its content is gone for good) and reconnect with a new one.
pub const ROOM_DELETED: u16 = 4410;
