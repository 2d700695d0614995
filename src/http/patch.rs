//! `PATCH /rooms/{room}/json`: JSON operations (see [`crate::room::json_patch`]) applied
//! as one Yjs update, answered with its seq once durable; and `POST
//! /rooms/{room}/restore`, which brings a document back to an earlier seq the same way.
//!
//! The operations run in one transaction on a copy of the room's state, as a peer of
//! their own (a fresh Yjs client id per request, so that two requests at once never
//! collide); what they did goes to the room like a POSTed update. The first operation
//! that fails answers 400 `bad_operation` with its index (`"op"`), and nothing is
//! applied.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use log::warn;
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use super::AppState;
use super::error::ApiError;
use super::rooms::{self, read_body};
use crate::room::doc_json;
use crate::room::history::{self, At};
use crate::room::json_patch::{self, Op};
use crate::room::messages::DocState;

/// The body: a list of operations, or `{"ops": [...]}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Body {
    List(Vec<Op>),
    Wrapped { ops: Vec<Op> },
}

pub async fn patch_json(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    room: Arc<str>,
    author: Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.settings.max_frame_bytes).await?;
    let ops = match serde_json::from_slice::<Body>(&body) {
        Ok(Body::List(ops) | Body::Wrapped { ops }) => ops,
        Err(e) => {
            return Err(ApiError::bad_request(
                "bad_patch",
                format!("a JSON list of operations ({e})"),
            ));
        }
    };
    let current = rooms::full_state(&state, &room).await?;
    let doc = copy_of(&current)?;
    let diff = {
        let mut txn = doc.transact_mut();
        if let Err(failed) = json_patch::apply(&mut txn, &ops) {
            warn!(
                "HTTP 400: bad_operation: room {room:?}: operation {}: {}",
                failed.op, failed.reason
            );
            return Ok(HttpResponse::BadRequest().json(json!({
                "error": "bad_operation",
                "message": format!("operation {}: {}", failed.op, failed.reason),
                "op": failed.op,
            })));
        }
        txn.encode_update_v1()
    };
    if Update::decode_v1(&diff).is_ok_and(|u| u.is_empty()) {
        return Ok(HttpResponse::Ok().json(json!({ "seq": current.seq })));
    }
    let seq = rooms::apply(&state, &room, diff.into(), author).await?;
    Ok(HttpResponse::Ok().json(json!({ "seq": seq })))
}

/// A copy of the room's document, for a change made as a Yjs client of its own (a fresh
/// client id: two requests at once never collide).
fn copy_of(current: &DocState) -> Result<Doc, ApiError> {
    let doc = Doc::new();
    let base = Update::decode_v1(&current.state).map_err(|e| ApiError::internal(e.to_string()))?;
    doc.transact_mut()
        .apply_update(base)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(doc)
}

/// `POST /rooms/{room}/restore` with `{"seq": N}`: appends one update that makes the
/// document equal (as JSON) to its state right after seq N; everything before stays in
/// the history. `{"seq": S, "restored": N}` once durable; 410 `history_compacted` when N
/// is no longer reachable, 400 `bad_seq` beyond the room's seq.
pub async fn restore(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    room: Arc<str>,
    author: Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    #[derive(serde::Deserialize)]
    struct Restore {
        seq: Option<u64>,
        version: Option<String>,
    }
    let body = read_body(&req, payload, 4096).await?;
    let asked: Restore = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_restore",
            format!("{{\"seq\": N}} or {{\"version\": NAME}} ({e})"),
        )
    })?;
    let current = rooms::full_state(&state, &room).await?;
    if let Some(version) = asked.version {
        let (store, name, v) = (state.store.clone(), room.clone(), version.clone());
        let kept = super::history::blocking(move || store.version(&name, &v))
            .await?
            .ok_or_else(|| {
                ApiError::not_found(format!("room {room:?} has no version {version:?}"))
            })?;
        let old = {
            let doc = copy_of(&DocState {
                state: kept.state.into(),
                seq: kept.seq,
            })?;
            doc_json::to_json(&doc)
        };
        return restore_to(&state, &room, &current, &old, kept.seq, author).await;
    }
    let Some(at) = asked.seq else {
        return Err(ApiError::bad_request(
            "bad_restore",
            "{\"seq\": N} or {\"version\": NAME}",
        ));
    };
    if at > current.seq {
        return Err(ApiError::bad_request(
            "bad_seq",
            format!("seq {at} is beyond the room's seq {}", current.seq),
        ));
    }
    let (store, name) = (state.store.clone(), room.clone());
    let old = web::block(move || history::state_at(&*store, &name, at))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let old = match old {
        At::State(doc) => doc_json::to_json(&doc),
        At::Compacted { nearest } => return Ok(super::history::compacted(at, nearest)),
    };
    restore_to(&state, &room, &current, &old, at, author).await
}

/// Appends the update that makes `current` equal, as JSON, to `old` (the state at seq
/// `at`); `{"seq", "restored": at}` once durable.
async fn restore_to(
    state: &AppState,
    room: &Arc<str>,
    current: &DocState,
    old: &serde_json::Value,
    at: u64,
    author: Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let doc = copy_of(current)?;
    let diff = {
        let mut txn = doc.transact_mut();
        json_patch::restore(&mut txn, old).map_err(ApiError::internal)?;
        txn.encode_update_v1()
    };
    if Update::decode_v1(&diff).is_ok_and(|u| u.is_empty()) {
        return Ok(HttpResponse::Ok().json(json!({ "seq": current.seq, "restored": at })));
    }
    let seq = rooms::apply(state, room, diff.into(), author).await?;
    Ok(HttpResponse::Ok().json(json!({ "seq": seq, "restored": at })))
}
