//! Test harness: the real `collabd` binary on port 0 with a temp data dir, and a Yjs
//! client built on yrs that speaks y-websocket over a real WebSocket (awc).
#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use collabd::protocol::{self, MSG_SYNC, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use yrs::sync::{Awareness, AwarenessUpdate};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

pub use collabd::protocol::write_var;

/// Upper bound for anything a test waits for; reaching it is a failure, never a pass.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A `collabd` process.
pub struct TestServer {
    child: Child,
    /// The server's own pid (the child's, or under a tracer the tracer's child's).
    pid: u32,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the binary on 127.0.0.1:0 with `data_dir` and extra flags, and waits until
    /// it logs the address it listens on.
    pub fn start(data_dir: &Path, args: &[&str]) -> TestServer {
        TestServer::start_env(data_dir, args, &[])
    }

    /// [`TestServer::start`] with extra environment variables (e.g. `COLLABD_AUTH_SECRET`).
    pub fn start_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::start_under(&[], data_dir, args, env)
    }

    /// [`TestServer::start`] under `strace`, recording `syscalls` of every thread (with
    /// every byte of their buffers, in hex) to `trace`.
    pub fn start_traced(
        data_dir: &Path,
        args: &[&str],
        syscalls: &str,
        trace: &Path,
    ) -> TestServer {
        let trace = trace.to_str().unwrap();
        let tracer = [
            "strace",
            "-f",
            "-qq",
            "-xx",
            "-s",
            "16777216",
            "-e",
            syscalls,
            "-e",
            "signal=none",
            "-o",
            trace,
        ];
        TestServer::start_under(&tracer, data_dir, args, &[])
    }

    fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let binary = env!("CARGO_BIN_EXE_collabd");
        let mut command = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
        };
        let mut child = command
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,collabd=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start collabd");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("server did not start: {:?}", logs.lock().unwrap()));
        let pid = if wrapper.is_empty() {
            child.id()
        } else {
            let children = format!("/proc/{0}/task/{0}/children", child.id());
            let children = std::fs::read_to_string(children).unwrap();
            children.split_whitespace().next().unwrap().parse().unwrap()
        };
        TestServer {
            child,
            pid,
            addr: addr.parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, room)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory of the server process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// The value of one sample from `/metrics` (`name` with its labels as exported, e.g.
    /// `collabd_connections{transport="ws"}`); 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut res = awc::Client::new()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let body = res.body().limit(8 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until `metric(name)` satisfies `ok`.
    pub async fn wait_for_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.metric(name).await;
            if ok(value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} stuck at {value}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no final flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.logs().iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        let body = res.body().limit(64 << 20).await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap(),
        )
    }

    /// The room's full state, decoded into a fresh document.
    pub async fn state(&self, room: &str) -> (Doc, u64) {
        self.state_at(&format!("/rooms/{room}/state")).await
    }

    /// [`TestServer::state`] from a path with its query (e.g. `?token=`).
    pub async fn state_at(&self, path: &str) -> (Doc, u64) {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let seq = res
            .headers()
            .get("x-seq")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = res.body().limit(64 << 20).await.unwrap();
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&body).unwrap())
            .unwrap();
        (doc, seq)
    }

    /// The room's durable seq from `GET /rooms/{room}`.
    pub async fn seq(&self, room: &str) -> u64 {
        self.get_json(&format!("/rooms/{room}")).await.1["seq"]
            .as_u64()
            .unwrap()
    }

    /// Waits until the room's durable seq reaches `seq`.
    pub async fn wait_for_seq(&self, room: &str, seq: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.seq(room).await;
            if now >= seq {
                return;
            }
            assert!(Instant::now() < deadline, "seq stuck at {now}, want {seq}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// A writer that edits a local yrs document and POSTs each update.
pub struct HttpWriter {
    pub doc: Doc,
}

impl HttpWriter {
    pub fn new() -> HttpWriter {
        HttpWriter { doc: Doc::new() }
    }

    /// Appends `chunk` to text `name` locally and returns the update.
    pub fn append(&self, name: &str, chunk: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text(name);
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, chunk);
        txn.encode_update_v1()
    }
}

/// POSTs an update; returns status and JSON body.
pub async fn post_update(
    server: &TestServer,
    room: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut res = awc::Client::new()
        .post(server.url(&format!("/rooms/{room}/updates")))
        .insert_header(("content-type", "application/octet-stream"))
        .send_body(body)
        .await
        .unwrap();
    let body = res.body().limit(1 << 20).await.unwrap();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (res.status().as_u16(), json)
}

pub fn b64(data: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap()
}

/// Applies a Yjs update v1 to `doc`.
pub fn apply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub kind: String,
    pub id: Option<u64>,
    pub data: String,
}

type SseBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// A minimal EventSource: parses `text/event-stream` from a real HTTP response.
pub struct SseClient {
    body: SseBody,
    buf: String,
    pub retry: Option<u64>,
    pub heartbeats: usize,
}

impl SseClient {
    /// Connects to `/rooms/{room}/events`, with `Last-Event-ID` if given.
    pub async fn connect(
        server: &TestServer,
        room: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        SseClient::open(server, &format!("/rooms/{room}/events"), last_event_id).await
    }

    /// Connects to any path (e.g. with `?since=`).
    pub async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = awc::Client::builder()
            .timeout(Duration::from_secs(3600))
            .finish()
            .get(server.url(path));
        if let Some(id) = last_event_id {
            req = req.insert_header(("Last-Event-ID", id));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        SseClient {
            body: Box::pin(res),
            buf: String::new(),
            retry: None,
            heartbeats: 0,
        }
    }

    /// The next event (comments and `retry:` are recorded, not returned).
    pub async fn next(&mut self) -> SseEvent {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    kind: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut is_event = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.kind = v.to_string();
                        is_event = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                        is_event = true;
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = Some(v.parse().unwrap());
                    } else if line.starts_with(':') {
                        self.heartbeats += 1;
                    }
                }
                if is_event {
                    return event;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = actix_rt::time::timeout(left, self.body.next())
                .await
                .expect("timed out waiting for an SSE event")
                .expect("SSE stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not awareness.
    pub async fn next_doc_event(&mut self) -> SseEvent {
        loop {
            let event = self.next().await;
            if event.kind != "awareness" {
                return event;
            }
        }
    }
}

/// A WebSocket client on a bare TCP socket that does nothing after the handshake unless
/// told to: it never reads (a slow consumer) and never answers pings (a dead peer).
pub struct RawClient {
    pub stream: std::net::TcpStream,
}

impl RawClient {
    /// Opens `/ws/{room}` and reads the 101 answer; nothing more is read after it.
    pub fn connect(server: &TestServer, room: &str) -> RawClient {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "GET /ws/{room} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
        .unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawClient { stream }
    }

    /// Sends one masked binary frame (clients must mask).
    pub fn send_binary(&mut self, payload: &[u8]) {
        use std::io::Write;
        let mut frame = vec![0x82];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }
}

/// Reads an HTTP response head (up to the blank line) from a raw stream, byte by byte.
pub fn read_head(stream: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// xorshift64*: small and seedable, for fault timings, jitter and fuzz mutations; a
/// failing run is replayed from its printed seed.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The seed in environment variable `var`, else one from the clock; printed either way.
pub fn seed_from(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{var}={seed}");
    seed
}
