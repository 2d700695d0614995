//! `GET /rooms/{room}/updates`: polling and long polling, from the client's cursor (the
//! server keeps no per-client state).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use log::debug;
use serde_json::json;

use super::error::ApiError;
use super::rooms::{catch_up, full_state, json_format, parse_seq, query_param};
use super::{AppState, access};
use crate::metrics::ConnectionGauge;
use crate::room::cursor::CatchUp;
use crate::room::doc_json::JsonView;
use crate::room::history::{self, At};
use crate::room::messages::{Durable, GetDurableSeq, WaitDurable};
use crate::room::{ask, ask_existing};

/// `GET /rooms/{room}/updates?since=SEQ&wait=SECS`: polling (`wait=0`, the default) and
/// long polling (`wait` > 0: held until an update is durable or `wait` passes). A held
/// poll counts as a connection and needs the room loaded, so that it hears of the next
/// write; a poll answered at once loads nothing.
pub async fn poll(
    req: HttpRequest,
    state: web::Data<AppState>,
    room: Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let since = query_param(&req, "since")?
        .map(|v| parse_seq("since", &v))
        .transpose()?;
    let json_form = json_format(&req)?;
    let wait = match query_param(&req, "wait")? {
        None => Duration::ZERO,
        Some(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
            .ok_or_else(|| {
                ApiError::bad_request("bad_wait", format!("wait must be seconds >= 0, got {v:?}"))
            })?,
    }
    .min(state.settings.poll_max_wait());

    let found = ask_existing(&state.registry, &state.store, &room, GetDurableSeq).await?;
    let Durable {
        seq: mut durable,
        epoch,
    } = found.map_or_else(Durable::default, |(_, durable)| durable);
    // A cursor from a deleted epoch: the answer says so and carries the new state.
    let reset = epoch.is_stale(since);
    let since = if reset { None } else { since };
    let stamp = |mut answer: serde_json::Value| {
        if reset {
            answer["reset"] = true.into();
            answer["epoch"] = epoch.number.into();
        }
        HttpResponse::Ok().json(answer)
    };
    if let Some(since) = since
        && since == durable
        && !wait.is_zero()
    {
        let _permit = access::hold_long_poll(&req, &state, &room)?;
        debug!("room {room:?}: long poll held at seq {since} for up to {wait:?}");
        let _held = ConnectionGauge::open("longpoll");
        let (_, woken) = ask(&state.registry, &room, WaitDurable { seq: since + 1 }).await?;
        if let Ok(Ok(seq)) = actix_rt::time::timeout(wait, woken).await {
            durable = seq;
        }
    }

    let limit = state.settings.poll_batch_limit;
    let mut caught_up = catch_up(&state, &room, since, durable, limit).await?;
    if json_form {
        // The changes of the first update need the document before it.
        let mut view = None;
        if let CatchUp::Updates(_) = &caught_up {
            let (store, name, base) = (state.store.clone(), room.clone(), since.unwrap_or(0));
            if let Ok(Ok(At::State(doc))) =
                web::block(move || history::state_at(&*store, &name, base)).await
            {
                view = Some(JsonView::of(doc));
            } else {
                caught_up = CatchUp::Snapshot;
            }
        }
        return match (caught_up, view) {
            (CatchUp::Updates(updates), Some(mut view)) => {
                let updates: Vec<_> = updates
                    .iter()
                    .map(|u| json!({ "seq": u.seq, "changes": view.apply(&u.update) }))
                    .collect();
                Ok(stamp(json!({ "seq": durable, "updates": updates })))
            }
            _ => {
                let doc = full_state(&state, &room).await?;
                let mut view = JsonView::of(yrs::Doc::new());
                let json = view.reset(&doc.state).clone();
                Ok(stamp(json!({ "seq": doc.seq, "state": json })))
            }
        };
    }
    match caught_up {
        CatchUp::Updates(updates) => {
            let updates: Vec<_> = updates
                .iter()
                .map(|u| json!({ "seq": u.seq, "update": BASE64.encode(&u.update) }))
                .collect();
            Ok(stamp(json!({ "seq": durable, "updates": updates })))
        }
        CatchUp::Snapshot => {
            let doc = full_state(&state, &room).await?;
            Ok(stamp(
                json!({ "seq": doc.seq, "snapshot": BASE64.encode(&doc.state) }),
            ))
        }
    }
}
