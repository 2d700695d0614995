//! Cluster mode (`--redis-url`): several real `collabd` nodes share rooms through a
//! `redis-server` the test starts (AOF, `appendfsync always`) on a free port in a temp dir.
//! Every node and every SSE client sees the same seq → update mapping; a resume or a poll
//! on one node with a seq from another gets exactly what was missed; a Redis outage (cut
//! by a TCP proxy), a Redis restarted from its AOF and a node killed with SIGKILL lose no
//! acknowledged write and leave no gap or duplicate; a Redis Cluster of three masters
//! keeps the same contracts; a Redis that may evict room keys is refused.
//!
//! Needs Debian's `redis-server` (and `nginx-light` for the load-balancer test); without
//! them these tests say so and pass, except under CI (`CI` set), which never skips.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use common::*;
use tempfile::TempDir;

/// A node of the cluster: the real binary with `--redis-url`.
fn node(redis_url: &str, extra: &[&str]) -> (TestServer, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--redis-url", redis_url];
    args.extend_from_slice(extra);
    (TestServer::start(dir.path(), &args), dir)
}

fn nodes(redis_url: &str, n: usize) -> Vec<(TestServer, TempDir)> {
    (0..n).map(|_| node(redis_url, &[])).collect()
}

/// The room's log as node `server` serves it to a poller: seq → update.
async fn polled_log(server: &TestServer, room: &str, since: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut log = BTreeMap::new();
    let mut cursor = since;
    loop {
        let (status, answer) = server
            .get_json(&format!("/rooms/{room}/updates?since={cursor}"))
            .await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.get("snapshot").is_none_or(|s| s.is_null()),
            "a snapshot instead of updates: {answer}"
        );
        let updates = answer["updates"].as_array().unwrap();
        if updates.is_empty() {
            return log;
        }
        for u in updates {
            let seq = u["seq"].as_u64().unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(u["update"].as_str().unwrap())
                .unwrap();
            assert!(log.insert(seq, bytes).is_none(), "seq {seq} twice");
            cursor = seq;
        }
    }
}

/// Reads SSE update events until `last`; returns seq → update.
async fn sse_until(sse: &mut SseClient, last: u64) -> BTreeMap<u64, Vec<u8>> {
    let mut seen = BTreeMap::new();
    while seen.keys().next_back().copied().unwrap_or(0) < last {
        let event = sse.next_doc_event().await;
        if event.kind != "update" {
            continue;
        }
        let seq = event.id.expect("an update carries its seq");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(event.data.trim())
            .unwrap();
        assert!(seen.insert(seq, bytes).is_none(), "seq {seq} twice on SSE");
    }
    seen
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Checks a room's log: seqs dense from 1, and each acknowledged marker in the update at
/// its seq and in no other.
fn check_log(log: &BTreeMap<u64, Vec<u8>>, acked: &[(u64, String)], what: &str) {
    let seqs: Vec<u64> = log.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{what}: seqs dense from 1"
    );
    for (seq, marker) in acked {
        let holders: Vec<u64> = log
            .iter()
            .filter(|(_, u)| contains(u, marker))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(holders, vec![*seq], "{what}: {marker} acked at seq {seq}");
    }
}

