//! collabd as a library, in process: a host actix-web app on port 0 mounts it under
//! `/collab` beside its own route, with hooks; clients are the Rust client
//! (`collabd-client`, over WebSocket through the prefix) and plain HTTP.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer, web};
use collabd::hooks::{Change, Grant};
use collabd::{Builder, Collabd, Settings};
use collabd_client::{Client, Options};
use common::{HttpWriter, PATIENCE, text_of};
use futures_util::StreamExt;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update, WriteTxn};

/// A host app: `GET /hello` of its own, collabd under `/collab`.
struct Host {
    addr: SocketAddr,
    collabd: Collabd,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn start(
        hooks: impl FnOnce(Builder) -> Builder,
        tune: impl FnOnce(&mut Settings),
    ) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        tune(&mut settings);
        let collabd = hooks(Collabd::builder(settings)).build().unwrap();
        let mounted = collabd.clone();
        let server = HttpServer::new(move || {
            App::new()
                .route("/hello", web::get().to(|| async { "hello" }))
                .service(mounted.scope("/collab"))
        })
        .workers(2)
        // As the README's "Embedding" advises: SSE streams and held polls end as soon
        // as their client goes.
        .h1_allow_half_closed(false)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        actix_rt::spawn(server.disable_signals().run());
        Host {
            addr,
            collabd,
            _dir: dir,
        }
    }

    fn base(&self) -> String {
        format!("http://{}/collab", self.addr)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body of `GET path`, as text.
    async fn text(&self, path: &str) -> String {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        let body = res.body().limit(16 << 20).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        let body = res.body().await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let mut res = awc::Client::new()
            .post(self.url(path))
            .send_body(body)
            .await
            .unwrap();
        let body = res.body().await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The status of a WebSocket handshake on `path` (101 when it opens).
    async fn handshake(&self, path: &str) -> u16 {
        match awc::Client::new()
            .ws(format!("ws://{}{path}", self.addr))
            .connect()
            .await
        {
            Ok((res, _)) => res.status().as_u16(),
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
            Err(e) => panic!("handshake on {path}: {e}"),
        }
    }

    fn client(&self, room: &str, token: Option<&str>) -> Client {
        let options = Options {
            token: token.map(String::from),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..Options::default()
        };
        Client::connect(&self.base(), room, Doc::new(), options)
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn insert(doc: &Doc, text: &str) {
    let body = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let end = body.len(&txn);
    body.insert(&mut txn, end, text);
}

#[actix_rt::test]
async fn every_transport_works_under_the_prefix_beside_the_hosts_route() {
    let host = Host::start(|b| b, |_| {}).await;
    assert_eq!(host.text("/hello").await, "hello");

    // WebSocket through the prefix: two clients converge.
    let (a, b) = (host.client("notes", None), host.client("notes", None));
    a.wait_synced().await;
    b.wait_synced().await;
    insert(a.doc(), "from a. ");
    insert(b.doc(), "from b. ");
    until("the WebSocket clients converge", || {
        let (ta, tb) = (text_of(a.doc(), "t"), text_of(b.doc(), "t"));
        ta == tb && ta.contains("from a.") && ta.contains("from b.")
    })
    .await;

    // POST, polling, JSON and SSE, all under /collab.
    let writer = HttpWriter::new();
    let (status, answer) = host
        .post(
            "/collab/rooms/notes/updates",
            writer.append("t", "posted. "),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let seq = answer["seq"].as_u64().unwrap();
    let (status, polled) = host.get("/collab/rooms/notes/updates?since=0").await;
    assert_eq!(status, 200);
    assert_eq!(polled["updates"].as_array().unwrap().len() as u64, seq);
    until("the clients see the POST", || {
        text_of(a.doc(), "t").contains("posted.")
    })
    .await;
    let (_, json) = host.get("/collab/rooms/notes/json").await;
    assert_eq!(json["t"].as_str().unwrap(), text_of(a.doc(), "t"));
    let mut sse = awc::Client::new()
        .get(host.url("/collab/rooms/notes/events?since=0"))
        .send()
        .await
        .unwrap();
    let mut stream = String::new();
    while !stream.contains("event: synced") {
        let chunk = actix_rt::time::timeout(PATIENCE, sse.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        stream.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(stream.contains("event: update\nid: 1\n"), "{stream}");

    // Outside the prefix, the host's app answers (404), not collabd.
    let (status, _) = host.get("/rooms/notes/json").await;
    assert_eq!(status, 404);
    host.collabd.shutdown().await;
}

#[actix_rt::test]
async fn the_authenticate_hook_decides_and_a_failing_hook_fails_only_its_request() {
    let host = Host::start(
        |b| {
            b.authenticate(|asked| async move {
                match asked.token.as_deref() {
                    Some("w") => Ok(Grant::write().subject("writer")),
                    Some("r") => Ok(Grant::read()),
                    Some("panic") => panic!("a hook that panics"),
                    Some("slow") => {
                        actix_rt::time::sleep(Duration::from_secs(30)).await;
                        Ok(Grant::write())
                    }
                    // A hook that wraps collabd's own JWT check.
                    _ => asked.check_token(),
                }
            })
        },
        |s| {
            s.hook_timeout_ms = 300;
            s.auth_secret = Some("embed-test-secret-0123456789".into());
        },
    )
    .await;
    let update = || HttpWriter::new().append("t", "x");
    // HTTP: refused (by the JWT check the hook wraps), read-only, write.
    let (status, body) = host.get("/collab/rooms/a/json").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_missing"))
    );
    assert_eq!(host.get("/collab/rooms/a/json?token=r").await.0, 200);
    let (status, body) = host.post("/collab/rooms/a/updates?token=r", update()).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("read_only")));
    assert_eq!(
        host.post("/collab/rooms/a/updates?token=w", update())
            .await
            .0,
        200
    );
    // A hook that panics or outlives its timeout fails that request only.
    for token in ["panic", "slow"] {
        let (status, body) = host
            .get(&format!("/collab/rooms/a/json?token={token}"))
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("hook_failed")),
            "{token}"
        );
        assert_eq!(
            host.handshake(&format!("/collab/ws/a?token={token}")).await,
            500
        );
    }
    // WebSocket and SSE: the same decisions.
    assert_eq!(host.handshake("/collab/ws/a").await, 401);
    assert_eq!(host.handshake("/collab/ws/a?token=r").await, 101);
    assert_eq!(host.get("/collab/rooms/a/events?token=bad").await.0, 401);
    // The room kept serving: a writer's client converges with the server.
    let client = host.client("a", Some("w"));
    client.wait_synced().await;
    insert(client.doc(), "y");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, json) = host.get("/collab/rooms/a/json?token=r").await;
        if json["t"] == "xy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer's edit is not stored: {json}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    host.collabd.shutdown().await;
}

