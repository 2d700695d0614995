//! Hooks: Rust code of the host application that collabd calls at fixed points, each
//! async and each bounded by `hook_timeout_ms`.
//!
//! | hook | called | its answer |
//! |------|--------|------------|
//! | [`authenticate`](crate::Builder::authenticate) | for every request to a room (each HTTP request, each WebSocket or SSE connection) before anything else is done for it | the [`Grant`] or a [`Refusal`]; replaces the JWT check, which it can still call ([`AuthRequest::check_token`]) |
//! | [`load`](crate::Builder::on_load) | when a room the store knows nothing of is loaded, before anyone is served | the room's first update (a Yjs update v1), or none |
//! | [`change`](crate::Builder::on_change) | after updates are durable, in seq order, several per call | — |
//! | [`connect`, `disconnect`](crate::Builder::on_connect) | when a WebSocket or SSE connection enters or leaves a room | — |
//!
//! A hook that panics or outlives its timeout fails what it was called for and nothing
//! else: the request gets `500 hook_failed` (authenticate), the room does not load and
//! the requests waiting for it get `503 room_unavailable` (load; the next request tries
//! again), or the call is logged and skipped (change, connect, disconnect). Hooks run on
//! the thread that calls them (an HTTP worker; the room's thread for `load`, which holds
//! that room, never its neighbours, while it runs): they must not block the thread.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use bytes::Bytes;
use futures_util::FutureExt;

pub use crate::auth::{Access, Grant};

/// What a hook returns: any future; it need not be `Send`.
pub type HookFuture<T> = Pin<Box<dyn Future<Output = T>>>;

type Hook<A, T> = Arc<dyn Fn(A) -> HookFuture<T> + Send + Sync>;

/// What the load hook answers: the room's first update, if any.
type Seed = Result<Option<Vec<u8>>, String>;

/// The hooks a host registered (see the module docs).
#[derive(Clone, Default)]
pub struct Hooks {
    pub(crate) authenticate: Option<Hook<AuthRequest, Result<Grant, Refusal>>>,
    pub(crate) load: Option<Hook<Arc<str>, Seed>>,
    pub(crate) change: Option<Hook<Change, ()>>,
    pub(crate) connect: Option<Hook<Connection, ()>>,
    pub(crate) disconnect: Option<Hook<Connection, ()>>,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("authenticate", &self.authenticate.is_some())
            .field("load", &self.load.is_some())
            .field("change", &self.change.is_some())
            .field("connect", &self.connect.is_some())
            .field("disconnect", &self.disconnect.is_some())
            .finish()
    }
}

pub(crate) fn hook<A, T, F, Fut>(f: F) -> Hook<A, T>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
{
    Arc::new(move |a| Box::pin(f(a)))
}

/// Why a hook gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// It ran longer than `hook_timeout_ms`.
    #[error("the {0} hook timed out")]
    TimedOut(&'static str),
    /// It panicked.
    #[error("the {0} hook panicked")]
    Panicked(&'static str),
}

/// Runs a hook's future under the timeout, containing a panic.
pub(crate) async fn run<T>(
    name: &'static str,
    timeout: Duration,
    future: HookFuture<T>,
) -> Result<T, HookError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => {
            log::error!("the {name} hook panicked");
            Err(HookError::Panicked(name))
        }
        Err(_) => {
            log::error!("the {name} hook timed out after {} ms", timeout.as_millis());
            Err(HookError::TimedOut(name))
        }
    }
}

/// What the authenticate hook decides about.
pub struct AuthRequest {
    /// The request (its headers, peer address, path, cookies …). For a WebSocket this is
    /// the upgrade request; for SSE the stream's request.
    pub request: HttpRequest,
    /// The room asked for.
    pub room: Arc<str>,
    /// The token the client sent (`Authorization: Bearer …`, else `?token=`), if any.
    pub token: Option<String>,
    /// The least access the request needs: `Write` for a POST of an update, `Read` for
    /// everything else (a WebSocket needs only `Read` to connect; its edits need `Write`).
    pub need: Access,
    pub(crate) jwt: crate::auth::Auth,
}

