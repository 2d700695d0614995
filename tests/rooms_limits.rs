//! Rooms are not free to create, and plain HTTP is limited like connections are: reads
//! of rooms that do not exist load and store nothing, `max_rooms` (503), an evicted room
//! that only served reads does not flush, the per-client HTTP rate (429), long polls
//! counting as connections, each client's own admission share, and POST bodies that
//! cost what arrives rather than what `Content-Length` declares.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint};
use common::*;
use yrs::{ReadTxn, StateVector, Transact};

const SECRET: &str = "a-test-secret-of-32-bytes-length!";

/// A TCP connection to the server from `from` (any 127.0.0.x works on Linux loopback),
/// so that tests can be several clients.
async fn connect_from(server: &TestServer, from: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let stream = socket
        .connect(server.addr)
        .await
        .unwrap()
        .into_std()
        .unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// One GET from `from`: the status and the response head (lower-cased). The body is not
/// read, so an SSE stream's answer is just its head.
async fn get_from(server: &TestServer, from: &str, path: &str) -> (u16, String) {
    let mut stream = connect_from(server, from).await;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    let head = common::read_head(&mut stream).to_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head)
}

/// An HTTP GET with awc; status, `Retry-After` and the JSON body.
async fn get(server: &TestServer, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let mut res = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .get(server.url(path))
        .send()
        .await
        .unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.body().await.unwrap();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (res.status().as_u16(), retry, json)
}

