//! One client cannot spoil presence for the others (with or without a token, read-only
//! included): states must be JSON and bounded, a frame carries a bounded number of
//! entries, a client id belongs to the session that announced it, removals keep no
//! tombstones, and a room's presence always fits a joiner's outbound queue.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint};
use common::{Rng, TestServer, YClient, awareness_frame, seed_from};
use yrs::Doc;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// An awareness update with the given (client id, clock, JSON) entries.
fn update(list: &[(u64, u32, &str)]) -> AwarenessUpdate {
    let clients: HashMap<_, _> = list
        .iter()
        .map(|(id, clock, json)| {
            let entry = AwarenessUpdateEntry {
                clock: *clock,
                json: Arc::from(*json),
            };
            (yrs::ClientID::new(*id), entry)
        })
        .collect();
    AwarenessUpdate { clients }
}

/// The same as a y-websocket awareness message (a WebSocket frame).
fn entries(list: &[(u64, u32, &str)]) -> Vec<u8> {
    awareness_frame(&update(list))
}

async fn present(server: &TestServer, room: &str, query: &str) -> u64 {
    let (status, info) = server.get_json(&format!("/rooms/{room}{query}")).await;
    assert_eq!(status, 200, "{info}");
    info["awareness"].as_u64().unwrap()
}

const SECRET: &str = "presence-secret-0123456789";

fn token(perm: Access) -> String {
    let claims = Claims {
        room: "*".into(),
        perm,
        exp: expiry_in(Duration::from_secs(600)),
        sub: Some("presence-test".into()),
        aud: None,
        iss: None,
        iat: None,
    };
    mint(SECRET, &claims).unwrap()
}

async fn connect(server: &TestServer, room: &str, token: &str) -> YClient {
    let url = format!("{}?token={token}", server.ws_url(room));
    let mut client = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    client.until("synced", |c| c.synced).await;
    client
}

/// A read-only session sends a state that is not JSON and one over the size limit: both
/// are refused, nobody receives them, and its next valid state goes through.
#[actix_rt::test]
async fn states_that_are_not_json_or_too_large_never_reach_anyone() {
    let dir = tempdir();
    let server = TestServer::start_env(dir.path(), &[], &[("COLLABD_AUTH_SECRET", SECRET)]);
    let (read, write) = (token(Access::Read), token(Access::Write));
    let mut observer = connect(&server, "p", &write).await;
    let mut offender = connect(&server, "p", &read).await;
    let huge = format!("{{\"name\":\"{}\"}}", "x".repeat(70_000));
    offender
        .send_raw(entries(&[(501, 1, "{\"name\": oops")]))
        .await;
    offender.send_raw(entries(&[(502, 1, &huge)])).await;
    offender
        .send_raw(entries(&[(503, 1, "{\"name\":\"fine\"}")]))
        .await;
    observer
        .until("the valid state", |c| c.awareness_state(503).is_some())
        .await;
    assert!(observer.awareness_state(501).is_none());
    assert!(observer.awareness_state(502).is_none());
    for json in &observer.awareness_json_heard {
        serde_json::from_str::<serde_json::Value>(json)
            .unwrap_or_else(|e| panic!("a client received {json:?}: {e}"));
    }
    assert_eq!(present(&server, "p", &format!("?token={read}")).await, 1);
    let refused = |reason: &str| format!("collabd_awareness_refused_total{{reason=\"{reason}\"}}");
    assert_eq!(server.metric(&refused("not_json")).await, 1.0);
    assert_eq!(server.metric(&refused("too_large")).await, 1.0);
    // The offender is still connected: refused presence costs no disconnect.
    offender.request_ack(1).await;
    offender
        .until("an answer", |c| c.acks.iter().any(|a| a.0 == 1))
        .await;
}

#[actix_rt::test]
async fn a_frame_with_too_many_entries_is_refused_whole() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--awareness-max-entries", "10"]);
    let mut client = YClient::connect(&server, "many").await;
    client.until("synced", |c| c.synced).await;
    let list: Vec<(u64, u32, &str)> = (1..=11).map(|id| (id, 1, "{}")).collect();
    client.send_raw(entries(&list)).await;
    client.send_raw(entries(&list[..10])).await;
    client
        .until("the ten", |c| c.awareness_clients().len() == 10)
        .await;
    assert_eq!(present(&server, "many", "").await, 10);
}