/// Three nodes, one Redis: WebSocket writers and POST writers on every node at once; every
/// node's SSE stream and poll give the same seq → update mapping, dense, every ack at its
/// seq; every client converges; a resume on node A with the id from node B and a poll on
/// node C get exactly what was missed.
#[actix_rt::test]
async fn three_nodes_share_a_room_in_one_seq_order() {
    let Some(redis) = redis_or_skip() else { return };
    let cluster = nodes(&redis.url(), 3);
    let room = "cluster/one";
    let mut streams = Vec::new();
    for (server, _) in &cluster {
        streams.push(SseClient::open(server, &format!("/rooms/{room}/events?since=0"), None).await);
    }
    let mut clients = Vec::new();
    for (server, _) in &cluster {
        let mut c = YClient::connect(server, room).await;
        c.until("synced", |c| c.synced).await;
        clients.push(c);
    }
    let writers: Vec<HttpWriter> = cluster.iter().map(|_| HttpWriter::new()).collect();
    let mut acked: Vec<(u64, String)> = Vec::new();
    for round in 0..15u64 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.append("ws", &format!("[ws{i}.{round}]")).await;
            c.request_ack(round).await;
        }
        let posts = cluster
            .iter()
            .zip(&writers)
            .enumerate()
            .map(|(i, ((server, _), w))| {
                let marker = format!("[post{i}.{round}]");
                let update = w.append("posts", &marker);
                async move {
                    let (status, answer) = post_update(server, room, update).await;
                    assert_eq!(status, 200, "{answer}");
                    (answer["seq"].as_u64().unwrap(), marker)
                }
            });
        acked.extend(futures_util::future::join_all(posts).await);
        for (i, c) in clients.iter_mut().enumerate() {
            c.until("the ack", |c| c.acks.iter().any(|(t, _, _)| *t == round))
                .await;
            let (_, seq, stored) = *c.acks.iter().find(|(t, _, _)| *t == round).unwrap();
            assert!(stored, "node {i}: ack {round} says refused");
            // An ack covers the acked write: its seq is the write's or later.
            let marker = format!("[ws{i}.{round}]");
            acked.push((seq, marker));
        }
    }
    let total = 15 * 6;
    for (server, _) in &cluster {
        server.wait_for_seq(room, total).await;
    }
    let logs: Vec<_> = futures_util::future::join_all(
        cluster
            .iter()
            .map(|(server, _)| polled_log(server, room, 0)),
    )
    .await;
    assert_eq!(logs[0].len() as u64, total);
    for (i, log) in logs.iter().enumerate() {
        assert_eq!(log, &logs[0], "node {i}'s log differs from node 0's");
    }
    // Acks carry the durable seq at the time (at least the write's own): POST seqs must
    // be exact, WebSocket acks at or after their write.
    let (posts, ws): (Vec<_>, Vec<_>) = acked
        .iter()
        .cloned()
        .partition(|(_, m)| m.starts_with("[post"));
    check_log(&logs[0], &posts, "POSTs");
    for (seq, marker) in &ws {
        let at: Vec<u64> = logs[0]
            .iter()
            .filter(|(_, u)| contains(u, marker))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(at.len(), 1, "{marker} once in the log");
        assert!(at[0] <= *seq, "{marker} at {} but acked at {seq}", at[0]);
    }
    for (i, sse) in streams.iter_mut().enumerate() {
        let seen = sse_until(sse, total).await;
        assert_eq!(seen, logs[0], "node {i}'s SSE stream differs from the log");
    }
    // Everyone converges, and each node's state is the same document.
    let expected = {
        let (doc, seq) = cluster[0].0.state(room).await;
        assert_eq!(seq, total);
        (text_of(&doc, "ws"), text_of(&doc, "posts"))
    };
    for (server, _) in &cluster[1..] {
        let (doc, _) = server.state(room).await;
        assert_eq!((text_of(&doc, "ws"), text_of(&doc, "posts")), expected);
    }
    for c in clients.iter_mut() {
        c.until("converged", |c| {
            c.text("ws") == expected.0 && c.text("posts") == expected.1
        })
        .await;
    }
    // Resume on node 0 with a seq another node answered; poll node 2 from it.
    let (mid, _) = posts[posts.len() / 2].clone();
    let mut resumed = SseClient::connect(&cluster[0].0, room, Some(&mid.to_string())).await;
    let replay = sse_until(&mut resumed, total).await;
    let missed: BTreeMap<u64, Vec<u8>> = logs[0]
        .range(mid + 1..)
        .map(|(s, u)| (*s, u.clone()))
        .collect();
    assert_eq!(replay, missed, "SSE resume with an id from another node");
    assert_eq!(
        polled_log(&cluster[2].0, room, mid).await,
        missed,
        "poll on node 2"
    );
}

/// Stock y-websocket clients on three nodes converge and see each other's presence.
#[test]
fn stock_yjs_clients_converge_across_nodes() {
    let Some(redis) = redis_or_skip() else { return };
    let cluster = nodes(&redis.url(), 3);
    let urls: Vec<String> = cluster.iter().map(|(s, _)| s.url("")).collect();
    run_node("cluster.mjs", &[("CLUSTER_URLS", urls.join(",").as_ref())]);
}

