//! Wiring: opens the store, starts the flusher, the registry and the HTTP server, and
//! shuts them down in order.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, Addr};
use actix_web::dev::Service;
use actix_web::{App, HttpServer, web};
use log::{error, info, warn};

use crate::auth::Auth;
use crate::config::Settings;
use crate::http::{self, AppState, cors};
use crate::limits::Admission;
use crate::room::Registry;
use crate::room::messages::ShutdownAll;
use crate::store::Store;
use crate::store::commit::Flusher;
use crate::store::sled::SledStore;

/// How long stopping waits for connections to finish after sessions were told to close.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// A running server. Must be created inside an actix `System`.
pub struct Server {
    addr: SocketAddr,
    http: actix_web::dev::ServerHandle,
    registry: Addr<Registry>,
    flusher: Flusher,
    store: Arc<dyn Store>,
}

impl Server {
    /// Opens the data directory, binds, and starts serving.
    pub fn start(settings: Settings) -> io::Result<Server> {
        let settings = Arc::new(settings);
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(&settings.data_dir)
                .map_err(|e| io::Error::other(format!("{}: {e}", settings.data_dir.display())))?,
        );
        let flusher = Flusher::start(store.clone(), settings.flush_interval());
        let registry = Registry::new(store.clone(), flusher.clone(), settings.clone()).start();
        let auth = Auth::from_settings(&settings);
        if !auth.enabled() {
            warn!(
                "NO AUTH: auth_secret is not set, so anyone who can reach {} may read and \
                 write every room. Set COLLABD_AUTH_SECRET in production.",
                settings.bind
            );
        }
        let state = AppState {
            registry: registry.clone(),
            settings: settings.clone(),
            store: store.clone(),
            admission: Admission::new(&settings),
            auth,
        };
        let workers = match settings.http_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let server = HttpServer::new(move || {
            let allowed = state.settings.clone();
            App::new()
                .app_data(web::Data::new(state.clone()))
                .configure(http::configure)
                .wrap_fn(move |req, srv| {
                    use futures_util::future::{Either, FutureExt, ready};
                    match cors::decide(req.method(), req.headers(), &allowed.allowed_origins) {
                        cors::Decision::Serve(headers) => {
                            Either::Left(srv.call(req).map(move |res| {
                                res.map(|mut r| {
                                    cors::add_headers(r.headers_mut(), headers);
                                    r.map_into_left_body()
                                })
                            }))
                        }
                        cors::Decision::Answer(answer) => Either::Right(ready(Ok(req
                            .into_response(answer)
                            .map_into_right_body()))),
                    }
                })
        })
        // Small frames must leave at once: with Nagle on, an update written while the
        // previous one is unacknowledged waits for the peer's delayed ACK (~40 ms).
        .tcp_nodelay(true)
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .bind(&settings.bind)?;
        let addr = *server
            .addrs()
            .first()
            .ok_or_else(|| io::Error::other("bound to no address"))?;
        let running = server.run();
        let http = running.handle();
        actix_rt::spawn(running);
        info!(
            "listening on {addr} (data in {}, flush every {} ms)",
            settings.data_dir.display(),
            settings.flush_interval_ms
        );
        Ok(Server {
            addr,
            http,
            registry,
            flusher,
            store,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) -> io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!("{which} received, shutting down");
        self.shutdown().await;
        Ok(())
    }

    /// Stops accepting, closes every session with 1001, flushes every room, and stops.
    pub async fn shutdown(self) {
        self.http.pause().await;
        if self.registry.send(ShutdownAll).await.is_err() {
            error!("registry gone before shutdown");
        }
        self.http.stop(true).await;
        self.flusher.shutdown();
        match self.store.flush() {
            Ok(()) => info!("shutdown complete, everything flushed"),
            Err(e) => error!("final flush failed: {e}"),
        }
    }
}
