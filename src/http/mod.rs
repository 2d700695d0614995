//! The HTTP surface: routes, room-name parsing, and the handlers for health, metadata,
//! state and the WebSocket upgrade. Handlers are thin: they find the room and ask it.

pub mod error;

use std::sync::Arc;

use actix::Addr;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use percent_encoding::percent_decode_str;

use crate::config::Settings;
use crate::room::messages::{GetInfo, GetState};
use crate::room::{Registry, ask};
use crate::session::WsSession;
use error::ApiError;

/// Longest room name, in bytes of UTF-8 after percent-decoding.
pub const MAX_ROOM_NAME_BYTES: usize = 256;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub registry: Addr<Registry>,
    pub settings: Arc<Settings>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/healthz", web::get().to(healthz))
        .route("/ws/{room:.*}", web::get().to(websocket))
        .route("/rooms/{rest:.*}", web::get().to(get_room))
        .default_service(web::to(not_found));
}

/// Decodes and checks a room name taken from a (still percent-encoded) path.
pub fn room_name(raw: &str) -> Result<Arc<str>, ApiError> {
    let bad = |why: &str| ApiError::bad_request("bad_room_name", format!("room name {why}"));
    let name = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad("is not UTF-8"))?;
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

/// The path after `prefix`, still percent-encoded, so that `%2F` stays part of a name.
fn raw_tail<'a>(req: &'a HttpRequest, prefix: &str) -> &'a str {
    req.uri().path().strip_prefix(prefix).unwrap_or("")
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../../static/index.html"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    )))
}

/// `GET /ws/{room}`: upgrade to a y-websocket session.
async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let name = room_name(raw_tail(&req, "/ws/"))?;
    let max = state.settings.max_frame_bytes;
    let (response, socket, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    WsSession::start(
        name,
        state.registry.clone(),
        socket,
        stream,
        state.settings.clone(),
    );
    Ok(response)
}

/// `GET /rooms/{room}` and `GET /rooms/{room}/state`. The suffix is matched on the raw
/// path, so a room whose name ends in `/state` is reached as `…%2Fstate`.
async fn get_room(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let tail = raw_tail(&req, "/rooms/");
    if let Some(raw) = tail.strip_suffix("/state") {
        let name = room_name(raw)?;
        let (_, doc) = ask(&state.registry, &name, GetState).await?;
        return Ok(HttpResponse::Ok()
            .insert_header((CONTENT_TYPE, "application/octet-stream"))
            .insert_header(("X-Seq", doc.seq.to_string()))
            .insert_header((CACHE_CONTROL, "no-store"))
            .body(doc.state));
    }
    let name = room_name(tail)?;
    let (_, info) = ask(&state.registry, &name, GetInfo).await?;
    Ok(HttpResponse::Ok().json(info))
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