/// POSTs the writer's whole state (so that a write refused before needs no special
/// care: the server stores only what it lacks) until it is acknowledged; the seq, and
/// how many answers were 503 first.
async fn post_until_acked(server: &TestServer, room: &str, w: &HttpWriter) -> (u64, usize) {
    use yrs::{ReadTxn, StateVector, Transact};
    let full = w
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut refused = 0;
    loop {
        let (status, answer) = post_update(server, room, full.clone()).await;
        match status {
            200 => return (answer["seq"].as_u64().unwrap(), refused),
            503 => {
                let error = answer["error"].as_str().unwrap_or("");
                assert!(
                    ["store_unavailable", "not_stored"].contains(&error),
                    "{answer}"
                );
                refused += 1;
            }
            other => panic!("HTTP {other}: {answer}"),
        }
        if std::time::Instant::now() > deadline {
            for l in server.logs() {
                eprintln!("{l}");
            }
            panic!("never acknowledged");
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`check_log`], for writes a client may have sent more than once: each marker at
/// its acknowledged seq or before it. A write whose first attempts were refused may be
/// stored twice: the node that took it before Redis went away sends it again once Redis
/// is back (its WebSocket peers may hold it already), and the client resent it too,
/// maybe to another node. Yjs applies such a repeat as a no-op. The third field counts
/// such reasons to repeat; with none, the marker is in the log once.
fn check_log_at_or_before(
    log: &BTreeMap<u64, Vec<u8>>,
    acked: &[(u64, String, usize)],
    what: &str,
) {
    let seqs: Vec<u64> = log.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{what}: seqs dense from 1"
    );
    for (seq, marker, refused) in acked {
        let holders: Vec<u64> = log
            .iter()
            .filter(|(_, u)| contains(u, marker))
            .map(|(s, _)| *s)
            .collect();
        assert!(
            !holders.is_empty(),
            "{what}: {marker} (acked at {seq}) missing"
        );
        assert!(
            holders[0] <= *seq,
            "{what}: {marker} at {holders:?}, acked at {seq}"
        );
        if *refused == 0 {
            assert_eq!(holders.len(), 1, "{what}: {marker} once in the log");
        }
    }
}

/// Through nginx (`deploy/nginx.conf`, round robin, no stickiness): stock y-websocket
/// clients and an EventSource converge; a node is killed with SIGKILL while they type,
/// its clients reconnect through nginx to the others, and everyone converges with
/// nothing lost.
#[test]
fn through_nginx_without_stickiness_and_a_node_killed() {
    use std::io::{BufRead, BufReader};
    let Some(redis) = redis_or_skip() else { return };
    let mut cluster = nodes(&redis.url(), 3);
    let upstreams: Vec<std::net::SocketAddr> = cluster.iter().map(|(s, _)| s.addr).collect();
    let Some(nginx) = nginx_or_skip(&upstreams) else {
        return;
    };
    let urls: Vec<String> = cluster.iter().map(|(s, _)| s.url("")).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("node")
        .arg(root.join("tests/js/cluster.mjs"))
        .env("CLUSTER_URLS", urls.join(","))
        .env("NGINX_URL", nginx.url(""))
        .env("KILL_URL", &urls[0])
        .env("YJS_INTEROP_SERVER_BIN", env!("CARGO_BIN_EXE_collabd"))
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node must be installed");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        let line = line.unwrap();
        println!("{line}");
        if line == "KILL" {
            cluster[0].0.kill();
        }
    }
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "cluster.mjs through nginx failed: {status}"
    );
}

