//! The core server, black-box: the real binary, real WebSocket clients built on yrs.

mod common;

use std::time::Duration;

use common::{TestServer, YClient, sync_frame, text_of, write_var};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[actix_rt::test]
async fn two_clients_converge() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "pair").await;
    let mut b = YClient::connect(&server, "pair").await;
    a.until("a synced", |c| c.synced).await;
    b.until("b synced", |c| c.synced).await;

    a.insert("t", 0, "hello ").await;
    b.insert("t", 0, "world ").await;
    a.until("b's edit at a", |c| c.text("t").contains("world"))
        .await;
    b.until("a's edit at b", |c| c.text("t").contains("hello"))
        .await;
    assert_eq!(a.text("t"), b.text("t"));
    assert_eq!(a.text("t").len(), 12);

    let (doc, _) = server.state("pair").await;
    assert_eq!(text_of(&doc, "t"), a.text("t"));
}

#[actix_rt::test]
async fn late_joiner_gets_the_full_state() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "docs/late").await;
    for i in 0..50 {
        a.append("t", &format!("{i},")).await;
    }
    server.wait_for_seq("docs/late", 50).await;

    let mut late = YClient::connect(&server, "docs/late").await;
    late.until("late joiner synced", |c| c.synced).await;
    assert_eq!(late.text("t"), a.text("t"));
    assert!(late.text("t").starts_with("0,1,2,"));
}

#[actix_rt::test]
async fn awareness_is_shared_echoed_and_removed_on_disconnect() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "presence").await;
    let mut b = YClient::connect(&server, "presence").await;
    a.until("a synced", |c| c.synced).await;
    b.until("b synced", |c| c.synced).await;

    a.set_awareness(r#"{"user":{"name":"ann"}}"#).await;
    let a_id = a.client_id();
    b.until("a's presence at b", |c| {
        c.awareness_clients().contains(&a_id)
    })
    .await;
    let seen: serde_json::Value = b.awareness.state(yrs::ClientID::new(a_id)).unwrap();
    assert_eq!(seen["user"]["name"], "ann");

    // The sender gets its own state back: a lone y-websocket client counts on that echo.
    let mut echo = YClient::connect(&server, "presence").await;
    echo.until("echo synced", |c| c.synced).await;
    echo.set_awareness(r#"{"user":{"name":"echo"}}"#).await;
    let echo_id = echo.client_id();
    echo.until("the echo of its own state", |c| {
        c.awareness_heard.contains(&echo_id)
    })
    .await;
    let (_, room) = server.get_json("/rooms/presence").await;
    assert_eq!(room["connections"], 3);
    a.until("echo's presence at a", |c| {
        c.awareness_clients().contains(&echo_id)
    })
    .await;

    // Query awareness (message type 3) is answered with everyone's state.
    let mut asker = YClient::connect(&server, "presence").await;
    asker.until("asker synced", |c| c.synced).await;
    asker.drain_for(Duration::from_millis(50)).await;
    asker.awareness_heard.clear();
    asker.send_raw(vec![3]).await;
    asker
        .until("the answer to query awareness", |c| {
            c.awareness_heard.contains(&a_id) && c.awareness_heard.contains(&echo_id)
        })
        .await;

    a.close().await;
    b.until("a's presence removed", |c| {
        !c.awareness_clients().contains(&a_id)
    })
    .await;
    assert!(b.awareness_clients().contains(&echo_id));
}

#[actix_rt::test]
async fn one_frame_may_carry_several_messages() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "multi").await;
    let mut b = YClient::connect(&server, "multi").await;
    a.until("a synced", |c| c.synced).await;
    b.until("b synced", |c| c.synced).await;
    let update = {
        use yrs::{Text, Transact};
        let text = a.doc().get_or_insert_text("t");
        let mut txn = a.doc().transact_mut();
        text.insert(&mut txn, 0, "both");
        txn.encode_update_v1()
    };
    a.awareness.set_local_state_raw(r#"{"in":"one frame"}"#);
    let mut frame = sync_frame(2, &update);
    frame.extend(common::awareness_frame(&a.awareness.update().unwrap()));
    a.send_raw(frame).await;
    let a_id = a.client_id();
    b.until("update and awareness from one frame", |c| {
        c.text("t") == "both" && c.awareness_clients().contains(&a_id)
    })
    .await;
}

