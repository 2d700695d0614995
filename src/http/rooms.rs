//! `/rooms/{room}…`: metadata, state (binary or JSON) and HTTP writes (polling is
//! `poll.rs`, listing and deletion `admin.rs`), and what they share. Every
//! handler is stateless: the cursor is the client's, so any node could answer. Reads
//! never create a room: one that is neither loaded nor stored answers as an empty room
//! (seq 0) from [`crate::room::absent`]; only writes, joins and held long polls load one.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::metrics::metrics;
use crate::room::actor::Refused;
use crate::room::cursor::{self, CatchUp};
use crate::room::messages::{ApplyUpdate, DocState, GetInfo, GetJson, GetState, SyncWithLog};
use crate::room::{absent, ask, ask_existing};
use crate::store::StoreError;

/// A query parameter, or a 400 if the query string does not parse.
pub fn query_param(req: &HttpRequest, key: &str) -> Result<Option<String>, ApiError> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
    Ok(query.get(key).cloned())
}

/// `?format=json` (true) or `binary`/absent (false) on a stream or poll; 400 otherwise.
pub fn json_format(req: &HttpRequest) -> Result<bool, ApiError> {
    match query_param(req, "format")?.as_deref() {
        None | Some("binary") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "bad_format",
            format!("format must be json or binary, got {other:?}"),
        )),
    }
}

/// A seq given by a client (cursor).
pub fn parse_seq(what: &str, value: &str) -> Result<u64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "bad_cursor",
            format!("{what} must be a sequence number, got {value:?}"),
        )
    })
}

/// [`cursor::catch_up`] off the HTTP worker thread (it reads the store).
pub async fn catch_up(
    state: &AppState,
    room: &Arc<str>,
    since: Option<u64>,
    durable: u64,
    limit: usize,
) -> Result<CatchUp, ApiError> {
    let store = state.store.clone();
    let room = room.clone();
    web::block(move || cursor::catch_up(&*store, &room, since, durable, limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| match e {
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
            .retry_after(1),
            e => ApiError::internal(e.to_string()),
        })
}

/// The room's full state, once the seq it carries is durable; an empty one at seq 0 if
/// the room does not exist.
pub async fn full_state(state: &AppState, room: &Arc<str>) -> Result<DocState, ApiError> {
    let found = ask_existing(&state.registry, &state.store, room, GetState).await?;
    let Some((_, durable)) = found else {
        return Ok(absent::state());
    };
    durable.await.map_err(|_| not_stored())
}

/// The room stopped (its store failed, or it shut down) before what was asked was durable.
fn not_stored() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_stored",
        "the room stopped before the update was durable; retry",
    )
}

/// `GET /rooms/{room}`.
pub async fn info(state: web::Data<AppState>, room: Arc<str>) -> Result<HttpResponse, ApiError> {
    let found = ask_existing(&state.registry, &state.store, &room, GetInfo).await?;
    Ok(HttpResponse::Ok().json(found.map_or_else(|| absent::info(&room), |(_, info)| info)))
}

/// `GET /rooms/{room}/state`: the full state as a Yjs update v1 (or, with
/// `?format=json`, the root types as JSON).
pub async fn doc_state(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let at = query_param(&req, "at")?;
    match query_param(&req, "format")?.as_deref() {
        None | Some("binary") => {}
        Some("json") => {
            return match at {
                Some(at) => super::history::state_at(state, room, &at, true).await,
                None => doc_json(state, room).await,
            };
        }
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_format",
                format!("format must be json or binary, got {other:?}"),
            ));
        }
    }
    if let Some(at) = at {
        return super::history::state_at(state, room, &at, false).await;
    }
    let doc = full_state(&state, &room).await?;
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/octet-stream"))
        .insert_header(("X-Seq", doc.seq.to_string()))
        .insert_header((CACHE_CONTROL, "no-store"))
        .body(doc.state))
}

/// `GET /rooms/{room}/json`.
pub async fn doc_json(
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let found = ask_existing(&state.registry, &state.store, &room, GetJson).await?;
    let value = found.map_or_else(absent::json, |(_, value)| value);
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(value))
}

/// `POST /rooms/{room}/updates`: body is one Yjs update v1; answers `{"seq": n}` once
/// the update is durable.
pub async fn post_update(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    room: Arc<str>,
    author: Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.settings.max_frame_bytes).await?;
    metrics()
        .bytes_in
        .with_label_values(&["http"])
        .inc_by(body.len() as u64);
    if body.is_empty() {
        return Err(ApiError::bad_request("bad_update", "empty body"));
    }
    let seq = apply(&state, &room, body, author).await?;
    Ok(HttpResponse::Ok().json(json!({ "seq": seq })))
}

/// Applies one update as the room's own writer (POST, and server code through a room
/// handle): its seq, once durable.
pub async fn apply(
    state: &AppState,
    room: &Arc<str>,
    update: Bytes,
    author: Option<Arc<str>>,
) -> Result<u64, ApiError> {
    let (room_addr, mut applied) = ask(
        &state.registry,
        room,
        ApplyUpdate {
            update: update.clone(),
            author: author.clone(),
        },
    )
    .await?;
    if matches!(applied, Err(Refused::MissingDependencies)) && state.cluster.is_some() {
        // It may build on a write another node acknowledged that this node has not
        // received yet: read the log, then try once more.
        if let Ok(caught_up) = room_addr.send(SyncWithLog).await
            && caught_up.await.is_ok()
            && let Ok(again) = room_addr.send(ApplyUpdate { update, author }).await
        {
            applied = again;
        }
    }
    let durable = applied.map_err(|refused| match refused {
        Refused::Invalid(_) => ApiError::bad_request("bad_update", refused.to_string()),
        Refused::TooLarge(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
            refused.to_string(),
        ),
        Refused::StoreUnavailable => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            refused.to_string(),
        )
        .retry_after(1),
        Refused::Deleted => ApiError::new(StatusCode::GONE, "room_deleted", refused.to_string()),
        Refused::MissingDependencies => ApiError::new(
            StatusCode::CONFLICT,
            "missing_dependencies",
            format!(
                "{refused}; send your full state, or your diff against the state vector of \
                 GET /rooms/{{room}}/state"
            ),
        ),
    })?;
    durable.await.map_err(|_| match state.store.unavailable() {
        Some(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", why).retry_after(1)
        }
        None => not_stored(),
    })
}

/// Reads a request body of at most `limit` bytes; larger ones get a JSON 413. The buffer
/// grows with what arrives, never with what `Content-Length` promises: a client that
/// declares 16 MiB and sends 10 bytes costs 10 bytes, however long it holds on.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("bad_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
