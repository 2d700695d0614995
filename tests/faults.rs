//! Fault injection: SIGKILL at random moments under HTTP and WebSocket writers, and a
//! reconnect storm of 2,000 clients. What must hold: nothing acknowledged is lost, a seq
//! always names the same update, and every client converges.
//!
//! `FAULT_SEED` replays a run (the seed is printed).

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

fn map_keys(doc: &Doc) -> BTreeSet<String> {
    let map = doc.get_or_insert_map("m");
    let txn = doc.transact();
    map.keys(&txn).map(str::to_string).collect()
}

fn set_key(doc: &Doc, key: &str) -> Vec<u8> {
    let map = doc.get_or_insert_map("m");
    let mut txn = doc.transact_mut();
    map.insert(&mut txn, key, true);
    txn.encode_update_v1()
}

/// POSTs updates, each adding one key, until the server dies. Returns (seq, key) for
/// every update the server acknowledged.
async fn http_writer(base: String, doc: Doc, next: Rc<Cell<u64>>) -> Vec<(u64, String)> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let mut acked = Vec::new();
    loop {
        let n = next.get();
        next.set(n + 1);
        let key = format!("h{n}");
        let mut body = set_key(&doc, &key);
        loop {
            let sent = client
                .post(format!("{base}/rooms/crash/updates"))
                .send_body(body.clone())
                .await;
            let Ok(mut res) = sent else {
                return acked; // the server is gone
            };
            let status = res.status().as_u16();
            let Ok(json) = res.json::<serde_json::Value>().await else {
                return acked;
            };
            match status {
                200 => {
                    acked.push((json["seq"].as_u64().unwrap(), key));
                    break;
                }
                // An earlier update was lost with a crash: send everything instead.
                409 => {
                    body = doc
                        .transact()
                        .encode_state_as_update_v1(&StateVector::default())
                }
                other => panic!("POST answered {other}: {json}"),
            }
        }
    }
}

/// Sends updates over WebSocket, each followed by an ack request, until the connection
/// breaks. Returns the keys covered by an ack.
async fn ws_writer(base: String, doc: Doc, next: Rc<Cell<u64>>) -> Vec<String> {
    let url = format!("{}/ws/crash", base.replace("http://", "ws://"));
    let Ok(mut client) = YClient::try_connect(&url, &[], doc).await else {
        return Vec::new();
    };
    let mut sent: Vec<String> = Vec::new();
    let mut acked = 0;
    loop {
        let n = next.get();
        next.set(n + 1);
        let key = format!("w{n}");
        let update = set_key(client.doc(), &key);
        if !client.try_send(sync_frame(2, &update)).await {
            break;
        }
        sent.push(key);
        let ack = collabd::protocol::encode_ack_request(sent.len() as u64);
        if !client.try_send(ack).await {
            break;
        }
        while client.step_for(Duration::from_millis(2)).await {}
        if client.closed.is_some() {
            break;
        }
        if let Some(&(token, _, stored)) = client.acks.last()
            && stored
        {
            acked = acked.max(token as usize);
        }
    }
    sent.truncate(acked);
    sent
}

/// Replays the room's whole log in seq order: the seq at which each key first appears.
async fn key_seqs(server: &TestServer) -> BTreeMap<String, u64> {
    let doc = Doc::new();
    let mut seen = BTreeMap::new();
    let mut since = 0;
    loop {
        let (status, page) = server
            .get_json(&format!("/rooms/crash/updates?since={since}"))
            .await;
        assert_eq!(status, 200, "{page}");
        let updates = page["updates"].as_array().expect("the log is all there");
        if updates.is_empty() {
            return seen;
        }
        for u in updates {
            let seq = u["seq"].as_u64().unwrap();
            assert_eq!(seq, since + 1, "the log has no holes");
            since = seq;
            let update = Update::decode_v1(&b64(u["update"].as_str().unwrap())).unwrap();
            doc.transact_mut().apply_update(update).unwrap();
            for key in map_keys(&doc) {
                seen.entry(key).or_insert(seq);
            }
        }
    }
}

