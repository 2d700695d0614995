//! collabd: a real-time collaborative state server. Each room is an actor holding a Yjs
//! (yrs) document; clients edit it together over WebSocket (the y-websocket protocol);
//! every accepted update gets a per-room sequence number and lands in an append-only op
//! log in sled.
//!
//! # Layout
//!
//! - [`config`]: settings, their defaults and how they are layered.
//! - [`auth`]: access tokens (HS256 JWT): which rooms, read or write, until when.
//! - [`limits`]: connection limits, admission and per-session rate buckets.
//! - [`metrics`]: Prometheus metrics served at `/metrics`.
//! - [`protocol`]: the y-websocket wire codec (sans-IO, both directions: the server, the
//!   tests' client and the load generator use it), WebSocket framing
//!   ([`protocol::websocket`]), SSE framing, the close codes and the HTTP JSON shapes.
//! - [`room`]: the room actor and the parts it drives, each sans-IO: the update rules
//!   ([`room::core`]), presence ([`room::presence`]), durability bookkeeping
//!   ([`room::durability`]), fan-out to members through the [`room::fanout::Peer`] trait
//!   and SSE streams ([`room::live`]); the registry actor; the messages between them.
//! - [`session`]: the WebSocket session actor on a socket collabd owns after the
//!   handshake: its reader (`session::inbound`) and its writer, the room's `Peer`
//!   (`session::outbound`: frames written straight from the room's thread, queued only
//!   when the socket is full).
//! - [`http`]: routes and handlers; [`http::upgrade`] hands upgraded sockets to sessions.
//! - [`store`]: the op log (sled, fsynced by us), snapshots, compaction, group commit
//!   ([`store::commit`]); its docs hold the record format and the crash matrix.
//! - [`server`]: wiring and graceful shutdown.
//!
//! One update from socket to disk: `session` decodes the frame → `room::actor` applies it
//! under `room::core`'s rules, assigns the seq and writes it into the other members'
//! sockets → `store` appends it → `store::commit` makes it durable (sled flush +
//! `fdatasync`) → the room shows the seq (acks, SSE ids, POST answers).
//! `ARCHITECTURE.md` in the repository states the contracts every part keeps.

pub mod auth;
pub mod config;
pub mod embed;
pub mod handle;
pub mod hooks;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod room;
pub mod server;
pub mod session;
pub mod store;

pub use config::Settings;
pub use embed::{Builder, Collabd};
pub use handle::RoomHandle;
pub use server::Server;

/// Starts the server and serves until SIGINT or SIGTERM. Call inside an actix `System`.
pub async fn run(settings: Settings) -> std::io::Result<()> {
    Server::start(settings)?.run_until_signal().await
}
