//! Webhooks (`webhook_url`): after changes, collabd POSTs what changed to a URL, at least
//! once, driven by the op log.
//!
//! A room marks each change in the store with its record (`Store::mark_webhook`, made
//! durable by the same flush), and tells the deliverer the seq each durable change
//! reached (a channel send). Per room the deliverer keeps `delivered` (the receiver
//! answered 2xx up to there) and `target` (changes known up to there), stored in the
//! store's `webhooks` tree after each delivery. A restart reads both and resumes every
//! room with changes not delivered, loaded or not: nothing acknowledged to a writer can
//! be missing from the deliveries.
//!
//! A delivery is `POST webhook_url` with
//! `{"room", "from_seq", "to_seq", "id"}` (and `"state"`, the room's root types as JSON at
//! `to_seq`, with `webhook_state`), headers `Idempotency-Key: ROOM:FROM:TO` (the `id`;
//! the room's name percent-encoded, every byte but ASCII letters and digits),
//! `X-Collabd-Timestamp: UNIX_SECONDS` and, with `webhook_secret`,
//! `X-Collabd-Signature: sha256=HEX` (HMAC-SHA256 of `TIMESTAMP.BODY`). At most one per
//! room per `webhook_debounce_ms`; a failed one (no answer in 10 s, or not 2xx) is retried
//! with exponential backoff (0.5 s doubling to 60 s) and full jitter, and covers whatever
//! changed meanwhile. Deliveries go one at a time, in the order rooms became due. Every
//! body also carries the room's `"epoch"`.
//!
//! A deleted room's pending changes are dropped (their content is gone) and its deletion
//! is delivered instead, at least once like a change: `{"room", "deleted": true,
//! "epoch", "seq", "id"}` (`seq`: the new epoch's start; `id`: `ROOM:deleted:EPOCH`).
//! The deletion stores the room's delivery state as "delivered up to `seq - 1`, known up
//! to `seq`": a range starting at the epoch's base, which no update ever has, is the
//! deletion's notice, so a restart before it went out still sends it.
//!
//! In cluster mode every node runs a deliverer and hears of every durable change of the
//! rooms it has loaded. The append script marks the room's `target` with the entries;
//! a node delivers a room only while it holds the room's lease in Redis
//! ([`Store::webhook_lease`], renewed at each delivery) and starts from the delivery
//! state stored there ([`Store::webhook`]), so ranges stay contiguous across nodes. Every
//! lease period each node also looks for rooms with changes nobody delivered (their
//! deliverer died) and takes them over once the lease has expired.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use serde_json::json;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::room::history::{self, At};
use crate::store::{Store, StoreError};

/// What reaches the deliverer.
enum Fed {
    /// The room's changes up to `seq` are durable.
    Changed(Arc<str>, u64),
    /// The room was deleted; its next epoch began at `seq` (its delivery state is stored
    /// as pending the deletion's notice).
    Deleted(Arc<str>, u64),
}

/// How rooms and the registry reach the deliverer.
#[derive(Clone)]
pub struct WebhookFeed {
    tx: mpsc::UnboundedSender<Fed>,
}

impl WebhookFeed {
    /// The room's changes up to `seq` are durable.
    pub fn changed(&self, room: &Arc<str>, seq: u64) {
        let _ = self.tx.send(Fed::Changed(room.clone(), seq));
    }

    /// The room was deleted and its next epoch began at `base`; the store already holds
    /// the pending notice ([`deletion_pending`]).
    pub fn deleted(&self, room: &Arc<str>, base: u64) {
        let _ = self.tx.send(Fed::Deleted(room.clone(), base));
    }
}

/// Stores the deleted room's delivery state so that its deletion is delivered (at least
/// once, a restart included): delivered up to `base - 1`, known up to `base`.
pub fn deletion_pending(store: &dyn Store, room: &str, base: u64) -> Result<(), StoreError> {
    store.put_webhook(room, base - 1, base)?;
    store.flush()
}

struct RoomState {
    delivered: u64,
    target: u64,
    /// The target last written to the store (durable after the next flush).
    stored_target: u64,
    /// The earliest time the next delivery may go (debounce, backoff).
    next: Instant,
    attempts: u32,
}

/// Starts the deliverer (on the current actix runtime) when `webhook_url` is set.
pub fn start(settings: &Arc<Settings>, store: &Arc<dyn Store>) -> Option<WebhookFeed> {
    let url = settings.webhook_url.clone()?;
    let (tx, rx) = mpsc::unbounded_channel();
    actix_rt::spawn(run(url, settings.clone(), store.clone(), rx));
    Some(WebhookFeed { tx })
}

