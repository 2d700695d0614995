//! The op log in PostgreSQL (`--postgres-url`): the real binary on a fresh database of the
//! machine's server. Acks mean committed and survive kill -9; seqs continue after a
//! restart; snapshots and compaction; many updates share one commit; `collabd migrate`;
//! a database cut away (by a TCP proxy) acknowledges nothing it did not store.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn start(db_url: &str, dir: &tempfile::TempDir, extra: &[&str]) -> TestServer {
    let mut args = vec!["--postgres-url", db_url];
    args.extend_from_slice(extra);
    TestServer::start(dir.path(), &args)
}

/// Every acknowledged update is a row at its seq once acked, and is there after kill -9;
/// seqs continue where they stopped; the tables read like the README says.
#[actix_rt::test]
async fn acks_mean_committed_rows_and_survive_kill_9() {
    let db = FreshDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&db.url, &dir, &[]);
    let mut acked: BTreeMap<(String, u64), String> = BTreeMap::new();
    let writers: Vec<(String, HttpWriter)> = (0..3)
        .map(|i| (format!("docs/r{i}"), HttpWriter::new()))
        .collect();
    for n in 0..30 {
        let (room, writer) = &writers[n % 3];
        let marker = format!("<{n}>");
        let (status, answer) = post_update(&server, room, writer.append("t", &marker)).await;
        assert_eq!(status, 200, "{answer}");
        let seq = answer["seq"].as_u64().unwrap();
        // Acked means committed: the row is there now, from another connection.
        let row: Option<i64> = db.with(|c| {
            c.query_opt(
                "select seq from collabd_updates where room = $1 and seq = $2",
                &[&room.as_str(), &(seq as i64)],
            )
            .unwrap()
            .map(|r| r.get(0))
        });
        assert_eq!(
            row,
            Some(seq as i64),
            "ack {seq} of {room} before its commit"
        );
        acked.insert((room.clone(), seq), marker);
    }
    server.kill();
    let server = start(&db.url, &dir, &[]);
    for (room, writer) in &writers {
        let (doc, seq) = server.state(room).await;
        assert_eq!(seq, 10, "{room}");
        let text = text_of(&doc, "t");
        for ((r, _), marker) in &acked {
            if r == room {
                assert!(text.contains(marker.as_str()), "{marker} lost from {room}");
            }
        }
        // Seqs continue after the restart.
        let (status, answer) = post_update(&server, room, writer.append("t", "after")).await;
        assert_eq!((status, answer["seq"].as_u64()), (200, Some(11)));
    }
    let rows: i64 = db.with(|c| {
        c.query_one("select count(*) from collabd_updates", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 33);
}

/// Many writers of many rooms at once: far fewer transactions than updates (group
/// commit).
#[actix_rt::test]
async fn many_updates_of_many_rooms_share_commits() {
    let db = FreshDb::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&db.url, &dir, &["--flush-interval-ms", "20"]);
    let posts = (0..200).map(|i| {
        let server = &server;
        async move {
            let writer = HttpWriter::new();
            let room = format!("group/{}", i % 20);
            let (status, _) =
                post_update(server, &room, writer.append(&format!("w{i}"), "x")).await;
            assert_eq!(status, 200);
        }
    });
    futures_util::future::join_all(posts).await;
    // Each row's `xmin` is the transaction that inserted it.
    let (rows, transactions): (i64, i64) = db.with(|c| {
        let row = c
            .query_one(
                "select count(*), count(distinct xmin::text) from collabd_updates",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    });
    eprintln!("{rows} updates of 20 rooms in {transactions} transactions");
    assert_eq!(rows, 200);
    assert!(
        transactions < 100,
        "{transactions} transactions for 200 updates"
    );
}

/// Snapshots land in `collabd_snapshots`, compaction deletes covered rows, a restart
/// loads the snapshot and the rows after it exactly, and an old cursor gets the snapshot.
#[actix_rt::test]
async fn snapshots_and_compaction_live_in_postgres() {
    let db = FreshDb::new();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--snapshot-every", "10", "--replay-window", "10"];
    let mut server = start(&db.url, &dir, &args);
    let writer = HttpWriter::new();
    for i in 0..47 {
        let (status, _) = post_update(&server, "snap", writer.append("t", &format!("{i},"))).await;
        assert_eq!(status, 200);
    }
    let expected = text_of(&writer.doc, "t");
    let deadline = std::time::Instant::now() + PATIENCE;
    let (snapshot_seq, first) = loop {
        let (snap, first): (Option<i64>, Option<i64>) = db.with(|c| {
            let snap = c
                .query_opt("select seq from collabd_snapshots where room = 'snap'", &[])
                .unwrap()
                .map(|r| r.get(0));
            let first = c
                .query_one(
                    "select min(seq) from collabd_updates where room = 'snap'",
                    &[],
                )
                .unwrap()
                .get(0);
            (snap, first)
        });
        if let (Some(s), Some(f)) = (snap, first)
            && s >= 40
            && f > 20
        {
            break (s, f);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot or compaction"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(first <= snapshot_seq + 1 - 10, "the replay window is kept");
    server.kill();
    let server = start(&db.url, &dir, &args);
    let (doc, seq) = server.state("snap").await;
    assert_eq!((text_of(&doc, "t"), seq), (expected.clone(), 47));
    let mut sse = SseClient::connect(&server, "snap", Some("2")).await;
    let event = sse.next_doc_event().await;
    assert_eq!((event.kind.as_str(), event.id), ("snapshot", Some(47)));
}

/// `collabd migrate` creates the schema once; the server finds it ready.
#[test]
fn collabd_migrate_creates_the_schema_once() {
    let db = FreshDb::new();
    for _ in 0..2 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_collabd"))
            .arg("migrate")
            .env("COLLABD_POSTGRES_URL", &db.url)
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = c
        .query(
            "select version from collabd_migrations order by version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    let tables: i64 = c
        .query_one(
            "select count(*) from information_schema.tables
             where table_name in ('collabd_updates', 'collabd_snapshots', 'collabd_epochs',
                 'collabd_revocations', 'collabd_authors', 'collabd_versions',
                 'collabd_checkpoints', 'collabd_webhooks')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 8);
}

/// The database cut away under writes and brought back, without a restart: while it is
/// away new writes are refused (503 `store_unavailable`, `/healthz` degraded), a write
/// taken just before waits for its ack instead of getting one early, reads and
/// WebSocket peers go on; once it is back the waiting write is acked, writes are taken
/// again, a WebSocket client's edit refused meanwhile is fetched by a re-sync, and the
/// log has every seq once, without a gap. A kill -9 afterwards loses nothing acked.
#[actix_rt::test]
async fn a_database_outage_refuses_writes_then_resumes_without_loss() {
    let db = FreshDb::new();
    let proxy = Proxy::to_postgres();
    let via = db.url_via(&proxy);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&via, &dir, &["--awareness-timeout-ms", "2000"]);
    let writer = HttpWriter::new();
    for i in 0..10 {
        let (status, _) = post_update(&server, "cut", writer.append("t", &format!("<{i}>"))).await;
        assert_eq!(status, 200);
    }
    let mut ws = YClient::connect(&server, "cut").await;
    ws.until("synced", |c| c.synced).await;

    proxy.cut();
    // The first write after the cut is taken into memory; its commit fails, so its
    // answer waits (it must not be acked before it is stored).
    let waiting = {
        let update = writer.append("t", "<during>");
        let url = server.url("/rooms/cut/updates");
        actix_rt::spawn(async move {
            let mut res = awc::Client::new()
                .post(url)
                .timeout(PATIENCE)
                .send_body(update)
                .await
                .unwrap();
            let body: serde_json::Value = res.json().await.unwrap();
            (res.status().as_u16(), body)
        })
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, health) = server.get_json("/healthz").await;
        if status == 503 && health["status"] == "degraded" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never degraded: {health}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_writer = HttpWriter::new();
    let (status, body) = post_update(&server, "cut", refused_writer.append("u", "no")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("store_unavailable"))
    );
    // Reads go on from memory.
    let (status, info) = server.get_json("/rooms/cut").await;
    assert_eq!(status, 200, "{info}: {:#?}", server.logs());
    // A WebSocket edit now is refused, not acked, and kept by its client.
    ws.append("t", "<ws during>").await;

    proxy.restore();
    let (status, body) = waiting.await.unwrap();
    assert_eq!((status, body["seq"].as_u64()), (200, Some(11)), "{body}");
    let (status, body) = post_update(&server, "cut", writer.append("t", "<after>")).await;
    assert_eq!(status, 200, "{body}");
    // The WebSocket client's edit reaches the store through the re-sync.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        ws.step_for(Duration::from_millis(50)).await;
        let (doc, _) = server.state("cut").await;
        if text_of(&doc, "t").contains("<ws during>") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refused edit never came back"
        );
    }
    let (status, health) = server.get_json("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let panics: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:#?}");

    server.kill();
    let server = start(&via, &dir, &[]);
    let (doc, seq) = server.state("cut").await;
    let text = text_of(&doc, "t");
    for marker in ["<0>", "<9>", "<during>", "<after>", "<ws during>"] {
        assert!(text.contains(marker), "{marker} lost: {text}");
    }
    // Every seq once, no gap.
    let seqs: Vec<i64> = db.with(|c| {
        c.query(
            "select seq from collabd_updates where room = 'cut' order by seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(seqs, (1..=seq as i64).collect::<Vec<_>>());
}

/// Stock y-websocket clients against a server on PostgreSQL: they converge, share
/// awareness and survive a restart (the same script as on sled, the database given by
/// `COLLABD_POSTGRES_URL` in the server's environment).
#[test]
fn stock_yjs_clients_work_on_postgres() {
    let db = FreshDb::new();
    run_node(
        "yjs_clients.mjs",
        &[("COLLABD_POSTGRES_URL", std::ffi::OsStr::new(&db.url))],
    );
}

/// Concurrent writers over WebSocket (with write acks) and POST in several rooms, then
/// kill -9: every acknowledged update is in the log at its seq, nothing is there twice,
/// the seqs are dense, polling from 0 returns them all.
#[actix_rt::test]
async fn kill_9_under_concurrent_writers_loses_no_acked_update() {
    let db = FreshDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&db.url, &dir, &[]);
    let rooms = ["k/a", "k/b", "k/c"];
    let mut acked: Vec<(String, u64, String)> = Vec::new();
    let mut clients = Vec::new();
    for room in rooms {
        let mut c = YClient::connect(&server, room).await;
        c.until("synced", |c| c.synced).await;
        clients.push((room, c));
    }
    let posters: Vec<HttpWriter> = rooms.iter().map(|_| HttpWriter::new()).collect();
    for round in 0..20 {
        // One WebSocket update per room, acked; and one POST per room, concurrently.
        for (room, c) in clients.iter_mut() {
            let marker = format!("[ws {room} {round}]");
            c.append("w", &marker).await;
            c.request_ack(round).await;
        }
        let posts = rooms.iter().zip(&posters).map(|(room, w)| {
            let marker = format!("[post {room} {round}]");
            let update = w.append("p", &marker);
            let server = &server;
            async move {
                let (status, answer) = post_update(server, room, update).await;
                assert_eq!(status, 200, "{answer}");
                (room.to_string(), answer["seq"].as_u64().unwrap(), marker)
            }
        });
        acked.extend(futures_util::future::join_all(posts).await);
        for (room, c) in clients.iter_mut() {
            c.until("the ack", |c| c.acks.iter().any(|(t, _, _)| *t == round))
                .await;
            let (_, seq, stored) = *c.acks.iter().find(|(t, _, _)| *t == round).unwrap();
            assert!(stored);
            acked.push((room.to_string(), seq, format!("[ws {room} {round}]")));
        }
    }
    server.kill();
    let server = start(&db.url, &dir, &[]);
    for room in rooms {
        let (doc, seq) = server.state(room).await;
        let text = format!("{}{}", text_of(&doc, "w"), text_of(&doc, "p"));
        for (r, s, marker) in acked.iter().filter(|(r, _, _)| r == room) {
            assert!(*s <= seq, "{r}: acked seq {s} beyond {seq}");
            assert_eq!(text.matches(marker.as_str()).count(), 1, "{marker} in {r}");
        }
        let (status, polled) = server
            .get_json(&format!("/rooms/{room}/updates?since=0"))
            .await;
        assert_eq!(status, 200);
        let seqs: Vec<u64> = polled["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seq).collect::<Vec<_>>(), "{room}: dense seqs");
    }
}
