//! Time travel over the op log, against the real server: `GET /rooms/{room}/state?at=SEQ`
//! and `/json?at=SEQ` give the document right after SEQ (checked against what the writer
//! had at each seq), `/history` lists updates newest first with time and size, a seq
//! beyond the room is refused and one compacted away answers 410 with the nearest
//! reachable seq.

mod common;

/// The server's arguments: the store's, then the test's.
fn with<'a>(store: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    store.iter().chain(args).copied().collect()
}

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn state_at(
    server: &TestServer,
    room: &str,
    at: u64,
) -> (u16, Option<(String, u64)>, serde_json::Value) {
    let mut res = awc::Client::new()
        .get(server.url(&format!("/rooms/{room}/state?at={at}")))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let seq = res
        .headers()
        .get("X-Seq")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = res.body().limit(1 << 24).await.unwrap();
    if status != 200 {
        return (status, None, serde_json::from_slice(&body).unwrap());
    }
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&body).unwrap())
        .unwrap();
    (
        status,
        Some((text_of(&doc, "t"), seq.unwrap())),
        serde_json::Value::Null,
    )
}

/// Waits until `?at=at` answers 410 (compaction took it); panics with `what` after
/// [`PATIENCE`].
async fn until_compacted(server: &TestServer, room: &str, at: u64, what: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while state_at(server, room, at).await.0 != 410 {
        assert!(std::time::Instant::now() < deadline, "{what}");
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn the_document_at_every_seq_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let room = "history/doc";
    let w = HttpWriter::new();
    let started = now_ms();
    let mut expected = vec![String::new()];
    for i in 1..=30u64 {
        let (status, answer) = post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
        assert_eq!((status, answer["seq"].as_u64()), (200, Some(i)));
        expected.push(format!("{}<{i}>", expected.last().unwrap()));
    }
    for at in [0u64, 1, 7, 15, 29, 30] {
        let (status, got, _) = state_at(&server, room, at).await;
        assert_eq!(status, 200);
        assert_eq!(got, Some((expected[at as usize].clone(), at)), "at={at}");
    }
    let (status, json) = server.get_json(&format!("/rooms/{room}/json?at=3")).await;
    assert_eq!((status, json["t"].as_str()), (200, Some("<1><2><3>")));
    let (status, json) = server
        .get_json(&format!("/rooms/{room}/state?at=2&format=json"))
        .await;
    assert_eq!((status, json["t"].as_str()), (200, Some("<1><2>")));
    let (status, answer) = server.get_json(&format!("/rooms/{room}/state?at=31")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("bad_seq")),
        "{answer}"
    );

    let (status, history) = server
        .get_json(&format!("/rooms/{room}/history?limit=5"))
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["seq"], 30);
    assert_eq!(history["first_seq"], 1);
    let seqs: Vec<u64> = history["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![30, 29, 28, 27, 26]);
    for u in history["updates"].as_array().unwrap() {
        let at = u["at_ms"].as_u64().unwrap();
        assert!(at >= started && at <= now_ms(), "{u}");
        assert!(u["size"].as_u64().unwrap() > 0);
    }
    let (_, page) = server
        .get_json(&format!("/rooms/{room}/history?before=10&limit=3"))
        .await;
    let seqs: Vec<u64> = page["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![9, 8, 7]);
    let (status, answer) = server
        .get_json(&format!("/rooms/{room}/history?limit=0"))
        .await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("bad_limit")));
    // A room that does not exist has an empty history and is not created.
    let (_, none) = server.get_json("/rooms/history/none/history").await;
    assert_eq!(none["updates"], serde_json::json!([]));
    let (_, info) = server.get_json("/rooms/history/none").await;
    assert_eq!(info["seq"], 0);
}

