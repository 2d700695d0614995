//! `GET /rooms/{room}/events`: Server-Sent Events with `Last-Event-ID` resume.
//!
//! Order of work, so that nothing is missed or sent twice: subscribe first (the room
//! answers with its durable seq D and from then on queues every update above D), then
//! replay from the store what the client lacks up to D (or send a snapshot), then stream
//! the queue, skipping any update at or below the last id already sent.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::rooms::{catch_up, full_state, parse_seq, query_param};
use super::{AppState, access};
use crate::limits::Permit;
use crate::metrics::{ConnectionGauge, metrics};
use crate::room::ask;
use crate::room::cursor::CatchUp;
use crate::room::messages::{LiveEvent, Subscribe};

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

/// One SSE event; `data` is base64 so it fits on one line.
fn event(kind: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let data = BASE64.encode(data);
    let mut out = String::with_capacity(data.len() + 40);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("data: ");
    out.push_str(&data);
    out.push_str("\n\n");
    Bytes::from(out)
}

const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Far enough for "never" and still a valid timer deadline.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

struct Live {
    events: mpsc::Receiver<LiveEvent>,
    heartbeat: actix_rt::time::Interval,
    /// Highest update id sent; live updates at or below it were in the replay.
    last_id: u64,
    /// The stream ends when the client's token expires; EventSource then reconnects and
    /// must present a fresh one.
    expiry: std::pin::Pin<Box<actix_rt::time::Sleep>>,
    _permit: Permit,
    _gauge: ConnectionGauge,
}

impl Live {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                live = self.events.recv() => match live? {
                    LiveEvent::Update { seq, .. } if seq <= self.last_id => continue,
                    LiveEvent::Update { seq, update } => {
                        self.last_id = seq;
                        return Some(event("update", Some(seq), &update));
                    }
                    LiveEvent::Awareness(update) => return Some(event("awareness", None, &update)),
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(HEARTBEAT)),
                _ = &mut self.expiry => return None,
            }
        }
    }
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: std::sync::Arc<str>,
) -> Result<HttpResponse, ApiError> {
    let since = resume_point(&req)?;
    let (grant, permit) = access::admit_connection(&req, &state, &name)?;
    let settings = &state.settings;
    let (tx, rx) = mpsc::channel(settings.sse_queue_events);
    let (_, subscribed) = ask(&state.registry, &name, Subscribe { events: tx }).await?;

    let mut prelude = vec![Bytes::from(format!("retry: {}\n\n", settings.sse_retry_ms))];
    let last_id = match catch_up(&state, &name, since, subscribed.durable_seq, usize::MAX).await? {
        CatchUp::Updates(updates) => {
            let last = updates.last().map(|u| u.seq);
            prelude.extend(
                updates
                    .iter()
                    .map(|u| event("update", Some(u.seq), &u.update)),
            );
            last.or(since).unwrap_or(0)
        }
        CatchUp::Snapshot => {
            let doc = full_state(&state, &name).await?;
            prelude.push(event("snapshot", Some(doc.seq), &doc.state));
            doc.seq
        }
    };
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
    let live = Live {
        events: rx,
        heartbeat,
        last_id,
        expiry: Box::pin(actix_rt::time::sleep(expires_in)),
        _permit: permit,
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
