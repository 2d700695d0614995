//! Cluster mode with PostgreSQL as the archive (`--redis-url` and `--postgres-url`): the
//! real binary, a `redis-server` the test starts, a fresh database on the machine's
//! PostgreSQL. Redis' stream stays short while PostgreSQL holds every seq; rooms idle
//! past `archive_idle_ms` leave Redis and load back exactly, their seqs going on; a
//! PostgreSQL cut under writes costs no ack and the archive catches up; a node killed
//! while it holds a room's archive lease leaves the archive to another node, dense and
//! without duplicates.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

fn node(redis: &str, pg: &str, extra: &[&str]) -> (TestServer, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--redis-url", redis, "--postgres-url", pg];
    args.extend_from_slice(extra);
    (TestServer::start(dir.path(), &args), dir)
}

/// The seqs PostgreSQL holds for `room`, in order.
fn archived_seqs(db: &FreshDb, room: &str) -> Vec<u64> {
    let room = room.to_string();
    db.with(move |c| {
        c.query(
            "select seq from collabd_updates where room = $1 order by seq",
            &[&room],
        )
        .map(|rows| rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
        .unwrap_or_default()
    })
}

/// Waits until PostgreSQL holds exactly seqs 1..=last of `room`.
async fn wait_archived(db: &FreshDb, room: &str, last: u64, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let seqs = archived_seqs(db, room);
        if seqs == (1..=last).collect::<Vec<_>>() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{room}: archive holds {} seqs (up to {:?}), want 1..={last}",
            seqs.len(),
            seqs.last()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn xlen(redis: &RedisServer, room: &str) -> u64 {
    redis
        .command(&["XLEN", &format!("collabd:{{{room}}}:log")])
        .parse()
        .unwrap_or(0)
}

/// Many writes with a small archive threshold: the stream stays short, PostgreSQL holds
/// every seq, and a node that never saw the room serves all of it (SSE from 0, state).
#[actix_rt::test]
async fn the_stream_stays_short_while_postgres_holds_every_seq() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let small = ["--archive-after", "10"];
    let (a, _da) = node(&redis.url(), &db.url, &small);
    let (b, _db) = node(&redis.url(), &db.url, &small);
    let room = "archive/short";
    let (wa, wb) = (HttpWriter::new(), HttpWriter::new());
    let mut longest = 0;
    for i in 0..100 {
        let (server, w, name) = if i % 2 == 0 {
            (&a, &wa, "a")
        } else {
            (&b, &wb, "b")
        };
        let (status, answer) = post_update(server, room, w.append(name, &format!("[{i}]"))).await;
        assert_eq!(status, 200, "{answer}");
        longest = longest.max(xlen(&redis, room));
    }
    // Seq 100 crossed the threshold (every 10): everything is archived.
    wait_archived(&db, room, 100, PATIENCE).await;
    let len = xlen(&redis, room);
    assert!(len <= 30, "the stream holds {len} entries");
    assert!(longest <= 40, "the stream grew to {longest} entries");
    let (c, _dc) = node(&redis.url(), &db.url, &small);
    let mut sse = SseClient::open(&c, &format!("/rooms/{room}/events?since=0"), None).await;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&100) {
        let event = sse.next_doc_event().await;
        if event.kind == "update" {
            seqs.push(event.id.unwrap());
        }
    }
    assert_eq!(
        seqs,
        (1..=100).collect::<Vec<_>>(),
        "SSE from 0 on a third node"
    );
    let (doc, seq) = c.state(room).await;
    assert_eq!(seq, 100);
    assert_eq!(
        text_of(&doc, "a"),
        (0..100)
            .step_by(2)
            .map(|i| format!("[{i}]"))
            .collect::<String>()
    );
}