impl AuthRequest {
    /// collabd's own check of [`token`](Self::token): an HS256 JWT signed with
    /// `auth_secret` (see the README's "Access tokens"). Lets a hook wrap the check
    /// instead of replacing it.
    pub fn check_token(&self) -> Result<Grant, Refusal> {
        self.jwt
            .check(self.token.as_deref(), &self.room, self.need)
            .map_err(|denied| Refusal {
                forbidden: denied.error.is_forbidden(),
                code: denied.error.code(),
                reason: denied.error.to_string(),
            })
    }
}

/// The authenticate hook's "no": 401 (who are you?) or 403 (not this), with a reason
/// sent to the client (`{"error": code, "message": reason}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 403 rather than 401.
    pub forbidden: bool,
    /// The error code: `hook_refused`, or the JWT check's own (`token_expired` …) when
    /// the refusal comes from [`AuthRequest::check_token`].
    pub code: &'static str,
    /// Told to the client and logged.
    pub reason: String,
}

impl Refusal {
    /// 401: no credentials, or credentials that are not valid.
    pub fn unauthorized(reason: impl Into<String>) -> Refusal {
        Refusal {
            forbidden: false,
            code: "hook_refused",
            reason: reason.into(),
        }
    }

    /// 403: valid credentials that do not allow this.
    pub fn forbidden(reason: impl Into<String>) -> Refusal {
        Refusal {
            forbidden: true,
            code: "hook_refused",
            reason: reason.into(),
        }
    }
}

/// Updates of one room that became durable, for the change hook: seqs `from..=to`, in
/// order, each exactly once per process.
#[derive(Debug, Clone)]
pub struct Change {
    /// The room.
    pub room: Arc<str>,
    /// The first seq of the batch.
    pub from: u64,
    /// The last seq of the batch.
    pub to: u64,
    /// Each update (a Yjs update v1) with its seq. Empty when the store compacted them
    /// before the hook got to them (a hook far behind): read the room's state instead.
    pub updates: Vec<(u64, Bytes)>,
}

/// A connection entering or leaving a room, for the connect and disconnect hooks.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The room.
    pub room: Arc<str>,
    /// `"websocket"` or `"sse"`.
    pub transport: &'static str,
    /// Unique per connection in this process: a disconnect names the connect it ends.
    pub id: u64,
    /// The grant's subject (the token's `sub`, or what the authenticate hook said).
    pub subject: Option<String>,
}

/// Update bytes the change feed may hold for a slow change hook; beyond it, batches carry
/// only their seq range and the updates are read back from the store when delivered.
const CHANGE_QUEUE_BYTES: usize = 64 * 1024 * 1024;

/// The change hook's feed: rooms hand it what became durable (one cheap channel send,
/// never a hook call on a room's thread); one task delivers batches to the hook, in
/// order, each seq once, merging what queued up while the hook was busy.
#[derive(Clone)]
pub(crate) struct ChangeFeed {
    tx: tokio::sync::mpsc::UnboundedSender<Queued>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

struct Queued {
    change: Change,
    /// The updates were left out (over the byte budget): read them from the store.
    stored: bool,
}

impl ChangeFeed {
    /// Starts the delivery task on the current actix runtime.
    pub(crate) fn start(hooks: &Hooks, store: Arc<dyn crate::store::Store>) -> Option<ChangeFeed> {
        let hook = hooks.change.clone()?;
        let timeout = hooks.timeout;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let held = queued.clone();
        actix_rt::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(next) = rx.try_recv() {
                    batch.push(next);
                }
                for mut queued in merge(batch) {
                    let bytes: usize = queued.change.updates.iter().map(|(_, u)| u.len()).sum();
                    held.fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
                    if queued.stored {
                        queued.change.updates = read_back(&store, &queued.change).await;
                    }
                    let _ = run("change", timeout, hook(queued.change)).await;
                }
            }
        });
        Some(ChangeFeed { tx, queued })
    }

    /// Seqs `updates` of `room` are durable (a contiguous range, in order).
    pub(crate) fn send(&self, room: &Arc<str>, updates: &[(u64, Bytes)]) {
        let (Some(first), Some(last)) = (updates.first(), updates.last()) else {
            return;
        };
        let bytes: usize = updates.iter().map(|(_, u)| u.len()).sum();
        let held = self.queued.load(std::sync::atomic::Ordering::Relaxed);
        let stored = held + bytes > CHANGE_QUEUE_BYTES;
        if !stored {
            self.queued
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        let change = Change {
            room: room.clone(),
            from: first.0,
            to: last.0,
            updates: if stored { Vec::new() } else { updates.to_vec() },
        };
        let _ = self.tx.send(Queued { change, stored });
    }
}

