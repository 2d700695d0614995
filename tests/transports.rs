//! Every transport on one seq cursor: SSE with Last-Event-ID resume, long polling,
//! polling, HTTP POST writes, WebSocket write acks. Real server, real clients.

mod common;

use std::collections::BTreeSet;

use common::{
    HttpWriter, SseClient, SseEvent, TestServer, YClient, apply, b64, post_update, text_of,
};
use yrs::Doc;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Applies a snapshot or update event to `doc`; returns its id.
fn apply_event(doc: &Doc, event: &SseEvent) -> u64 {
    assert!(
        matches!(event.kind.as_str(), "snapshot" | "update"),
        "{event:?}"
    );
    apply(doc, &b64(&event.data));
    event.id.expect("document events carry an id")
}

#[actix_rt::test]
async fn sse_resumes_from_last_event_id_with_every_missed_update_exactly_once() {
    let dir = tempdir();
    // Replay in pages of 7, so that the resume below spans several.
    let server = TestServer::start(dir.path(), &["--poll-batch-limit", "7"]);
    let room = "sse/resume";
    let mut ws = YClient::connect(&server, room).await;
    ws.until("synced", |c| c.synced).await;
    let poster = HttpWriter::new();

    let mut sse = SseClient::connect(&server, room, None).await;
    let reader = Doc::new();
    let first = sse.next_doc_event().await;
    assert_eq!((first.kind.as_str(), first.id), ("snapshot", Some(0)));
    assert!(sse.retry.is_some(), "no retry hint");
    apply_event(&reader, &first);

    // Writes over WebSocket and POST, interleaved.
    for i in 0..10 {
        ws.append("t", &format!("w{i} ")).await;
        let (status, _) = post_update(&server, room, poster.append("t", &format!("p{i} "))).await;
        assert_eq!(status, 200);
    }
    let mut last = 0;
    while last < 20 {
        let event = sse.next_doc_event().await;
        assert_eq!(event.kind, "update");
        let id = apply_event(&reader, &event);
        assert_eq!(id, last + 1, "ids must arrive in seq order without gaps");
        last = id;
    }
    assert_eq!(sse.synced, [0], "synced follows the snapshot, once");

    // The reader goes away; writing continues.
    drop(sse);
    for i in 10..20 {
        ws.append("t", &format!("w{i} ")).await;
        post_update(&server, room, poster.append("t", &format!("p{i} "))).await;
    }
    server.wait_for_seq(room, 40).await;

    let mut sse = SseClient::connect(&server, room, Some(&last.to_string())).await;
    let mut seen = BTreeSet::new();
    while last < 40 {
        let event = sse.next_doc_event().await;
        assert_eq!(
            event.kind, "update",
            "a resumable cursor must not get a snapshot"
        );
        let id = apply_event(&reader, &event);
        assert!(seen.insert(id), "update {id} arrived twice");
        assert_eq!(id, last + 1);
        last = id;
    }
    // Then live ones.
    post_update(&server, room, poster.append("t", "live")).await;
    let event = sse.next_doc_event().await;
    assert_eq!(apply_event(&reader, &event), 41);
    assert_eq!(
        sse.synced,
        [40],
        "synced ends the paged replay, before live updates"
    );

    let (server_doc, seq) = server.state(room).await;
    assert_eq!(seq, 41);
    assert_eq!(text_of(&reader, "t"), text_of(&server_doc, "t"));
    assert!(text_of(&reader, "t").contains("p19 ") && text_of(&reader, "t").contains("w19 "));
}

