//! One client cannot make the server hold memory for it: SSE replay is read from the
//! store a page at a time, and an SSE stream that stops reading is ended once what the
//! room queued for it passes `outbound_queue_bytes` (its client resumes by last id).
//! (The connection itself stays until the client reads or goes: the server cannot
//! finish a response into a full socket; the per-IP connection limit bounds those.)

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{HttpWriter, SseClient, TestServer, post_update};
use yrs::{Doc, Map, Transact};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[actix_rt::test]
async fn sse_replay_longer_than_a_page_arrives_whole_in_order_exactly_once() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--poll-batch-limit", "7"]);
    let writer = HttpWriter::new();
    for i in 0..40 {
        let (status, _) = post_update(&server, "paged", writer.append("t", &format!("{i},"))).await;
        assert_eq!(status, 200);
    }
    let mut sse = SseClient::connect(&server, "paged", Some("3")).await;
    for expected in 4..=40 {
        let event = sse.next_doc_event().await;
        assert_eq!((event.kind.as_str(), event.id), ("update", Some(expected)));
    }
    post_update(&server, "paged", writer.append("t", "live")).await;
    assert_eq!(sse.next_doc_event().await.id, Some(41));
}

#[actix_rt::test]
async fn an_sse_stream_that_stops_reading_is_ended_at_its_byte_budget() {
    let dir = tempdir();
    let budget = 1_000_000;
    let budget = budget.to_string();
    let args = [
        "--outbound-queue-bytes",
        &budget,
        "--max-frame-bytes",
        "500000",
    ];
    let server = TestServer::start(dir.path(), &args);
    // A client that opens the stream and never reads from it.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    write!(
        stalled,
        "GET /rooms/hoard/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    server
        .wait_for_metric("collabd_connections{transport=\"sse\"}", |v| v == 1.0)
        .await;
    // A reading client, which must get everything meanwhile.
    let mut reader = SseClient::connect(&server, "hoard", None).await;
    assert_eq!(reader.next_doc_event().await.kind, "snapshot");

    // 40 MB of updates (far past the budget plus what the kernel buffers), in 100 KB
    // writes that overwrite one map entry, so the document itself stays small.
    let writer = Doc::new();
    let map = writer.get_or_insert_map("m");
    for i in 0..400u64 {
        let update = {
            let mut txn = writer.transact_mut();
            map.insert(&mut txn, "big", format!("{i:03}").repeat(33_000));
            txn.encode_update_v1()
        };
        let (status, body) = post_update(&server, "hoard", update).await;
        assert_eq!(status, 200, "{body}");
        let event = reader.next_doc_event().await;
        assert_eq!(event.id, Some(i + 1));
    }
    // Ended for its bytes, long before its 4,096-event channel could fill.
    server.wait_for_log("limit reached in bytes").await;
    drop(stalled);
}

/// The per-session budget counts bytes as well as frames: a few large frames past
/// `session_bytes_burst` close the session (1008) long before the frame budget would.
#[actix_rt::test]
async fn a_session_over_its_byte_budget_is_closed_with_1008() {
    let dir = tempdir();
    let args = [
        "--max-frame-bytes",
        "1000000",
        "--session-bytes-rate",
        "100000",
        "--session-bytes-burst",
        "2000000",
    ];
    let server = TestServer::start(dir.path(), &args);
    let mut client = common::YClient::connect(&server, "bytes").await;
    client.until("synced", |c| c.synced).await;
    for i in 0..5 {
        if !client
            .try_send(common::sync_frame(
                2,
                &HttpWriter::new().append("t", &format!("{i}").repeat(900_000)),
            ))
            .await
        {
            break;
        }
    }
    assert_eq!(client.until_closed().await, Some(1008));
    server
        .wait_for_log("bytes/s (burst 2000000), closing")
        .await;
}

/// Cheap requests cost no heavy work: full states are encoded once per seq and shared
/// (joins, `/state`, snapshots for SSE and polls), and metadata never encodes the document.
#[actix_rt::test]
async fn reads_between_writes_share_one_encoding_of_the_document() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let writer = HttpWriter::new();
    let (status, _) = post_update(&server, "shared", writer.append("t", "hello")).await;
    assert_eq!(status, 200);
    let encodes = "collabd_state_encodes_total";
    let before = server.metric(encodes).await;
    for _ in 0..20 {
        server.state("shared").await;
        let (status, _) = server.get_json("/rooms/shared").await;
        assert_eq!(status, 200);
        let (status, _) = server.get_json("/rooms/shared/updates").await; // a snapshot
        assert_eq!(status, 200);
        let mut joiner = common::YClient::connect(&server, "shared").await;
        joiner.until("synced", |c| c.synced).await;
        joiner.close().await;
    }
    assert_eq!(server.metric(encodes).await - before, 1.0);
    // A write makes the next read encode again, once.
    post_update(&server, "shared", writer.append("t", "!")).await;
    for _ in 0..5 {
        server.state("shared").await;
    }
    assert_eq!(server.metric(encodes).await - before, 2.0);
}
