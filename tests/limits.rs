//! Limits and the faults they guard against: connection limits and the admission bucket
//! (503 + Retry-After), the per-session rate limit (1008), the document size limit, a
//! slow consumer (4008, memory bounded, nobody else slowed), a dead peer (heartbeat
//! timeout, 4000), and the metrics that count each.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use yrs::{Doc, Map, Transact};

async fn refused_status(server: &TestServer, room: &str) -> (u16, Option<String>) {
    match awc::Client::new().ws(server.ws_url(room)).connect().await {
        Ok(_) => (101, None),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            // awc drops the response; ask again over plain HTTP to read its headers.
            let res = awc::Client::new()
                .get(server.ws_url(room).replace("ws://", "http://"))
                .insert_header(("Upgrade", "websocket"))
                .insert_header(("Connection", "Upgrade"))
                .insert_header(("Sec-WebSocket-Version", "13"))
                .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), status);
            let retry = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status.as_u16(), retry)
        }
        Err(e) => panic!("{e}"),
    }
}

#[actix_rt::test]
async fn connection_limits_answer_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--max-connections", "5", "--max-connections-per-room", "2"],
    );
    let a1 = YClient::connect(&server, "a").await;
    let mut a2 = YClient::connect(&server, "a").await;
    a2.until("synced", |c| c.synced).await;
    let (status, retry) = refused_status(&server, "a").await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")));
    // The room limit is per room; SSE streams count too.
    let _b1 = YClient::connect(&server, "b").await;
    let _sse = SseClient::connect(&server, "b", None).await;
    let _c1 = YClient::connect(&server, "c").await;
    let (status, _) = refused_status(&server, "d").await;
    assert_eq!(status, 503, "the total limit");
    let sse = awc::Client::new()
        .get(server.url("/rooms/d/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 503);
    // A slot freed is a slot reusable.
    a1.close().await;
    server
        .wait_for_metric("collabd_connections{transport=\"ws\"}", |v| v == 3.0)
        .await;
    let mut again = YClient::connect(&server, "a").await;
    again.until("synced", |c| c.synced).await;
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"max_connections_per_room\"}")
            .await
            >= 1.0
    );
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"max_connections\"}")
            .await
            >= 2.0
    );
    server.wait_for_log("the room holds its maximum of 2").await;
}

#[actix_rt::test]
async fn the_per_ip_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-connections-per-ip", "3"]);
    let mut held = Vec::new();
    for room in ["x", "y", "z"] {
        held.push(YClient::connect(&server, room).await);
    }
    assert_eq!(refused_status(&server, "w").await, (503, Some("5".into())));
    held.pop().unwrap().close().await;
    server
        .wait_for_metric("collabd_connections{transport=\"ws\"}", |v| v == 2.0)
        .await;
    held.push(YClient::connect(&server, "w").await);
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"max_connections_per_ip\"}")
            .await
            >= 1.0
    );
}

#[actix_rt::test]
async fn the_admission_bucket_smooths_bursts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--admission-burst", "4", "--admission-rate", "1"],
    );
    // A burst of 4, then 1 per second: connecting as fast as we can runs it dry within
    // a few attempts however slow the machine is.
    let mut admitted = 0;
    let refusal = loop {
        assert!(admitted < 30, "the bucket never ran dry");
        match refused_status(&server, "z").await {
            (101, _) => admitted += 1,
            refusal => break refusal,
        }
    };
    assert_eq!(refusal, (503, Some("1".into())));
    assert!(admitted >= 4, "the burst is admitted: {admitted}");
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"admission_rate\"}")
            .await
            >= 1.0
    );
    // One token per second: a client that honours Retry-After gets in.
    let deadline = Instant::now() + PATIENCE;
    loop {
        actix_rt::time::sleep(Duration::from_millis(1100)).await;
        if refused_status(&server, "z").await.0 == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "never admitted");
    }
}

#[actix_rt::test]
async fn a_flooding_session_is_closed_with_1008_and_the_room_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--session-rate", "20", "--session-burst", "50"],
    );
    let mut calm = YClient::connect(&server, "flood").await;
    calm.append("t", "calm").await;
    let mut flood = YClient::connect(&server, "flood").await;
    flood.until("synced", |c| c.synced).await;
    let mut sent = 0;
    while flood.try_send(vec![3u8]).await && sent < 10_000 {
        sent += 1;
    }
    assert_eq!(flood.until_closed().await, Some(1008));
    assert!(sent >= 50, "the burst is allowed: {sent}");
    server.wait_for_log("closing").await;
    calm.append("t", "!").await;
    server.wait_for_seq("flood", 2).await;
    let mut late = YClient::connect(&server, "flood").await;
    late.until("state", |c| c.text("t") == "calm!").await;
    assert_eq!(
        server
            .metric("collabd_sessions_closed_total{code=\"1008\"}")
            .await,
        1.0
    );
}