/// Joins the batches of each room into one (they are contiguous and in order), keeping
/// the order in which rooms first appear.
fn merge(batch: Vec<Queued>) -> Vec<Queued> {
    let mut out: Vec<Queued> = Vec::new();
    let mut at: std::collections::HashMap<Arc<str>, usize> = std::collections::HashMap::new();
    for queued in batch {
        match at.get(&queued.change.room) {
            Some(&i) if out[i].change.to + 1 == queued.change.from => {
                let into = &mut out[i];
                into.change.to = queued.change.to;
                if into.stored || queued.stored {
                    into.stored = true;
                    into.change.updates.clear();
                } else {
                    into.change.updates.extend(queued.change.updates);
                }
            }
            _ => {
                at.insert(queued.change.room.clone(), out.len());
                out.push(queued);
            }
        }
    }
    out
}

/// The updates of `change`'s range, from the store (empty if compacted away).
async fn read_back(store: &Arc<dyn crate::store::Store>, change: &Change) -> Vec<(u64, Bytes)> {
    let (store, room, from, to) = (store.clone(), change.room.clone(), change.from, change.to);
    let read = actix_rt::task::spawn_blocking(move || {
        crate::room::cursor::catch_up(&*store, &room, Some(from - 1), to, usize::MAX)
    })
    .await;
    match read {
        Ok(Ok(crate::room::cursor::CatchUp::Updates(updates))) => updates
            .into_iter()
            .map(|u| (u.seq, Bytes::from(u.update)))
            .collect(),
        _ => Vec::new(),
    }
}

/// One connection's presence in a room, for the connect and disconnect hooks: made when
/// it enters (the connect hook is called), dropped when it leaves (the disconnect hook).
pub(crate) struct Hooked {
    hooks: Arc<Hooks>,
    connection: Connection,
}

static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Hooked {
    /// `None` when neither hook is set (nothing to remember).
    pub(crate) fn enter(
        hooks: &Arc<Hooks>,
        room: &Arc<str>,
        transport: &'static str,
        subject: Option<String>,
    ) -> Option<Hooked> {
        if hooks.connect.is_none() && hooks.disconnect.is_none() {
            return None;
        }
        let connection = Connection {
            room: room.clone(),
            transport,
            id: NEXT_CONNECTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            subject,
        };
        spawn_hook(
            "connect",
            hooks.connect.as_ref(),
            hooks.timeout,
            &connection,
        );
        Some(Hooked {
            hooks: hooks.clone(),
            connection,
        })
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        let hooks = &self.hooks;
        spawn_hook(
            "disconnect",
            hooks.disconnect.as_ref(),
            hooks.timeout,
            &self.connection,
        );
    }
}

/// Runs a connection hook in the background (when there is a runtime to run it on).
fn spawn_hook(
    name: &'static str,
    hook: Option<&Hook<Connection, ()>>,
    timeout: Duration,
    connection: &Connection,
) {
    if let Some(hook) = hook
        && tokio::runtime::Handle::try_current().is_ok()
    {
        let future = hook(connection.clone());
        actix_rt::spawn(async move {
            let _ = run(name, timeout, future).await;
        });
    }
}