/// Redis cut away (a TCP proxy drops every connection) while nodes take writes: writes
/// are refused with 503 `store_unavailable` and `/healthz` says degraded; once Redis is
/// reachable again writes resume; every acknowledged write is in the log exactly once,
/// at (or before) its seq, the log is dense, and a WebSocket edit refused meanwhile comes
/// back.
#[actix_rt::test]
async fn a_redis_outage_refuses_writes_then_resumes_without_loss() {
    let Some(redis) = redis_or_skip() else { return };
    let proxy = Proxy::to(redis.addr());
    let via = format!("redis://{}", proxy.addr);
    let cluster = nodes(&via, 2);
    let room = "cluster/outage";
    let writers: Vec<HttpWriter> = cluster.iter().map(|_| HttpWriter::new()).collect();
    let mut acked: Vec<(u64, String, usize)> = Vec::new();
    let mut ws = YClient::connect(&cluster[1].0, room).await;
    ws.until("synced", |c| c.synced).await;
    let write_round = async |round: usize, acked: &mut Vec<(u64, String, usize)>| {
        let posts = cluster
            .iter()
            .zip(&writers)
            .enumerate()
            .map(|(i, ((server, _), w))| {
                let marker = format!("[n{i}.{round}]");
                w.append("t", &marker);
                async move { (post_until_acked(server, room, w).await, marker) }
            });
        let mut refused = 0;
        for ((seq, r), marker) in futures_util::future::join_all(posts).await {
            acked.push((seq, marker, r));
            refused += r;
        }
        refused
    };
    for round in 0..10 {
        assert_eq!(write_round(round, &mut acked).await, 0);
    }
    proxy.cut();
    // Refused while cut, and degraded.
    for (i, (server, _)) in cluster.iter().enumerate() {
        let marker = format!("[refused{i}]");
        let (status, answer) = post_update(server, room, writers[i].append("t", &marker)).await;
        assert_eq!(status, 503, "{answer}");
        let (status, health) = server.get_json("/healthz").await;
        assert_eq!(
            (status, health["status"].as_str()),
            (503, Some("degraded")),
            "{health}"
        );
    }
    ws.append("ws", "[edit while Redis is away]").await;
    ws.step_for(Duration::from_millis(300)).await;
    proxy.restore();
    let mut refused = 0;
    for round in 10..20 {
        refused += write_round(round, &mut acked).await;
    }
    let (status, health) = cluster[0].0.get_json("/healthz").await;
    assert_eq!(
        (status, health["redis"].as_str()),
        (200, Some("ok")),
        "{health}"
    );
    eprintln!("{refused} POSTs refused while Redis came back");
    let last = acked.iter().map(|(s, _, _)| *s).max().unwrap();
    for (server, _) in &cluster {
        server.wait_for_seq(room, last).await;
    }
    // The edit refused while Redis was away comes back through the re-sync.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (doc, _) = cluster[0].0.state(room).await;
        if text_of(&doc, "ws").contains("[edit while Redis is away]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refused edit never came back"
        );
        ws.step_for(Duration::from_millis(50)).await;
    }
    let log = polled_log(&cluster[0].0, room, 0).await;
    check_log_at_or_before(&log, &acked, "after the outage");
    assert_eq!(
        log,
        polled_log(&cluster[1].0, room, 0).await,
        "both nodes agree"
    );
    for (server, _) in &cluster {
        assert!(
            !server.logs().iter().any(|l| l.contains("panicked")),
            "a panic"
        );
    }
}

/// Redis killed with SIGKILL and restarted from its AOF: every acknowledged write is
/// there, and seqs go on densely.
#[actix_rt::test]
async fn redis_restarted_from_its_aof_keeps_every_acknowledged_write() {
    let Some(mut redis) = redis_or_skip() else {
        return;
    };
    let cluster = nodes(&redis.url(), 2);
    let room = "cluster/aof";
    let w = HttpWriter::new();
    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 30 {
            redis.kill();
            redis.restart();
        }
        let marker = format!("[aof{i}]");
        w.append("t", &marker);
        let (seq, _) = post_until_acked(&cluster[i % 2].0, room, &w).await;
        // One writer's whole state, posted to each node in turn: a node that has not yet
        // heard (pub/sub) of the write the other node just took stores it again inside
        // its own diff, which Yjs applies as a no-op. So every marker may repeat here;
        // what must hold is that it is there, at or before its acknowledged seq.
        acked.push((seq, marker, 1));
    }
    let last = acked.iter().map(|(s, _, _)| *s).max().unwrap();
    for (server, _) in &cluster {
        server.wait_for_seq(room, last).await;
    }
    let log = polled_log(&cluster[1].0, room, 0).await;
    check_log_at_or_before(&log, &acked, "after Redis' restart");
    assert_eq!(
        log,
        polled_log(&cluster[0].0, room, 0).await,
        "both nodes agree"
    );
}

