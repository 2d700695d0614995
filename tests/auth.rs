//! Access tokens on every transport: the auth matrix (no token, bad signature, expired,
//! wrong room, read token writing) over WebSocket, POST, SSE and GET, each answered with
//! the right status or close code and changing nothing; expiry during a session; the
//! `collabd token` subcommand; the origin allow-list.

mod common;

use std::process::Command;
use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint};
use common::*;
use yrs::{Doc, GetString, Transact};

const SECRET: &str = "test-secret-0123456789abcdef";

fn token(room: &str, perm: Access, ttl_secs: i64) -> String {
    let exp = if ttl_secs >= 0 {
        expiry_in(Duration::from_secs(ttl_secs as u64))
    } else {
        expiry_in(Duration::ZERO) - ttl_secs.unsigned_abs()
    };
    let claims = Claims {
        room: room.into(),
        perm,
        exp,
        sub: Some("tester".into()),
        aud: None,
        iss: None,
        iat: None,
    };
    mint(SECRET, &claims).unwrap()
}

fn start(dir: &std::path::Path, args: &[&str]) -> TestServer {
    TestServer::start_env(dir, args, &[("COLLABD_AUTH_SECRET", SECRET)])
}

async fn http_status(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let client = awc::Client::new();
    let mut req = match method {
        "POST" => client.post(server.url(path)),
        _ => client.get(server.url(path)),
    };
    if let Some(t) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {t}")));
    }
    let mut res = req.send_body(body).await.unwrap();
    let status = res.status().as_u16();
    if status == 200 {
        return (status, serde_json::Value::Null);
    }
    let body = res.body().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn ws_status(server: &TestServer, room: &str, query_token: Option<&str>) -> Option<u16> {
    let url = match query_token {
        Some(t) => format!("{}?token={t}", server.ws_url(room)),
        None => server.ws_url(room),
    };
    match YClient::try_connect(&url, &[], Doc::new()).await {
        Ok(client) => {
            client.close().await;
            None
        }
        Err(ConnectError::Status(status)) => Some(status),
        Err(e) => panic!("{e:?}"),
    }
}

