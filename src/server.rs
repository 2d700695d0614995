//! collabd on its own listener: the HTTP server in front of a [`Collabd`] (which holds
//! the store, the flusher and the rooms), and the order of shutdown.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{IntoServiceFactory, map_config};
use actix_web::App;
use actix_web::dev::AppConfig;
use log::info;

use crate::config::Settings;
use crate::embed::Collabd;
use crate::http::upgrade;

/// How long stopping waits for connections to finish after sessions were told to close.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// collabd serving on its own listener. Must be created inside an actix `System`.
pub struct Server {
    addr: SocketAddr,
    http: actix_server::ServerHandle,
    collabd: Collabd,
}

impl Server {
    /// Opens the data directory, binds, and starts serving (no hooks).
    pub fn start(settings: Settings) -> io::Result<Server> {
        Collabd::builder(settings).build()?.listen()
    }

    /// Binds `settings.bind` and serves `collabd` there: every route at the root, and
    /// WebSocket sockets taken out of the HTTP/1 dispatcher after their handshake.
    pub(crate) fn start_with(collabd: Collabd) -> io::Result<Server> {
        let settings = collabd.settings();
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
        let served = collabd.clone();
        let server = builder
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_GRACE_SECS)
            .listen("collabd", listener, move || {
                let collabd = served.clone();
                let make_app = move || App::new().service(collabd.scope("")).into_factory();
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
        let data = match (&settings.redis_url, &settings.postgres_url) {
            (Some(_), _) => "data in Redis".to_string(),
            (None, Some(_)) => "data in PostgreSQL".to_string(),
            (None, None) => format!("data in {}", settings.data_dir.display()),
        };
        info!(
            "listening on {addr} ({data}, flush every {} ms)",
            settings.flush_interval_ms
        );
        Ok(Server {
            addr,
            http,
            collabd,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The collabd it serves (for room handles).
    pub fn collabd(&self) -> &Collabd {
        &self.collabd
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
        // WebSocket sockets left the HTTP workers' count at their handshake: their close
        // frames get their grace (in `close_rooms`) before the workers stop.
        let closed = self.collabd.close_rooms().await;
        self.http.stop(true).await;
        if closed {
            self.collabd.finish();
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
