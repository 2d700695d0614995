//! A Rust client for collabd: keeps a [`yrs::Doc`] in sync with a room over WebSocket
//! (the y-websocket protocol, through `collabd::protocol`), and reconnects with the same
//! policy as the JavaScript provider — exponential backoff with full jitter, a message
//! timeout that detects dead connections, and a re-sync by state vector on every
//! connection, so edits made while offline reach the server and nothing is applied twice.
//!
//! ```no_run
//! # async fn demo() {
//! use yrs::{Doc, GetString, Text, Transact};
//! let doc = Doc::new();
//! let client = collabd_client::Client::connect(
//!     "http://127.0.0.1:1234",
//!     "docs/welcome",
//!     doc.clone(),
//!     collabd_client::Options::default(),
//! );
//! client.wait_synced().await;
//! let text = doc.get_or_insert_text("t");
//! text.push(&mut doc.transact_mut(), "hello");   // sent to the room at once
//! # }
//! ```
//!
//! Runs on the actix runtime (awc): call [`Client::connect`] inside an actix `System`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use collabd::protocol::{self, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use log::debug;
use tokio::sync::{Notify, mpsc};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact, TransactionMut, Update, UpdateEvent};

/// The transaction origin of updates that came from the server (never sent back).
const REMOTE: &str = "collabd-remote";

/// How the client reconnects and notices dead connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Reconnect delays: random in [0, min(max, min · 2^attempt)).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// No message (the server pings every 15 s) for this long: the connection is dead.
    pub message_timeout: Duration,
    /// An access token, sent as `?token=`.
    pub token: Option<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            token: None,
        }
    }
}

/// A reconnect delay: exponential backoff with full jitter, `random` in [0, 1).
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, random: f64) -> Duration {
    let cap = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    cap.mul_f64(random.clamp(0.0, 0.999_999))
}

/// A connection to one room that keeps `doc` in sync until dropped or closed.
pub struct Client {
    doc: Doc,
    synced: Rc<Cell<bool>>,
    connections: Rc<Cell<u64>>,
    synced_notify: Rc<Notify>,
    task: actix_rt::task::JoinHandle<()>,
    /// The key of this client's update observer on `doc`.
    observer: String,
}

impl Client {
    /// Connects to `room` on the server at `server_url` (`http://host:port`) and keeps
    /// `doc` in sync with it in the background.
    pub fn connect(server_url: &str, room: &str, doc: Doc, options: Options) -> Client {
        let (local, updates) = mpsc::unbounded_channel();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let observer = format!(
            "collabd-client-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        doc.observe_update_v1(
            observer.as_str(),
            move |txn: &TransactionMut, event: &UpdateEvent| {
                if !is_remote(txn) {
                    let _ = local.send(Bytes::from(event.update.clone()));
                }
            },
        )
        .expect("no transaction is open while connecting");
        let base = server_url.trim_end_matches('/').replacen("http", "ws", 1);
        let mut url = format!("{base}/ws/{}", percent(room));
        if let Some(token) = &options.token {
            url += &format!("?token={}", percent(token));
        }
        let synced = Rc::new(Cell::new(false));
        let connections = Rc::new(Cell::new(0));
        let synced_notify = Rc::new(Notify::new());
        let task = actix_rt::spawn(run(
            url,
            doc.clone(),
            options,
            updates,
            synced.clone(),
            connections.clone(),
            synced_notify.clone(),
        ));
        Client {
            doc,
            synced,
            connections,
            synced_notify,
            task,
            observer,
        }
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Whether the current connection has completed its initial sync.
    pub fn is_synced(&self) -> bool {
        self.synced.get()
    }

    /// Connections opened so far (reconnects included).
    pub fn connections(&self) -> u64 {
        self.connections.get()
    }

    /// Waits until the current (or next) connection has synced.
    pub async fn wait_synced(&self) {
        while !self.synced.get() {
            self.synced_notify.notified().await;
        }
    }

    /// Stops syncing and closes the connection.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.doc.unobserve_update_v1(self.observer.as_str());
    }
}

