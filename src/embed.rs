//! collabd as a library: build it from [`Settings`] and hooks, then either serve it on
//! its own listener ([`Collabd::listen`], what the `collabd` binary does) or mount it in
//! a host's actix-web app ([`Collabd::scope`]); reach rooms from server code
//! ([`Collabd::room`]); stop it ([`Collabd::shutdown`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{HttpResponse, Scope, web};
use log::{error, info, warn};

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::handle::RoomHandle;
use crate::hooks::{self, AuthRequest, Change, Connection, Grant, Hooks, Refusal};
use crate::http::{self, AppState, cors};
use crate::limits::Admission;
use crate::room::Registry;
use crate::room::messages::ShutdownAll;
use crate::server::Server;
use crate::session::OPEN_SOCKETS;
use crate::store::Store;
use crate::store::commit::Flusher;
use crate::store::redis::RedisStore;
use crate::store::sled::SledStore;

/// How long [`Collabd::shutdown`] waits for WebSocket connections to take their close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Builds a [`Collabd`]: settings, then any hooks (see [`crate::hooks`]), then
/// [`build`](Builder::build).
pub struct Builder {
    settings: Settings,
    hooks: Hooks,
}

impl Builder {
    /// Decides who may read or write which room, instead of the JWT check (which the hook
    /// can still call: [`AuthRequest::check_token`]). Called for every request to a room.
    pub fn authenticate<F, Fut>(mut self, hook: F) -> Builder
    where
        F: Fn(AuthRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Grant, Refusal>> + 'static,
    {
        self.hooks.authenticate = Some(hooks::hook(hook));
        self
    }

    /// Seeds rooms the store knows nothing of: the hook gets the room's name and may
    /// return its first update (a Yjs update v1), stored as seq 1 before anyone is served.
    pub fn on_load<F, Fut>(mut self, hook: F) -> Builder
    where
        F: Fn(Arc<str>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Vec<u8>>, String>> + 'static,
    {
        self.hooks.load = Some(hooks::hook(hook));
        self
    }

    /// Hears every durable update once, in seq order per room, in batches.
    pub fn on_change<F, Fut>(mut self, hook: F) -> Builder
    where
        F: Fn(Change) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.change = Some(hooks::hook(hook));
        self
    }

    /// Hears every WebSocket or SSE connection that enters a room.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Builder
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.connect = Some(hooks::hook(hook));
        self
    }

    /// Hears every WebSocket or SSE connection that leaves a room.
    pub fn on_disconnect<F, Fut>(mut self, hook: F) -> Builder
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.hooks.disconnect = Some(hooks::hook(hook));
        self
    }

    /// Checks the settings, opens the store in `data_dir` and starts the rooms' machinery.
    /// Call inside an actix runtime (`#[actix_web::main]`, `actix_rt::System`).
    pub fn build(self) -> io::Result<Collabd> {
        let Builder {
            settings,
            mut hooks,
        } = self;
        settings
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        hooks.timeout = settings.hook_timeout();
        let settings = Arc::new(settings);
        let cluster = match &settings.redis_url {
            Some(url) => Some(
                Cluster::connect(url).map_err(|e| io::Error::other(format!("redis_url: {e}")))?,
            ),
            None => None,
        };
        let store = match &cluster {
            Some(cluster) => {
                if let Some(url) = &settings.postgres_url {
                    set_archive(cluster, url, &settings)?;
                }
                Arc::new(RedisStore::new(cluster.clone())) as Arc<dyn Store>
            }
            None => open_store(&settings)?,
        };
        let hooks = Arc::new(hooks);
        let flusher = Flusher::start(store.clone(), settings.flush_interval());
        let registry = Registry::new(
            store.clone(),
            flusher.clone(),
            settings.clone(),
            hooks.clone(),
        )
        .with_cluster(cluster.clone())
        .with_webhooks(crate::webhooks::start(&settings, &store))
        .start();
        let auth = Auth::from_settings(&settings);
        // In cluster mode the list hears other nodes' revocations from now on; what was
        // revoked before is read next.
        if let Some(cluster) = &cluster {
            cluster.set_revocations(auth.revocations().clone());
            cluster.set_webhooks(settings.webhook_url.is_some());
        }
        load_revocations(&*store, &auth)?;
        if !auth.enabled() && hooks.authenticate.is_none() {
            warn!(
                "NO AUTH: neither auth_secret nor an authenticate hook is set, so anyone who \
                 can reach this server may read and write every room. Set \
                 COLLABD_AUTH_SECRET in production."
            );
        }
        let state = AppState {
            registry,
            admission: Admission::new(&settings),
            settings,
            store,
            auth,
            hooks,
            cluster,
            base: "".into(),
        };
        Ok(Collabd {
            inner: Arc::new(Inner {
                state,
                flusher,
                stopped: AtomicBool::new(false),
            }),
        })
    }
}