#[actix_rt::test]
async fn sse_sends_a_snapshot_when_replay_is_impossible_and_400_for_a_bad_id() {
    let dir = tempdir();
    let server = TestServer::start(
        dir.path(),
        &["--snapshot-every", "10", "--replay-window", "10"],
    );
    let room = "sse/window";
    let writer = HttpWriter::new();
    for i in 0..50 {
        post_update(&server, room, writer.append("t", &format!("{i},"))).await;
    }
    let expected = text_of(&writer.doc, "t");

    // Older than the retained log, and from the future (e.g. the data dir was replaced).
    for id in ["3", "999"] {
        let mut sse = SseClient::connect(&server, room, Some(id)).await;
        let event = sse.next_doc_event().await;
        assert_eq!(
            (event.kind.as_str(), event.id),
            ("snapshot", Some(50)),
            "id {id}"
        );
        let doc = Doc::new();
        apply_event(&doc, &event);
        assert_eq!(text_of(&doc, "t"), expected);
    }

    // Inside the window: exactly the rest, via ?since as well.
    let by_query = SseClient::open(&server, &format!("/rooms/{room}/events?since=47"), None).await;
    let by_header = SseClient::connect(&server, room, Some("47")).await;
    for mut sse in [by_query, by_header] {
        for want in 48..=50 {
            let event = sse.next_doc_event().await;
            assert_eq!((event.kind.as_str(), event.id), ("update", Some(want)));
        }
    }

    let mut res = awc::Client::new()
        .get(server.url(&format!("/rooms/{room}/events")))
        .insert_header(("Last-Event-ID", "12abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    assert_eq!(body["error"], "bad_cursor");
}

#[actix_rt::test]
async fn sse_shows_awareness_to_read_only_viewers() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut ws = YClient::connect(&server, "sse/presence").await;
    ws.until("synced", |c| c.synced).await;
    let mut sse = SseClient::connect(&server, "sse/presence", None).await;
    assert_eq!(sse.next().await.kind, "snapshot");
    ws.set_awareness(r#"{"user":"viewer-sees-me"}"#).await;
    let event = sse.next().await;
    assert_eq!((event.kind.as_str(), event.id), ("awareness", None));
    let update = b64(&event.data);
    assert!(String::from_utf8_lossy(&update).contains("viewer-sees-me"));
}

#[actix_rt::test]
async fn sse_heartbeats_keep_the_stream_alive() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--sse-heartbeat-ms", "50"]);
    let mut sse = SseClient::connect(&server, "sse/beat", None).await;
    assert_eq!(sse.next().await.kind, "snapshot");
    // The next event comes after heartbeats: wait for one, then check they were counted.
    let writer = HttpWriter::new();
    while sse.heartbeats < 2 {
        let poll = actix_rt::time::timeout(std::time::Duration::from_millis(500), sse.next());
        let _ = poll.await;
    }
    post_update(&server, "sse/beat", writer.append("t", "x")).await;
    assert_eq!(sse.next_doc_event().await.id, Some(1));
}

async fn poll(server: &TestServer, room: &str, query: &str) -> (u16, serde_json::Value) {
    server
        .get_json(&format!("/rooms/{room}/updates?{query}"))
        .await
}

fn update_seqs(answer: &serde_json::Value) -> Vec<u64> {
    answer["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["seq"].as_u64().unwrap())
        .collect()
}

#[actix_rt::test]
async fn long_polling_returns_waits_wakes_and_times_out() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let room = "poll/basic";
    let writer = HttpWriter::new();
    for i in 0..3 {
        post_update(&server, room, writer.append("t", &i.to_string())).await;
    }

    // Updates exist: answered at once even with a long wait.
    let (status, answer) = poll(&server, room, "since=0&wait=30").await;
    assert_eq!(status, 200);
    assert_eq!(update_seqs(&answer), vec![1, 2, 3]);
    assert_eq!(answer["seq"], 3);
    let doc = Doc::new();
    for u in answer["updates"].as_array().unwrap() {
        apply(&doc, &b64(u["update"].as_str().unwrap()));
    }
    assert_eq!(text_of(&doc, "t"), "012");

    // Nothing new: held, and woken by a write. Several pollers wait on one room.
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let url = server.url(&format!("/rooms/{room}/updates?since=3&wait=30"));
            actix_rt::spawn(async move {
                let mut res = awc::Client::builder()
                    .timeout(std::time::Duration::from_secs(60))
                    .finish()
                    .get(url)
                    .send()
                    .await
                    .unwrap();
                let body = res.body().await.unwrap();
                serde_json::from_slice::<serde_json::Value>(&body).unwrap()
            })
        })
        .collect();
    server.wait_for_log("long poll held").await;
    post_update(&server, room, writer.append("t", "3")).await;
    for poller in pollers {
        let answer = poller.await.unwrap();
        assert_eq!(update_seqs(&answer), vec![4]);
    }

    // Nothing new within the wait: an empty answer with the current seq.
    let (_, answer) = poll(&server, room, "since=4&wait=0.2").await;
    assert_eq!(
        (update_seqs(&answer), &answer["seq"]),
        (vec![], &serde_json::json!(4))
    );

    // Plain polling.
    let (_, answer) = poll(&server, room, "since=2&wait=0").await;
    assert_eq!(update_seqs(&answer), vec![3, 4]);
    let (_, answer) = poll(&server, room, "since=2").await;
    assert_eq!(update_seqs(&answer), vec![3, 4]);

    // No cursor, or one from the future: a snapshot.
    for query in ["", "since=99"] {
        let (_, answer) = poll(&server, room, query).await;
        assert_eq!(answer["seq"], 4);
        let doc = Doc::new();
        apply(&doc, &b64(answer["snapshot"].as_str().unwrap()));
        assert_eq!(text_of(&doc, "t"), "0123");
    }

    for query in ["since=-1", "since=1&wait=soon", "since=1&wait=-2"] {
        let (status, answer) = poll(&server, room, query).await;
        assert_eq!(status, 400, "{query}");
        assert!(answer["error"].as_str().unwrap().starts_with("bad_"));
    }
}