/// Whether a transaction applied an update from the server (never sent back).
fn is_remote(txn: &TransactionMut) -> bool {
    txn.origin()
        .is_some_and(|o| o.as_ref() == REMOTE.as_bytes())
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run(
    url: String,
    doc: Doc,
    options: Options,
    mut updates: mpsc::UnboundedReceiver<Bytes>,
    synced: Rc<Cell<bool>>,
    connections: Rc<Cell<u64>>,
    synced_notify: Rc<Notify>,
) {
    let mut attempt = 0u32;
    let seed = Cell::new(Instant::now().elapsed().as_nanos() as u64 | 1);
    let random = || {
        // xorshift: jitter needs no cryptographic randomness.
        let mut x = seed.get() ^ (std::process::id() as u64) << 17;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    loop {
        match awc::Client::new()
            .ws(&url)
            .max_frame_size(256 << 20)
            .connect()
            .await
        {
            Ok((_, socket)) => {
                connections.set(connections.get() + 1);
                attempt = 0;
                // Edits made while disconnected reach the server through this connection's
                // sync step 1/2 exchange; what waits in the channel would be sent twice.
                while updates.try_recv().is_ok() {}
                let end = session(
                    socket,
                    &doc,
                    &options,
                    &mut updates,
                    &synced,
                    &synced_notify,
                )
                .await;
                debug!("collabd-client: {url}: connection ended: {end}");
            }
            Err(e) => debug!("collabd-client: {url}: {e}"),
        }
        synced.set(false);
        let delay = backoff_delay(attempt, options.backoff_min, options.backoff_max, random());
        attempt += 1;
        actix_rt::time::sleep(delay).await;
    }
}

/// One connection: the sync handshake, then updates both ways until it ends.
async fn session(
    mut socket: Framed<BoxedSocket, Codec>,
    doc: &Doc,
    options: &Options,
    updates: &mut mpsc::UnboundedReceiver<Bytes>,
    synced: &Cell<bool>,
    synced_notify: &Notify,
) -> String {
    let step1 = protocol::encode_sync_step1(&doc.transact().state_vector());
    if let Err(e) = socket.send(Message::Binary(step1)).await {
        return e.to_string();
    }
    loop {
        tokio::select! {
            frame = actix_rt::time::timeout(options.message_timeout, socket.next()) => {
                let frame = match frame {
                    Err(_) => return "no message within the timeout".into(),
                    Ok(None) => return "closed".into(),
                    Ok(Some(Err(e))) => return e.to_string(),
                    Ok(Some(Ok(frame))) => frame,
                };
                match frame {
                    Frame::Binary(bytes) => {
                        for reply in handle(doc, &bytes, synced, synced_notify) {
                            if let Err(e) = socket.send(Message::Binary(reply)).await {
                                return e.to_string();
                            }
                        }
                    }
                    Frame::Ping(payload) => {
                        if let Err(e) = socket.send(Message::Pong(payload)).await {
                            return e.to_string();
                        }
                    }
                    Frame::Close(reason) => return format!("closed by the server: {reason:?}"),
                    _ => {}
                }
            }
            Some(update) = updates.recv() => {
                if let Err(e) = socket.send(Message::Binary(protocol::encode_update(&update))).await {
                    return e.to_string();
                }
            }
        }
    }
}

/// Applies one server frame to `doc`; returns the frames to answer with.
fn handle(doc: &Doc, frame: &[u8], synced: &Cell<bool>, synced_notify: &Notify) -> Vec<Bytes> {
    let mut replies = Vec::new();
    let apply = |update: &[u8]| {
        if let Ok(update) = Update::decode_v1(update) {
            let _ = doc.transact_mut_with(REMOTE).apply_update(update);
        }
    };
    for message in protocol::decode_server_frame(frame) {
        match message {
            Ok(ServerMessage::SyncStep1(sv)) => {
                let diff = doc.transact().encode_state_as_update_v1(&sv);
                replies.push(protocol::encode_sync_step2(&diff));
            }
            Ok(ServerMessage::SyncStep2(update)) => {
                apply(update);
                synced.set(true);
                synced_notify.notify_waiters();
            }
            Ok(ServerMessage::Update(update)) => apply(update),
            Ok(_) => {}
            Err(e) => debug!("collabd-client: a frame that does not decode: {e}"),
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_bounded() {
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(1));
        for attempt in 0..30 {
            let cap = (min * 2u32.pow(attempt.min(20))).min(max);
            assert_eq!(backoff_delay(attempt, min, max, 0.0), Duration::ZERO);
            let high = backoff_delay(attempt, min, max, 0.999_999);
            assert!(
                high < cap && high >= cap.mul_f64(0.99),
                "{attempt}: {high:?}"
            );
        }
    }

    #[test]
    fn room_names_and_tokens_are_percent_encoded() {
        assert_eq!(percent("docs/a b"), "docs%2Fa%20b");
        assert_eq!(percent("x.y-z_~"), "x.y-z_~");
    }

    #[test]
    fn remote_updates_are_not_sent_back() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use yrs::Text;
        let doc = Doc::new();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        doc.observe_update_v1("test", move |txn: &TransactionMut, _: &UpdateEvent| {
            if !is_remote(txn) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .unwrap();
        let other = Doc::new();
        let t = other.get_or_insert_text("t");
        t.insert(&mut other.transact_mut(), 0, "x");
        let update = other
            .transact()
            .encode_state_as_update_v1(&Default::default());
        let frame = protocol::encode_update(&update);
        let (synced, notify) = (Cell::new(false), Notify::new());
        assert!(handle(&doc, &frame, &synced, &notify).is_empty());
        assert_eq!(
            sent.load(Ordering::Relaxed),
            0,
            "an update from the server is not echoed"
        );
        let mine = doc.get_or_insert_text("mine");
        mine.push(&mut doc.transact_mut(), "y");
        assert_eq!(sent.load(Ordering::Relaxed), 1);
    }
}