#[actix_rt::test]
async fn the_load_hook_seeds_a_new_room_exactly_once_with_20_joiners() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let host = Host::start(
        move |b| {
            b.on_load(move |room| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if room.starts_with("broken") {
                        return Err("no such document upstream".to_string());
                    }
                    // Slow enough that all joiners arrive while it runs.
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                    let doc = Doc::new();
                    insert(&doc, "seeded\n");
                    Ok(Some(
                        doc.transact()
                            .encode_state_as_update_v1(&Default::default()),
                    ))
                }
            })
        },
        |_| {},
    )
    .await;
    let clients: Vec<Client> = (0..20).map(|_| host.client("seeded", None)).collect();
    for c in &clients {
        c.wait_synced().await;
    }
    for c in &clients {
        until("the seed", || text_of(c.doc(), "t") == "seeded\n").await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one seed for 20 joiners");
    let (_, info) = host.get("/collab/rooms/seeded").await;
    assert_eq!(info["seq"], 1, "the seed is seq 1: {info}");
    // A hook that fails: the joiner is refused (503), nothing is stored, the next tries again.
    assert_eq!(host.handshake("/collab/ws/broken").await, 503);
    assert_eq!(host.handshake("/collab/ws/broken").await, 503);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(host.get("/collab/rooms/broken").await.1["seq"], 0);
    host.collabd.shutdown().await;
}