async fn run(
    url: String,
    settings: Arc<Settings>,
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Fed>,
) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let debounce = Duration::from_millis(settings.webhook_debounce_ms);
    // Cluster mode: how long a node keeps delivering a room after its last delivery
    // before another may take over (and how often every node looks for rooms whose
    // deliverer died).
    let lease_ms = (settings.webhook_debounce_ms * 3).clamp(2_000, 60_000);
    let cluster = settings.redis_url.is_some();
    let mut next_scan = Instant::now() + Duration::from_millis(lease_ms);
    let mut rooms: HashMap<Arc<str>, RoomState> = HashMap::new();
    let stored = {
        let store = store.clone();
        actix_rt::task::spawn_blocking(move || store.webhooks()).await
    };
    match stored {
        Ok(Ok(rows)) => {
            for (room, delivered, target) in rows.into_iter().filter(|(_, d, t)| t > d) {
                info!(
                    "webhook: room {room:?} has changes {}..={target} to deliver",
                    delivered + 1
                );
                rooms.insert(
                    room.into(),
                    RoomState {
                        delivered,
                        target,
                        stored_target: target,
                        next: Instant::now(),
                        attempts: 0,
                    },
                );
            }
        }
        Ok(Err(e)) => warn!("webhook: could not read the delivery state: {e}"),
        Err(e) => warn!("webhook: could not read the delivery state: {e}"),
    }
    loop {
        // The earliest due delivery, or a change, whichever comes first.
        let due = rooms
            .values()
            .filter(|r| r.target > r.delivered)
            .map(|r| r.next)
            .min();
        let due = match cluster {
            true => Some(due.map_or(next_scan, |d| d.min(next_scan))),
            false => due,
        };
        let wait = due.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            fed = rx.recv() => {
                let Some(fed) = fed else { return };
                let now = Instant::now();
                take(&mut rooms, fed, now, debounce, true);
                // More of what arrived meanwhile, without waiting.
                while let Ok(fed) = rx.try_recv() {
                    take(&mut rooms, fed, now, debounce, false);
                }
                continue;
            }
            () = tokio::time::sleep(wait) => {}
        }
        let now = Instant::now();
        if cluster && now >= next_scan {
            // Rooms another node left undelivered (it died holding them).
            next_scan = now + Duration::from_millis(lease_ms);
            let stored = {
                let store = store.clone();
                actix_rt::task::spawn_blocking(move || store.webhooks()).await
            };
            if let Ok(Ok(rows)) = stored {
                for (room, delivered, target) in rows.into_iter().filter(|(_, d, t)| t > d) {
                    rooms.entry(room.into()).or_insert(RoomState {
                        delivered,
                        target,
                        stored_target: target,
                        next: now,
                        attempts: 0,
                    });
                }
            }
        }
        let due: Vec<Arc<str>> = rooms
            .iter()
            .filter(|(_, r)| r.target > r.delivered && r.next <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(state) = rooms.get_mut(&name) else {
                continue;
            };
            // One node at a time delivers a room (on one node: this one); another may
            // have delivered some meanwhile (cluster mode): go on from the stored state.
            let checked = {
                let (store, room) = (store.clone(), name.clone());
                actix_rt::task::spawn_blocking(move || {
                    if !store.webhook_lease(&room, lease_ms)? {
                        return Ok(None);
                    }
                    Ok::<_, StoreError>(Some((store.webhook(&room)?, store.epoch(&room)?)))
                })
                .await
            };
            let (stored, epoch) = match checked {
                Ok(Ok(Some(checked))) => checked,
                Ok(Ok(None)) => {
                    // Another node delivers it; this one looks again later.
                    state.next = now + debounce.max(Duration::from_millis(lease_ms / 2));
                    continue;
                }
                _ => {
                    warn!("webhook: room {name:?}: could not read its delivery state");
                    state.next = now + backoff(state.attempts);
                    continue;
                }
            };
            if let Some((delivered, target)) = stored {
                state.delivered = state.delivered.max(delivered);
                state.target = state.target.max(target);
                state.stored_target = state.stored_target.max(target);
            }
            if state.target <= state.delivered {
                continue;
            }
            let (from, mut to) = (state.delivered + 1, state.target);
            // A range from the epoch's base is its deletion's notice, alone.
            let deletion = epoch.number > 0 && from == epoch.base;
            if deletion {
                to = from;
            }
            // The target is durable before anything is sent: a restart finds it.
            if state.stored_target < to {
                let (store, room, delivered) = (store.clone(), name.clone(), state.delivered);
                let saved = actix_rt::task::spawn_blocking(move || {
                    store.put_webhook(&room, delivered, to)?;
                    store.flush()
                })
                .await;
                if !matches!(saved, Ok(Ok(()))) {
                    warn!("webhook: room {name:?}: could not store the delivery state");
                    state.next = now + backoff(state.attempts);
                    continue;
                }
                state.stored_target = to;
            }
            let delivered = match deletion {
                true => deliver_deletion(&client, &url, &settings, &name, &epoch).await,
                false => deliver(&client, &url, &settings, &store, &name, from, to, &epoch).await,
            };
            match delivered {
                Ok(()) => {
                    debug!("webhook: room {name:?}: delivered {from}..={to}");
                    state.delivered = to;
                    state.attempts = 0;
                    state.next = Instant::now() + debounce;
                    let (store, room, target) = (store.clone(), name.clone(), state.target);
                    let _ = actix_rt::task::spawn_blocking(move || {
                        store.put_webhook(&room, to, target)?;
                        store.flush()
                    })
                    .await;
                }
                Err(e) => {
                    state.attempts += 1;
                    state.next = Instant::now() + backoff(state.attempts);
                    warn!(
                        "webhook: room {name:?}: delivery of {from}..={to} failed (attempt {}): {e}",
                        state.attempts
                    );
                }
            }
        }
        rooms.retain(|_, r| r.target > r.delivered || r.next > Instant::now());
    }
}