#[actix_rt::test]
async fn a_compacted_seq_answers_410_with_the_nearest() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--snapshot-every", "10", "--replay-window", "10"],
    );
    let room = "history/compacted";
    let w = HttpWriter::new();
    let mut expected = vec![String::new()];
    for i in 1..=45u64 {
        let (status, _) = post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
        assert_eq!(status, 200);
        expected.push(format!("{}<{i}>", expected.last().unwrap()));
    }
    // Snapshots at 10, 20, 30, 40; records before (40 + 1 - 10) compacted.
    let deadline = std::time::Instant::now() + PATIENCE;
    let nearest = loop {
        let (status, _, answer) = state_at(&server, room, 2).await;
        if status == 410 {
            assert_eq!(answer["error"], "history_compacted");
            break answer["nearest"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "never compacted");
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!((30..=45).contains(&nearest), "nearest {nearest}");
    let (status, got, _) = state_at(&server, room, nearest).await;
    assert_eq!(status, 200);
    assert_eq!(got, Some((expected[nearest as usize].clone(), nearest)));
    let (status, got, _) = state_at(&server, room, 45).await;
    assert_eq!((status, got), (200, Some((expected[45].clone(), 45))));
}

/// `POST /rooms/{room}/restore`: one update brings the document back to its state at an
/// earlier seq (texts, maps, arrays, and a root created since emptied); connected
/// clients converge to it, and the history keeps everything before it.
#[actix_rt::test]
async fn restore_brings_back_an_earlier_seq() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let room = "history/restore";
    let patch = |ops: serde_json::Value| {
        let url = server.url(&format!("/rooms/{room}/json"));
        async move {
            let mut res = awc::Client::new().patch(url).send_json(&ops).await.unwrap();
            let body: serde_json::Value = res.json().await.unwrap();
            (res.status().as_u16(), body)
        }
    };
    patch(serde_json::json!([
        {"op": "insert_text", "path": ["body"], "index": 0, "text": "version one"},
        {"op": "set", "path": ["meta", "title"], "value": "One"},
        {"op": "insert", "path": ["list"], "index": 0, "values": [1, 2]}
    ]))
    .await;
    let (_, kept) = server.get_json(&format!("/rooms/{room}/json")).await;
    let mut ws = YClient::connect(&server, room).await;
    ws.until("synced", |c| c.synced).await;
    ws.append("body", " and more").await;
    server.wait_for_seq(room, 2).await;
    patch(serde_json::json!([
        {"op": "set", "path": ["meta", "title"], "value": "Two"},
        {"op": "set", "path": ["meta", "extra"], "value": true},
        {"op": "remove", "path": ["list"], "index": 0},
        {"op": "insert_text", "path": ["later"], "index": 0, "text": "new root"}
    ]))
    .await;
    let mut res = awc::Client::new()
        .post(server.url(&format!("/rooms/{room}/restore")))
        .send_json(&serde_json::json!({"seq": 1}))
        .await
        .unwrap();
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(res.status(), 200, "{answer}");
    assert_eq!(
        (answer["seq"].as_u64(), answer["restored"].as_u64()),
        (Some(4), Some(1))
    );
    let (_, now) = server.get_json(&format!("/rooms/{room}/json")).await;
    let mut expected = kept.clone();
    expected["later"] = "".into();
    assert_eq!(now, expected);
    ws.until("the restore over WebSocket", |c| {
        c.text("body") == "version one"
    })
    .await;
    // The history is intact: seq 3 is still there.
    let (_, at3) = server.get_json(&format!("/rooms/{room}/json?at=3")).await;
    assert_eq!(at3["meta"]["title"], "Two");
    let mut res = awc::Client::new()
        .post(server.url(&format!("/rooms/{room}/restore")))
        .send_json(&serde_json::json!({"seq": 99}))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["error"], "bad_seq");
}

/// Named versions: `POST /rooms/{room}/versions` keeps the current state whatever
/// compaction does; `GET` lists them; a compacted `?at=` at a version's seq is served
/// from it; `restore` takes `{"version"}`; a name is taken once.
#[actix_rt::test]
async fn named_versions_outlive_compaction() {
    named_versions_outlive_compaction_on(&[]).await;
}

/// The same on PostgreSQL (the versions table).
#[actix_rt::test]
async fn named_versions_outlive_compaction_on_postgres() {
    let db = FreshDb::new();
    named_versions_outlive_compaction_on(&["--postgres-url", &db.url]).await;
}

