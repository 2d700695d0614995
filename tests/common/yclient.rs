//! A y-websocket client built on yrs and collabd's codec, over a real WebSocket (awc),
//! and the frames tests craft by hand.

use std::time::{Duration, Instant};

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use collabd::protocol::{self, MSG_SYNC, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::{Doc, GetString, ReadTxn, Text, Transact};

pub use collabd::protocol::write_var;

use super::http::apply;
use super::{PATIENCE, TestServer};

pub fn text_of(doc: &Doc, name: &str) -> String {
    let text = doc.get_or_insert_text(name);
    text.get_string(&doc.transact())
}

/// A y-websocket client built on yrs, like a browser tab with a Yjs document.
pub struct YClient {
    pub awareness: Awareness,
    socket: Framed<BoxedSocket, Codec>,
    /// The close frame the server sent, once it has.
    pub closed: Option<Option<awc::ws::CloseReason>>,
    /// Whether the server's sync step 2 arrived (the initial sync is done).
    pub synced: bool,
    /// Every client id named in an awareness message from the server, own id included.
    pub awareness_heard: std::collections::HashSet<u64>,
    /// Every awareness state received, as sent (JSON text; `null` for removals).
    pub awareness_json_heard: Vec<String>,
    /// Write acks received: (token, durable seq, stored). `stored` is false when
    /// something sent since the previous ack request was refused.
    pub acks: Vec<(u64, u64, bool)>,
    /// Sync step 1 messages received (the first on connect; more when the server asks
    /// for what it lacks).
    pub sync_step1_heard: usize,
    /// Reasons of y-protocols permission-denied messages received.
    pub denied: Vec<String>,
    /// Answers to access tokens sent (`MSG_TOKEN`): (accepted, detail).
    pub token_answers: Vec<(bool, String)>,
}

/// Why a WebSocket connection was not established.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status.
    Status(u16),
    /// No answer (refused, reset, …).
    Io(String),
}

impl YClient {
    /// Connects and starts the handshake (sends sync step 1), like `WebsocketProvider`.
    pub async fn connect(server: &TestServer, room: &str) -> YClient {
        YClient::connect_with(server, room, Doc::new()).await
    }

    pub async fn connect_with(server: &TestServer, room: &str, doc: Doc) -> YClient {
        YClient::try_connect(&server.ws_url(room), &[], doc)
            .await
            .expect("WebSocket connect")
    }