#[actix_rt::test]
async fn acknowledged_writes_survive_ten_sigkills() {
    let mut rng = Rng(seed_from("FAULT_SEED"));
    let dir = tempfile::tempdir().unwrap();
    let http_doc = Doc::with_client_id(1_001);
    let ws_doc = Doc::with_client_id(1_002);
    let next = Rc::new(Cell::new(0));
    let mut http_acked: Vec<(u64, String)> = Vec::new();
    let mut ws_acked: BTreeSet<String> = BTreeSet::new();
    let mut history: BTreeMap<String, u64> = BTreeMap::new();
    let kills = 10;

    for round in 0..=kills {
        let server = TestServer::start(dir.path(), &[]);
        // Everything acknowledged so far is here, at the seq it was first given.
        let seqs = key_seqs(&server).await;
        for (seq, key) in &http_acked {
            assert_eq!(
                seqs.get(key),
                Some(seq),
                "round {round}: {key} moved or vanished"
            );
        }
        for key in &ws_acked {
            assert!(seqs.contains_key(key), "round {round}: acked {key} lost");
        }
        for (key, seq) in &history {
            assert_eq!(
                seqs.get(key),
                Some(seq),
                "round {round}: seq of {key} changed"
            );
        }
        history.clone_from(&seqs);
        if round == kills {
            eprintln!(
                "after {kills} kills: {} HTTP and {} WebSocket writes acknowledged, \
                 {} updates in the log, none lost",
                http_acked.len(),
                ws_acked.len(),
                seqs.values().max().unwrap_or(&0)
            );
            assert!(http_acked.len() >= kills && !ws_acked.is_empty());
            break;
        }

        let base = server.url("");
        let life = Duration::from_millis(rng.between(150, 700));
        let killer = async move {
            actix_rt::time::sleep(life).await;
            let mut server = server;
            server.kill();
        };
        let (http, ws, ()) = futures_util::future::join3(
            http_writer(base.clone(), http_doc.clone(), next.clone()),
            ws_writer(base, ws_doc.clone(), next.clone()),
            killer,
        )
        .await;
        http_acked.extend(http);
        ws_acked.extend(ws);
    }
}