/// What the deliverer does with what it is fed.
fn take(
    rooms: &mut HashMap<Arc<str>, RoomState>,
    fed: Fed,
    now: Instant,
    debounce: Duration,
    first: bool,
) {
    let fresh = || RoomState {
        delivered: 0,
        target: 0,
        stored_target: 0,
        next: now + debounce,
        attempts: 0,
    };
    match fed {
        Fed::Changed(room, seq) => {
            let state = rooms.entry(room).or_insert_with(fresh);
            if first && state.target <= state.delivered {
                // Nothing pending: the debounce starts with this change.
                state.next = state.next.max(now + debounce);
            }
            state.target = state.target.max(seq);
        }
        Fed::Deleted(room, base) => {
            // What was pending is gone with the room; its deletion goes at once.
            rooms.insert(
                room,
                RoomState {
                    delivered: base - 1,
                    target: base,
                    stored_target: base,
                    next: now,
                    attempts: 0,
                },
            );
        }
    }
}

/// The room's name as a header value (visible ASCII): percent-encoded.
fn id_of(room: &str) -> String {
    percent_encoding::utf8_percent_encode(room, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A deletion's notice; `Err` says why it did not get a 2xx.
async fn deliver_deletion(
    client: &awc::Client,
    url: &str,
    settings: &Settings,
    room: &Arc<str>,
    epoch: &crate::store::Epoch,
) -> Result<(), String> {
    let id = format!("{}:deleted:{}", id_of(room), epoch.number);
    let body = json!({
        "room": &**room,
        "deleted": true,
        "epoch": epoch.number,
        "seq": epoch.base,
        "id": id,
    });
    post(client, url, settings, &id, &body).await
}

/// One delivery; `Err` says why it did not get a 2xx.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    client: &awc::Client,
    url: &str,
    settings: &Settings,
    store: &Arc<dyn Store>,
    room: &Arc<str>,
    from: u64,
    to: u64,
    epoch: &crate::store::Epoch,
) -> Result<(), String> {
    let id = format!("{}:{from}:{to}", id_of(room));
    let mut body = json!({
        "room": &**room,
        "from_seq": from,
        "to_seq": to,
        "id": id,
        "epoch": epoch.number,
    });
    if settings.webhook_state {
        let (store, name) = (store.clone(), room.clone());
        let at = actix_rt::task::spawn_blocking(move || history::state_at(&*store, &name, to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e: StoreError| e.to_string())?;
        if let At::State(doc) = at {
            body["state"] = crate::room::doc_json::to_json(&doc);
        }
    }
    post(client, url, settings, &id, &body).await
}

/// POSTs `body`, signed; `Err` unless the answer is a 2xx.
async fn post(
    client: &awc::Client,
    url: &str,
    settings: &Settings,
    id: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let mut request = client
        .post(url)
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Idempotency-Key", id))
        .insert_header(("X-Collabd-Timestamp", timestamp.as_str()));
    if let Some(secret) = &settings.webhook_secret {
        request = request.insert_header((
            "X-Collabd-Signature",
            format!("sha256={}", sign(secret, &timestamp, &body)),
        ));
    }
    let response = request.send_body(body).await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status()))
    }
}

/// HMAC-SHA256 of `TIMESTAMP.BODY`, lowercase hex.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 0.5 s doubling per attempt up to 60 s, full jitter.
fn backoff(attempts: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1 << attempts.min(7))
        .min(Duration::from_secs(60));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let jitter = h.finish() % (ceiling.as_millis() as u64 + 1);
    Duration::from_millis(jitter.max(50))
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // The value openssl computes:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            super::sign("secret", "1700000000", br#"{"a":1}"#),
            "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
