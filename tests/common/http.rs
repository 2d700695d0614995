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
