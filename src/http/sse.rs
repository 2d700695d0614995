//! `GET /rooms/{room}/events`: Server-Sent Events with `Last-Event-ID` resume.
//!
//! Order of work, so that nothing is missed or sent twice: subscribe first (the room
//! answers with its durable seq D and from then on queues every update above D), then
//! replay from the store what the client lacks up to D — a page of `poll_batch_limit`
//! records at a time, read only when the previous page was sent — or send a snapshot,
//! then send `event: synced` (data `{"seq":D}`: the client now holds everything up to
//! D), then stream the queue, skipping any update at or below the last id already sent.
//! Live events arrive already encoded (once per room, shared by every stream); the
//! stream's queue is bounded in events (`sse_queue_events`) and bytes
//! (`outbound_queue_bytes`), and a stream that falls behind is ended: its client
//! resumes from its last id.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::rooms::{catch_up, full_state, json_format, parse_seq, query_param};
use super::{AppState, access};
use crate::limits::Permit;
use crate::metrics::{ConnectionGauge, metrics};
use crate::protocol::sse::{event, reset, synced};
use crate::room::ask;
use crate::room::cursor::CatchUp;
use crate::room::doc_json;
use crate::room::history::{self, At};
use crate::room::messages::{LiveEvent, Subscribe};
use yrs::Doc;

/// The client's resume point: `Last-Event-ID`, else `?since=`, else none.
fn resume_point(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    if let Some(id) = req.headers().get("last-event-id") {
        let id = id
            .to_str()
            .map_err(|_| ApiError::bad_request("bad_cursor", "Last-Event-ID is not ASCII"))?;
        return parse_seq("Last-Event-ID", id).map(Some);
    }
    query_param(req, "since")?
        .map(|v| parse_seq("since", &v))
        .transpose()
}

/// A comment for proxies and people, and a `ping` event for EventSource clients, which
/// never see comments: a client that hears nothing for two heartbeats knows its stream is
/// dead (collabd's JS provider reconnects then).
const HEARTBEAT: &[u8] = b": heartbeat\nevent: ping\ndata: \n\n";

/// `format=json`: the stream keeps its own copy of the document and sends each update as
/// the JSON changes it made (`room::doc_json::changes`): `event: update`, `id: SEQ`,
/// `data: {"seq", "changes": [...]}`; a snapshot as `data: {"seq", "state": {...}}`.
/// Awareness events stay as they are. It costs the document's size in memory per stream
/// and a JSON encoding of the document per update: meant for backends and dashboards.
struct JsonView(doc_json::JsonView);

impl JsonView {
    fn of(doc: Doc) -> JsonView {
        JsonView(doc_json::JsonView::of(doc))
    }

    fn update(&mut self, seq: u64, update: &[u8]) -> Bytes {
        let changes = self.0.apply(update);
        json_event(
            "update",
            seq,
            &serde_json::json!({ "seq": seq, "changes": changes }),
        )
    }

    fn snapshot(&mut self, seq: u64, state: &[u8]) -> Bytes {
        let json = self.0.reset(state);
        json_event(
            "snapshot",
            seq,
            &serde_json::json!({ "seq": seq, "state": json }),
        )
    }
}

fn json_event(kind: &str, id: u64, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {kind}\nid: {id}\ndata: {data}\n\n"))
}

/// Sent before a stream whose access was revoked ends.
const REVOKED: &[u8] = b"event: revoked\ndata: {}\n\n";

/// Far enough for "never" and still a valid timer deadline.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

struct Live {
    events: mpsc::Receiver<LiveEvent>,
    /// Bytes the room queued for us and we have not taken yet (shared with the room).
    queued: Arc<AtomicUsize>,
    /// Replay still to send: the records after the first `u64` up to the second.
    replay: Option<(u64, u64)>,
    state: web::Data<AppState>,
    room: Arc<str>,
    heartbeat: actix_rt::time::Interval,
    /// Highest update id sent; live updates at or below it were in the replay.
    last_id: u64,
    /// `format=json`: updates as JSON changes.
    json: Option<JsonView>,
    /// The room was deleted: the reset event went out, the stream ends.
    ended: bool,
    /// The stream's grant, checked again whenever the revocation list changes: a revoked
    /// one gets `event: revoked` and the stream ends.
    grant: crate::auth::Grant,
    revocations: tokio::sync::watch::Receiver<u64>,
    /// The stream ends when the client's token expires; EventSource then reconnects and
    /// must present a fresh one.
    expiry: std::pin::Pin<Box<actix_rt::time::Sleep>>,
    _permit: Permit,
    _gauge: ConnectionGauge,
    _hooked: Option<crate::hooks::Hooked>,
}