/// The status a WebSocket upgrade gets.
async fn ws_status(server: &TestServer, room: &str) -> u16 {
    match awc::Client::new().ws(server.ws_url(room)).connect().await {
        Ok(_) => 101,
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Asserts the data dir holds no record and no snapshot of the rooms read.
fn assert_nothing_stored(dir: &Path) {
    use collabd::store::Store;
    let store = collabd::store::sled::SledStore::open(dir).unwrap();
    for i in 0..30 {
        let room = format!("ghost/{i}");
        assert_eq!(store.first_seq(&room).unwrap(), None, "{room}");
        assert_eq!(store.snapshot(&room).unwrap(), None, "{room}");
    }
}

/// Reads 30 rooms that do not exist through every read endpoint (`query` is appended,
/// e.g. a token) and checks each answers as an empty room.
async fn read_rooms_that_do_not_exist(server: &TestServer, query: &str) {
    let empty_state = yrs::Doc::new()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    for i in 0..30 {
        let room = format!("ghost/{i}");
        let (status, _, info) = get(server, &format!("/rooms/{room}?{query}")).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["room"], room.as_str());
        assert_eq!(
            (info["seq"].as_u64(), info["snapshot_seq"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(info["connections"], 0);
        assert!(info["first_seq"].is_null(), "{info}");
        assert_eq!(info["size"].as_u64(), Some(empty_state.len() as u64));

        let mut res = awc::Client::new()
            .get(server.url(&format!("/rooms/{room}/state?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.headers().get("x-seq").unwrap(), "0");
        assert_eq!(res.body().await.unwrap().to_vec(), empty_state);

        let (status, _, json) = get(server, &format!("/rooms/{room}/json?{query}")).await;
        assert_eq!((status, json), (200, serde_json::json!({})));
        let (status, _, json) =
            get(server, &format!("/rooms/{room}/state?format=json&{query}")).await;
        assert_eq!((status, json), (200, serde_json::json!({})));

        let (status, _, poll) = get(server, &format!("/rooms/{room}/updates?{query}")).await;
        assert_eq!(status, 200, "{poll}");
        assert_eq!(poll["seq"], 0);
        assert_eq!(b64(poll["snapshot"].as_str().unwrap()), empty_state);
        let path = format!("/rooms/{room}/updates?since=0&{query}");
        let (status, _, poll) = get(server, &path).await;
        assert_eq!(
            (status, poll),
            (200, serde_json::json!({"seq": 0, "updates": []}))
        );
        // A cursor the room cannot have: the (empty) full state instead.
        let path = format!("/rooms/{room}/updates?since=7&wait=0&{query}");
        let (status, _, poll) = get(server, &path).await;
        assert_eq!(
            (status, &poll["seq"]),
            (200, &serde_json::json!(0)),
            "{poll}"
        );
        assert!(poll["snapshot"].is_string(), "{poll}");
    }
}

async fn assert_nothing_loaded(server: &TestServer) {
    assert_eq!(server.metric("collabd_rooms_loaded").await, 0.0);
    assert_eq!(server.metric("collabd_room_load_seconds_count").await, 0.0);
}

#[actix_rt::test]
async fn reads_of_rooms_that_do_not_exist_load_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    read_rooms_that_do_not_exist(&server, "").await;
    assert_nothing_loaded(&server).await;
    // A room with something stored is loaded by a read, as before.
    let writer = HttpWriter::new();
    let (status, _) = post_update(&server, "real", writer.append("t", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(server.seq("real").await, 1);
    assert_eq!(server.metric("collabd_rooms_loaded").await, 1.0);
    assert!(server.terminate().success());
    assert_nothing_stored(dir.path());
}

#[actix_rt::test]
async fn reads_with_a_read_token_load_nothing_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_env(dir.path(), &[], &[("COLLABD_AUTH_SECRET", SECRET)]);
    let claims = Claims {
        room: "*".into(),
        perm: Access::Read,
        exp: expiry_in(Duration::from_secs(600)),
        sub: None,
        aud: None,
        iss: None,
        iat: None,
    };
    let token = mint(SECRET, &claims).unwrap();
    read_rooms_that_do_not_exist(&server, &format!("token={token}")).await;
    let mut res = awc::Client::new()
        .post(server.url(&format!("/rooms/ghost/updates?token={token}")))
        .send_body(HttpWriter::new().append("t", "x"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let _ = res.body().await;
    assert_nothing_loaded(&server).await;
}

/// A long poll held until it is answered: status and JSON.
async fn long_poll(url: String) -> (u16, serde_json::Value) {
    let mut res = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .get(url)
        .send()
        .await
        .unwrap();
    let json: serde_json::Value = res.json().await.unwrap();
    (res.status().as_u16(), json)
}

/// A long poll and an SSE stream on a room that does not exist yet hear its first write.
#[actix_rt::test]
async fn waiting_readers_of_a_new_room_hear_its_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let poll_url = server.url("/rooms/fresh/updates?since=0&wait=30");
    let poll = actix_rt::spawn(long_poll(poll_url));
    server
        .wait_for_metric("collabd_connections{transport=\"longpoll\"}", |v| v == 1.0)
        .await;
    let mut sse = SseClient::connect(&server, "fresh", Some("0")).await;
    let writer = HttpWriter::new();
    let (status, _) = post_update(&server, "fresh", writer.append("t", "first")).await;
    assert_eq!(status, 200);
    let (status, json) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(json["seq"], 1, "{json}");
    assert_eq!(json["updates"][0]["seq"], 1, "{json}");
    let event = sse.next_doc_event().await;
    assert_eq!((event.kind.as_str(), event.id), ("update", Some(1)));
}

#[actix_rt::test]
async fn max_rooms_refuses_one_room_too_many_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-rooms", "2"]);
    let (a, b) = (HttpWriter::new(), HttpWriter::new());
    for (room, writer) in [("a", &a), ("b", &b)] {
        let (status, body) = post_update(&server, room, writer.append("t", "x")).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut res = awc::Client::new()
        .post(server.url("/rooms/c/updates"))
        .send_body(HttpWriter::new().append("t", "x"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers().get("retry-after").unwrap(), "5");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "max_rooms", "{body}");
    // Joins are refused before the upgrade, SSE before the stream, and a long poll that
    // would need the room loaded too.
    assert_eq!(ws_status(&server, "c").await, 503);
    let (status, retry, body) = get(&server, "/rooms/c/events").await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    let (status, _, body) = get(&server, "/rooms/c/updates?since=0&wait=10").await;
    assert_eq!(
        (status, &body["error"]),
        (503, &serde_json::json!("max_rooms"))
    );
    // Loaded rooms carry on; reading a room that does not exist needs no slot.
    assert_eq!(server.seq("a").await, 1);
    let (status, _) = post_update(&server, "b", b.append("t", "y")).await;
    assert_eq!(status, 200);
    let (status, _, info) = get(&server, "/rooms/c").await;
    assert_eq!((status, &info["seq"]), (200, &serde_json::json!(0)));
    assert_eq!(server.metric("collabd_rooms_loaded").await, 2.0);
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"max_rooms\"}")
            .await
            >= 4.0
    );
    server.wait_for_log("HTTP 503: max_rooms").await;
}

#[actix_rt::test]
async fn an_evicted_room_that_only_served_reads_does_not_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestServer::start(dir.path(), &[]);
    let writer = HttpWriter::new();
    let (status, _) = post_update(&first, "quiet", writer.append("t", "stored")).await;
    assert_eq!(status, 200);
    assert!(first.terminate().success()); // snapshots and flushes the room

    // A fresh process: nothing written, so nothing to flush, ever.
    let server = TestServer::start(dir.path(), &["--room-idle-ms", "50"]);
    let (doc, seq) = server.state("quiet").await;
    assert_eq!((text_of(&doc, "t"), seq), ("stored".to_string(), 1));
    assert_eq!(server.metric("collabd_room_load_seconds_count").await, 1.0);
    server.wait_for_log("room \"quiet\" evicted").await;
    server
        .wait_for_metric("collabd_rooms_loaded", |v| v == 0.0)
        .await;
    assert_eq!(
        server.metric("collabd_oplog_flush_seconds_count").await,
        0.0
    );
    // A room that was written to still flushes before it goes.
    let (status, _) = post_update(&server, "quiet", writer.append("t", "!")).await;
    assert_eq!(status, 200);
    server
        .wait_for_metric("collabd_rooms_loaded", |v| v == 0.0)
        .await;
    assert!(server.metric("collabd_oplog_flush_seconds_count").await >= 1.0);
}

#[actix_rt::test]
async fn plain_http_is_rate_limited_per_client_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--http-rate-per-ip", "1", "--http-burst-per-ip", "5"],
    );
    // A burst of 5, then 1 per second: asking as fast as we can runs it dry within a few
    // requests however slow the machine is.
    let mut allowed = 0;
    let (retry, body) = loop {
        assert!(allowed < 30, "the bucket never ran dry");
        match get(&server, "/rooms/r").await {
            (200, _, _) => allowed += 1,
            (429, retry, body) => break (retry, body),
            (status, _, body) => panic!("{status}: {body}"),
        }
    };
    assert!(allowed >= 5, "the burst is allowed: {allowed}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"], "http_rate", "{body}");
    // POSTs count too; another address is not affected; health and metrics are not
    // limited.
    let writer = HttpWriter::new();
    let mut posts = 0;
    loop {
        assert!(posts < 30, "POSTs are not limited");
        let (status, body) = post_update(&server, "r", writer.append("t", "x")).await;
        match status {
            200 => posts += 1,
            429 => break,
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(get_from(&server, "127.0.0.2", "/rooms/r").await.0, 200);
    assert_eq!(get(&server, "/healthz").await.0, 200);
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"http_rate\"}")
            .await
            >= 2.0
    );
    server.wait_for_log("HTTP 429: http_rate").await;
}

#[actix_rt::test]
async fn long_polls_count_against_the_per_ip_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--max-connections-per-ip", "2"]);
    let mut polls = Vec::new();
    for _ in 0..2 {
        let url = server.url("/rooms/lp/updates?since=0&wait=30");
        polls.push(actix_rt::spawn(long_poll(url)));
    }
    server
        .wait_for_metric("collabd_connections{transport=\"longpoll\"}", |v| v == 2.0)
        .await;
    let (status, retry, body) = get(&server, "/rooms/lp/updates?since=0&wait=5").await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert_eq!(body["error"], "max_connections_per_ip");
    assert_eq!(ws_status(&server, "other").await, 503);
    // A poll answered at once holds nothing and is not refused.
    assert_eq!(get(&server, "/rooms/lp/updates?since=0").await.0, 200);
    // From another address there is room.
    let mut elsewhere = connect_from(&server, "127.0.0.2").await;
    write!(
        elsewhere,
        "GET /rooms/lp/updates?since=0&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    server
        .wait_for_metric("collabd_connections{transport=\"longpoll\"}", |v| v == 3.0)
        .await;
    let writer = HttpWriter::new();
    let (status, _) = post_update(&server, "lp", writer.append("t", "wake")).await;
    assert_eq!(status, 200);
    for poll in polls {
        let (status, json) = poll.await.unwrap();
        assert_eq!(
            (status, &json["seq"]),
            (200, &serde_json::json!(1)),
            "{json}"
        );
    }
    server
        .wait_for_metric("collabd_connections{transport=\"longpoll\"}", |v| v == 0.0)
        .await;
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"max_connections_per_ip\"}")
            .await
            >= 2.0
    );
}