#[actix_rt::test]
async fn polling_continues_in_batches() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--poll-batch-limit", "10"]);
    let room = "poll/batches";
    let writer = HttpWriter::new();
    for i in 0..25 {
        post_update(&server, room, writer.append("t", &format!("{i};"))).await;
    }
    let doc = Doc::new();
    let mut since = 0;
    let mut batches = Vec::new();
    loop {
        let (_, answer) = poll(&server, room, &format!("since={since}")).await;
        assert_eq!(answer["seq"], 25);
        let updates = answer["updates"].as_array().unwrap();
        if updates.is_empty() {
            break;
        }
        batches.push(updates.len());
        for u in updates {
            apply(&doc, &b64(u["update"].as_str().unwrap()));
            since = u["seq"].as_u64().unwrap();
        }
    }
    assert_eq!(batches, vec![10, 10, 5]);
    assert_eq!(text_of(&doc, "t"), text_of(&writer.doc, "t"));
}

#[actix_rt::test]
async fn posts_of_bad_or_oversized_updates_are_refused_and_change_nothing() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--max-frame-bytes", "1000"]);
    let room = "post/guard";
    let writer = HttpWriter::new();
    let (status, answer) = post_update(&server, room, writer.append("t", "good")).await;
    assert_eq!((status, &answer["seq"]), (200, &serde_json::json!(1)));

    for bad in [vec![0xff, 0xff, 0xff], b"not an update".to_vec(), vec![]] {
        let (status, answer) = post_update(&server, room, bad).await;
        assert_eq!(status, 400);
        assert_eq!(answer["error"], "bad_update");
    }
    let (status, answer) = post_update(&server, room, writer.append("t", &"x".repeat(2000))).await;
    assert_eq!(status, 413);
    assert_eq!(answer["error"], "payload_too_large");

    let (doc, seq) = server.state(room).await;
    assert_eq!((text_of(&doc, "t").as_str(), seq), ("good", 1));
    // A no-op POST (what the room has already) is answered without a new seq.
    let everything = {
        use yrs::{ReadTxn, StateVector, Transact};
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let (status, answer) = post_update(&server, room, everything).await;
    assert_eq!((status, &answer["seq"]), (200, &serde_json::json!(1)));
    let (status, answer) = server
        .get_json(&format!("/rooms/{room}/nothing-here"))
        .await;
    assert_eq!(
        status, 200,
        "an unknown suffix is part of the room name: {answer}"
    );
}