/// Fills the revocation list from the store, before anything is served.
fn load_revocations(store: &dyn Store, auth: &Auth) -> io::Result<()> {
    let now = crate::auth::now_secs();
    // On a thread of its own: a database store's blocking client must not run on this
    // (async) one.
    let kept = std::thread::scope(|s| s.spawn(|| store.revocations()).join())
        .map_err(|_| io::Error::other("reading revocations panicked"))?
        .map_err(|e| io::Error::other(format!("reading revocations: {e}")))?;
    for (key, value) in kept {
        match crate::revocation::Revocation::decode(&key, value) {
            Some(revocation) => auth.revocations().apply(revocation, now),
            None => warn!("unknown revocation entry {key:?} ignored"),
        }
    }
    let (subjects, tokens) = auth.revocations().len();
    if subjects + tokens > 0 {
        log::info!("revocations: {subjects} subjects, {tokens} tokens");
    }
    Ok(())
}

/// Cluster mode with `postgres_url`: PostgreSQL is the archive behind Redis.
fn set_archive(cluster: &Cluster, url: &str, settings: &Settings) -> io::Result<()> {
    #[cfg(feature = "postgres")]
    {
        let pg = crate::store::postgres::PostgresStore::open(url)
            .map_err(|e| io::Error::other(format!("postgres_url: {e}")))?;
        cluster.set_archive(Arc::new(pg), settings);
        Ok(())
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (cluster, settings);
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("postgres_url ({url:?}) needs collabd built with the `postgres` feature"),
        ))
    }
}

/// The store the settings name: PostgreSQL when `postgres_url` is set, else sled in
/// `data_dir`.
fn open_store(settings: &Settings) -> io::Result<Arc<dyn Store>> {
    if let Some(url) = &settings.postgres_url {
        #[cfg(feature = "postgres")]
        return crate::store::postgres::PostgresStore::open(url)
            .map(|store| Arc::new(store) as Arc<dyn Store>)
            .map_err(|e| io::Error::other(format!("postgres_url: {e}")));
        #[cfg(not(feature = "postgres"))]
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("postgres_url ({url:?}) needs collabd built with the `postgres` feature"),
        ));
    }
    let store = SledStore::open_with_cache(&settings.data_dir, settings.store_cache_bytes)
        .map_err(|e| io::Error::other(format!("{}: {e}", settings.data_dir.display())))?;
    Ok(Arc::new(store))
}

/// A running collabd: its rooms, store and settings. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Collabd {
    inner: Arc<Inner>,
}

struct Inner {
    state: AppState,
    flusher: Flusher,
    stopped: AtomicBool,
}