#[actix_rt::test]
async fn the_auth_matrix_refuses_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let room = "docs/a";
    let write = token("docs/*", Access::Write, 60);
    let read = token(room, Access::Read, 60);
    let expired = token(room, Access::Write, -30);
    let wrong_room = token("other/*", Access::Write, 60);
    let forged = {
        let claims = Claims {
            room: room.into(),
            perm: Access::Write,
            exp: expiry_in(Duration::from_secs(60)),
            sub: None,
            aud: None,
            iss: None,
            iat: None,
        };
        mint("some-other-secret-0123456789", &claims).unwrap()
    };

    // One real write to have something to protect.
    let writer = HttpWriter::new();
    let (status, body) = http_status(
        &server,
        "POST",
        &format!("/rooms/{room}/updates"),
        Some(&write),
        writer.append("t", "kept"),
    )
    .await;
    assert_eq!((status, &body), (200, &serde_json::Value::Null));

    // From another document, so that the writer's own later updates do not depend on it.
    let attempt = HttpWriter::new().append("t", "INTRUDER");
    let cases: [(&str, Option<&str>, u16, &str); 5] = [
        ("no token", None, 401, "token_missing"),
        ("bad signature", Some(&forged), 401, "token_invalid"),
        ("expired", Some(&expired), 401, "token_expired"),
        ("wrong room", Some(&wrong_room), 403, "token_wrong_room"),
        ("read token writing", Some(&read), 403, "read_only"),
    ];
    for (what, bearer, want, code) in cases {
        let path = format!("/rooms/{room}/updates");
        let (status, body) = http_status(&server, "POST", &path, bearer, attempt.clone()).await;
        assert_eq!(status, want, "POST with {what}: {body}");
        assert_eq!(body["error"], code, "POST with {what}");
    }
    // Reads: every GET endpoint and SSE refuse the first four, accept a read token.
    for path in [
        "",
        "/state",
        "/json",
        "/updates?since=0",
        "/events",
        "/awareness",
    ] {
        let path = format!("/rooms/{room}{path}");
        for (what, bearer, want) in [
            ("no token", None, 401),
            ("bad signature", Some(forged.as_str()), 401),
            ("expired", Some(expired.as_str()), 401),
            ("wrong room", Some(wrong_room.as_str()), 403),
        ] {
            let (status, _) = http_status(&server, "GET", &path, bearer, vec![]).await;
            assert_eq!(status, want, "GET {path} with {what}");
        }
        if !path.ends_with("/events") {
            let (status, _) = http_status(&server, "GET", &path, Some(&read), vec![]).await;
            assert_eq!(status, 200, "GET {path} with a read token");
        }
    }
    // WebSocket: refused before the upgrade, token in the query (browsers cannot set
    // headers on a WebSocket).
    assert_eq!(ws_status(&server, room, None).await, Some(401));
    assert_eq!(ws_status(&server, room, Some(&forged)).await, Some(401));
    assert_eq!(ws_status(&server, room, Some(&expired)).await, Some(401));
    assert_eq!(ws_status(&server, room, Some(&wrong_room)).await, Some(403));
    assert_eq!(ws_status(&server, room, Some(&write)).await, None);

    // A read-only WebSocket session syncs and sees presence, but its writes are dropped
    // and answered with permission denied; nobody else sees them.
    let mut watcher = YClient::try_connect(
        &server.ws_url(room),
        &[("Authorization", &format!("Bearer {write}"))],
        Doc::new(),
    )
    .await
    .unwrap();
    watcher.until("watcher synced", |c| c.synced).await;
    let url = format!("{}?token={read}", server.ws_url(room));
    let mut reader = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    reader
        .until("reader synced", |c| c.text("t") == "kept")
        .await;
    reader.set_awareness(r#"{"user":"reader"}"#).await;
    reader.append("t", " from a reader").await;
    reader
        .until("permission denied", |c| !c.denied.is_empty())
        .await;
    assert_eq!(reader.denied, ["read-only access"]);
    let reader_id = reader.client_id();
    watcher
        .until("the reader's presence", |c| {
            c.awareness_clients().contains(&reader_id)
        })
        .await;

    // SSE with a read token streams; a POST that everyone may see marks the end.
    let mut sse =
        SseClient::open(&server, &format!("/rooms/{room}/events?token={read}"), None).await;
    let first = sse.next_doc_event().await;
    assert_eq!(first.kind, "snapshot");
    let (status, _) = http_status(
        &server,
        "POST",
        &format!("/rooms/{room}/updates"),
        Some(&write),
        writer.append("t", "!"),
    )
    .await;
    assert_eq!(status, 200);
    watcher
        .until("the marker", |c| c.text("t") == "kept!")
        .await;
    reader
        .until("the marker", |c| c.text("t").contains('!'))
        .await;

    let (doc, seq) = server
        .state_at(&format!("/rooms/{room}/state?token={read}"))
        .await;
    let text = doc.get_or_insert_text("t");
    assert_eq!(text.get_string(&doc.transact()), "kept!");
    assert_eq!(seq, 2, "only the two authorised writes were logged");
    // 5 POSTs, 6 GET paths × 4 tokens, 4 WebSocket upgrades.
    assert_eq!(
        server
            .metric("collabd_connections_refused_total{reason=\"auth\"}")
            .await,
        33.0
    );
    assert_eq!(
        server
            .metric("collabd_updates_rejected_total{reason=\"read_only\"}")
            .await,
        1.0
    );
}