/// Rooms idle past `archive_idle_ms` leave Redis entirely and load back exactly from
/// PostgreSQL; the next write continues the seqs.
#[actix_rt::test]
async fn idle_rooms_leave_redis_and_load_back_exactly() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let idle = [
        "--archive-after",
        "5",
        "--archive-idle-ms",
        "300",
        "--room-idle-ms",
        "200",
    ];
    let (a, _da) = node(&redis.url(), &db.url, &idle);
    let rooms = ["archive/idle-1", "archive/idle-2", "archive/idle-3"];
    let writers: Vec<HttpWriter> = rooms.iter().map(|_| HttpWriter::new()).collect();
    for i in 0..12 {
        for (room, w) in rooms.iter().zip(&writers) {
            let (status, _) = post_update(&a, room, w.append("t", &format!("[{i}]"))).await;
            assert_eq!(status, 200);
        }
    }
    let deadline = Instant::now() + PATIENCE;
    while !redis
        .command(&["KEYS", "collabd:{archive/idle-*"])
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "still in Redis: {}",
            redis.command(&["KEYS", "collabd:{archive/idle-*"])
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    for room in rooms {
        assert_eq!(archived_seqs(&db, room), (1..=12).collect::<Vec<_>>());
    }
    // Back from PostgreSQL, on a node that never saw them and on the one that did.
    let (b, _db) = node(&redis.url(), &db.url, &idle);
    let expected: String = (0..12).map(|i| format!("[{i}]")).collect();
    for room in rooms {
        let (doc, seq) = b.state(room).await;
        assert_eq!((text_of(&doc, "t"), seq), (expected.clone(), 12), "{room}");
    }
    for (room, w) in rooms.iter().zip(&writers) {
        let (status, answer) = post_update(&a, room, w.append("t", "[back]")).await;
        assert_eq!(
            (status, answer["seq"].as_u64()),
            (200, Some(13)),
            "{answer}"
        );
        b.wait_for_seq(room, 13).await;
        let (doc, _) = b.state(room).await;
        assert_eq!(text_of(&doc, "t"), format!("{expected}[back]"));
    }
}

/// PostgreSQL cut under writes: writes are still acked (Redis holds them), the stream
/// grows meanwhile, and once PostgreSQL is back the archive catches up, dense.
#[actix_rt::test]
async fn a_postgres_cut_costs_no_ack_and_the_archive_catches_up() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let proxy = Proxy::to_postgres();
    let via = db.url_via(&proxy);
    let (a, _da) = node(&redis.url(), &via, &["--archive-after", "5"]);
    let room = "archive/cut";
    let w = HttpWriter::new();
    let mut last = 0;
    for i in 0..60 {
        if i == 10 {
            proxy.cut();
        }
        let (status, answer) = post_update(&a, room, w.append("t", &format!("[{i}]"))).await;
        assert_eq!(status, 200, "acked while PostgreSQL is away: {answer}");
        last = answer["seq"].as_u64().unwrap();
    }
    assert!(
        xlen(&redis, room) >= 45,
        "the stream kept what could not be archived"
    );
    let (status, health) = a.get_json("/healthz").await;
    assert_eq!(status, 200, "Redis holds the acks: {health}");
    proxy.restore();
    // The next threshold crossing archives everything that waited.
    for i in 60..70 {
        let (status, answer) = post_update(&a, room, w.append("t", &format!("[{i}]"))).await;
        assert_eq!(status, 200, "{answer}");
        last = answer["seq"].as_u64().unwrap();
    }
    wait_archived(&db, room, last - last % 5, PATIENCE).await;
    assert!(
        xlen(&redis, room) <= 15,
        "the stream was trimmed after the commit"
    );
}

/// The node holding a room's archive lease hangs on PostgreSQL and is killed with
/// SIGKILL: once its lease expires another node archives the room, dense, nothing twice.
#[actix_rt::test]
async fn a_node_killed_holding_the_archive_lease_leaves_it_to_another() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let proxy = Proxy::to_postgres();
    let settings = [
        "--archive-after",
        "5",
        "--archive-idle-ms",
        "400",
        "--room-idle-ms",
        "300",
    ];
    let (mut a, _da) = node(&redis.url(), &db.url_via(&proxy), &settings);
    let room = "archive/lease";
    let w = HttpWriter::new();
    let mut last = 0;
    for i in 0..12 {
        if i == 6 {
            // PostgreSQL hangs for node A: its next archive blocks holding the lease.
            proxy.stall();
        }
        let (status, answer) = post_update(&a, room, w.append("t", &format!("[{i}]"))).await;
        assert_eq!(status, 200, "{answer}");
        last = answer["seq"].as_u64().unwrap();
    }
    let lease = format!("collabd:{{{room}}}:lease");
    let deadline = Instant::now() + PATIENCE;
    while redis.command(&["EXISTS", &lease]) != "1" {
        assert!(Instant::now() < deadline, "node A never took the lease");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    // Node B serves the room and archives it once the dead node's lease expires.
    let (b, _db) = node(&redis.url(), &db.url, &settings);
    for i in 12..15 {
        let (status, answer) = post_update(&b, room, w.append("t", &format!("[{i}]"))).await;
        assert_eq!(status, 200, "{answer}");
        last = answer["seq"].as_u64().unwrap();
    }
    wait_archived(&db, room, last, PATIENCE + Duration::from_secs(15)).await;
}