#[actix_rt::test]
async fn one_client_exhausting_its_admission_share_leaves_admission_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &[
            "--admission-rate",
            "1",
            "--admission-burst",
            "10",
            "--admission-rate-per-ip",
            "1",
            "--admission-burst-per-ip",
            "3",
        ],
    );
    // One address opens SSE streams as fast as it can, far past its share.
    let (mut admitted, mut refused) = (0, 0);
    for _ in 0..40 {
        match get_from(&server, "127.0.0.1", "/rooms/adm/events").await {
            (200, _) => admitted += 1,
            (503, head) => {
                assert!(head.contains("retry-after: 1"), "{head}");
                refused += 1;
            }
            (status, head) => panic!("{status}: {head}"),
        }
    }
    assert!(
        admitted >= 3 && refused >= 20,
        "{admitted} admitted, {refused} refused"
    );
    assert!(
        server
            .metric("collabd_connections_refused_total{reason=\"admission_rate_per_ip\"}")
            .await
            >= 20.0
    );
    // Its refused attempts spent none of the server's tokens: others still get in.
    for other in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        assert_eq!(get_from(&server, other, "/rooms/adm/events").await.0, 200);
    }
    assert_eq!(
        server
            .metric("collabd_connections_refused_total{reason=\"admission_rate\"}")
            .await,
        0.0
    );
}

