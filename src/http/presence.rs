//! Presence over HTTP, for clients without a WebSocket (the SSE and polling transports):
//! `POST /rooms/{room}/awareness` announces states, `GET /rooms/{room}/awareness` reads
//! every present state. Posted states follow the rules of WebSocket presence
//! (`room::presence`): JSON and bounded, a client id belongs to whoever announced it
//! first, `awareness_max_clients` per owner, the room's byte budget; they reach WebSocket
//! sessions and SSE streams like any presence, and expire after `awareness_timeout_ms`
//! unless posted again (there is no connection whose end would remove them: post a `null`
//! state to leave).
//!
//! The owner of posted states is a *presence session*: a random token of the client's
//! choosing (16–128 characters), sent as `X-Presence-Session` or `?session=`, the same on
//! every post of one tab. It is never shown to anyone; a client that does not know
//! another's token cannot touch its states.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::rooms::{query_param, read_body};
use crate::metrics::metrics;
use crate::protocol;
use crate::room::ask;
use crate::room::messages::{FindRoom, GetAwareness, PostAwareness, SessionId};

/// The header naming the presence session.
pub const SESSION_HEADER: &str = "x-presence-session";

/// The owner id of a presence session: its token hashed into the upper half of the id
/// space, which WebSocket sessions (numbered from 1) never reach.
pub fn presence_owner(req: &HttpRequest) -> Result<SessionId, ApiError> {
    let token = match req.headers().get(SESSION_HEADER) {
        Some(v) => Some(v.to_str().unwrap_or_default().to_string()),
        None => query_param(req, "session")?,
    };
    let token = token.ok_or_else(|| {
        ApiError::bad_request(
            "presence_session_required",
            "name the presence session: X-Presence-Session or ?session= (16-128 characters)",
        )
    })?;
    if !(16..=128).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "bad_presence_session",
            "a presence session is 16-128 printable ASCII characters",
        ));
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    Ok((1 << 63) | (hasher.finish() >> 1))
}

/// `POST /rooms/{room}/awareness`: the body is a y-protocols awareness update (as
/// `encodeAwarenessUpdate` makes it). 200 `{"refused": [{"client", "reason"}]}`: what
/// applied is announced, what was refused is listed (never an error for the rest).
pub async fn post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let owner = presence_owner(&req)?;
    let s = &state.settings;
    let limit = s.awareness_max_entries * (s.awareness_max_state_bytes + 32);
    let body = read_body(&req, payload, limit.min(s.max_frame_bytes)).await?;
    metrics()
        .bytes_in
        .with_label_values(&["http"])
        .inc_by(body.len() as u64);
    let update = protocol::decode_awareness(&body)
        .map_err(|e| ApiError::bad_request("bad_awareness", e.to_string()))?;
    let (_, refused) = ask(&state.registry, &room, PostAwareness { owner, update }).await?;
    let refused: Vec<_> = refused
        .into_iter()
        .map(|(client, why)| json!({ "client": client, "reason": why.label() }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "refused": refused })))
}

/// `GET /rooms/{room}/awareness`: every present state as one y-protocols awareness
/// update (`applyAwarenessUpdate` takes it; no entries when nobody is present). A room
/// that is not loaded has nobody present, and is not loaded for this.
pub async fn get(state: web::Data<AppState>, room: Arc<str>) -> Result<HttpResponse, ApiError> {
    let running = state
        .registry
        .send(FindRoom { name: room.clone() })
        .await
        .ok()
        .flatten();
    let states = match running {
        Some(addr) => addr.send(GetAwareness).await.ok().flatten(),
        None => None,
    };
    // An update with no entries: varuint 0.
    let body = states.unwrap_or_else(|| bytes::Bytes::from_static(&[0]));
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/octet-stream"))
        .body(body))
}