#[actix_rt::test]
async fn writes_past_the_document_size_limit_are_refused_and_the_room_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-doc-bytes", "4000"]);
    let mut ws = YClient::connect(&server, "big").await;
    ws.append("t", &"a".repeat(2000)).await;
    server.wait_for_seq("big", 1).await;
    // Over WebSocket: refused with permission denied, the session stays open.
    ws.append("t", &"b".repeat(3000)).await;
    ws.until("denied", |c| !c.denied.is_empty()).await;
    assert!(
        ws.denied[0].contains("size limit of 4000"),
        "{:?}",
        ws.denied
    );
    // Over HTTP: 413 with a JSON error.
    let http = HttpWriter::new();
    let (status, body) = post_update(&server, "big", http.append("u", &"c".repeat(3000))).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "document_too_large");
    // Readable, unchanged, and small writes still fit.
    let (doc, seq) = server.state("big").await;
    assert_eq!((text_of(&doc, "t"), seq), ("a".repeat(2000), 1));
    let small = HttpWriter::new();
    let (status, _) = post_update(&server, "big", small.append("s", "ok")).await;
    assert_eq!(status, 200);
    assert_eq!(server.state("big").await.1, 2);
    // The WebSocket client sent its refused edit twice (as an update, then again in its
    // sync step 2 answering the server's step 1), plus the POST.
    server
        .wait_for_metric(
            "collabd_updates_rejected_total{reason=\"doc_too_large\"}",
            |v| v == 3.0,
        )
        .await;
}

/// A client that stops reading is closed once its queue passes the bound; the room's
/// other clients get every update meanwhile; server memory stays bounded; the slow client
/// reconnects and loses nothing.
#[actix_rt::test]
async fn a_slow_consumer_is_closed_without_slowing_the_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--outbound-queue-messages",
            "256",
            "--outbound-queue-bytes",
            "1048576",
            "--max-frame-bytes",
            "1048576",
            "--session-burst",
            "100000",
        ],
    );
    let room = "slow";
    let mut slow = RawClient::connect(&server, room);
    let mut writer = YClient::connect(&server, room).await;
    let mut fast = YClient::connect(&server, room).await;
    fast.until("synced", |c| c.synced).await;
    let rss_before = server.rss_bytes();

    // 64 KiB per update; loopback buffers hold a few MiB, so the slow client's queue
    // fills after some tens of updates. Writing stops once it is closed.
    let chunk = "x".repeat(64 * 1024);
    let mut written = 0;
    let mut closed_at = None;
    while written < 2_000 {
        writer.append("t", &chunk).await;
        written += 1;
        if written % 16 == 0 {
            fast.until("caught up", |c| text_len(c) == written * chunk.len())
                .await;
            let closed = server
                .metric("collabd_sessions_closed_total{code=\"4008\"}")
                .await;
            if closed >= 1.0 {
                closed_at = Some(written);
                break;
            }
        }
    }
    let closed_at = closed_at.expect("the slow consumer was never closed");
    eprintln!("slow consumer closed after {closed_at} updates of 64 KiB");
    server.wait_for_log("closing slow consumer").await;
    assert!(
        server.rss_bytes() < rss_before + 256 * 1024 * 1024,
        "server memory grew without bound"
    );
    server
        .wait_for_metric("collabd_outbound_queued_bytes", |v| v == 0.0)
        .await;
    // The slow socket sees the data it was sent and then the end of the connection.
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let mut received = 0usize;
    loop {
        match slow.stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) => panic!("slow client read: {e} after {received} bytes"),
        }
    }
    assert!(received > 0);
    // Reconnecting (as y-websocket does) brings everything back.
    let mut back = YClient::connect(&server, room).await;
    back.until("full state", |c| text_len(c) == closed_at * chunk.len())
        .await;
    assert_eq!(back.text("t"), fast.text("t"));
}

fn text_len(client: &YClient) -> usize {
    client.text("t").len()
}

/// A peer that vanishes without closing (no FIN, no pongs) is found by the heartbeat:
/// its session is closed with 4000 and its presence removed for everyone else.
#[actix_rt::test]
async fn a_dead_peer_is_detected_by_heartbeat_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--heartbeat-interval-ms",
            "200",
            "--client-timeout-ms",
            "1000",
        ],
    );
    let room = "dead";
    let mut observer = YClient::connect(&server, room).await;
    observer.until("synced", |c| c.synced).await;

    let mut ghost = RawClient::connect(&server, room);
    let mut ghost_awareness = yrs::sync::Awareness::new(Doc::with_client_id(4242));
    ghost_awareness.set_local_state_raw(r#"{"user":"ghost"}"#);
    ghost.send_binary(&awareness_frame(&ghost_awareness.update().unwrap()));
    observer
        .until("the ghost's presence", |c| {
            c.awareness_clients().contains(&4242)
        })
        .await;
    // From here the ghost neither reads nor writes; the observer answers pings.
    observer
        .until("the ghost's presence removed", |c| {
            !c.awareness_clients().contains(&4242)
        })
        .await;
    server.wait_for_log("client timed out").await;
    let (_, info) = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(info["connections"], 1, "{info}");
    assert_eq!(
        server
            .metric("collabd_sessions_closed_total{code=\"4000\"}")
            .await,
        1.0
    );
    // The observer, answering pings, outlived several timeouts.
    let map = observer.doc().get_or_insert_map("m");
    let update = {
        let mut txn = observer.doc().transact_mut();
        map.insert(&mut txn, "alive", true);
        txn.encode_update_v1()
    };
    observer.send_raw(sync_frame(2, &update)).await;
    server.wait_for_seq(room, 1).await;
    drop(ghost);
}

