//! collabd: a real-time collaborative state server. Each room is an actor holding a Yjs
//! (yrs) document; clients edit it together over WebSocket (the y-websocket protocol),
//! Server-Sent Events, long polling or HTTP POST; every accepted update gets a per-room
//! sequence number and lands, fsynced, in an append-only op log in sled.
//!
//! The `collabd` binary serves it alone. This crate also embeds it in your own actix-web
//! app, next to your routes, with your access rules, and lets server code read and write
//! rooms.
//!
//! # Embedding
//!
//! ```
//! use actix_web::{App, HttpServer, web};
//! use collabd::hooks::{Grant, Refusal};
//! use collabd::{Collabd, Settings};
//! use yrs::{Text, WriteTxn};
//!
//! # #[actix_web::main]
//! # async fn main() -> std::io::Result<()> {
//! # let data_dir = std::env::temp_dir().join(format!("collabd-doctest-{}", std::process::id()));
//! let settings = Settings { data_dir, ..Settings::default() };
//! let collabd = Collabd::builder(settings)
//!     // Your rule instead of collabd's JWT check, for every request to a room.
//!     .authenticate(|asked| async move {
//!         match asked.token.as_deref() {
//!             Some("let-me-in") => Ok(Grant::write().subject("me")),
//!             _ => Err(Refusal::unauthorized("who are you?")),
//!         }
//!     })
//!     .build()?;
//!
//! // Server code edits a room as a peer of its own: the change gets a seq, is durable
//! // when `transact` returns, and reaches every connected client.
//! let notes = collabd.room("notes").expect("a valid name");
//! let (seq, ()) = notes
//!     .transact(|txn| {
//!         let body = txn.get_or_insert_text("body");
//!         body.insert(txn, 0, "hello");
//!     })
//!     .await
//!     .expect("stored");
//! assert_eq!(seq, 1);
//! assert_eq!(notes.json().await.unwrap()["body"], "hello");
//!
//! // Every transport under /collab (ws://HOST/collab/ws/{room}, /collab/rooms/{room}/events,
//! // …), beside the app's own routes, on the app's own server.
//! let mounted = collabd.clone();
//! let server = HttpServer::new(move || {
//!     App::new()
//!         .route("/hello", web::get().to(|| async { "hello" }))
//!         .service(mounted.scope("/collab"))
//! })
//! .bind("127.0.0.1:0")?
//! .run();
//! # let running = server.handle();
//! # actix_web::rt::spawn(server);
//! // When the app stops: connections closed, everything flushed.
//! collabd.shutdown().await;
//! # running.stop(true).await;
//! # std::fs::remove_dir_all(collabd.settings().data_dir.clone()).ok();
//! # Ok(())
//! # }
//! ```
//!
//! [`hooks`] lists the hooks (authenticate, load, change, connect, disconnect) and what
//! happens when one fails; [`handle::RoomHandle`] reads, changes and follows a room;
//! `examples/embed.rs` is a complete app. Leave the `cli` feature out
//! (`default-features = false`) and the command line's dependencies (clap, the config
//! file loader, env_logger) are not built; the `demo` feature bundles the browser demo
//! (it needs Node.js at build time).
//!
//! # Layout
//!
//! - [`embed`]: [`Collabd`] and its [`Builder`]: the store, the rooms and the HTTP routes,
//!   served alone ([`Collabd::listen`], [`Server`]) or mounted ([`Collabd::scope`]).
//! - [`hooks`], [`handle`]: what an embedding application plugs in and holds.
//! - [`config`]: settings, their defaults and how they are layered.
//! - [`auth`]: access tokens (HS256 JWT): which rooms, read or write, until when.
//! - [`protocol`]: the y-websocket wire codec (sans-IO, both directions: the server, the
//!   tests' client, the Rust client and the load generator use it), WebSocket framing
//!   ([`protocol::websocket`]), SSE framing, the close codes and the HTTP JSON shapes.
//! - Not part of the API (public for the crate's tests and tools, hidden from these
//!   docs): `room` (the room actor and the sans-IO parts it drives: the update rules,
//!   presence, durability bookkeeping, fan-out, SSE streams; the registry), `session`
//!   (the WebSocket session on a socket collabd owns after the handshake, or on a host
//!   app's connection), `http` (routes and handlers), `store` (the op log, snapshots,
//!   compaction, group commit; its docs hold the record format and the crash matrix),
//!   `cluster` (cluster mode: Redis as the log and seq authority, the PostgreSQL
//!   archive), `webhooks`, `limits`, `metrics`.
//!
//! One update from socket to disk: `session` decodes the frame → `room::actor` applies it
//! under `room::core`'s rules, assigns the seq and writes it into the other members'
//! sockets → `store` appends it → `store::commit` makes it durable (sled flush +
//! `fdatasync`) → the room shows the seq (acks, SSE ids, POST answers).
//! `ARCHITECTURE.md` in the repository states the contracts every part keeps.

#![warn(missing_docs)]

pub mod auth;
#[doc(hidden)]
pub mod cluster;
pub mod config;
pub mod embed;
pub mod handle;
pub mod hooks;
pub mod protocol;
pub mod revocation;
pub mod server;

// The machinery below is public for the crate's own tests, benchmarks and load
// generator; it is not part of the API and may change at any time.
#[doc(hidden)]
pub mod http;
#[doc(hidden)]
pub mod limits;
#[doc(hidden)]
pub mod metrics;
#[doc(hidden)]
pub mod room;
#[doc(hidden)]
pub mod session;
#[doc(hidden)]
pub mod store;
#[doc(hidden)]
pub mod webhooks;

pub use config::Settings;
pub use embed::{Builder, Collabd};
pub use handle::RoomHandle;
pub use http::error::ApiError as Error;
pub use server::Server;

/// Starts the server and serves until SIGINT or SIGTERM. Call inside an actix `System`.
pub async fn run(settings: Settings) -> std::io::Result<()> {
    Server::start(settings)?.run_until_signal().await
}
