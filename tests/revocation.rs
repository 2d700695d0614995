//! Revocation against the real server: `POST /admin/revoke` with a subject or a token
//! (admin token for every room) closes the WebSocket sessions it covers with 4403 and
//! ends their SSE streams with `event: revoked`, on every node of a cluster, refuses the
//! covered tokens from then on (401 `token_revoked`), and survives a restart. Tokens of
//! the subject minted afterwards (a later `iat`) work, and nobody else is touched.

mod common;

use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint, now_secs};
use common::*;
use yrs::Doc;

const SECRET: &str = "revocation-secret-0123456789";

fn token(room: &str, perm: Access, sub: &str, iat: Option<u64>) -> String {
    let claims = Claims {
        room: room.into(),
        perm,
        exp: expiry_in(Duration::from_secs(600)),
        sub: Some(sub.into()),
        aud: None,
        iss: None,
        iat,
    };
    mint(SECRET, &claims).unwrap()
}

fn start(dir: &std::path::Path, args: &[&str]) -> TestServer {
    TestServer::start_env(dir, args, &[("COLLABD_AUTH_SECRET", SECRET)])
}

async fn revoke(server: &TestServer, bearer: &str, body: &str) -> (u16, serde_json::Value) {
    let mut res = awc::Client::new()
        .post(server.url("/admin/revoke"))
        .insert_header(("Authorization", format!("Bearer {bearer}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    let body = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

async fn state_status(server: &TestServer, room: &str, bearer: &str) -> (u16, serde_json::Value) {
    let mut res = awc::Client::new()
        .get(server.url(&format!("/rooms/{room}/state")))
        .insert_header(("Authorization", format!("Bearer {bearer}")))
        .send()
        .await
        .unwrap();
    let body = res.body().limit(1 << 24).await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

async fn connect(server: &TestServer, room: &str, token: &str) -> YClient {
    let url = format!("{}?token={token}", server.ws_url(room));
    let mut client = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    client.until("synced", |c| c.synced).await;
    client
}

#[actix_rt::test]
async fn revoking_a_subject_or_a_token_closes_its_sessions_and_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let room = "rev/doc";
    let issued = Some(now_secs() - 5);
    let alice = token("rev/*", Access::Write, "alice", issued);
    let alice_no_iat = token("rev/*", Access::Write, "alice", None);
    let bob = token("rev/*", Access::Write, "bob", issued);
    let bob_other = token("rev/*", Access::Read, "bob", issued);
    let admin = token("*", Access::Admin, "ops", issued);

    let mut alice_ws = connect(&server, room, &alice).await;
    let mut bob_ws = connect(&server, room, &bob).await;
    let mut alice_sse = SseClient::open(
        &server,
        &format!("/rooms/{room}/events?token={alice}"),
        None,
    )
    .await;
    assert_eq!(alice_sse.next_doc_event().await.kind, "snapshot");

    // Only an admin token for every room may revoke.
    for bearer in [&bob, &token("rev/*", Access::Admin, "ops", issued)] {
        let (status, body) = revoke(&server, bearer, r#"{"sub":"alice"}"#).await;
        assert_eq!(status, 403, "{body}");
    }
    for bad in [
        "{}",
        r#"{"sub":"a","token":"b"}"#,
        "not json",
        r#"{"sub":""}"#,
        r#"{"who":"a"}"#,
    ] {
        let (status, body) = revoke(&server, &admin, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_revocation")),
            "{bad}"
        );
    }
    assert!(alice_ws.closed.is_none());

    // Revoke alice: her session closes with 4403, her stream ends with `revoked`.
    let (status, body) = revoke(&server, &admin, r#"{"sub":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["sub"], "alice");
    alice_ws.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(alice_ws.close_code(), Some(4403));
    assert_eq!(alice_sse.next().await.kind, "revoked");
    alice_sse.until_ended().await;

    // Bob goes on writing and reading.
    bob_ws.append("t", "still here").await;
    bob_ws.request_ack(1).await;
    bob_ws.until("the ack", |c| !c.acks.is_empty()).await;
    assert_eq!(bob_ws.acks[0], (1, 1, true));

    // Her tokens are refused, with or without iat; one minted afterwards works.
    for old in [&alice, &alice_no_iat] {
        let (status, body) = state_status(&server, room, old).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("token_revoked")),
            "{body}"
        );
    }
    let url = format!("{}?token={alice}", server.ws_url(room));
    assert!(matches!(
        YClient::try_connect(&url, &[], Doc::new()).await,
        Err(ConnectError::Status(401))
    ));
    let fresh = token("rev/*", Access::Write, "alice", Some(now_secs() + 2));
    assert_eq!(state_status(&server, room, &fresh).await.0, 200);

    // One token: bob's session under it closes; his other token works.
    let (status, body) = revoke(&server, &admin, &format!(r#"{{"token":"{bob}"}}"#)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["token_sha256"].as_str().unwrap().len(), 64);
    bob_ws.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(bob_ws.close_code(), Some(4403));
    assert_eq!(state_status(&server, room, &bob).await.0, 401);
    assert_eq!(state_status(&server, room, &bob_other).await.0, 200);

    // A restart forgets nothing.
    server.terminate();
    let server = start(dir.path(), &[]);
    for revoked in [&alice, &alice_no_iat, &bob] {
        let (status, body) = state_status(&server, room, revoked).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("token_revoked"))
        );
    }
    for fine in [&fresh, &bob_other] {
        assert_eq!(state_status(&server, room, fine).await.0, 200);
    }
}

#[actix_rt::test]
async fn without_a_secret_there_is_nothing_to_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let (status, body) = revoke(&server, "anything", r#"{"sub":"alice"}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("auth_disabled"))
    );
}

#[actix_rt::test]
async fn a_revocation_reaches_every_node_of_a_cluster() {
    let Some(redis) = redis_or_skip() else { return };
    let url = redis.url();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), &["--redis-url", &url]);
    let b = start(dirs[1].path(), &["--redis-url", &url]);
    let room = "rev/cluster";
    let issued = Some(now_secs() - 5);
    let alice = token("rev/*", Access::Write, "alice", issued);
    let admin = token("*", Access::Admin, "ops", issued);
    let mut on_b = connect(&b, room, &alice).await;
    let mut sse_b = SseClient::open(&b, &format!("/rooms/{room}/events?token={alice}"), None).await;
    assert_eq!(sse_b.next_doc_event().await.kind, "snapshot");

    let (status, body) = revoke(&a, &admin, r#"{"sub":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    on_b.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(on_b.close_code(), Some(4403));
    assert_eq!(sse_b.next().await.kind, "revoked");
    assert_eq!(state_status(&b, room, &alice).await.0, 401);

    // A node started later reads the list from Redis.
    let dir_c = tempfile::tempdir().unwrap();
    let c = start(dir_c.path(), &["--redis-url", &url]);
    assert_eq!(state_status(&c, room, &alice).await.0, 401);
}