#[actix_rt::test]
async fn a_session_is_closed_with_4401_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    // Expires within 3–4 s (exp has whole-second resolution): time to connect first.
    let short = token("r", Access::Write, 4);
    let url = format!("{}?token={short}", server.ws_url("r"));
    let mut client = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    client.until("synced", |c| c.synced).await;
    assert_eq!(client.until_closed().await, Some(4401));
    server.wait_for_log("token expired").await;
    // Reconnecting with the same token is refused before the upgrade.
    assert_eq!(ws_status(&server, "r", Some(&short)).await, Some(401));
    // SSE streams end at expiry too.
    let sse_token = token("r", Access::Read, 4);
    let mut res = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .get(server.url(&format!("/rooms/r/events?token={sse_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body = res.body().limit(1 << 20).await.unwrap();
    assert!(String::from_utf8_lossy(&body).starts_with("retry:"));
}

#[actix_rt::test]
async fn the_token_subcommand_mints_tokens_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mint_cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_collabd"))
            .arg("token")
            .args(args)
            .env("COLLABD_AUTH_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let write = mint_cli(&["--room", "cli/*", "--write", "--ttl", "60"]);
    let read = mint_cli(&["--room", "cli/x"]);
    let body = HttpWriter::new().append("t", "x");
    let path = "/rooms/cli/x/updates";
    assert_eq!(
        http_status(&server, "POST", path, Some(&write), body.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        http_status(&server, "POST", path, Some(&read), body)
            .await
            .0,
        403
    );
    let no_secret = Command::new(env!("CARGO_BIN_EXE_collabd"))
        .args(["token", "--room", "x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(no_secret.status.code(), Some(2), "no secret, no token");
}

#[actix_rt::test]
async fn without_a_secret_the_server_is_open_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    server.wait_for_log("NO AUTH").await;
    let (status, _) = post_update(&server, "open", HttpWriter::new().append("t", "x")).await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn origins_outside_the_allow_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        dir.path(),
        &["--allowed-origins", "https://app.example,https://b.example"],
    );
    let url = server.ws_url("o");
    let evil = YClient::try_connect(&url, &[("Origin", "https://evil.example")], Doc::new()).await;
    assert!(
        matches!(evil, Err(ConnectError::Status(403))),
        "{:?}",
        evil.err()
    );
    let good = YClient::try_connect(&url, &[("Origin", "https://b.example")], Doc::new()).await;
    good.unwrap().close().await;
    // Non-browser clients send no Origin and are not affected.
    YClient::try_connect(&url, &[], Doc::new())
        .await
        .unwrap()
        .close()
        .await;
    let res = awc::Client::new()
        .get(server.url("/rooms/o/events"))
        .insert_header(("Origin", "https://evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(
        server
            .metric("collabd_connections_refused_total{reason=\"origin\"}")
            .await,
        2.0
    );
}

/// A session changes its token without reconnecting (`MSG_TOKEN`): a read-only session
/// becomes a writer, the new token's expiry replaces the old one's, and a token for
/// another room or a forged one is refused while the session keeps its current token.
#[actix_rt::test]
async fn a_fresh_token_changes_a_session_without_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let room = "refresh/doc";
    let read = token(room, Access::Read, 2);
    let url = format!("{}?token={read}", server.ws_url(room));
    let mut client = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    client.until("synced", |c| c.synced).await;
    client.append("t", "[denied]").await;
    client.until("denied", |c| !c.denied.is_empty()).await;
    // Its ack says something was refused (and clears that for the next one).
    client.request_ack(0).await;
    client.until("the first ack", |c| !c.acks.is_empty()).await;
    assert!(!client.acks[0].2);

    // Refused: another room's token, a forged one. The session stays as it was.
    client
        .send_raw(collabd::protocol::encode_token(&token(
            "other/room",
            Access::Write,
            60,
        )))
        .await;
    client
        .send_raw(collabd::protocol::encode_token("not.a.token"))
        .await;
    client
        .until("two refusals", |c| c.token_answers.len() == 2)
        .await;
    assert!(
        client.token_answers.iter().all(|(ok, _)| !ok),
        "{:?}",
        client.token_answers
    );
    assert!(
        client.token_answers[0].1.contains("token_wrong_room"),
        "{:?}",
        client.token_answers
    );

    // A write token for this room, valid a minute: accepted, and the next edit is stored.
    client
        .send_raw(collabd::protocol::encode_token(&token(
            room,
            Access::Write,
            60,
        )))
        .await;
    client
        .until("accepted", |c| c.token_answers.len() == 3)
        .await;
    assert_eq!(client.token_answers[2], (true, "write".to_string()));
    // The new edit builds on the one refused before, which the client still holds: the
    // room asks for what it lacks (a re-sync), and a writer now sends both.
    client.append("t", "[stored]").await;
    client.request_ack(1).await;
    client.until("the ack", |c| c.acks.len() == 2).await;
    client.request_ack(2).await;
    client.until("the next ack", |c| c.acks.len() == 3).await;
    assert!(
        client.acks[2].2,
        "stored under the new token: {:?}",
        client.acks
    );
    let reader = token(room, Access::Read, 60);
    let (doc, _) = server
        .state_at(&format!("/rooms/{room}/state?token={reader}"))
        .await;
    assert_eq!(text_of(&doc, "t"), "[denied][stored]");
    // The first token's expiry passes: the session stays (its token is the new one).
    client.drain_for(Duration::from_millis(2_500)).await;
    assert!(client.closed.is_none(), "closed at the old token's expiry");
    // A fresh token that expires soon: the session closes with 4401 then.
    client
        .send_raw(collabd::protocol::encode_token(&token(
            room,
            Access::Write,
            1,
        )))
        .await;
    assert_eq!(client.until_closed().await, Some(4401));
}

/// The history names each update's author: the `sub` of the token it was written with,
/// over WebSocket, POST and PATCH alike.
#[actix_rt::test]
async fn the_history_names_each_updates_author() {
    authors_on(&[]).await;
}

/// The same on PostgreSQL: authors are committed with their records.
#[actix_rt::test]
async fn the_history_names_each_updates_author_on_postgres() {
    let db = FreshDb::new();
    authors_on(&["--postgres-url", &db.url]).await;
}

/// The same in a cluster, with the archive: authors travel with the stream's entries,
/// and the archive keeps them for what left the stream.
#[actix_rt::test]
async fn the_history_names_each_updates_author_in_a_cluster() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let url = redis.url();
    authors_on(&[
        "--redis-url",
        &url,
        "--postgres-url",
        &db.url,
        "--archive-after",
        "1",
    ])
    .await;
}

async fn authors_on(store: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), store);
    let room = "authors/doc";
    let mint_for = |sub: &str| {
        let claims = Claims {
            room: room.into(),
            perm: Access::Write,
            exp: expiry_in(Duration::from_secs(60)),
            sub: Some(sub.into()),
            aud: None,
            iss: None,
            iat: None,
        };
        mint(SECRET, &claims).unwrap()
    };
    let url = format!("{}?token={}", server.ws_url(room), mint_for("ann"));
    let mut ann = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    ann.until("synced", |c| c.synced).await;
    ann.append("t", "from ann").await;
    ann.request_ack(1).await;
    ann.until("the ack", |c| !c.acks.is_empty()).await;
    let w = HttpWriter::new();
    let (status, _) = http_status(
        &server,
        "POST",
        &format!("/rooms/{room}/updates"),
        Some(&mint_for("bob")),
        w.append("p", "from bob"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, history) =
        http_get_json(&server, &format!("/rooms/{room}/history"), &mint_for("ann")).await;
    assert_eq!(status, 200, "{history}");
    let authors: Vec<(u64, String)> = history["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["seq"].as_u64().unwrap(),
                u["author"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        authors,
        vec![(2, "bob".to_string()), (1, "ann".to_string())]
    );
}

async fn http_get_json(server: &TestServer, path: &str, bearer: &str) -> (u16, serde_json::Value) {
    let mut res = awc::Client::new()
        .get(server.url(path))
        .insert_header(("Authorization", format!("Bearer {bearer}")))
        .send()
        .await
        .unwrap();
    let body = res.body().await.unwrap();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}
