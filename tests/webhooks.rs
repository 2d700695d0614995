//! Webhooks (`--webhook-url`) against a real receiver on a local port: deliveries cover
//! every change of every room in contiguous ranges, debounced, signed (HMAC-SHA256 of
//! `TIMESTAMP.BODY`), with an idempotency key and optionally the JSON state; a receiver
//! that fails is retried until it answers 2xx, and a server killed with SIGKILL meanwhile
//! delivers after its restart what it had not delivered.

mod common;

/// The server's arguments: the store's, then the test's.
fn with<'a>(store: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    store.iter().chain(args).copied().collect()
}

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
    /// The status the receiver answered.
    status: u16,
}

/// A webhook receiver: records every request, answers with `status`.
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let (s, g) = (status.clone(), got.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = HashMap::new();
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut raw = vec![0; len];
                if reader.read_exact(&mut raw).is_err() {
                    continue;
                }
                let status = s.load(Ordering::SeqCst);
                g.lock().unwrap().push(Delivery {
                    headers,
                    body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                    raw,
                    status,
                });
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { addr, status, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn accepted(&self) -> Vec<Delivery> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|d| d.status == 200).cloned().collect()
    }

    /// Waits until accepted deliveries of `room` reach `to`; returns them, in order.
    async fn until_delivered(&self, room: &str, to: u64) -> Vec<Delivery> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mine: Vec<Delivery> = self
                .accepted()
                .into_iter()
                .filter(|d| d.body["room"] == room)
                .collect();
            if mine.iter().any(|d| d.body["to_seq"] == to) {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "{room}: never delivered up to {to}: {mine:?}"
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Ranges start at 1 and follow each other without gap or overlap.
fn contiguous(deliveries: &[Delivery]) -> bool {
    let mut next = 1;
    for d in deliveries {
        if d.body["from_seq"] != next {
            return false;
        }
        next = d.body["to_seq"].as_u64().unwrap() + 1;
    }
    true
}

#[actix_rt::test]
async fn deliveries_cover_every_change_signed_and_debounced() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url();
    let server = TestServer::start(
        dir.path(),
        &[
            "--webhook-url",
            &url,
            "--webhook-secret",
            "hook-secret",
            "--webhook-debounce-ms",
            "300",
            "--webhook-state",
            "true",
        ],
    );
    let (a, b) = (HttpWriter::new(), HttpWriter::new());
    for i in 0..30 {
        let (status, _) = post_update(&server, "hooks/a", a.append("t", &format!("<{i}>"))).await;
        assert_eq!(status, 200);
        if i < 10 {
            let (status, _) = post_update(&server, "hooks/b", b.append("t", "x")).await;
            assert_eq!(status, 200);
        }
    }
    // A name a header cannot carry as it is.
    let (status, _) = post_update(
        &server,
        "hooks/%C3%BCn%C3%AF",
        HttpWriter::new().append("t", "x"),
    )
    .await;
    assert_eq!(status, 200);
    let for_a = receiver.until_delivered("hooks/a", 30).await;
    let for_b = receiver.until_delivered("hooks/b", 10).await;
    let unicode = receiver.until_delivered("hooks/ünï", 1).await;
    assert_eq!(
        unicode[0].headers["idempotency-key"],
        "hooks%2F%C3%BCn%C3%AF:1:1"
    );
    assert!(contiguous(&for_a), "{for_a:?}");
    assert!(contiguous(&for_b), "{for_b:?}");
    assert!(
        for_a.len() < 30,
        "debounced: {} deliveries for 30 changes",
        for_a.len()
    );
    for d in for_a.iter().chain(&for_b) {
        let ts = &d.headers["x-collabd-timestamp"];
        let expected = collabd::webhooks::sign("hook-secret", ts, &d.raw);
        assert_eq!(
            d.headers["x-collabd-signature"],
            format!("sha256={expected}")
        );
        assert_eq!(d.headers["idempotency-key"], d.body["id"].as_str().unwrap());
        let room = d.body["room"].as_str().unwrap().replace('/', "%2F");
        assert_eq!(
            d.body["id"],
            format!("{room}:{}:{}", d.body["from_seq"], d.body["to_seq"])
        );
    }
    let last = for_a.last().unwrap();
    let text: String = (0..30).map(|i| format!("<{i}>")).collect();
    assert_eq!(last.body["state"]["t"], text.as_str());
}