/// Every counter the operator relies on moves when its event happens.
#[actix_rt::test]
async fn metrics_count_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--snapshot-every", "5"]);
    let mut a = YClient::connect(&server, "m").await;
    let mut b = YClient::connect(&server, "m").await;
    b.until("synced", |c| c.synced).await;
    for i in 0..6 {
        a.append("t", &i.to_string()).await;
    }
    b.until("all updates", |c| c.text("t") == "012345").await;
    let (status, _) = post_update(&server, "m", vec![0xff, 0x01]).await;
    assert_eq!(status, 400);
    server.wait_for_seq("m", 6).await;
    let _sse = SseClient::connect(&server, "m", Some("0")).await;

    let m = |name: &'static str| server.metric(name);
    assert_eq!(m("collabd_connections{transport=\"ws\"}").await, 2.0);
    assert_eq!(m("collabd_connections{transport=\"sse\"}").await, 1.0);
    assert_eq!(m("collabd_rooms_loaded").await, 1.0);
    assert_eq!(m("collabd_room_load_seconds_count").await, 1.0);
    assert_eq!(m("collabd_updates_accepted_total").await, 6.0);
    assert_eq!(
        m("collabd_updates_rejected_total{reason=\"invalid\"}").await,
        1.0
    );
    assert!(m("collabd_fanout_frames_total").await >= 6.0);
    assert!(m("collabd_bytes_in_total{transport=\"ws\"}").await > 0.0);
    assert!(m("collabd_bytes_out_total{transport=\"ws\"}").await > 0.0);
    assert!(m("collabd_bytes_out_total{transport=\"sse\"}").await > 0.0);
    assert_eq!(m("collabd_oplog_append_seconds_count").await, 6.0);
    assert!(m("collabd_oplog_flush_seconds_count").await >= 1.0);
    assert_eq!(m("collabd_snapshot_seconds_count").await, 1.0);
    server
        .wait_for_metric("collabd_compaction_seconds_count", |v| v == 1.0)
        .await;
    a.close().await;
    server
        .wait_for_metric("collabd_sessions_closed_total{code=\"1000\"}", |v| v == 1.0)
        .await;
    server
        .wait_for_metric("collabd_connections{transport=\"ws\"}", |v| v == 1.0)
        .await;
}

/// Behind a trusted proxy (`--trusted-proxies`), the per-IP limits count each client by
/// the rightmost `X-Forwarded-For` address that is not a trusted proxy; without it, the
/// header is ignored and every request counts against the proxy's own address.
#[actix_rt::test]
async fn per_ip_limits_count_clients_behind_a_trusted_proxy() {
    async fn sse(
        server: &TestServer,
        forwarded: &str,
    ) -> (
        u16,
        Option<awc::ClientResponse<impl futures_util::Stream + use<>>>,
    ) {
        let res = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish()
            .get(server.url("/rooms/proxied/events"))
            .insert_header(("X-Forwarded-For", forwarded))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, (status == 200).then_some(res))
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--trusted-proxies",
            "127.0.0.1,10.9.0.0/16",
            "--max-connections-per-ip",
            "1",
        ],
    );
    let (status, _one) = sse(&server, "192.0.2.1").await;
    assert_eq!(status, 200);
    let (status, _) = sse(&server, "192.0.2.1").await;
    assert_eq!(status, 503, "the same client twice");
    let (status, _two) = sse(&server, "192.0.2.2").await;
    assert_eq!(status, 200, "another client behind the same proxy");
    // A chain: the client, then a second trusted proxy. What the client itself wrote to
    // the left of its own address counts for nothing.
    let (status, _) = sse(&server, "198.51.100.7, 192.0.2.1, 10.9.0.5").await;
    assert_eq!(
        status, 503,
        "192.0.2.1 again, through another proxy of ours"
    );
    let (status, _three) = sse(&server, "192.0.2.1, 192.0.2.3").await;
    assert_eq!(status, 200, "the nearest untrusted hop is the client");
    drop(server);

    // Not trusted: the header means nothing.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-connections-per-ip", "1"]);
    let (status, _one) = sse(&server, "192.0.2.1").await;
    assert_eq!(status, 200);
    let (status, _) = sse(&server, "192.0.2.2").await;
    assert_eq!(status, 503, "every request is the proxy's");

    // A bad list is refused at startup.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collabd"))
        .args(["--trusted-proxies", "10.0.0.0/40"])
        .env("COLLABD_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trusted_proxies"));
}