#[actix_rt::test]
async fn awareness_not_renewed_expires() {
    let dir = tempdir();
    // The 30 s default, shortened: the same code path, no 30 s sleep.
    let server = TestServer::start(dir.path(), &["--awareness-timeout-ms", "400"]);
    let mut a = YClient::connect(&server, "expiry").await;
    let mut b = YClient::connect(&server, "expiry").await;
    a.until("a synced", |c| c.synced).await;
    a.set_awareness(r#"{"cursor":1}"#).await;
    let a_id = a.client_id();
    b.until("a's presence at b", |c| {
        c.awareness_clients().contains(&a_id)
    })
    .await;
    // a stays connected but never renews: the server must expire the state and say so.
    b.until("a's presence expired", |c| {
        !c.awareness_clients().contains(&a_id)
    })
    .await;
    server.wait_for_log("awareness states expired").await;
    let (_, room) = server.get_json("/rooms/expiry").await;
    assert_eq!(room["awareness"], 0);
    assert_eq!(room["connections"], 2);
}

#[actix_rt::test]
async fn malformed_frames_close_only_that_session() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "guarded").await;
    let mut b = YClient::connect(&server, "guarded").await;
    a.until("a synced", |c| c.synced).await;
    b.until("b synced", |c| c.synced).await;
    a.insert("t", 0, "safe").await;
    b.until("b has a's text", |c| c.text("t") == "safe").await;
    server.wait_for_seq("guarded", 1).await;

    let mut truncated = sync_frame(2, b"0123456789");
    truncated.truncate(6);
    // [sync, update, len 5, garbage]: frames fine, the update inside does not decode.
    let undecodable = sync_frame(2, &[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let overlong = vec![0xff; 11];
    let mut unknown_sync = vec![0];
    write_var(&mut unknown_sync, 7);
    for frame in [truncated, undecodable, overlong, unknown_sync, vec![]] {
        let mut bad = YClient::connect(&server, "guarded").await;
        bad.until("bad synced", |c| c.synced).await;
        bad.send_raw(frame.clone()).await;
        assert_eq!(bad.until_closed().await, Some(1007), "frame {frame:?}");
    }
    let mut texter = YClient::connect(&server, "guarded").await;
    texter.send_text_frame("hello?").await;
    assert_eq!(texter.until_closed().await, Some(1003));
    server.wait_for_log("malformed frame").await;

    // The room and its other sessions are untouched and still work.
    b.insert("t", 4, "!").await;
    a.until("b's edit at a", |c| c.text("t") == "safe!").await;
    server.wait_for_seq("guarded", 2).await;
    let (doc, seq) = server.state("guarded").await;
    assert_eq!(text_of(&doc, "t"), "safe!");
    assert_eq!(seq, 2);
}

#[actix_rt::test]
async fn oversized_frames_close_with_1009_and_large_documents_sync() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--max-frame-bytes", "2000000"]);
    let mut a = YClient::connect(&server, "big").await;
    let mut b = YClient::connect(&server, "big").await;
    a.until("a synced", |c| c.synced).await;
    b.until("b synced", |c| c.synced).await;

    let large = "x".repeat(1_500_000);
    a.insert("t", 0, &large).await;
    b.until("1.5 MB at b", |c| c.text("t").len() == large.len())
        .await;
    let mut late = YClient::connect(&server, "big").await;
    late.until("1.5 MB at a late joiner", |c| c.synced).await;
    assert_eq!(late.text("t").len(), large.len());

    let mut huge = YClient::connect(&server, "big").await;
    huge.until("huge synced", |c| c.synced).await;
    huge.insert("t", 0, &"y".repeat(2_100_000)).await;
    assert_eq!(huge.until_closed().await, Some(1009));
    let (doc, _) = server.state("big").await;
    assert_eq!(
        text_of(&doc, "t").len(),
        large.len(),
        "the refused frame changed the room"
    );
}