/// Session B can neither overwrite nor remove the state session A announced.
#[actix_rt::test]
async fn a_client_id_belongs_to_the_session_that_announced_it() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let mut alice = YClient::connect(&server, "own").await;
    alice.set_awareness(r#"{"user":"alice"}"#).await;
    let id = alice.client_id();
    let mut observer = YClient::connect(&server, "own").await;
    observer
        .until("alice", |c| c.awareness_state(id).is_some())
        .await;
    let mut mallory = YClient::connect(&server, "own").await;
    mallory
        .send_raw(entries(&[(id, 1_000, r#"{"user":"mallory"}"#)]))
        .await;
    mallory.send_raw(entries(&[(id, 2_000, "null")])).await;
    // A marker from mallory's own id shows the room processed what came before it.
    mallory.set_awareness(r#"{"user":"mallory"}"#).await;
    let marker = mallory.client_id();
    observer
        .until("mallory's own", |c| c.awareness_state(marker).is_some())
        .await;
    assert_eq!(
        observer.awareness_state(id).as_deref(),
        Some(r#"{"user":"alice"}"#)
    );
    assert_eq!(present(&server, "own", "").await, 2);
    assert_eq!(
        server
            .metric("collabd_awareness_refused_total{reason=\"not_owner\"}")
            .await,
        2.0
    );
    // Alice leaving removes her state for everyone.
    alice.close().await;
    observer
        .until("alice gone", |c| c.awareness_state(id).is_none())
        .await;
}

/// Removals of ids the room never had keep nothing: half a million of them leave the
/// server's memory where it was.
#[actix_rt::test]
async fn removals_of_unknown_ids_keep_nothing() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--session-burst", "100000"]);
    let mut client = YClient::connect(&server, "tomb").await;
    client.until("synced", |c| c.synced).await;
    let mut rng = Rng(seed_from("PRESENCE_SEED"));
    let before = server.rss_bytes();
    for _ in 0..5_000 {
        let list: Vec<(u64, u32, &str)> = (0..100).map(|_| (rng.next() >> 12, 7, "null")).collect();
        client.send_raw(entries(&list)).await;
    }
    client.request_ack(1).await;
    client
        .until("all processed", |c| c.acks.iter().any(|a| a.0 == 1))
        .await;
    let grown = server.rss_bytes().saturating_sub(before);
    eprintln!("RSS grew by {} KiB for 500,000 removals", grown / 1024);
    assert!(grown < 10 << 20, "RSS grew by {grown} bytes");
    assert_eq!(present(&server, "tomb", "").await, 0);
}

/// Presence filled to the room's budget still reaches a new joiner whole: it is never
/// closed as a slow consumer for the states others announced.
#[actix_rt::test]
async fn a_joiner_is_not_locked_out_by_a_full_room() {
    let dir = tempdir();
    let args = [
        "--outbound-queue-bytes",
        "1000000",
        "--max-frame-bytes",
        "500000",
    ];
    let server = TestServer::start(dir.path(), &args);
    let state = format!("{{\"avatar\":\"{}\"}}", "a".repeat(60_000));
    let mut crowd = Vec::new();
    for _ in 0..20 {
        let mut client = YClient::connect(&server, "crowd").await;
        client.set_awareness(&state).await;
        client.drain_for(Duration::from_millis(1)).await;
        crowd.push(client);
    }
    let held = present(&server, "crowd", "").await;
    assert!(
        held < 20,
        "the room's presence budget refused some: {held} held"
    );
    let mut joiner = YClient::connect(&server, "crowd").await;
    joiner
        .until("the room's presence", |c| {
            c.awareness_clients().len() as u64 == held
        })
        .await;
    joiner.request_ack(1).await;
    joiner
        .until("still connected", |c| c.acks.iter().any(|a| a.0 == 1))
        .await;
    assert!(joiner.closed.is_none());
}

/// A bare y-protocols awareness update (what `encodeAwarenessUpdate` makes), for HTTP.
fn bare(list: &[(u64, u32, &str)]) -> Vec<u8> {
    use yrs::updates::encoder::Encode;
    update(list).encode_v1()
}

/// `POST /rooms/{room}/awareness` with `body` as presence session `session`.
async fn post_presence(
    server: &TestServer,
    room: &str,
    session: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut req = awc::Client::new().post(server.url(&format!("/rooms/{room}/awareness")));
    if let Some(session) = session {
        req = req.insert_header(("X-Presence-Session", session));
    }
    let mut res = req.send_body(body).await.unwrap();
    let body = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

/// `GET /rooms/{room}/awareness`, decoded: client id → JSON state.
async fn get_presence(server: &TestServer, room: &str) -> HashMap<u64, String> {
    let mut res = awc::Client::new()
        .get(server.url(&format!("/rooms/{room}/awareness")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body = res.body().await.unwrap();
    collabd::protocol::decode_awareness(&body)
        .unwrap()
        .clients
        .into_iter()
        .map(|(id, e)| (id.get(), e.json.to_string()))
        .collect()
}

/// Presence over HTTP, for the SSE and polling transports: a posted state reaches
/// WebSocket sessions and SSE streams and is read back; its owner is the presence
/// session that posted it first; a `null` removes it for everyone; a state posted once
/// and never renewed expires like any other.
#[actix_rt::test]
async fn presence_posted_over_http_reaches_everyone_and_follows_the_same_rules() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--awareness-timeout-ms", "1500"]);
    let tab = "tab-0123456789abcdef";
    let mut ws = YClient::connect(&server, "http-presence").await;
    ws.until("synced", |c| c.synced).await;
    let mut sse = common::SseClient::connect(&server, "http-presence", None).await;
    assert!(get_presence(&server, "http-presence").await.is_empty());

    // Posted: everyone sees it, and GET reads it back.
    let (status, body) = post_presence(
        &server,
        "http-presence",
        Some(tab),
        bare(&[(7001, 1, r#"{"user":"http"}"#)]),
    )
    .await;
    assert_eq!((status, &body["refused"]), (200, &serde_json::json!([])));
    ws.until("the posted state", |c| {
        c.awareness_state(7001).as_deref() == Some(r#"{"user":"http"}"#)
    })
    .await;
    loop {
        let event = sse.next().await;
        if event.kind == "awareness" {
            break;
        }
    }
    assert_eq!(
        get_presence(&server, "http-presence")
            .await
            .get(&7001)
            .map(String::as_str),
        Some(r#"{"user":"http"}"#)
    );

    // The same client id from another presence session, or a state that is not JSON:
    // refused and listed, nothing changes.
    let (status, body) = post_presence(
        &server,
        "http-presence",
        Some("someone-else-0123456789"),
        bare(&[(7001, 9, r#"{"user":"evil"}"#)]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["refused"][0]["reason"], "not_owner");
    let (_, body) = post_presence(
        &server,
        "http-presence",
        Some(tab),
        bare(&[(7002, 1, "{not json")]),
    )
    .await;
    assert_eq!(body["refused"][0]["reason"], "not_json");
    // No presence session, a short one, or a body that is not an awareness update: 400.
    let (status, body) =
        post_presence(&server, "http-presence", None, bare(&[(7003, 1, "{}")])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("presence_session_required"))
    );
    let (status, _) = post_presence(
        &server,
        "http-presence",
        Some("short"),
        bare(&[(7003, 1, "{}")]),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post_presence(&server, "http-presence", Some(tab), vec![5, 1]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_awareness"))
    );

    // A null from its owner removes it for everyone.
    post_presence(
        &server,
        "http-presence",
        Some(tab),
        bare(&[(7001, 2, "null")]),
    )
    .await;
    ws.until("the removal", |c| c.awareness_state(7001).is_none())
        .await;
    assert!(get_presence(&server, "http-presence").await.is_empty());

    // Posted once and never renewed: it expires, and the removal reaches everyone.
    post_presence(
        &server,
        "http-presence",
        Some(tab),
        bare(&[(7004, 1, "{}")]),
    )
    .await;
    ws.until("the new state", |c| c.awareness_state(7004).is_some())
        .await;
    ws.until("its expiry", |c| c.awareness_state(7004).is_none())
        .await;
}