/// A node killed with SIGKILL under write load: its writers move to another node, the
/// room converges there, and every write acknowledged by the dead node is in the log at
/// its seq.
#[actix_rt::test]
async fn a_node_killed_under_writes_loses_nothing_acknowledged() {
    let Some(redis) = redis_or_skip() else { return };
    let mut cluster = nodes(&redis.url(), 2);
    let room = "cluster/kill";
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut doomed = YClient::connect(&cluster[0].0, room).await;
    doomed.until("synced", |c| c.synced).await;
    let w = HttpWriter::new();
    for round in 0..20 {
        let marker = format!("[doomed{round}]");
        doomed.append("ws", &marker).await;
        doomed.request_ack(round).await;
        let post = format!("[post{round}]");
        let (status, answer) = post_update(&cluster[0].0, room, w.append("p", &post)).await;
        assert_eq!(status, 200, "{answer}");
        acked.push((answer["seq"].as_u64().unwrap(), post));
    }
    doomed
        .until("the last ack", |c| c.acks.iter().any(|(t, _, _)| *t == 19))
        .await;
    let text_before = doomed.text("ws");
    cluster[0].0.kill();
    // The client reconnects to the surviving node with its document and re-syncs.
    let survivor = &cluster[1].0;
    let mut moved = YClient::connect_with(survivor, room, doomed.doc().clone()).await;
    moved.until("synced", |c| c.synced).await;
    moved.append("ws", "[after the move]").await;
    let mut watcher = YClient::connect(survivor, room).await;
    watcher
        .until("everything", |c| {
            c.text("ws") == format!("{text_before}[after the move]")
                && c.text("p").contains("[post19]")
        })
        .await;
    let log = polled_log(survivor, room, 0).await;
    check_log(&log, &acked, "after the node died");
    cluster.remove(0);
}

/// A Redis Cluster of three masters: rooms spread over the shards (each room's keys in
/// one slot), and writes on different nodes keep every contract per room.
#[actix_rt::test]
async fn a_redis_cluster_of_three_masters_keeps_the_contracts() {
    let Some(redis) = redis_cluster_or_skip() else {
        return;
    };
    let cluster = nodes(&redis.urls().join(","), 3);
    let rooms: Vec<String> = (0..12).map(|i| format!("shard/{i}")).collect();
    let mut acked: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    let writers: Vec<HttpWriter> = rooms.iter().map(|_| HttpWriter::new()).collect();
    for round in 0..6 {
        for (r, room) in rooms.iter().enumerate() {
            let (server, _) = &cluster[(r + round) % 3];
            let marker = format!("[{room}.{round}]");
            let (status, answer) = post_update(server, room, writers[r].append("t", &marker)).await;
            assert_eq!(status, 200, "{answer}");
            acked
                .entry(room.clone())
                .or_default()
                .push((answer["seq"].as_u64().unwrap(), marker));
        }
    }
    for room in &rooms {
        let mut logs = Vec::new();
        for (server, _) in &cluster {
            server.wait_for_seq(room, 6).await;
            let log = polled_log(server, room, 0).await;
            check_log(&log, &acked[room], room);
            // SSE on every node: the same seqs and updates, and a resume from seq 3.
            let mut sse =
                SseClient::open(server, &format!("/rooms/{room}/events?since=0"), None).await;
            assert_eq!(sse_until(&mut sse, 6).await, log, "{room}: SSE");
            let mut resumed = SseClient::connect(server, room, Some("3")).await;
            let rest: BTreeMap<u64, Vec<u8>> =
                log.range(4..).map(|(s, u)| (*s, u.clone())).collect();
            assert_eq!(sse_until(&mut resumed, 6).await, rest, "{room}: resume");
            logs.push(log);
        }
        assert!(logs.windows(2).all(|w| w[0] == w[1]), "{room}: nodes agree");
    }
    // WebSocket clients of one room on every node converge.
    let mut clients = Vec::new();
    for (server, _) in &cluster {
        let mut c = YClient::connect(server, &rooms[0]).await;
        c.until("synced", |c| c.synced).await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.append("ws", &format!("[ws{i}]")).await;
    }
    for c in clients.iter_mut() {
        c.until("every node's edit", |c| {
            (0..3).all(|i| c.text("ws").contains(&format!("[ws{i}]")))
        })
        .await;
    }
    // The rooms' keys live on every master, not on one.
    let holding = redis
        .node_ports()
        .iter()
        .filter(|port| {
            let keys = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "--scan", "--pattern", "collabd:*"])
                .output()
                .unwrap();
            !keys.stdout.is_empty()
        })
        .count();
    assert_eq!(holding, 3, "rooms on every shard");
}