async fn named_versions_outlive_compaction_on(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &with(store, &["--snapshot-every", "10", "--replay-window", "10"]),
    );
    let room = "history/versions";
    let w = HttpWriter::new();
    let post_json = |path: String, body: serde_json::Value| {
        let url = server.url(&path);
        async move {
            let mut res = awc::Client::new().post(url).send_json(&body).await.unwrap();
            let answer: serde_json::Value = res.json().await.unwrap();
            (res.status().as_u16(), answer)
        }
    };
    for i in 1..=5 {
        post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
    }
    let (status, pinned) = post_json(
        format!("/rooms/{room}/versions"),
        serde_json::json!({"name": "draft"}),
    )
    .await;
    assert_eq!((status, pinned["seq"].as_u64()), (200, Some(5)), "{pinned}");
    let (status, again) = post_json(
        format!("/rooms/{room}/versions"),
        serde_json::json!({"name": "draft"}),
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (409, Some("version_exists"))
    );
    let (status, bad) = post_json(
        format!("/rooms/{room}/versions"),
        serde_json::json!({"name": ""}),
    )
    .await;
    assert_eq!((status, bad["error"].as_str()), (400, Some("bad_version")));
    for i in 6..=45 {
        post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
    }
    // Compaction took seq 5 from the log; the version keeps it.
    until_compacted(&server, room, 4, "never compacted").await;
    let (status, got, _) = state_at(&server, room, 5).await;
    assert_eq!(
        (status, got),
        (200, Some(("<1><2><3><4><5>".to_string(), 5)))
    );
    let (_, listed) = server.get_json(&format!("/rooms/{room}/versions")).await;
    assert_eq!(listed["versions"][0]["name"], "draft");
    assert_eq!(listed["versions"][0]["seq"], 5);
    let (status, restored) = post_json(
        format!("/rooms/{room}/restore"),
        serde_json::json!({"version": "draft"}),
    )
    .await;
    assert_eq!(
        (status, restored["restored"].as_u64()),
        (200, Some(5)),
        "{restored}"
    );
    let (_, json) = server.get_json(&format!("/rooms/{room}/json")).await;
    assert_eq!(json["t"], "<1><2><3><4><5>");
}

/// Checkpoints (`--checkpoint-every`): beyond the replay window, time travel still works
/// exactly at each checkpoint's seq; between them it answers 410; with no retention, only
/// the newest checkpoint stays.
#[actix_rt::test]
async fn checkpoints_reach_beyond_the_replay_window() {
    checkpoints_reach_beyond_the_replay_window_on(&[]).await;
}

/// The same on PostgreSQL (the checkpoints table).
#[actix_rt::test]
async fn checkpoints_reach_beyond_the_replay_window_on_postgres() {
    let db = FreshDb::new();
    checkpoints_reach_beyond_the_replay_window_on(&["--postgres-url", &db.url]).await;
}

async fn checkpoints_reach_beyond_the_replay_window_on(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &with(
            store,
            &[
                "--snapshot-every",
                "10",
                "--replay-window",
                "10",
                "--checkpoint-every",
                "20",
            ],
        ),
    );
    let room = "history/checkpoints";
    let w = HttpWriter::new();
    let mut expected = vec![String::new()];
    for i in 1..=65u64 {
        let (status, _) = post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
        assert_eq!(status, 200);
        expected.push(format!("{}<{i}>", expected.last().unwrap()));
    }
    // Wait until seq 25 is compacted away.
    until_compacted(&server, room, 25, "never compacted").await;
    for at in [20u64, 40] {
        let (status, got, _) = state_at(&server, room, at).await;
        assert_eq!(
            (status, got),
            (200, Some((expected[at as usize].clone(), at))),
            "at={at}"
        );
    }
    let (status, got, _) = state_at(&server, room, 65).await;
    assert_eq!((status, got), (200, Some((expected[65].clone(), 65))));
    drop(server);

    // No retention: each checkpoint replaces the ones before it.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &with(
            store,
            &[
                "--snapshot-every",
                "10",
                "--replay-window",
                "10",
                "--checkpoint-every",
                "20",
                "--checkpoint-retention-ms",
                "0",
            ],
        ),
    );
    // Another room: the store may be shared with the first server (PostgreSQL).
    let room = "history/checkpoints-kept-none";
    let w = HttpWriter::new();
    for i in 1..=65u64 {
        post_update(&server, room, w.append("t", &format!("<{i}>"))).await;
    }
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, _, _) = state_at(&server, room, 20).await;
        if status == 410 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old checkpoint stayed"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _, _) = state_at(&server, room, 60).await;
    assert_eq!(status, 200);
}