/// Time travel and history for seqs Redis no longer holds come from the archive, exact.
#[actix_rt::test]
async fn history_beyond_redis_reads_the_archive() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let small = [
        "--archive-after",
        "10",
        "--snapshot-every",
        "10",
        "--replay-window",
        "10",
        "--checkpoint-every",
        "20",
    ];
    let (a, _da) = node(&redis.url(), &db.url, &small);
    let room = "archive/history";
    let w = HttpWriter::new();
    for i in 1..=60 {
        let (status, _) = post_update(&a, room, w.append("t", &format!("<{i}>"))).await;
        assert_eq!(status, 200);
    }
    wait_archived(&db, room, 60, PATIENCE).await;
    let first_in_redis = redis
        .command(&[
            "XRANGE",
            &format!("collabd:{{{room}}}:log"),
            "-",
            "+",
            "COUNT",
            "1",
        ])
        .lines()
        .next()
        .and_then(|id| id.strip_suffix("-0")?.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    assert!(
        first_in_redis > 5,
        "seq 5 is only in the archive (Redis from {first_in_redis})"
    );
    let (status, json) = a.get_json(&format!("/rooms/{room}/json?at=5")).await;
    assert_eq!(
        (status, json["t"].as_str()),
        (200, Some("<1><2><3><4><5>")),
        "{json}"
    );
    let (status, history) = a
        .get_json(&format!("/rooms/{room}/history?before=8&limit=3"))
        .await;
    assert_eq!(status, 200, "{history}");
    let seqs: Vec<u64> = history["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![7, 6, 5]);
    assert_eq!(history["first_seq"], 1);

    // Checkpoints go to the archive with its batches.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let kept: i64 = db.with(|c| {
            c.query_one(
                "select count(*) from collabd_checkpoints where room = $1",
                &[&room],
            )
            .unwrap()
            .get(0)
        });
        if kept >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kept} checkpoints archived"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, json) = a.get_json(&format!("/rooms/{room}/json?at=40")).await;
    assert_eq!(status, 200, "{json}");
    assert!(json["t"].as_str().unwrap().ends_with("<40>"), "{json}");

    // Named versions live in the archive: pinned on one node, listed and restored on
    // another.
    let (b, _db) = node(&redis.url(), &db.url, &small);
    let mut res = awc::Client::new()
        .post(a.url(&format!("/rooms/{room}/versions")))
        .send_json(&serde_json::json!({"name": "sixty"}))
        .await
        .unwrap();
    let pinned: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        (res.status().as_u16(), pinned["seq"].as_u64()),
        (200, Some(60))
    );
    post_update(&a, room, w.append("t", "<61>")).await;
    let (_, versions) = b.get_json(&format!("/rooms/{room}/versions")).await;
    assert_eq!(versions["versions"][0]["name"], "sixty", "{versions}");
    let mut res = awc::Client::new()
        .post(b.url(&format!("/rooms/{room}/restore")))
        .send_json(&serde_json::json!({"version": "sixty"}))
        .await
        .unwrap();
    let restored: serde_json::Value = res.json().await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "{restored}");
    // (The room's own name ends in `/history`: its metadata is not at `/rooms/{room}`.)
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, json) = a.get_json(&format!("/rooms/{room}/json")).await;
        let text = json["t"].as_str().unwrap_or_default().to_string();
        if text.ends_with("<60>") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not restored on A: {text}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
