//! What administrators do: list rooms (`GET /rooms`), delete one (`DELETE
//! /rooms/{room}`; admin for the rooms concerned) and revoke access (`POST
//! /admin/revoke`, revoking a subject's tokens or one token, see [`crate::revocation`];
//! admin for every room, `room: "*"`).

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::CACHE_CONTROL;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::rooms::query_param;
use super::{AppState, access};
use crate::auth::{Access, Sub, now_secs};
use crate::revocation::{Revocation, token_hash};
use crate::room::messages::DeleteRoom;

/// What may be revoked: exactly one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    /// Every token of this subject issued until now.
    sub: Option<String>,
    /// This token, until it expires.
    token: Option<String>,
}

/// How long a revoked token without a readable `exp` stays on the list.
const WITHOUT_EXP_SECS: u64 = 365 * 24 * 3600;

/// `POST /admin/revoke` with `{"sub": "alice"}` or `{"token": "…"}`: stored (durable
/// before the answer), applied on this node at once and, in cluster mode, on every node
/// through Redis. Live WebSocket sessions it covers close with 4403, SSE streams get
/// `event: revoked` and end, and the covered tokens are refused from now on (401
/// `token_revoked`).
pub async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    access::limit_request(&req, &state)?;
    let admin = access::authorize(&req, &state, "*", Access::Admin).await?;
    if !state.auth.enabled() && state.hooks.authenticate.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "auth_disabled",
            "no auth_secret is set: there are no tokens to revoke",
        ));
    }
    let body = super::rooms::read_body(&req, payload, 64 * 1024).await?;
    let asked: Revoke = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_revocation", e.to_string()))?;
    let now = now_secs();
    let (revocation, answer) = match asked {
        Revoke {
            sub: Some(sub),
            token: None,
        } if !sub.is_empty() && sub.len() <= 1024 => (
            Revocation::Subject {
                sub: sub.clone(),
                at: now,
            },
            json!({ "sub": sub, "issued_before": now + 1 }),
        ),
        Revoke {
            sub: None,
            token: Some(token),
        } if !token.is_empty() && token.len() <= 16 * 1024 => {
            let token = token.trim();
            let until = expiry_of(token).unwrap_or(now + WITHOUT_EXP_SECS);
            let hash = token_hash(token);
            let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
            (
                Revocation::Token { hash, until },
                json!({ "token_sha256": hex, "until": until }),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "bad_revocation",
                "send {\"sub\": SUBJECT} or {\"token\": TOKEN}, exactly one",
            ));
        }
    };
    record(&state, revocation).await?;
    log::warn!(
        "revoked {answer}{}",
        Sub(admin.subject.as_deref())
            .to_string()
            .replace("sub", "by sub")
    );
    Ok(HttpResponse::Ok().json(json!({ "revoked": answer })))
}

/// Keeps `revocation` in the store (durable when this returns; in cluster mode, published
/// to every node) and applies it here.
pub async fn record(state: &AppState, revocation: Revocation) -> Result<(), ApiError> {
    let (key, value) = revocation.encode();
    let store = state.store.clone();
    web::block(move || {
        store.put_revocation(&key, value)?;
        store.flush()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    state.auth.revocations().apply(revocation, now_secs());
    Ok(())
}

/// The `exp` claim of a token, read without checking it (the revocation entry lasts as
/// long as the token could be used).
fn expiry_of(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("exp")?.as_u64()
}

/// `DELETE /rooms/{room}` (admin): removes everything stored of the room and starts its
/// next epoch. Its sessions are closed with 4410 and its SSE streams reset; a client
/// holding a cursor from before gets a reset and the new (empty) state.
pub async fn delete(state: web::Data<AppState>, room: Arc<str>) -> Result<HttpResponse, ApiError> {
    match delete_room(&state, &room).await? {
        Some(deleted) => Ok(HttpResponse::Ok().json(deleted)),
        None => Err(ApiError::not_found(format!(
            "room {room:?} has nothing stored"
        ))),
    }
}

/// Deletes `room` (see [`delete`]); `None` when nothing of it is stored.
pub async fn delete_room(
    state: &AppState,
    room: &Arc<str>,
) -> Result<Option<crate::protocol::json::Deleted>, ApiError> {
    let deleted = state
        .registry
        .send(DeleteRoom { name: room.clone() })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(deleted.map(|epoch| crate::protocol::json::Deleted {
        room: room.to_string(),
        epoch: epoch.number,
        seq: epoch.base,
    }))
}

/// The stored rooms whose name starts with `prefix`, after `after`, at most `limit`
/// (1 to [`crate::store::MAX_LISTING`]): durable (the store is flushed first).
pub async fn list_rooms(
    state: &AppState,
    prefix: String,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<crate::store::RoomSummary>, ApiError> {
    let store = state.store.clone();
    Ok(web::block(move || {
        // What a listing shows is durable: flush what rooms appended (free when nothing).
        store.flush()?;
        store.rooms(&prefix, after.as_deref(), limit)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??)
}

/// `GET /rooms?prefix=&after=&limit=` (admin for the prefix): rooms with anything stored,
/// by name, with seq, stored size, last change and epoch; `next` is the `after` of the
/// next page (null on the last).
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let prefix = query_param(&req, "prefix")?.unwrap_or_default();
    let after = query_param(&req, "after")?;
    let limit = match query_param(&req, "limit")? {
        None => 100,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::store::MAX_LISTING).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_limit",
                    format!(
                        "limit must be 1 to {}, got {v:?}",
                        crate::store::MAX_LISTING
                    ),
                )
            })?,
    };
    let rooms = list_rooms(&state, prefix, after, limit).await?;
    let next = (rooms.len() == limit).then(|| rooms.last().map(|r| r.room.clone()));
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({ "rooms": rooms, "next": next.flatten() })))
}
