//! The HTTP surface: routes, room-name parsing, and the handlers for health, metadata,
//! state and the WebSocket upgrade. Handlers are thin: they find the room and ask it.

pub mod access;
pub mod admin;
pub mod cors;
pub mod demo;
pub mod error;
pub mod history;
pub mod patch;
pub mod poll;
pub mod presence;
pub mod rooms;
pub mod sse;
pub mod upgrade;

use std::sync::Arc;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use percent_encoding::percent_decode_str;

use crate::auth::{Access, Auth};
use crate::config::Settings;
use crate::limits::Admission;
use crate::metrics::metrics;
use crate::room::Registry;
use crate::session::Handoff;
use crate::store::Store;
use error::ApiError;

/// Longest room name, in bytes of UTF-8 after percent-decoding.
pub const MAX_ROOM_NAME_BYTES: usize = 256;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub registry: Addr<Registry>,
    pub settings: Arc<Settings>,
    /// Read directly by replay (SSE, polling): reads need no trip through the room.
    pub store: Arc<dyn Store>,
    pub admission: Arc<Admission>,
    pub auth: Auth,
    /// The embedding application's hooks (none for the binary).
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Cluster mode's view of Redis (for `/healthz`).
    pub cluster: Option<crate::cluster::Cluster>,
    /// Where the routes are mounted (`""`, or a host app's prefix such as `/collab`).
    pub base: Arc<str>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(demo::configure)
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(prometheus))
        .route("/ws/{room:.*}", web::get().to(websocket))
        .route("/rooms", web::get().to(list_rooms))
        .route("/admin/revoke", web::post().to(admin::revoke))
        .route("/rooms/{rest:.*}", web::get().to(get_room))
        .route("/rooms/{rest:.*}", web::delete().to(delete_room))
        .route("/rooms/{rest:.*}", web::post().to(post_room))
        .route("/rooms/{rest:.*}", web::patch().to(patch_room))
        .default_service(web::to(not_found));
}

/// Decodes and checks a room name taken from a (still percent-encoded) path.
pub fn room_name(raw: &str) -> Result<Arc<str>, ApiError> {
    let name = percent_decode_str(raw).decode_utf8().map_err(|_| {
        ApiError::bad_request("bad_room_name", "room name is not UTF-8".to_string())
    })?;
    check_room_name(&name)
}

