//! HTTP helpers (a writer that POSTs updates, base64, applying updates) and raw TCP
//! clients for what awc will not do (never read, never answer pings, read a head byte
//! by byte).

use std::io::Read;

use yrs::updates::decoder::Decode;
use yrs::{Doc, Text, Transact, Update};

use super::TestServer;

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

/// A WebSocket client on a bare TCP socket that does nothing after the handshake unless
/// told to: it never reads (a slow consumer) and never answers pings (a dead peer).
pub struct RawClient {
    pub stream: std::net::TcpStream,
}

impl RawClient {
    /// Opens `/ws/{room}` and reads the 101 answer; nothing more is read after it.
    pub fn connect(server: &TestServer, room: &str) -> RawClient {
        RawClient::connect_with(server, room, &[])
    }

    /// Opens `/ws/{room}` sending `early` in the same write as the handshake (a client
    /// that does not wait for the 101), and reads the 101 answer.
    pub fn connect_with(server: &TestServer, room: &str, early: &[u8]) -> RawClient {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        let mut request = handshake(server, room).into_bytes();
        request.extend_from_slice(early);
        stream.write_all(&request).unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawClient { stream }
    }

    /// Sends one masked binary frame (clients must mask).
    pub fn send_binary(&mut self, payload: &[u8]) {
        use std::io::Write;
        let frame = masked_frame(true, 0x2, payload);
        self.stream.write_all(&frame).unwrap();
    }

    /// Sends `bytes` as they are (frames built with [`masked_frame`], or anything else).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one server frame: (opcode, payload). Server frames are never masked.
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        self.stream.set_read_timeout(Some(super::PATIENCE)).unwrap();
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).unwrap();
        assert_eq!(head[0] & 0x80, 0x80, "server frames are final");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => {
                let mut be = [0u8; 2];
                self.stream.read_exact(&mut be).unwrap();
                u16::from_be_bytes(be) as usize
            }
            127 => {
                let mut be = [0u8; 8];
                self.stream.read_exact(&mut be).unwrap();
                u64::from_be_bytes(be) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).unwrap();
        (head[0] & 0x0F, payload)
    }

    /// Reads frames until a close frame; returns its code.
    pub fn read_close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.read_frame();
            if opcode == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A masked client frame: FIN bit, opcode, payload.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    collabd::protocol::websocket::encode_client_frame(
        fin,
        opcode,
        payload,
        [0x12, 0x34, 0x56, 0x78],
    )
}

/// The handshake of `/ws/{room}`, as a browser sends it.
pub fn handshake(server: &TestServer, room: &str) -> String {
    format!(
        "GET /ws/{room} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
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
