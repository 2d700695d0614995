//! Wiring: opens the store, starts the flusher, the registry and the HTTP server, and
//! shuts them down in order.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_http::{HttpService, KeepAlive};
use actix_service::{IntoServiceFactory, map_config};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{AppConfig, Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};
use log::{error, info, warn};

use crate::auth::Auth;
use crate::config::Settings;
use crate::http::{self, AppState, cors, upgrade};
use crate::limits::Admission;
use crate::room::Registry;
use crate::room::messages::ShutdownAll;
use crate::session::OPEN_SOCKETS;
use crate::store::Store;
use crate::store::commit::Flusher;
use crate::store::sled::SledStore;

/// How long stopping waits for connections to finish after sessions were told to close.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// A running server. Must be created inside an actix `System`.
pub struct Server {
    addr: SocketAddr,
    http: actix_server::ServerHandle,
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
        let listener = listen(&settings.bind)?;
        let addr = listener.local_addr()?;
        let builder = actix_server::Server::build();
        // Tells idle keep-alive connections to close when shutdown starts (a client
        // reconnecting over one would reach a server that is going away).
        let shutdown_signal = builder.graceful_shutdown_signal();
        let server = builder
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_GRACE_SECS)
            .listen("collabd", listener, move || {
                let app_state = state.clone();
                let make_app = move || app(app_state.clone()).into_factory();
                let shutdown_signal = shutdown_signal.clone();
                HttpService::build()
                    .graceful_shutdown_signal(move || {
                        let signal = shutdown_signal.clone();
                        async move { signal.notified().await }
                    })
                    .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    // A client that closes its side is gone: end its response at once.
                    // An SSE stream or a held long poll would otherwise only notice on
                    // its next write (up to two heartbeats), holding its connection
                    // slot, its room and its presence meanwhile.
                    .h1_allow_half_closed(false)
                    // Small frames must leave at once: with Nagle on, an update written
                    // while the previous one is unacknowledged waits for the peer's
                    // delayed ACK (~40 ms). Sessions keep the setting.
                    .tcp_nodelay(true)
                    .local_addr(addr)
                    .upgrade(upgrade::service(make_app.clone()))
                    .finish(map_config(make_app(), |_| AppConfig::default()))
                    .tcp()
            })?
            .run();
        let http = server.handle();
        actix_rt::spawn(server);
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
        // WebSocket sockets left the HTTP workers' count at their handshake: give their
        // close frames the same grace before the workers stop.
        let deadline = Instant::now() + Duration::from_secs(SHUTDOWN_GRACE_SECS);
        while OPEN_SOCKETS.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.http.stop(true).await;
        self.flusher.shutdown();
        match self.store.flush() {
            Ok(()) => info!("shutdown complete, everything flushed"),
            Err(e) => error!("final flush failed: {e}"),
        }
    }
}

/// Binds like actix-web does: `SO_REUSEADDR` (a restarted server takes its port back while
/// old connections linger in TIME_WAIT), a backlog of 1,024.
fn listen(bind: &str) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = io::Error::other(format!("{bind}: no address to bind"));
    for addr in bind.to_socket_addrs()? {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        match socket.bind(&addr.into()).and_then(|()| socket.listen(1024)) {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The actix-web app: every route, behind the CORS layer. Built once per worker for
/// plain requests and once for upgrade requests (see [`upgrade`]).
fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<EitherBody<impl MessageBody>>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let allowed = state.settings.clone();
    App::new()
        .app_data(web::Data::new(state))
        .configure(http::configure)
        .wrap_fn(move |req, srv| {
            use futures_util::future::{Either, FutureExt, ready};
            match cors::decide(req.method(), req.headers(), &allowed.allowed_origins) {
                cors::Decision::Serve(headers) => Either::Left(srv.call(req).map(move |res| {
                    res.map(|mut r| {
                        cors::add_headers(r.headers_mut(), headers);
                        r.map_into_left_body()
                    })
                })),
                cors::Decision::Answer(answer) => {
                    Either::Right(ready(Ok(req.into_response(answer).map_into_right_body())))
                }
            }
        })
}