#[actix_rt::test]
async fn the_change_hook_hears_every_durable_seq_once_in_order_in_batches() {
    // Each batch as (from, to, the seqs of its updates).
    type Heard = Vec<(u64, u64, Vec<u64>)>;
    let heard: Arc<Mutex<Heard>> = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (log, held) = (heard.clone(), gate.clone());
    let host = Host::start(
        move |b| {
            b.on_change(move |change: Change| {
                let (log, held) = (log.clone(), held.clone());
                async move {
                    let first = log.lock().unwrap().is_empty();
                    let seqs = change.updates.iter().map(|(seq, _)| *seq).collect();
                    log.lock().unwrap().push((change.from, change.to, seqs));
                    // The first call waits until the test lets it go: everything made
                    // durable meanwhile queues up.
                    if first {
                        held.acquire().await.unwrap().forget();
                    }
                }
            })
        },
        |_| {},
    )
    .await;
    let writer = HttpWriter::new();
    assert_eq!(
        host.post("/collab/rooms/c/updates", writer.append("t", "0"))
            .await
            .0,
        200
    );
    until("the first change", || heard.lock().unwrap().len() == 1).await;
    for i in 1..31 {
        let (status, answer) = host
            .post(
                "/collab/rooms/c/updates",
                writer.append("t", &i.to_string()),
            )
            .await;
        assert_eq!((status, answer["seq"].as_u64()), (200, Some(i + 1)));
    }
    gate.add_permits(1);
    until("every change", || {
        heard
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(_, to, _)| *to == 31)
    })
    .await;
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard,
        vec![(1, 1, vec![1]), (2, 31, (2..=31).collect())],
        "seq 1 alone, then everything that was durable while the hook was busy, in one batch"
    );
    host.collabd.shutdown().await;
}

