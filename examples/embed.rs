//! collabd inside a host's own actix-web app.
//!
//! ```sh
//! cargo run --example embed          # PORT (default 8090), DATA_DIR (default ./embed-data)
//! curl localhost:8090/hello          # the host's own route
//! ```
//!
//! - `GET /hello` is the host's route (plain text `hello`);
//! - collabd is mounted under `/collab`: Yjs clients use `ws://HOST:PORT/collab/ws` as
//!   y-websocket's serverUrl, SSE is `/collab/rooms/{room}/events`, the demo is at
//!   `/collab/`;
//! - an authenticate hook lets the token `writer-token` write, `reader-token` read, and
//!   refuses anything else (401 `hook_refused`);
//! - a task of the host appends `tick N\n` to the Y.Text `ticks` of room `clock` every
//!   second, through a room handle: each line has a seq, is durable when `transact`
//!   returns, and reaches every client like any update.
//!
//! SIGINT or SIGTERM: collabd closes its connections and flushes, then the host's server
//! stops.

use std::time::Duration;

use actix_web::{App, HttpServer, web};
use collabd::hooks::{Grant, Refusal};
use collabd::{Collabd, Settings};
use yrs::{Text, WriteTxn};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let port: u16 = std::env::var("PORT")
        .map_or(Ok(8090), |p| p.parse())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("PORT: {e}")))?;
    let settings = Settings {
        data_dir: std::env::var("DATA_DIR")
            .unwrap_or_else(|_| "./embed-data".into())
            .into(),
        ..Settings::default()
    };

    let collabd = Collabd::builder(settings)
        .authenticate(|asked| async move {
            match asked.token.as_deref() {
                Some("writer-token") => Ok(Grant::write().subject("writer")),
                Some("reader-token") => Ok(Grant::read().subject("reader")),
                _ => Err(Refusal::unauthorized(
                    "send ?token=writer-token or reader-token",
                )),
            }
        })
        .build()?;

    // The host's own task, writing into a room as a server peer.
    let clock = collabd.room("clock").expect("a valid room name");
    actix_rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        for n in 1u64.. {
            every.tick().await;
            let line = format!("tick {n}\n");
            let written = clock
                .transact(|txn| {
                    let ticks = txn.get_or_insert_text("ticks");
                    let end = ticks.len(txn);
                    ticks.insert(txn, end, &line);
                })
                .await;
            match written {
                Ok((seq, ())) => log::info!("tick {n} stored at seq {seq}"),
                Err(e) => log::warn!("tick {n} not written: {e}"),
            }
        }
    });

    let mounted = collabd.clone();
    let server = HttpServer::new(move || {
        App::new()
            .route("/hello", web::get().to(|| async { "hello" }))
            .service(mounted.scope("/collab"))
    })
    // A client that goes away ends its SSE stream or long poll at once (by default
    // actix-web notices only at the stream's next write).
    .h1_allow_half_closed(false)
    .bind(("127.0.0.1", port))?;
    for addr in server.addrs() {
        log::info!("embed example listening on {addr}: /hello, and collabd under /collab");
    }
    let server = server.disable_signals().run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        // collabd first (its connections close with 1001 and everything is flushed),
        // then the host's server.
        collabd.shutdown().await;
        handle.stop(true).await;
    });
    server.await
}