    /// Connects to `url` with extra request headers; the error says why it failed.
    pub async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
        doc: Doc,
    ) -> Result<YClient, ConnectError> {
        let mut request = awc::Client::new().ws(url).max_frame_size(64 << 20);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (_, socket) = request.connect().await.map_err(|e| match e {
            awc::error::WsClientError::InvalidResponseStatus(status) => {
                ConnectError::Status(status.as_u16())
            }
            other => ConnectError::Io(other.to_string()),
        })?;
        let mut client = YClient {
            awareness: Awareness::new(doc),
            socket,
            closed: None,
            synced: false,
            awareness_heard: Default::default(),
            awareness_json_heard: Vec::new(),
            acks: Vec::new(),
            denied: Vec::new(),
            sync_step1_heard: 0,
            token_answers: Vec::new(),
        };
        let sv = client.doc().transact().state_vector();
        client.send_raw(protocol::encode_sync_step1(&sv)).await;
        Ok(client)
    }

    /// Sends a frame; false if the connection is gone.
    pub async fn try_send(&mut self, frame: impl Into<Bytes>) -> bool {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .is_ok()
    }

    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    pub fn text(&self, name: &str) -> String {
        text_of(self.doc(), name)
    }

    pub async fn send_raw(&mut self, frame: impl Into<Bytes>) {
        self.socket
            .send(Message::Binary(frame.into()))
            .await
            .unwrap();
    }

    pub async fn send_text_frame(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_string().into()))
            .await
            .unwrap();
    }

    /// Edits the text locally and sends the update, as a Yjs binding would.
    pub async fn insert(&mut self, name: &str, index: u32, chunk: &str) {
        let update = {
            let text = self.doc().get_or_insert_text(name);
            let mut txn = self.doc().transact_mut();
            text.insert(&mut txn, index, chunk);
            txn.encode_update_v1()
        };
        self.send_raw(protocol::encode_update(&update)).await;
    }

    /// Appends to the end of the text.
    pub async fn append(&mut self, name: &str, chunk: &str) {
        let len = {
            let text = self.doc().get_or_insert_text(name);
            text.len(&self.doc().transact())
        };
        self.insert(name, len, chunk).await;
    }

    /// Asks the server to say when everything sent so far is durable (message type 100).
    pub async fn request_ack(&mut self, token: u64) {
        self.send_raw(protocol::encode_ack_request(token)).await;
    }

    /// Sets this client's awareness state and announces it.
    pub async fn set_awareness(&mut self, json: &str) {
        self.awareness.set_local_state_raw(json);
        let update = self.awareness.update().unwrap();
        self.send_raw(protocol::encode_awareness(&update)).await;
    }

    /// Client ids with a live awareness state, as this client sees them.
    pub fn awareness_clients(&self) -> Vec<u64> {
        self.awareness
            .iter()
            .filter(|(_, s)| s.data.is_some())
            .map(|(id, _)| id.get())
            .collect()
    }

    /// The state this client holds for awareness client `id` (JSON), if any.
    pub fn awareness_state(&self, id: u64) -> Option<String> {
        self.awareness
            .iter()
            .find(|(client, _)| client.get() == id)
            .and_then(|(_, s)| s.data.as_deref().map(str::to_string))
    }

    /// The close code the server sent, once it has.
    pub fn close_code(&self) -> Option<u16> {
        self.closed
            .as_ref()
            .and_then(|c| c.as_ref())
            .map(|c| u16::from(c.code))
    }

    pub fn client_id(&self) -> u64 {
        self.doc().client_id().get()
    }

    /// Handles one incoming frame; false once the connection is closed.
    async fn step(&mut self) -> bool {
        match self.socket.next().await {
            Some(Ok(Frame::Binary(bytes))) => {
                self.handle(&bytes).await;
                true
            }
            Some(Ok(Frame::Close(reason))) => {
                self.closed = Some(reason);
                false
            }
            Some(Ok(Frame::Ping(payload))) => {
                // Like a browser: answer pings, or the server's heartbeat closes us.
                let _ = self.socket.send(Message::Pong(payload)).await;
                true
            }
            Some(Ok(_)) => true,
            Some(Err(_)) | None => {
                self.closed.get_or_insert(None);
                false
            }
        }
    }

    /// Handles the messages of one frame from the server, like `WebsocketProvider`.
    async fn handle(&mut self, frame: &[u8]) {
        for message in protocol::decode_server_frame(frame) {
            match message.expect("the server's frame decodes") {
                ServerMessage::SyncStep1(sv) => {
                    self.sync_step1_heard += 1;
                    let diff = self.doc().transact().encode_state_as_update_v1(&sv);
                    self.send_raw(protocol::encode_sync_step2(&diff)).await;
                }
                ServerMessage::SyncStep2(update) => {
                    apply(self.doc(), update);
                    self.synced = true;
                }
                ServerMessage::Update(update) => apply(self.doc(), update),
                ServerMessage::Awareness(update) => {
                    self.awareness_heard
                        .extend(update.clients.keys().map(|id| id.get()));
                    self.awareness_json_heard
                        .extend(update.clients.values().map(|e| e.json.to_string()));
                    self.awareness.apply_update(update).unwrap();
                }
                ServerMessage::PermissionDenied { reason } => self.denied.push(reason.to_string()),
                ServerMessage::Ack { token, seq, stored } => self.acks.push((token, seq, stored)),
                ServerMessage::TokenAnswer { accepted, detail } => {
                    self.token_answers.push((accepted, detail.to_string()))
                }
                other => panic!("unexpected message {other:?} from server"),
            }
        }
    }

    /// Processes incoming frames until `done` holds; panics after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&YClient) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match actix_rt::time::timeout(left, self.step()).await {
                Ok(true) => {}
                Ok(false) => assert!(done(self), "connection closed while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Processes one incoming frame if one arrives within `window`; false if none did or
    /// the connection is closed.
    pub async fn step_for(&mut self, window: Duration) -> bool {
        actix_rt::time::timeout(window, self.step())
            .await
            .unwrap_or(false)
    }

    /// Processes frames until the server closes the connection; returns the close code.
    pub async fn until_closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + PATIENCE;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if actix_rt::time::timeout(left, self.step()).await.is_err() {
                panic!("server did not close the connection");
            }
        }
        self.closed
            .clone()
            .flatten()
            .map(|reason| u16::from(reason.code))
    }

    /// Processes whatever arrives within `window` (for "nothing more happens" checks
    /// that are followed by a positive assertion).
    pub async fn drain_for(&mut self, window: Duration) {
        let _ = actix_rt::time::timeout(window, async { while self.step().await {} }).await;
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
        let _ =
            actix_rt::time::timeout(Duration::from_secs(2), async { while self.step().await {} })
                .await;
    }
}

/// `[0 sync, sub, varbuf payload]`, with any subtype and payload (hostile frames too).
pub fn sync_frame(sub: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    write_var(&mut out, MSG_SYNC);
    write_var(&mut out, sub.into());
    protocol::write_buf(&mut out, payload);
    out
}

pub fn awareness_frame(update: &AwarenessUpdate) -> Vec<u8> {
    protocol::encode_awareness(update).to_vec()
}
