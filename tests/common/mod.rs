//! Test harness, one concern per file: the real `collabd` binary on port 0 with a temp
//! data dir ([`server`]), a Yjs client built on yrs that speaks y-websocket over a real
//! WebSocket ([`yclient`]), an SSE client ([`sse`]), HTTP helpers and raw TCP clients
//! ([`http`]), node for the JavaScript tests ([`node`]), a seedable rng ([`rng`]), a room member for in-process tests ([`peer`]) and
//! fresh PostgreSQL databases behind a proxy that can cut them ([`pg`]), Redis servers
//! and clusters for cluster mode ([`redis`]), and nginx in front of its nodes ([`nginx`]). Everything is re-exported here, so
//! `use common::*;` brings it all.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod http;
pub mod nginx;
pub mod node;
pub mod peer;
pub mod pg;
pub mod redis;
pub mod rng;
pub mod server;
pub mod sse;
pub mod yclient;

use std::time::Duration;

// Re-exported so `use common::*;` brings everything; a test file may use none of a part.
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use nginx::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use peer::*;
#[allow(unused_imports)]
pub use pg::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use rng::*;
#[allow(unused_imports)]
pub use server::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use yclient::*;

/// Upper bound for anything a test waits for; reaching it is a failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(20);
