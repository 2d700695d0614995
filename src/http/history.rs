//! History over HTTP: `GET /rooms/{room}/state?at=SEQ` and `/json?at=SEQ` (the document
//! right after seq SEQ), and `GET /rooms/{room}/history?before=&limit=` (seq, time and
//! size of each update, newest first). See [`crate::room::history`] for what stays
//! reachable after compaction.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use yrs::{ReadTxn, StateVector, Transact};

use super::AppState;
use super::error::ApiError;
use super::rooms::{parse_seq, query_param};
use crate::room::history::{self, At};
use crate::room::messages::GetDurableSeq;
use crate::room::{ask_existing, doc_json};
use crate::store::StoreError;

/// Most updates one `/history` page lists.
const MAX_LIMIT: usize = 1_000;

/// The room's durable seq (0 for a room that does not exist; nothing is loaded then).
async fn durable_seq(state: &AppState, room: &Arc<str>) -> Result<u64, ApiError> {
    let found = ask_existing(&state.registry, &state.store, room, GetDurableSeq).await?;
    Ok(found.map_or(0, |(_, durable)| durable.seq))
}

/// Runs a history read on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    actix_rt::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

/// 410 `history_compacted`: seq `at` is no longer reachable, `nearest` is the oldest
/// that is.
pub(super) fn compacted(at: u64, nearest: u64) -> HttpResponse {
    HttpResponse::Gone().json(json!({
        "error": "history_compacted",
        "message": format!("seq {at} is no longer reachable; the oldest reachable seq is {nearest}"),
        "nearest": nearest,
    }))
}

/// The document right after seq `at`, as a Yjs update v1 (`json`: its root types as
/// JSON). 400 `bad_seq` beyond the room's durable seq; 410 `history_compacted`, with the
/// oldest reachable seq, before what the log still holds.
pub async fn state_at(
    state: web::Data<AppState>,
    room: Arc<str>,
    at: &str,
    json: bool,
) -> Result<HttpResponse, ApiError> {
    let at = parse_seq("at", at)?;
    let durable = durable_seq(&state, &room).await?;
    if at > durable {
        return Err(ApiError::bad_request(
            "bad_seq",
            format!("at={at} is beyond the room's seq {durable}"),
        ));
    }
    let (store, name) = (state.store.clone(), room.clone());
    let found = blocking(move || history::state_at(&*store, &name, at)).await?;
    let doc = match found {
        At::State(doc) => doc,
        At::Compacted { nearest } => {
            // A named version kept that seq whatever compaction did.
            let (store, name) = (state.store.clone(), room.clone());
            let kept = blocking(move || {
                let versions = store.versions(&name).unwrap_or_default();
                match versions.into_iter().find(|(_, seq, _)| *seq == at) {
                    Some((version, _, _)) => store.version(&name, &version),
                    None => Ok(None),
                }
            })
            .await?;
            let Some(kept) = kept else {
                return Ok(compacted(at, nearest));
            };
            let doc = yrs::Doc::new();
            {
                use yrs::updates::decoder::Decode;
                let update = yrs::Update::decode_v1(&kept.state)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                doc.transact_mut()
                    .apply_update(update)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
            doc
        }
    };
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header(("X-Seq", at.to_string()))
        .insert_header((CACHE_CONTROL, "no-store"));
    if json {
        return Ok(answer.json(doc_json::to_json(&doc)));
    }
    let bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    Ok(answer
        .insert_header((CONTENT_TYPE, "application/octet-stream"))
        .body(bytes))
}

/// `GET /rooms/{room}/history?before=SEQ&limit=N`: `{"room", "seq", "first_seq",
/// "updates": [{"seq", "at_ms", "size", "author"}]}`, newest first, only durable seqs;
/// `author` is the writer's token `sub` (null without one, or on a store that keeps
/// none).
pub async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let durable = durable_seq(&state, &room).await?;
    let before = match query_param(&req, "before")? {
        Some(v) => parse_seq("before", &v)?.min(durable + 1),
        None => durable + 1,
    };
    let limit = match query_param(&req, "limit")? {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("bad_limit", format!("limit is 1 to {MAX_LIMIT}"))
            })?,
        None => 100,
    };
    let (store, name) = (state.store.clone(), room.clone());
    let (updates, first, authors) = blocking(move || {
        let updates = history::before(&*store, &name, before, limit)?;
        let authors = match (updates.last(), updates.first()) {
            (Some(oldest), Some(newest)) => store.authors(&name, oldest.seq, newest.seq)?,
            _ => Default::default(),
        };
        Ok((updates, store.first_seq(&name)?, authors))
    })
    .await?;
    let updates: Vec<_> = updates
        .iter()
        .map(|u| {
            json!({
                "seq": u.seq,
                "at_ms": u.at_ms,
                "size": u.update.len(),
                "author": authors.get(&u.seq),
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({
            "room": &*room,
            "seq": durable,
            "first_seq": first,
            "updates": updates,
        })))
}

/// `POST /rooms/{room}/versions` with `{"name": NAME}` (write access): keeps the room's
/// current state as a named version, whatever compaction does later; `{"name", "seq"}`
/// once durable. 409 `version_exists` for a name already taken.
pub async fn pin_version(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    #[derive(serde::Deserialize)]
    struct Pin {
        name: String,
    }
    let body = super::rooms::read_body(&req, payload, 4096).await?;
    let Pin { name } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_version", format!("{{\"name\": NAME}} ({e})")))?;
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_version",
            "a version name is 1 to 128 characters, none of them control characters",
        ));
    }
    let current = super::rooms::full_state(&state, &room).await?;
    let (store, r, n) = (state.store.clone(), room.clone(), name.clone());
    let pinned = blocking(move || {
        if store.version(&r, &n)?.is_some() {
            return Ok(false);
        }
        let snapshot = crate::store::Snapshot {
            seq: current.seq,
            state: current.state.to_vec(),
        };
        store.put_version(&r, &n, &snapshot)?;
        store.flush()?;
        Ok(true)
    })
    .await?;
    if !pinned {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "version_exists",
            format!("room {room:?} has a version named {name:?} already"),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({ "name": name, "seq": current.seq })))
}

/// `GET /rooms/{room}/versions`: `{"versions": [{"name", "seq", "at_ms"}]}`, by seq.
pub async fn list_versions(
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let (store, name) = (state.store.clone(), room.clone());
    let mut versions = blocking(move || store.versions(&name)).await?;
    versions.sort_by_key(|(name, seq, _)| (*seq, name.clone()));
    let versions: Vec<_> = versions
        .into_iter()
        .map(|(name, seq, at_ms)| json!({ "name": name, "seq": seq, "at_ms": at_ms }))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((CACHE_CONTROL, "no-store"))
        .json(json!({ "versions": versions })))
}