/// A node says at startup what an ack is worth: on disk with `appendfsync always`, and a
/// loud warning with anything less.
#[test]
fn a_node_says_what_an_ack_is_worth() {
    let Some(always) = redis_or_skip() else {
        return;
    };
    let (node_always, _d1) = node(&always.url(), &[]);
    assert!(
        node_always
            .logs()
            .iter()
            .any(|l| l.contains("an ack means on disk")),
        "{:?}",
        node_always.logs()
    );
    let everysec = RedisServer::start_with(&["--appendfsync", "everysec"]);
    let (node_everysec, _d2) = node(&everysec.url(), &[]);
    assert!(
        node_everysec
            .logs()
            .iter()
            .any(|l| l.contains("DURABILITY") && l.contains("appendfsync everysec")),
        "{:?}",
        node_everysec.logs()
    );
    let no_aof = RedisServer::start_with(&["--appendonly", "no"]);
    let (node_no_aof, _d3) = node(&no_aof.url(), &[]);
    assert!(
        node_no_aof
            .logs()
            .iter()
            .any(|l| l.contains("DURABILITY") && l.contains("appendonly no")),
        "{:?}",
        node_no_aof.logs()
    );
}

/// A Redis whose `maxmemory-policy` may evict room keys is refused at startup, with a
/// message that says why.
#[test]
fn a_redis_that_may_evict_room_keys_is_refused() {
    let Some(_) = redis_or_skip() else { return };
    let redis = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_collabd"))
        .args(["--bind", "127.0.0.1:0", "--redis-url", &redis.url()])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("maxmemory-policy allkeys-lru"), "{stderr}");
}

/// Messages lost on the way: Redis drops node A's pub/sub connection again and again
/// (`CLIENT KILL TYPE pubsub`) while node B takes writes. Node A notices each gap, reads
/// the stream, and its SSE stream still carries every seq once, in order.
#[actix_rt::test]
async fn lost_channel_messages_are_read_from_the_stream() {
    let Some(redis) = redis_or_skip() else { return };
    let cluster = nodes(&redis.url(), 2);
    let room = "cluster/lossy";
    let mut sse = SseClient::open(
        &cluster[0].0,
        &format!("/rooms/{room}/events?since=0"),
        None,
    )
    .await;
    let w = HttpWriter::new();
    let mut acked = Vec::new();
    for i in 0..60 {
        if i % 10 == 5 {
            redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        let marker = format!("[lossy{i}]");
        let (status, answer) = post_update(&cluster[1].0, room, w.append("t", &marker)).await;
        assert_eq!(status, 200, "{answer}");
        acked.push((answer["seq"].as_u64().unwrap(), marker));
    }
    let seen = sse_until(&mut sse, 60).await;
    check_log(&seen, &acked, "node A's SSE stream");
    assert_eq!(seen, polled_log(&cluster[1].0, room, 0).await);
    assert!(
        cluster[0]
            .0
            .logs()
            .iter()
            .any(|l| l.contains("Redis pub/sub connection lost")),
        "the pub/sub connection was really cut"
    );
}

/// Snapshots and compaction in Redis: with a snapshot every 10 updates and a replay
/// window of 10, the stream stays short while seqs go on; a node that loads the room
/// later starts from the snapshot; a client resuming from before the window gets the
/// snapshot, then exactly the rest.
#[actix_rt::test]
async fn snapshots_keep_the_redis_stream_short() {
    let Some(redis) = redis_or_skip() else { return };
    let small = ["--snapshot-every", "10", "--replay-window", "10"];
    let (a, _da) = node(&redis.url(), &small);
    let room = "cluster/compact";
    let w = HttpWriter::new();
    for i in 0..100 {
        let (status, answer) = post_update(&a, room, w.append("t", &format!("[c{i}]"))).await;
        assert_eq!(
            (status, answer["seq"].as_u64()),
            (200, Some(i + 1)),
            "{answer}"
        );
    }
    let key = format!("collabd:{{{room}}}:log");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let len: u64 = redis.command(&["XLEN", &key]).parse().unwrap();
        if len <= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream stays at {len} entries"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !redis
            .command(&["HGET", &format!("collabd:{{{room}}}:snap"), "seq"])
            .is_empty()
    );
    // A node that loads the room now, from the snapshot and the rest of the stream.
    let (b, _db) = node(&redis.url(), &small);
    let (doc, seq) = b.state(room).await;
    assert_eq!(seq, 100);
    let text = text_of(&doc, "t");
    assert_eq!(
        text,
        (0..100).map(|i| format!("[c{i}]")).collect::<String>()
    );
    // A resume from seq 3 (compacted away): a snapshot, then the updates after it.
    let (status, answer) = b.get_json(&format!("/rooms/{room}/updates?since=3")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["snapshot"].is_object() || answer["snapshot"].is_string(),
        "{answer}"
    );
    // Writes on the second node continue the same seqs.
    let (status, answer) = post_update(&b, room, w.append("t", "[after]")).await;
    assert_eq!(
        (status, answer["seq"].as_u64()),
        (200, Some(101)),
        "{answer}"
    );
}