impl Collabd {
    /// Starts a [`Builder`] with `settings` (`Settings::default()` and field by field in
    /// code, or `Settings::load` for files and the environment).
    pub fn builder(settings: Settings) -> Builder {
        Builder {
            settings,
            hooks: Hooks::default(),
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.state.settings
    }

    /// Every route of collabd under `path` (`"/collab"`; `""` for the root), for a host's
    /// actix-web app: `App::new().service(collabd.scope("/collab"))`. WebSocket is
    /// `{path}/ws/{room}`, SSE `{path}/rooms/{room}/events`, and so on; the demo is at
    /// `{path}/`. CORS (`allowed_origins`) applies to these routes only.
    pub fn scope(
        &self,
        path: &str,
    ) -> Scope<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<EitherBody<impl MessageBody + use<>>>,
            Error = actix_web::Error,
            InitError = (),
        > + use<>,
    > {
        let base = path.trim_end_matches('/');
        let mut state = self.inner.state.clone();
        state.base = base.into();
        let allowed = state.settings.clone();
        let mut scope = web::scope(base).app_data(web::Data::new(state));
        if !base.is_empty() {
            // The demo's page uses relative URLs: `{path}` must end in a slash.
            let to = format!("{base}/");
            scope = scope.route(
                "",
                web::get().to(move || {
                    let to = to.clone();
                    async move {
                        HttpResponse::PermanentRedirect()
                            .insert_header(("location", to))
                            .finish()
                    }
                }),
            );
        }
        scope.configure(http::configure).wrap_fn(move |req, srv| {
            use actix_web::dev::Service;
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

    /// Serves collabd alone on `bind` (its own listener: WebSocket sockets leave the HTTP
    /// machinery after their handshake, the fastest path).
    pub fn listen(&self) -> io::Result<Server> {
        Server::start_with(self.clone())
    }

    /// A handle on the room `name`, for server code: read it, change it, follow it.
    pub fn room(&self, name: &str) -> Result<RoomHandle, http::error::ApiError> {
        let name = http::check_room_name(name)?;
        Ok(RoomHandle::new(name, self.inner.state.clone()))
    }

    /// The stored rooms whose name starts with `prefix`, by name, after `after`, at most
    /// `limit` (1 to 1,000): what `GET /rooms` answers.
    pub async fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::protocol::json::RoomSummary>, http::error::ApiError> {
        let limit = limit.clamp(1, crate::store::MAX_LISTING);
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        http::admin::list_rooms(&self.inner.state, prefix, after, limit).await
    }

    /// Revokes a subject's tokens or one token (what `POST /admin/revoke` does): stored,
    /// applied on every node, and the sessions it covers are closed with 4403.
    pub async fn revoke(
        &self,
        revocation: crate::revocation::Revocation,
    ) -> Result<(), http::error::ApiError> {
        http::admin::record(&self.inner.state, revocation).await
    }

    /// Closes every connection (WebSocket: 1001), flushes every room and the store, and
    /// stops the rooms. Call when the host app stops; later calls do nothing.
    pub async fn shutdown(&self) {
        if self.close_rooms().await {
            self.finish();
        }
    }

    /// The first half of [`Collabd::shutdown`]: every room flushes and closes its
    /// connections, which get a few seconds to go. False if shutdown had begun already.
    pub(crate) async fn close_rooms(&self) -> bool {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return false;
        }
        if self.registry().send(ShutdownAll).await.is_err() {
            error!("registry gone before shutdown");
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while OPEN_SOCKETS.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The second half: the flusher stops and the store is flushed a last time.
    pub(crate) fn finish(&self) {
        self.inner.flusher.shutdown();
        // On a thread of its own: a database store's client may not block this one.
        let store = &self.inner.state.store;
        match std::thread::scope(|s| s.spawn(|| store.flush()).join()).unwrap_or_else(|_| {
            Err(crate::store::StoreError::Failed(
                "the final flush panicked".into(),
            ))
        }) {
            Ok(()) => info!("shutdown complete, everything flushed"),
            Err(e) => error!("final flush failed: {e}"),
        }
    }

    pub(crate) fn registry(&self) -> &Addr<Registry> {
        &self.inner.state.registry
    }
}