/// `VmRSS` and `VmData` (private writable memory, touched or not) of `pid`, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        kib * 1024
    };
    (field("VmRSS:"), field("VmData:"))
}

#[actix_rt::test]
async fn a_held_post_costs_what_arrived_not_its_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--http-workers", "1"]);
    let writer = HttpWriter::new();
    let (status, _) = post_update(&server, "mem", writer.append("t", "x")).await;
    assert_eq!(status, 200);
    let (rss_before, data_before) = memory_of(server.pid());
    let declared = 16 * 1024 * 1024; // max_frame_bytes: not refused as too large
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from(&server, "127.0.0.1").await;
        write!(
            stream,
            "POST /rooms/mem/updates HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
        )
        .unwrap();
        stream.write_all(&[0u8; 10]).unwrap();
        held.push(stream);
    }
    // One worker serves every connection in turn: once it answers this, it has read the
    // held requests' heads and started reading their bodies.
    let mut probe = connect_from(&server, "127.0.0.1").await;
    write!(
        probe,
        "GET /rooms/mem HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (rss_after, data_after) = memory_of(server.pid());
    let grew = |before: u64, after: u64| after.saturating_sub(before) / (1 << 20);
    eprintln!(
        "20 held POSTs declaring 16 MiB: RSS +{} MiB, data +{} MiB",
        grew(rss_before, rss_after),
        grew(data_before, data_after)
    );
    // 20 × 16 MiB = 320 MiB if the declared length were allocated.
    assert!(
        grew(rss_before, rss_after) < 64,
        "RSS grew with Content-Length"
    );
    assert!(
        grew(data_before, data_after) < 64,
        "memory was reserved for Content-Length"
    );
    // The room is untouched and the held requests still get an answer when they give up.
    drop(held);
    assert_eq!(server.seq("mem").await, 1);
}