/// One client of the storm: connects (retrying 503s and refusals with exponential
/// backoff and jitter, as y-websocket does), writes, survives the server's death, writes
/// offline, reconnects, and waits until its room holds everyone's writes.
async fn storm_client(
    index: usize,
    room: String,
    per_room: usize,
    addr: Rc<Cell<Option<SocketAddr>>>,
    stats: Rc<StormStats>,
) -> (String, BTreeSet<String>, BTreeMap<u64, u32>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let doc = Doc::new();
    let connect = |doc: Doc, rng: &mut Rng| {
        let addr = addr.clone();
        let stats = stats.clone();
        let room = room.clone();
        let mut rng = rng.clone();
        async move {
            let mut backoff = 100u64;
            loop {
                if let Some(addr) = addr.get() {
                    let url = format!("ws://{addr}/ws/{room}");
                    match YClient::try_connect(&url, &[], doc.clone()).await {
                        Ok(client) => return client,
                        Err(ConnectError::Status(503)) => {
                            stats.refused.set(stats.refused.get() + 1)
                        }
                        Err(ConnectError::Status(other)) => panic!("upgrade answered {other}"),
                        Err(ConnectError::Io(_)) => {}
                    }
                }
                let jitter = rng.between(0, backoff);
                actix_rt::time::sleep(Duration::from_millis(backoff / 2 + jitter)).await;
                backoff = (backoff * 2).min(3_000);
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);

    let mut client = connect(doc.clone(), &mut rng).await;
    let first = set_key(&doc, &format!("{index}-online"));
    client.send_raw(sync_frame(2, &first)).await;
    while map_keys(&doc).len() < per_room {
        assert!(Instant::now() < deadline, "client {index}: phase 1 stuck");
        client.step_for(Duration::from_millis(200)).await;
        assert!(client.closed.is_none(), "client {index} closed in phase 1");
    }
    stats.phase1.set(stats.phase1.get() + 1);
    // Until the server dies under us.
    while client.closed.is_none() {
        assert!(
            Instant::now() < deadline,
            "client {index}: never disconnected"
        );
        client.step_for(Duration::from_millis(500)).await;
    }
    drop(client);
    set_key(&doc, &format!("{index}-offline"));
    let mut client = connect(doc.clone(), &mut rng).await;
    while map_keys(&doc).len() < 2 * per_room {
        assert!(Instant::now() < deadline, "client {index}: phase 2 stuck");
        if !client.step_for(Duration::from_millis(200)).await && client.closed.is_some() {
            client = connect(doc.clone(), &mut rng).await;
        }
    }
    stats.done.set(stats.done.get() + 1);
    let clocks = clocks(&doc);
    // Keep answering (pongs, updates) until the test ends.
    let keys = map_keys(&doc);
    actix_rt::spawn(async move {
        while client.closed.is_none() {
            client.step_for(Duration::from_millis(500)).await;
        }
    });
    (room, keys, clocks)
}

/// A document's state vector: equal state vectors mean identical documents.
fn clocks(doc: &Doc) -> BTreeMap<u64, u32> {
    let sv = doc.transact().state_vector();
    sv.iter().map(|(id, clock)| (id.get(), *clock)).collect()
}

#[derive(Default)]
struct StormStats {
    refused: Cell<u64>,
    phase1: Cell<usize>,
    done: Cell<usize>,
}

#[actix_rt::test]
async fn two_thousand_clients_reconnect_after_a_crash_and_converge() {
    let (rooms, per_room) = (40, 50);
    let clients = rooms * per_room;
    let dir = tempfile::tempdir().unwrap();
    // Every client connects from 127.0.0.1: its own admission share is raised past the
    // server's bucket, which is the one under test.
    let args = [
        "--max-connections-per-ip",
        "5000",
        "--admission-rate",
        "500",
        "--admission-burst",
        "250",
        "--admission-rate-per-ip",
        "5000",
        "--admission-burst-per-ip",
        "5000",
    ];
    let mut server = TestServer::start(dir.path(), &args);
    let addr = Rc::new(Cell::new(Some(server.addr)));
    let stats = Rc::new(StormStats::default());
    let results = Rc::new(RefCell::new(Vec::new()));
    for index in 0..clients {
        let room = format!("storm-{}", index % rooms);
        let (addr, stats, results) = (addr.clone(), stats.clone(), results.clone());
        actix_rt::spawn(async move {
            let outcome = storm_client(index, room, per_room, addr, stats).await;
            results.borrow_mut().push(outcome);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while stats.phase1.get() < clients {
        assert!(Instant::now() < deadline, "phase 1: {}", stats.phase1.get());
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let first_refusals = stats.refused.get();
    // Every client loses its connection at once; unflushed updates die with the server.
    addr.set(None);
    server.kill();
    let server = TestServer::start(dir.path(), &args);
    addr.set(Some(server.addr));
    while stats.done.get() < clients {
        assert!(Instant::now() < deadline, "phase 2: {}", stats.done.get());
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let storm_refusals = stats.refused.get() - first_refusals;
    eprintln!(
        "storm: {clients} clients, {first_refusals} refusals (503) while connecting, \
         {storm_refusals} during the reconnect storm"
    );
    assert!(
        storm_refusals > 0,
        "the admission bucket never smoothed the storm"
    );
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"admission_rate\"}")
            .await
            > 0.0
    );
    // Every client of a room holds the same state, all writes included, and so does the
    // server.
    let results = results.take();
    assert_eq!(results.len(), clients);
    for r in 0..rooms {
        let room = format!("storm-{r}");
        let members: Vec<_> = results.iter().filter(|(name, ..)| *name == room).collect();
        assert_eq!(members.len(), per_room);
        let expected: BTreeSet<String> = (0..clients)
            .filter(|i| i % rooms == r)
            .flat_map(|i| [format!("{i}-online"), format!("{i}-offline")])
            .collect();
        let first = &members[0].2;
        for member in &members {
            assert_eq!(member.1, expected, "{room}: a write was lost");
            assert_eq!(&member.2, first, "{room}: clients diverged");
        }
        let (doc, _) = server.state(&room).await;
        assert_eq!(map_keys(&doc), expected, "{room}: the server lost a write");
        assert_eq!(&clocks(&doc), first, "{room}: the server diverged");
    }
}