#[actix_rt::test]
async fn a_failing_receiver_is_retried_and_a_restart_loses_nothing() {
    let receiver = Receiver::start();
    receiver.status.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url();
    let args = [
        "--webhook-url",
        url.as_str(),
        "--webhook-debounce-ms",
        "100",
    ];
    let mut server = TestServer::start(dir.path(), &args);
    let w = HttpWriter::new();
    for i in 0..5 {
        let (status, _) = post_update(&server, "hooks/retry", w.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    // Refused twice or more, each time from seq 1.
    let deadline = Instant::now() + PATIENCE;
    while receiver.got.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no retry");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        receiver
            .got
            .lock()
            .unwrap()
            .iter()
            .all(|d| d.body["from_seq"] == 1)
    );
    // Killed before anything was accepted; the receiver comes back; so does the server.
    server.kill();
    receiver.status.store(200, Ordering::SeqCst);
    let server = TestServer::start(dir.path(), &args);
    let delivered = receiver.until_delivered("hooks/retry", 5).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].body["from_seq"], 1);
    // Later changes continue from there.
    for i in 5..8 {
        let (status, _) = post_update(&server, "hooks/retry", w.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    let delivered = receiver.until_delivered("hooks/retry", 8).await;
    assert!(contiguous(&delivered), "{delivered:?}");
}

/// Killed right after its writes were acknowledged, long before any delivery was due (a
/// one-minute debounce): the restarted server delivers them, because each change's
/// pending delivery is stored with its record.
#[actix_rt::test]
async fn changes_acknowledged_before_a_kill_are_delivered_after_the_restart() {
    changes_acknowledged_before_a_kill_are_delivered_after_the_restart_on(&[]).await;
}

/// The same on PostgreSQL (marks committed with the records).
#[actix_rt::test]
async fn changes_acknowledged_before_a_kill_are_delivered_after_the_restart_on_postgres() {
    let db = FreshDb::new();
    changes_acknowledged_before_a_kill_are_delivered_after_the_restart_on(&[
        "--postgres-url",
        &db.url,
    ])
    .await;
}

async fn changes_acknowledged_before_a_kill_are_delivered_after_the_restart_on(store: &[&str]) {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url();
    let mut server = TestServer::start(
        dir.path(),
        &with(
            store,
            &[
                "--webhook-url",
                url.as_str(),
                "--webhook-debounce-ms",
                "60000",
            ],
        ),
    );
    let w = HttpWriter::new();
    for i in 0..3 {
        let (status, _) = post_update(&server, "hooks/kill", w.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    server.kill();
    assert!(
        receiver.got.lock().unwrap().is_empty(),
        "nothing was due yet"
    );
    let _server = TestServer::start(
        dir.path(),
        &with(
            store,
            &[
                "--webhook-url",
                url.as_str(),
                "--webhook-debounce-ms",
                "100",
            ],
        ),
    );
    let delivered = receiver.until_delivered("hooks/kill", 3).await;
    assert!(contiguous(&delivered), "{delivered:?}");
}

/// A deleted room's pending changes are not delivered (their content is gone); its
/// deletion is, at least once: here the receiver fails until the server is killed, and
/// the restarted server delivers the deletion, then the room's new changes.
#[actix_rt::test]
async fn a_deletion_is_delivered_at_least_once_instead_of_the_deleted_changes() {
    let receiver = Receiver::start();
    receiver.status.store(500, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let url = receiver.url();
    let args = ["--webhook-url", url.as_str(), "--webhook-debounce-ms", "50"];
    let mut server = TestServer::start(dir.path(), &args);
    let room = "hooks/deleted";
    let w = HttpWriter::new();
    for i in 0..3 {
        let (status, _) = post_update(&server, room, w.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    let mut res = awc::Client::new()
        .delete(server.url(&format!("/rooms/{room}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
    let is_deletion = |d: &Delivery| d.body["room"] == room && d.body["deleted"] == true;
    let deadline = Instant::now() + PATIENCE;
    while !receiver.got.lock().unwrap().iter().any(is_deletion) {
        assert!(Instant::now() < deadline, "the deletion was never tried");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    receiver.status.store(200, Ordering::SeqCst);
    let server = TestServer::start(dir.path(), &args);
    let deadline = Instant::now() + PATIENCE;
    let deletion = loop {
        if let Some(d) = receiver.accepted().into_iter().find(is_deletion) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "the deletion was never delivered"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (
            deletion.body["epoch"].as_u64(),
            deletion.body["seq"].as_u64()
        ),
        (Some(1), Some(4))
    );
    assert_eq!(
        deletion.headers["idempotency-key"],
        "hooks%2Fdeleted:deleted:1"
    );
    // The room's new life is delivered from its first seq on, in its epoch.
    let (status, body) = post_update(&server, room, HttpWriter::new().append("t", "new")).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(5)));
    let delivered = receiver.until_delivered(room, 5).await;
    let ranges: Vec<(u64, u64)> = delivered
        .iter()
        .filter(|d| d.body["deleted"] != true)
        .map(|d| {
            (
                d.body["from_seq"].as_u64().unwrap(),
                d.body["to_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ranges,
        vec![(5, 5)],
        "nothing of the deleted epoch was accepted"
    );
    let last = delivered.last().unwrap();
    assert_eq!(last.body["epoch"], 1);
}

/// Cluster mode: writes on two nodes, one node at a time delivers the room (a lease in
/// Redis), in contiguous ranges; when that node dies, the other takes over from what was
/// stored, and every change is delivered.
#[actix_rt::test]
async fn in_a_cluster_one_node_delivers_a_room_and_another_takes_over() {
    let Some(redis) = redis_or_skip() else { return };
    let receiver = Receiver::start();
    let (url, redis_url) = (receiver.url(), redis.url());
    let args = [
        "--redis-url",
        redis_url.as_str(),
        "--webhook-url",
        url.as_str(),
        "--webhook-debounce-ms",
        "50",
    ];
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestServer::start(dirs[0].path(), &args);
    let b = TestServer::start(dirs[1].path(), &args);
    let room = "hooks/cluster";
    let w = HttpWriter::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, body) = post_update(node, room, w.append("t", &format!("{i}"))).await;
        assert_eq!((status, body["seq"].as_u64()), (200, Some(i + 1)), "{body}");
    }
    let delivered = receiver.until_delivered(room, 10).await;
    assert!(contiguous(&delivered), "one node at a time: {delivered:?}");

    // The node holding the room's webhook lease dies; the other delivers what follows
    // once the lease has expired.
    let holder: u64 = redis
        .command(&["GET", &format!("collabd:{{{room}}}:hooklease")])
        .trim()
        .parse()
        .expect("a node holds the lease");
    let holds = |server: &TestServer| {
        let id = format!("node {holder:016x}");
        server.logs().iter().any(|line| line.contains(&id))
    };
    let (mut dead, alive) = match (holds(&a), holds(&b)) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        other => panic!("which node holds the lease? {other:?}"),
    };
    dead.kill();
    for i in 10..15 {
        let (status, _) = post_update(&alive, room, w.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    let delivered = receiver.until_delivered(room, 15).await;
    let mut covered = std::collections::BTreeSet::new();
    for d in &delivered {
        let (from, to) = (
            d.body["from_seq"].as_u64().unwrap(),
            d.body["to_seq"].as_u64().unwrap(),
        );
        covered.extend(from..=to);
    }
    assert_eq!(covered, (1..=15).collect(), "{delivered:?}");
}