impl Live {
    async fn next(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if let Some((after, until)) = self.replay.take() {
            return self.replay_page(after, until).await;
        }
        loop {
            tokio::select! {
                live = self.events.recv() => {
                    let live = live?;
                    self.queued.fetch_sub(live.bytes().len(), Ordering::Relaxed);
                    match live {
                        LiveEvent::Update { seq, .. } if seq <= self.last_id => continue,
                        LiveEvent::Update { seq, event, update } => {
                            self.last_id = seq;
                            return Some(match &mut self.json {
                                Some(view) => view.update(seq, &update),
                                None => event,
                            });
                        }
                        LiveEvent::Awareness { event } => return Some(event),
                        LiveEvent::Reset { event } => {
                            self.ended = true;
                            return Some(event);
                        }
                    }
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT)),
                Ok(()) = self.revocations.changed() => {
                    if self.state.auth.revocations().revokes(&self.grant) {
                        log::info!(
                            "SSE stream in room {:?}: access revoked{}",
                            self.room,
                            crate::auth::Sub(self.grant.subject.as_deref())
                        );
                        self.ended = true;
                        return Some(Bytes::from_static(REVOKED));
                    }
                }
                _ = &mut self.expiry => return None,
            }
        }
    }

    /// The next page of the replay (records after `after`, up to `until`), or a snapshot
    /// if the store no longer has them (compacted meanwhile). Ends the stream on error:
    /// the client resumes from its last id.
    async fn replay_page(&mut self, after: u64, until: u64) -> Option<Bytes> {
        let page = self.state.settings.poll_batch_limit;
        match catch_up(&self.state, &self.room, Some(after), until, page).await {
            Ok(CatchUp::Updates(updates)) if !updates.is_empty() => {
                let mut out = Vec::new();
                for u in &updates {
                    out.extend_from_slice(&match &mut self.json {
                        Some(view) => view.update(u.seq, &u.update),
                        None => event("update", Some(u.seq), &u.update),
                    });
                }
                self.last_id = updates.last().map_or(after, |u| u.seq);
                if self.last_id < until {
                    self.replay = Some((self.last_id, until));
                } else {
                    out.extend_from_slice(&synced(until));
                }
                Some(Bytes::from(out))
            }
            Ok(_) => {
                let doc = full_state(&self.state, &self.room).await.ok()?;
                self.last_id = doc.seq;
                let mut out = match &mut self.json {
                    Some(view) => view.snapshot(doc.seq, &doc.state),
                    None => event("snapshot", Some(doc.seq), &doc.state),
                }
                .to_vec();
                out.extend_from_slice(&synced(doc.seq));
                Some(Bytes::from(out))
            }
            Err(_) => None,
        }
    }
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: std::sync::Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let since = resume_point(&req)?;
    let json = json_format(&req)?;
    let (grant, permit) = access::admit_connection(&req, &state, &name).await?;
    let settings = &state.settings;
    let (tx, rx) = mpsc::channel(settings.sse_queue_events);
    let queued = Arc::new(AtomicUsize::new(0));
    let subscribe = Subscribe {
        events: tx,
        queued: queued.clone(),
    };
    let (_, subscribed) = ask(&state.registry, &name, subscribe).await?;
    let durable = subscribed.durable_seq;

    let mut prelude = vec![Bytes::from(format!("retry: {}\n\n", settings.sse_retry_ms))];
    // A resume point from a deleted epoch: the client drops its document, and the
    // stream goes on with a snapshot of the room as it is now.
    let epoch = subscribed.epoch;
    let since = if epoch.is_stale(since) {
        prelude.push(reset(epoch.number, epoch.base));
        None
    } else {
        since
    };
    let page = settings.poll_batch_limit;
    let mut replay = None;
    let mut caught_up = catch_up(&state, &name, since, durable, page).await?;
    // JSON: the changes of the first update replayed need the document before it.
    let mut view = None;
    if json && let CatchUp::Updates(_) = &caught_up {
        let (store, room, base) = (state.store.clone(), name.clone(), since.unwrap_or(0));
        let at = web::block(move || history::state_at(&*store, &room, base))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        match at {
            Ok(At::State(doc)) => view = Some(JsonView::of(doc)),
            // The base is gone (compacted): the stream starts with a snapshot instead.
            _ => caught_up = CatchUp::Snapshot,
        }
    }
    if json && view.is_none() {
        view = Some(JsonView::of(Doc::new()));
    }
    let last_id = match caught_up {
        CatchUp::Updates(updates) => {
            let last = updates.last().map(|u| u.seq).or(since).unwrap_or(0);
            prelude.extend(updates.iter().map(|u| match &mut view {
                Some(view) => view.update(u.seq, &u.update),
                None => event("update", Some(u.seq), &u.update),
            }));
            if last < durable {
                replay = Some((last, durable));
            }
            last
        }
        CatchUp::Snapshot => {
            let doc = full_state(&state, &name).await?;
            prelude.push(match &mut view {
                Some(view) => view.snapshot(doc.seq, &doc.state),
                None => event("snapshot", Some(doc.seq), &doc.state),
            });
            doc.seq
        }
    };
    if replay.is_none() {
        prelude.push(synced(durable.max(last_id)));
    }
    if let Some(awareness) = subscribed.awareness {
        prelude.push(event("awareness", None, &awareness));
    }

    let mut heartbeat = actix_rt::time::interval(settings.sse_heartbeat());
    heartbeat.reset_after(settings.sse_heartbeat().max(Duration::from_millis(1)));
    let expires_in = grant.expires.map_or(FOREVER, |at| {
        at.duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(FOREVER)
    });
    let hooked = crate::hooks::Hooked::enter(&state.hooks, &name, "sse", grant.subject.clone());
    let live = Live {
        events: rx,
        queued,
        replay,
        state: state.clone(),
        room: name,
        heartbeat,
        last_id,
        json: view,
        ended: false,
        revocations: state.auth.revocations().watch(),
        grant,
        expiry: Box::pin(actix_rt::time::sleep(expires_in)),
        _permit: permit,
        _hooked: hooked,
        _gauge: ConnectionGauge::open("sse"),
    };
    let sent = metrics().bytes_out.with_label_values(&["sse"]);
    let body = stream::iter(prelude)
        .chain(stream::unfold(live, |mut live| async move {
            live.next().await.map(|bytes| (bytes, live))
        }))
        .map(move |bytes| {
            sent.inc_by(bytes.len() as u64);
            Ok::<_, actix_web::Error>(bytes)
        });
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