#[actix_rt::test]
async fn state_as_json_renders_root_types() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let doc = Doc::new();
    let update = {
        use yrs::{Array, Map, Text, Transact};
        // Root refs first: yrs cannot create them while a transaction is open.
        let (body, meta, tags) = (
            doc.get_or_insert_text("body"),
            doc.get_or_insert_map("meta"),
            doc.get_or_insert_array("tags"),
        );
        let mut txn = doc.transact_mut();
        body.push(&mut txn, "hello");
        meta.insert(&mut txn, "title", "Notes");
        tags.push_back(&mut txn, "a");
        txn.encode_update_v1()
    };
    post_update(&server, "json", update).await;
    for path in ["/rooms/json/state?format=json", "/rooms/json/json"] {
        let (status, value) = server.get_json(path).await;
        assert_eq!(status, 200);
        assert_eq!(
            value,
            serde_json::json!({"body": "hello", "meta": {"title": "Notes"}, "tags": ["a"]})
        );
    }
    let (status, _) = server.get_json("/rooms/json/state?format=xml").await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn websocket_writers_get_acks_once_durable_and_acked_updates_survive_kill_9() {
    let dir = tempdir();
    let mut server = TestServer::start(dir.path(), &[]);
    let mut writer = YClient::connect(&server, "acks").await;
    writer.until("synced", |c| c.synced).await;
    for i in 0..30 {
        writer.append("t", &format!("{i}.")).await;
    }
    writer.request_ack(7).await;
    writer.until("ack 7", |c| !c.acks.is_empty()).await;
    assert_eq!(writer.acks[0], (7, 30, true));
    let acked = writer.text("t");

    server.kill();
    let server = TestServer::start(dir.path(), &[]);
    let (doc, seq) = server.state("acks").await;
    assert_eq!(seq, 30);
    assert_eq!(text_of(&doc, "t"), acked);
}

#[actix_rt::test]
async fn websocket_sse_long_poll_and_post_clients_end_identical() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let room = "mixed";
    let mut ws = YClient::connect(&server, room).await;
    ws.until("synced", |c| c.synced).await;
    let mut sse = SseClient::connect(&server, room, None).await;
    let sse_doc = Doc::new();
    apply_event(&sse_doc, &sse.next_doc_event().await);
    let poster = HttpWriter::new();

    // A long-poll client in the background, following the cursor until seq 300.
    let poll_url = server.url(&format!("/rooms/{room}/updates"));
    let poller = actix_rt::spawn(async move {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .finish();
        let doc = Doc::new();
        let mut since = 0u64;
        while since < 300 {
            let mut res = client
                .get(format!("{poll_url}?since={since}&wait=10"))
                .send()
                .await
                .unwrap();
            let answer: serde_json::Value =
                serde_json::from_slice(&res.body().limit(1 << 24).await.unwrap()).unwrap();
            for u in answer["updates"].as_array().unwrap() {
                let seq = u["seq"].as_u64().unwrap();
                assert_eq!(seq, since + 1, "long poll skipped or repeated a seq");
                apply(&doc, &b64(u["update"].as_str().unwrap()));
                since = seq;
            }
        }
        text_of(&doc, "t")
    });

    for i in 0..150 {
        ws.append("t", &format!("w{i} ")).await;
        let (status, _) = post_update(&server, room, poster.append("t", &format!("p{i} "))).await;
        assert_eq!(status, 200);
    }
    server.wait_for_seq(room, 300).await;

    let mut last = 0;
    while last < 300 {
        let id = apply_event(&sse_doc, &sse.next_doc_event().await);
        assert_eq!(id, last + 1);
        last = id;
    }
    let polled = poller.await.unwrap();
    let (server_doc, _) = server.state(room).await;
    let truth = text_of(&server_doc, "t");
    ws.until("ws has everything", |c| c.text("t") == truth)
        .await;
    assert_eq!(text_of(&sse_doc, "t"), truth);
    assert_eq!(polled, truth);
    assert_eq!(truth.matches(' ').count(), 300);
}