/// Checks a room name (already decoded): 1–256 bytes, no control characters.
pub fn check_room_name(name: &str) -> Result<Arc<str>, ApiError> {
    let bad = |why: &str| ApiError::bad_request("bad_room_name", format!("room name {why}"));
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.len() > MAX_ROOM_NAME_BYTES {
        return Err(bad(&format!("exceeds {MAX_ROOM_NAME_BYTES} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    Ok(name.into())
}

/// The path after the mount point and `prefix`, still percent-encoded, so that `%2F`
/// stays part of a name.
fn raw_tail<'a>(req: &'a HttpRequest, state: &AppState, prefix: &str) -> &'a str {
    let path = req.uri().path();
    path.strip_prefix(&*state.base)
        .and_then(|p| p.strip_prefix(prefix))
        .unwrap_or("")
}

/// `GET /healthz`: 200 `{"status":"ok"}`; 503 `{"status":"degraded", "store": …}` while
/// the store cannot be reached (a database or Redis away; writes are refused meanwhile);
/// 503 `{"status":"failing", "store": …}` once the store failed to make writes durable
/// (it refuses every write until a restart). In cluster mode the answer also carries
/// `"redis"` (`"ok"` or why it is unreachable) and this `"node"`'s id.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let (mut answer, mut status) = match state.store.failure() {
        None => match state.store.unavailable() {
            None => (serde_json::json!({ "status": "ok" }), StatusCode::OK),
            Some(why) => (
                serde_json::json!({ "status": "degraded", "store": why }),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        },
        Some(why) => (
            serde_json::json!({ "status": "failing", "store": why }),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    };
    if let Some(cluster) = &state.cluster {
        if let (Some(fields), serde_json::Value::Object(health)) =
            (answer.as_object_mut(), cluster.health())
        {
            fields.extend(health);
        }
        if cluster.unavailable().is_some() && status == StatusCode::OK {
            status = StatusCode::SERVICE_UNAVAILABLE;
            answer["status"] = "degraded".into();
        }
    }
    HttpResponse::build(status).json(answer)
}

async fn prometheus() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics().render())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// `GET /ws/{room}`: upgrade to a y-websocket session. Everything is checked here, as
/// for any request (CORS, origin, token, admission, the room loads). On collabd's own
/// listener the answer is the 101 carrying a [`Handoff`], which [`upgrade`] turns into a
/// session on the socket. Mounted in a host's app (another server owns the connection),
/// the session reads the request body and writes the 101's streaming body instead.
async fn websocket(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = room_name(raw_tail(&req, &state, "/ws/"))?;
    let (grant, permit) = access::admit_connection(&req, &state, &name).await?;
    actix_http::ws::verify_handshake(req.head()).map_err(|e| {
        ApiError::bad_request("bad_handshake", format!("not a WebSocket handshake: {e}"))
    })?;
    // Loaded before the upgrade, so that `max_rooms` is an HTTP answer (503 with
    // Retry-After) rather than a session closed as soon as it opens.
    crate::room::ready(&state.registry, &name).await?;
    let handoff = Handoff {
        room: name,
        registry: state.registry.clone(),
        settings: state.settings.clone(),
        grant,
        permit,
        hooks: state.hooks.clone(),
        auth: state.auth.clone(),
    };
    let mut handshake = actix_http::ws::handshake_response(req.head());
    if upgrade::owns_socket(&req) {
        let mut response = HttpResponse::from(handshake.finish()).map_into_boxed_body();
        response.extensions_mut().insert(handoff);
        return Ok(response);
    }
    use futures_util::TryStreamExt;
    let (pipe, body) = crate::session::Pipe::new();
    let frames = payload.into_inner().map_err(std::io::Error::other);
    crate::session::WsSession::start_piped(pipe, Box::pin(frames), handoff);
    let response = handshake.body(actix_web::body::BodyStream::new(body));
    Ok(HttpResponse::from(response.map_into_boxed_body()))
}

/// `GET /rooms/{room}[/state|/json|/events|/updates|/awareness]`. Suffixes are matched on the raw
/// path, so a room whose name ends in one of them is written with `%2F` (`a%2Fstate`).
/// Reads of a room that does not exist answer for an empty room and create nothing.
async fn get_room(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tail = raw_tail(&req, &state, "/rooms/");
    // An SSE stream is a connection, admitted in `sse::events`; the rest are requests.
    if let Some(raw) = tail.strip_suffix("/events") {
        // Origin, token and admission are checked together in `sse::events`.
        return sse::events(req.clone(), state.clone(), room_name(raw)?).await;
    }
    access::limit_request(&req, &state)?;
    let (raw, what) = [
        "/state",
        "/json",
        "/updates",
        "/awareness",
        "/history",
        "/versions",
    ]
    .into_iter()
    .find_map(|suffix| tail.strip_suffix(suffix).map(|raw| (raw, suffix)))
    .unwrap_or((tail, ""));
    let name = room_name(raw)?;
    access::authorize(&req, &state, &name, Access::Read).await?;
    match what {
        "/state" => rooms::doc_state(req.clone(), state.clone(), name).await,
        "/json" => match rooms::query_param(&req, "at")? {
            Some(at) => history::state_at(state.clone(), name, &at, true).await,
            None => rooms::doc_json(state.clone(), name).await,
        },
        "/history" => history::history(req.clone(), state.clone(), name).await,
        "/versions" => history::list_versions(state.clone(), name).await,
        "/updates" => poll::poll(req.clone(), state.clone(), name).await,
        "/awareness" => presence::get(state.clone(), name).await,
        _ => rooms::info(state.clone(), name).await,
    }
}

/// `POST /rooms/{room}/updates` and `POST /rooms/{room}/awareness`.
async fn post_room(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    access::limit_request(&req, &state)?;
    let tail = raw_tail(&req, &state, "/rooms/");
    if let Some(raw) = tail.strip_suffix("/updates") {
        let name = room_name(raw)?;
        let grant = access::authorize(&req, &state, &name, Access::Write).await?;
        let author = grant.subject.as_deref().map(Arc::from);
        return rooms::post_update(req.clone(), payload, state, name, author).await;
    }
    if let Some(raw) = tail.strip_suffix("/versions") {
        let name = room_name(raw)?;
        access::authorize(&req, &state, &name, Access::Write).await?;
        return history::pin_version(req.clone(), payload, state, name).await;
    }
    if let Some(raw) = tail.strip_suffix("/restore") {
        let name = room_name(raw)?;
        let grant = access::authorize(&req, &state, &name, Access::Write).await?;
        let author = grant.subject.as_deref().map(Arc::from);
        return patch::restore(req.clone(), payload, state, name, author).await;
    }
    if let Some(raw) = tail.strip_suffix("/awareness") {
        // Presence needs read access only, as over WebSocket.
        let name = room_name(raw)?;
        access::authorize(&req, &state, &name, Access::Read).await?;
        return presence::post(req.clone(), payload, state, name).await;
    }
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "POST goes to /rooms/{room}/updates, /awareness, /versions or /restore",
    ))
}

/// `GET /rooms?prefix=&after=&limit=`: the stored rooms. Needs admin access to every room
/// the prefix covers (a token for `PREFIX*`, or `*`); the authenticate hook is asked for
/// the room `PREFIX*`.
async fn list_rooms(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    access::limit_request(&req, &state)?;
    let prefix = rooms::query_param(&req, "prefix")?.unwrap_or_default();
    if prefix.chars().any(char::is_control) || prefix.len() > MAX_ROOM_NAME_BYTES {
        return Err(ApiError::bad_request(
            "bad_prefix",
            "prefix holds a control character or is too long",
        ));
    }
    access::authorize(&req, &state, &format!("{prefix}*"), Access::Admin).await?;
    admin::list(req, state).await
}

/// `DELETE /rooms/{room}` (admin).
async fn delete_room(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    access::limit_request(&req, &state)?;
    let tail = raw_tail(&req, &state, "/rooms/");
    let name = room_name(tail)?;
    access::authorize(&req, &state, &name, Access::Admin).await?;
    admin::delete(state, name).await
}

/// `PATCH /rooms/{room}/json`: JSON operations, for clients that do not speak Yjs.
async fn patch_room(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    access::limit_request(&req, &state)?;
    let tail = raw_tail(&req, &state, "/rooms/");
    let Some(raw) = tail.strip_suffix("/json") else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "PATCH goes to /rooms/{room}/json",
        ));
    };
    let name = room_name(raw)?;
    let grant = access::authorize(&req, &state, &name, Access::Write).await?;
    let author = grant.subject.as_deref().map(Arc::from);
    patch::patch_json(req.clone(), payload, state, name, author).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_decoded_and_checked() {
        assert_eq!(&*room_name("docs/a%20b").unwrap(), "docs/a b");
        assert_eq!(&*room_name("a%2Fstate").unwrap(), "a/state");
        assert!(room_name("").is_err());
        assert!(room_name("%00x").is_err());
        assert!(room_name("%ff").is_err());
        assert!(room_name(&"x".repeat(257)).is_err());
        assert!(room_name(&"x".repeat(256)).is_ok());
    }
}
