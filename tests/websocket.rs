//! The WebSocket layer on a bare socket (collabd reads and writes its sockets itself after
//! the handshake): what clients and proxies may legally do with frames and TCP segments,
//! what they may not, and the answer to each.

mod common;

use std::io::Read;
use std::time::Duration;

use collabd::protocol::{self, ServerMessage};
use common::*;
use yrs::{Doc, GetString, StateVector, Text, Transact};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A y-websocket update inserting `text` into the text `t` of a fresh document.
fn text_update(text: &str) -> Vec<u8> {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.push(&mut txn, text);
    protocol::encode_update(&txn.encode_update_v1()).to_vec()
}

/// Reads frames until one carries a sync step 2; returns its update.
fn read_step2(client: &mut RawClient) -> Vec<u8> {
    loop {
        let (opcode, payload) = client.read_frame();
        if opcode != 0x2 {
            continue;
        }
        for message in protocol::decode_server_frame(&payload) {
            if let Ok(ServerMessage::SyncStep2(update)) = message {
                return update.to_vec();
            }
        }
    }
}

async fn text_of(server: &TestServer, room: &str) -> String {
    let (doc, _) = server.state(room).await;
    let t = doc.get_or_insert_text("t");
    t.get_string(&doc.transact())
}

/// Waits until the room's stored text is `want`.
async fn until_text(server: &TestServer, room: &str, want: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while text_of(server, room).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{room} never held {want:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_frame_behind_the_handshake_and_a_frame_cut_into_single_bytes_are_both_read() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    // Sync step 1 sent in the same write as the handshake, before any 101.
    let step1 = masked_frame(
        true,
        0x2,
        &protocol::encode_sync_step1(&StateVector::default()),
    );
    let mut client = RawClient::connect_with(&server, "bytes", &step1);
    read_step2(&mut client);

    // An update cut into one-byte writes (one TCP segment each: the client sets nodelay).
    client.stream.set_nodelay(true).unwrap();
    let frame = masked_frame(true, 0x2, &text_update("one byte at a time"));
    for byte in &frame {
        client.send_raw(std::slice::from_ref(byte));
    }
    until_text(&server, "bytes", "one byte at a time").await;
}

#[actix_rt::test]
async fn fragmented_messages_are_joined_and_pings_between_fragments_are_answered() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = RawClient::connect(&server, "fragments");
    let update = text_update("in three fragments");
    let (a, rest) = update.split_at(3);
    let (b, c) = rest.split_at(rest.len() / 2);
    client.send_raw(&masked_frame(false, 0x2, a));
    client.send_raw(&masked_frame(false, 0x0, b));
    client.send_raw(&masked_frame(true, 0x9, b"between"));
    client.send_raw(&masked_frame(true, 0x0, c));
    // The pong carries the ping's payload (RFC 6455 §5.5.2).
    loop {
        let (opcode, payload) = client.read_frame();
        if opcode == 0xA {
            assert_eq!(payload, b"between");
            break;
        }
    }
    until_text(&server, "fragments", "in three fragments").await;
}

#[actix_rt::test]
async fn an_oversized_frame_is_refused_from_its_header_alone() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--max-frame-bytes", "65536"]);
    let mut client = RawClient::connect(&server, "big");
    // Only the header of a 1 GiB frame: the server must not wait for its payload.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    client.send_raw(&header);
    assert_eq!(client.read_close_code(), 1009);
    // The connection ends: EOF after the close frame.
    let mut rest = Vec::new();
    client.stream.read_to_end(&mut rest).unwrap();
    // The room is intact for everyone else.
    let mut other = RawClient::connect(&server, "big");
    other.send_binary(&text_update("still here"));
    until_text(&server, "big", "still here").await;
}

#[actix_rt::test]
async fn frames_rfc_6455_forbids_close_with_1002_and_text_with_1003() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let unmasked = vec![0x82, 0x01, 0x00];
    let reserved_bits = masked_frame(true, 0x40 | 0x2, b"x");
    let unknown_opcode = masked_frame(true, 0x3, b"x");
    let long_ping = masked_frame(true, 0x9, &[0; 126]);
    let stray_continuation = masked_frame(true, 0x0, b"x");
    for (what, bytes, code) in [
        ("unmasked", unmasked, 1002),
        ("reserved bits", reserved_bits, 1002),
        ("unknown opcode", unknown_opcode, 1002),
        ("ping over 125 bytes", long_ping, 1002),
        ("continuation without a message", stray_continuation, 1002),
        ("text", masked_frame(true, 0x1, b"hello"), 1003),
    ] {
        let mut client = RawClient::connect(&server, "rules");
        client.send_raw(&bytes);
        assert_eq!(client.read_close_code(), code, "{what}");
    }
}

#[actix_rt::test]
async fn a_client_close_is_answered_and_the_connection_ends() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut client = RawClient::connect(&server, "bye");
    client.send_raw(&masked_frame(true, 0x8, &1000u16.to_be_bytes()));
    assert_eq!(client.read_close_code(), 1000);
    let mut rest = Vec::new();
    client.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the close frame");
}

#[actix_rt::test]
async fn a_large_document_reaches_many_joiners_at_once_while_the_room_keeps_writing() {
    // A 3 MB document, over the 1 MiB outbound queue bound given here: each joiner's
    // sync step 2 is larger than its queue, and updates that arrive while it is being
    // written must still queue behind it rather than close the joiner as a slow consumer.
    let dir = tempdir();
    let server = TestServer::start(
        dir.path(),
        &[
            "--outbound-queue-bytes",
            "1048576",
            "--max-frame-bytes",
            "1048576",
        ],
    );
    let mut writer = RawClient::connect(&server, "storm");
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    let chunk = "x".repeat(600_000);
    for _ in 0..5 {
        let mut txn = doc.transact_mut();
        t.push(&mut txn, &chunk);
        let update = txn.encode_update_v1();
        drop(txn);
        writer.send_binary(&protocol::encode_update(&update));
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    while text_of(&server, "storm").await.len() != 3_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the document never arrived"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    let step1 = masked_frame(
        true,
        0x2,
        &protocol::encode_sync_step1(&StateVector::default()),
    );
    let mut joiners: Vec<RawClient> = (0..10)
        .map(|_| RawClient::connect_with(&server, "storm", &step1))
        .collect();
    // The room keeps writing while nobody reads yet.
    for i in 0..20 {
        writer.send_binary(&text_update(&format!("<{i}>")));
    }
    for joiner in &mut joiners {
        let joined = Doc::new();
        apply(&joined, &read_step2(joiner));
        let text = joined.get_or_insert_text("t");
        // Every update written after the joins reaches every joiner (in its sync step 2
        // or after it), and nobody is closed.
        let has_all = |doc: &Doc| {
            let s = text.get_string(&doc.transact());
            s.len() >= 3_000_000 && (0..20).all(|i| s.contains(&format!("<{i}>")))
        };
        while !has_all(&joined) {
            let (opcode, payload) = joiner.read_frame();
            assert_ne!(opcode, 0x8, "a joiner was closed");
            if opcode != 0x2 {
                continue;
            }
            for message in protocol::decode_server_frame(&payload) {
                if let Ok(ServerMessage::Update(update)) = message {
                    apply(&joined, update);
                }
            }
        }
    }
}