/// Presence crosses nodes, and the presence of a node that died expires everywhere else.
#[actix_rt::test]
async fn presence_crosses_nodes_and_a_dead_nodes_expires() {
    let Some(redis) = redis_or_skip() else { return };
    let timeout = ["--awareness-timeout-ms", "1500"];
    let (mut a, _da) = node(&redis.url(), &timeout);
    let (b, _db) = node(&redis.url(), &timeout);
    let room = "cluster/presence";
    let mut on_a = YClient::connect(&a, room).await;
    on_a.until("synced", |c| c.synced).await;
    let mut on_b = YClient::connect(&b, room).await;
    on_b.until("synced", |c| c.synced).await;
    on_a.set_awareness(r#"{"user":{"name":"ann"}}"#).await;
    let ann = on_a.client_id();
    on_b.until("ann's presence on node B", |c| {
        c.awareness_state(ann).is_some_and(|s| s.contains("ann"))
    })
    .await;
    on_b.set_awareness(r#"{"user":{"name":"bob"}}"#).await;
    let bob = on_b.client_id();
    on_a.until("bob's presence on node A", |c| {
        c.awareness_state(bob).is_some_and(|s| s.contains("bob"))
    })
    .await;
    // Node A dies with ann's state: node B expires it (no renewals come any more).
    a.kill();
    on_b.until("ann's presence expired", |c| {
        c.awareness_state(ann).is_none()
    })
    .await;
}

/// One bad entry (an update that does not decode, written straight into Redis the way a
/// node writes, with its seq and on the room's channel) costs that entry only: the room
/// goes on with the next seqs, every node agrees on the log, and other rooms never
/// notice.
#[actix_rt::test]
async fn a_bad_entry_in_the_log_stalls_nothing() {
    let Some(redis) = redis_or_skip() else { return };
    let cluster = nodes(&redis.url(), 2);
    let (room, other) = ("cluster/bad", "cluster/good");
    let w = HttpWriter::new();
    let (status, _) = post_update(&cluster[0].0, room, w.append("t", "[before]")).await;
    assert_eq!(status, 200);
    let mut sse = SseClient::open(
        &cluster[1].0,
        &format!("/rooms/{room}/events?since=0"),
        None,
    )
    .await;
    let script = collabd::cluster::roomlog::APPEND;
    let answer = redis.command(&[
        "EVAL",
        script,
        "5",
        &format!("collabd:{{{room}}}:seq"),
        &format!("collabd:{{{room}}}:log"),
        &format!("collabd:{{{room}}}:touched"),
        &format!("collabd:{{{room}}}:epoch"),
        &format!("collabd:{{{room}}}:hook"),
        "12345",
        &format!("collabd:{{{room}}}"),
        "0",
        "0",
        "0",
        "0",
        "1",
        "",
        "\u{1}not a yjs update",
    ]);
    assert_eq!(answer, "2", "the bad entry is seq 2");
    let (status, answer) = post_update(&cluster[1].0, room, w.append("t", "[after]")).await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(3)), "{answer}");
    let seen = sse_until(&mut sse, 3).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    for (server, _) in &cluster {
        server.wait_for_seq(room, 3).await;
        let (doc, seq) = server.state(room).await;
        assert_eq!(
            (text_of(&doc, "t"), seq),
            ("[before][after]".to_string(), 3)
        );
    }
    let w2 = HttpWriter::new();
    let (status, answer) = post_update(&cluster[0].0, other, w2.append("t", "x")).await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(1)), "{answer}");
}