#[actix_rt::test]
async fn an_update_the_room_already_has_is_not_logged_again() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "dedup").await;
    a.until("a synced", |c| c.synced).await;
    a.insert("t", 0, "once").await;
    server.wait_for_seq("dedup", 1).await;
    let doc = a.doc().clone();
    a.close().await;

    // Reconnect with the same document: the client's sync step 2 re-sends everything.
    let mut again = YClient::connect_with(&server, "dedup", doc).await;
    again.until("synced again", |c| c.synced).await;
    let everything = {
        use yrs::{ReadTxn, StateVector, Transact};
        again
            .doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    again.send_raw(sync_frame(2, &everything)).await;
    again.insert("t", 4, "+").await;
    server.wait_for_seq("dedup", 2).await;
    again.drain_for(Duration::from_millis(100)).await;
    assert_eq!(server.seq("dedup").await, 2, "a repeated update got a seq");
    assert_eq!(text_of(&server.state("dedup").await.0, "t"), "once+");
}

#[actix_rt::test]
async fn bad_room_names_get_a_json_400() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    for path in [
        "/rooms/a%00b",
        "/rooms/%ff",
        &format!("/rooms/{}", "n".repeat(300)),
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"], "bad_room_name");
    }
    let (status, body) = server.get_json("/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[actix_rt::test]
async fn an_idle_room_is_evicted_and_reloads_identical() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--room-idle-ms", "200"]);
    let mut a = YClient::connect(&server, "idle").await;
    a.until("a synced", |c| c.synced).await;
    for word in ["one ", "two ", "three"] {
        a.append("t", word).await;
    }
    a.insert("m", 0, "map-ish").await;
    server.wait_for_seq("idle", 4).await;
    let before = a.text("t");
    a.close().await;

    server.wait_for_log("room \"idle\" evicted").await;
    let (doc, seq) = server.state("idle").await;
    assert_eq!(text_of(&doc, "t"), before);
    assert_eq!(text_of(&doc, "m"), "map-ish");
    assert_eq!(seq, 4);
    let loads = server
        .logs()
        .iter()
        .filter(|l| l.contains("room \"idle\" loaded"))
        .count();
    assert_eq!(loads, 2, "the room was not reloaded from the store");
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("room \"idle\" loaded: seq 4, snapshot at 4, 0 records")),
        "eviction should leave a snapshot so the reload replays nothing"
    );
}

#[actix_rt::test]
async fn restart_restores_every_room_and_shutdown_says_1001() {
    let dir = tempdir();
    let mut server = TestServer::start(dir.path(), &[]);
    let rooms = ["r1", "team/r2", "r%203"];
    let mut clients = Vec::new();
    for room in rooms {
        let mut c = YClient::connect(&server, room).await;
        c.until("synced", |c| c.synced).await;
        c.append("t", &format!("content of {room}")).await;
        clients.push(c);
    }
    let expected: Vec<String> = clients.iter().map(|c| c.text("t")).collect();
    let mut watcher = clients.pop().unwrap();
    watcher.drain_for(Duration::from_millis(50)).await;

    assert!(server.terminate().success());
    assert_eq!(watcher.until_closed().await, Some(1001));

    let server = TestServer::start(dir.path(), &[]);
    for (room, want) in rooms.iter().zip(&expected) {
        let (doc, seq) = server.state(room).await;
        assert_eq!(&text_of(&doc, "t"), want, "room {room}");
        assert_eq!(seq, 1);
    }
}

#[actix_rt::test]
async fn kill_9_after_the_flush_loses_nothing() {
    let dir = tempdir();
    let mut server = TestServer::start(dir.path(), &[]);
    let mut a = YClient::connect(&server, "crash").await;
    a.until("synced", |c| c.synced).await;
    for i in 0..200 {
        a.append("t", &format!("<{i}>")).await;
    }
    // Every seq shown is durable: once 200 is visible, a kill -9 may not lose any of it.
    server.wait_for_seq("crash", 200).await;
    server.kill();

    let server = TestServer::start(dir.path(), &[]);
    let (doc, seq) = server.state("crash").await;
    assert_eq!(seq, 200);
    assert_eq!(text_of(&doc, "t"), a.text("t"));
    // seqs continue from where they were: never reused.
    let mut b = YClient::connect(&server, "crash").await;
    b.until("synced", |c| c.synced).await;
    b.append("t", "after").await;
    server.wait_for_seq("crash", 201).await;
}