#[actix_rt::test]
async fn a_server_transaction_reaches_clients_and_a_resumable_subscription() {
    let host = Host::start(|b| b, |_| {}).await;
    let room = host.collabd.room("shared").unwrap();
    let client = host.client("shared", None);
    client.wait_synced().await;
    insert(client.doc(), "client. ");
    let deadline = Instant::now() + PATIENCE;
    while room.json().await.unwrap()["t"] != "client. " {
        assert!(Instant::now() < deadline, "the client's edit is not stored");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }

    let (seq, len) = room
        .transact(|txn| {
            let t = txn.get_or_insert_text("t");
            let end = t.len(txn);
            t.insert(txn, end, "server. ");
            t.len(txn)
        })
        .await
        .unwrap();
    assert!(len >= 8);
    // Durable when it returned: the seq is the room's durable seq or below it.
    let (_, info) = host.get("/collab/rooms/shared").await;
    assert!(info["seq"].as_u64().unwrap() >= seq, "{info} vs {seq}");
    until("the client sees the server's change", || {
        text_of(client.doc(), "t").contains("server. ")
    })
    .await;
    let json = room.json().await.unwrap();
    assert!(json["t"].as_str().unwrap().contains("server. "));

    // A subscription from 0 replays everything up to `seq`, then follows live.
    let mut events = Box::pin(room.subscribe(Some(0)));
    let doc = Doc::new();
    let mut last = 0;
    while last < seq {
        match actix_rt::time::timeout(PATIENCE, events.next())
            .await
            .unwrap()
            .unwrap()
        {
            collabd::handle::RoomEvent::Update { seq: s, update } => {
                assert_eq!(s, last + 1, "in order, without gaps");
                last = s;
                doc.transact_mut()
                    .apply_update(Update::decode_v1(&update).unwrap())
                    .unwrap();
            }
            other => panic!("a replayable log gives updates: {other:?}"),
        }
    }
    let (next, ()) = room
        .transact(|txn| {
            let t = txn.get_or_insert_text("t");
            t.insert(txn, 0, "first! ");
        })
        .await
        .unwrap();
    assert_eq!(next, seq + 1);
    match actix_rt::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap()
    {
        collabd::handle::RoomEvent::Update { seq: s, update } => {
            assert_eq!(s, next);
            doc.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        doc.get_or_insert_text("t").get_string(&doc.transact()),
        text_of(&room.doc().await.unwrap(), "t")
    );
    // A transaction that only deletes is a change too (the state vector stays the same).
    let (deleted, ()) = room
        .transact(|txn| {
            let t = txn.get_or_insert_text("t");
            t.remove_range(txn, 0, 7);
        })
        .await
        .unwrap();
    assert_eq!(deleted, next + 1);
    until("the client sees the deletion", || {
        !text_of(client.doc(), "t").contains("first! ")
    })
    .await;
    // Nothing changed: the room's seq, no new update.
    let (same, ()) = room.transact(|_| ()).await.unwrap();
    assert_eq!(same, deleted);
    assert_eq!(room.doc().await.unwrap().transact().state_vector().len(), 2);
    host.collabd.shutdown().await;
}

#[actix_rt::test]
async fn connect_and_disconnect_hooks_hear_websocket_and_sse_connections() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (on, off) = (seen.clone(), seen.clone());
    let host = Host::start(
        move |b| {
            b.on_connect(move |c| {
                on.lock()
                    .unwrap()
                    .push(format!("+{} {} {}", c.transport, c.room, c.id));
                async {}
            })
            .on_disconnect(move |c| {
                off.lock()
                    .unwrap()
                    .push(format!("-{} {} {}", c.transport, c.room, c.id));
                async {}
            })
        },
        |_| {},
    )
    .await;
    let client = host.client("hooked", None);
    client.wait_synced().await;
    let sse = awc::Client::new()
        .get(host.url("/collab/rooms/hooked/events"))
        .send()
        .await
        .unwrap();
    until("two connects", || seen.lock().unwrap().len() == 2).await;
    client.close();
    drop(sse);
    until("two disconnects", || seen.lock().unwrap().len() == 4).await;
    let seen = seen.lock().unwrap().clone();
    for transport in ["websocket", "sse"] {
        let plus = seen
            .iter()
            .find(|s| s.starts_with(&format!("+{transport} hooked ")));
        let id = plus
            .unwrap_or_else(|| panic!("{seen:?}"))
            .rsplit(' ')
            .next()
            .unwrap();
        assert!(
            seen.contains(&format!("-{transport} hooked {id}")),
            "the disconnect names its connect: {seen:?}"
        );
    }
    host.collabd.shutdown().await;
}

/// On a host's connection the session writes through a bounded pipe: a client that does
/// not read is closed as a slow consumer (4008) like on collabd's own listener, and the
/// room goes on serving the others.
#[actix_rt::test]
async fn a_client_that_does_not_read_is_closed_on_a_hosts_connection_too() {
    let host = Host::start(
        |b| b,
        |s| {
            s.outbound_queue_bytes = 1024 * 1024;
            s.max_frame_bytes = 1024 * 1024;
            s.session_burst = 100_000;
        },
    )
    .await;
    let closed = || async {
        host.text("/collab/metrics")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("collabd_sessions_closed_total{code=\"4008\"} "))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before = closed().await;
    let (_, mut stalled) = awc::Client::new()
        .ws(format!("ws://{}/collab/ws/slow", host.addr))
        .connect()
        .await
        .unwrap();
    let reader = host.client("slow", None);
    reader.wait_synced().await;
    // 64 KiB per update while `stalled` reads nothing: loopback buffers, the pipe and the
    // outbound queue fill after some tens of them. Writing stops once it is closed.
    let writer = HttpWriter::new();
    let chunk = "x".repeat(64 * 1024);
    let mut written = 0;
    while closed().await == before {
        assert!(written < 2_000, "the stalled client was never closed");
        for _ in 0..16 {
            let (status, _) = host
                .post("/collab/rooms/slow/updates", writer.append("t", &chunk))
                .await;
            assert_eq!(status, 200);
            written += 1;
        }
    }
    // The reading client got everything; the stalled connection ends (its close frame
    // waits behind what it never read, so it may not see one).
    let want = written * chunk.len();
    until("the reading client has everything", || {
        text_of(reader.doc(), "t").len() == want
    })
    .await;
    loop {
        match actix_rt::time::timeout(PATIENCE, stalled.next()).await {
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(awc::ws::Frame::Close(_)))) => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("the stalled connection did not end"),
        }
    }
    host.collabd.shutdown().await;
}

/// The host lists, deletes and revokes through the library: a subscription hears the
/// deletion as a reset, the handle writes the room's new life, and a revoked subject's
/// token is refused on the host's routes.
#[actix_rt::test]
async fn the_host_lists_deletes_and_revokes_through_the_library() {
    const SECRET: &str = "embed-lifecycle-secret-0123456789";
    let host = Host::start(|b| b, |s| s.auth_secret = Some(SECRET.into())).await;
    let room = host.collabd.room("lib/a").unwrap();
    let (seq, ()) = room
        .transact(|txn| txn.get_or_insert_text("t").push(txn, "old"))
        .await
        .unwrap();
    assert_eq!(seq, 1);
    let listed = host.collabd.rooms("lib/", None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].room.as_str(), listed[0].seq), ("lib/a", 1));

    let mut events = Box::pin(room.subscribe(Some(0)));
    let first = actix_rt::time::timeout(PATIENCE, events.next())
        .await
        .unwrap();
    assert!(matches!(
        first,
        Some(collabd::handle::RoomEvent::Update { seq: 1, .. })
    ));
    let deleted = room.delete().await.unwrap().expect("something was stored");
    assert_eq!((deleted.epoch, deleted.seq), (1, 2));
    let reset = actix_rt::time::timeout(PATIENCE, events.next())
        .await
        .unwrap();
    assert!(
        matches!(
            reset,
            Some(collabd::handle::RoomEvent::Reset { epoch: 1, seq: 2 })
        ),
        "{reset:?}"
    );
    let (seq, ()) = room
        .transact(|txn| txn.get_or_insert_text("t").push(txn, "new"))
        .await
        .unwrap();
    assert_eq!(seq, 3);
    match actix_rt::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
    {
        Some(collabd::handle::RoomEvent::Update { seq: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(room.json().await.unwrap()["t"], "new");
    assert!(
        host.collabd
            .room("lib/never")
            .unwrap()
            .delete()
            .await
            .unwrap()
            .is_none()
    );

    let claims = collabd::auth::Claims {
        room: "lib/*".into(),
        perm: collabd::auth::Access::Read,
        exp: collabd::auth::expiry_in(Duration::from_secs(600)),
        sub: Some("mallory".into()),
        aud: None,
        iss: None,
        iat: Some(collabd::auth::now_secs() - 5),
    };
    let token = collabd::auth::mint(SECRET, &claims).unwrap();
    let path = format!("/collab/rooms/lib/a?token={token}");
    assert_eq!(host.get(&path).await.0, 200);
    host.collabd
        .revoke(collabd::revocation::Revocation::Subject {
            sub: "mallory".into(),
            at: collabd::auth::now_secs(),
        })
        .await
        .unwrap();
    let (status, body) = host.get(&path).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_revoked"))
    );
    host.collabd.shutdown().await;
}