#[actix_rt::test]
async fn snapshots_and_compaction_keep_the_loaded_state_identical() {
    let dir = tempdir();
    let args = ["--snapshot-every", "10", "--replay-window", "10"];
    let mut server = TestServer::start(dir.path(), &args);
    let mut a = YClient::connect(&server, "compact").await;
    a.until("synced", |c| c.synced).await;
    for i in 0..103 {
        // Inserts and deletes, so that snapshots carry delete sets too.
        a.append("t", &format!("{i:03}|")).await;
        if i % 7 == 0 {
            let update = {
                use yrs::{Text, Transact};
                let text = a.doc().get_or_insert_text("t");
                let mut txn = a.doc().transact_mut();
                text.remove_range(&mut txn, 0, 2);
                txn.encode_update_v1()
            };
            a.send_raw(sync_frame(2, &update)).await;
        }
    }
    let total = 103 + 15;
    server.wait_for_seq("compact", total).await;
    // Snapshots are written off the room thread: one starts once 10 updates passed the
    // last, and one that starts while another runs covers a few more. Once quiet, the
    // room is less than 10 updates past its last snapshot, and compaction keeps the 10
    // records before it and everything after.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let snapshot = loop {
        let (_, info) = server.get_json("/rooms/compact").await;
        let snapshot = info["snapshot_seq"].as_u64().unwrap();
        let first = info["first_seq"].as_u64().unwrap();
        if snapshot > total - 10 && first == snapshot - 9 {
            assert!(snapshot <= total, "{info}");
            break snapshot;
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    };
    let expected = a.text("t");

    server.kill();
    let server = TestServer::start(dir.path(), &args);
    let (doc, seq) = server.state("compact").await;
    assert_eq!(seq, total);
    assert_eq!(text_of(&doc, "t"), expected);
    assert!(
        server.logs().iter().any(|l| l.contains(&format!(
            "room \"compact\" loaded: seq 118, snapshot at {snapshot}"
        ))),
        "{:?}",
        server.logs()
    );
}

/// An update that builds on one the server never got (lost in a crash, say) is not
/// parked or half-applied: the server asks the sender for everything it lacks (sync step
/// 1), the client's answer carries both, and every client ends with both. (yrs would
/// integrate such a map entry without advancing its state vector, so the log would miss
/// it.) Over HTTP the writer is told to send its full state: 409.
#[actix_rt::test]
async fn an_update_with_missing_dependencies_triggers_a_resync() {
    use yrs::{Doc, Map, Transact};
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let doc = Doc::with_client_id(77);
    let map = doc.get_or_insert_map("m");
    let lost = {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "first", 1);
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "second", 2);
        txn.encode_update_v1()
    };

    // HTTP: refused with 409, nothing logged.
    let (status, body) = common::post_update(&server, "gap-http", second.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "missing_dependencies");
    assert_eq!(server.seq("gap-http").await, 0);

    // WebSocket: the client holds both edits but the server got only the second.
    let mut client = YClient::connect(&server, "gap").await;
    client.until("synced", |c| c.synced).await;
    common::apply(client.doc(), &lost);
    common::apply(client.doc(), &second);
    client.send_raw(sync_frame(2, &second)).await;
    // The server answers with sync step 1; the client's step 2 brings both.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while server.seq("gap").await < 1 {
        client.step_for(Duration::from_millis(50)).await;
        assert!(std::time::Instant::now() < deadline, "no re-sync");
    }
    let mut late = YClient::connect(&server, "gap").await;
    late.until("both entries", |c| {
        let m = c.doc().get_or_insert_map("m");
        let txn = c.doc().transact();
        m.get(&txn, "first").is_some() && m.get(&txn, "second").is_some()
    })
    .await;
    server
        .wait_for_log("missing dependencies; re-syncing")
        .await;
}
