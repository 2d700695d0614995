//! Running the server in the places it gets deployed: environment variables injected by
//! orchestrators, startup validation of settings, WebSocket pings from non-browser
//! clients, and tokens from identity providers that set `aud` and `iss`.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use awc::ws::{Frame, Message};
use bytes::Bytes;
use collabd::auth::{Access, Audience, Claims, expiry_in, mint};
use common::*;
use futures_util::{SinkExt, StreamExt};
use yrs::Doc;

const SECRET: &str = "operations-secret-0123456789";

/// Runs the binary with `args` and `env` until it exits (within [`PATIENCE`]); returns
/// its exit code and what it logged.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_collabd"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start collabd");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("collabd is still running: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

fn data_dir_arg(dir: &Path) -> String {
    dir.join("data").display().to_string()
}

#[actix_rt::test]
async fn collabd_variables_that_name_no_setting_are_ignored_with_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    // What Kubernetes injects for a service named `collabd`, plus one real setting.
    let server = TestServer::start_env(
        dir.path(),
        &[],
        &[
            ("COLLABD_PORT", "tcp://10.0.0.1:1234"),
            ("COLLABD_SERVICE_HOST", "10.0.0.1"),
            ("COLLABD_POLL_BATCH_LIMIT", "7"),
        ],
    );
    let (status, body) = server.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let warnings: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|l| l.contains("name no setting"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("COLLABD_PORT, COLLABD_SERVICE_HOST"),
        "{warnings:?}"
    );
    assert!(!warnings[0].contains("POLL_BATCH_LIMIT"), "{warnings:?}");
}

#[test]
fn an_unknown_key_in_the_config_file_still_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collabd.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:0\"\nsnapshot_evry = 10\n").unwrap();
    let data = data_dir_arg(dir.path());
    let config = file.display().to_string();
    let (code, logs) = run_to_exit(&["--config", &config, "--data-dir", &data], &[]);
    assert_eq!(code, Some(2), "{logs}");
    assert!(
        logs.contains(&format!("{config}: unknown keys: snapshot_evry")),
        "{logs}"
    );
    assert!(!logs.contains("listening on"), "{logs}");
}

#[test]
fn a_bad_combination_of_settings_stops_the_server_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_arg(dir.path());
    let args = [
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--snapshot-every",
        "100",
        "--replay-window",
        "10",
        "--max-frame-bytes",
        "2000000",
        "--outbound-queue-bytes",
        "1000000",
        "--sse-queue-events",
        "0",
    ];
    let (code, logs) = run_to_exit(&args, &[]);
    assert_eq!(code, Some(2), "{logs}");
    for violation in [
        "replay_window (10) must be at least snapshot_every (100)",
        "outbound_queue_bytes (1000000) must be at least max_frame_bytes (2000000)",
        "sse_queue_events must be greater than 0",
    ] {
        assert!(logs.contains(violation), "{violation:?} not in {logs}");
    }
    assert!(!logs.contains("listening on"), "{logs}");
    assert!(!dir.path().join("data").exists(), "the store was opened");
}

#[actix_rt::test]
async fn a_client_ping_is_answered_with_a_pong_carrying_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let (_, mut socket) = awc::Client::new()
        .ws(server.ws_url("ping"))
        .connect()
        .await
        .unwrap();
    let payload = Bytes::from_static(b"are you there? \x00\xff");
    socket.send(Message::Ping(payload.clone())).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = actix_rt::time::timeout(left, socket.next())
            .await
            .expect("no pong")
            .expect("connection closed")
            .unwrap();
        match frame {
            Frame::Pong(got) => {
                assert_eq!(got, payload);
                break;
            }
            // The room's sync step 1, the server's own heartbeat.
            Frame::Binary(_) | Frame::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The session carries on as usual.
    let mut client = YClient::connect(&server, "ping").await;
    client.until("synced", |c| c.synced).await;
}

fn token(aud: Option<Audience>, iss: Option<&str>) -> String {
    let claims = Claims {
        room: "ops/*".into(),
        perm: Access::Write,
        exp: expiry_in(Duration::from_secs(600)),
        sub: Some("ops-user".into()),
        aud,
        iss: iss.map(Into::into),
        iat: None,
    };
    mint(SECRET, &claims).unwrap()
}

/// POSTs an update with `token`; returns the status and the error code, if any.
async fn post_with(server: &TestServer, token: &str) -> (u16, Option<String>) {
    let mut res = awc::Client::new()
        .post(server.url("/rooms/ops/doc/updates"))
        .insert_header(("Authorization", format!("Bearer {token}")))
        .send_body(HttpWriter::new().append("t", "x"))
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&res.body().await.unwrap()).unwrap();
    let code = body["error"].as_str().map(str::to_owned);
    (res.status().as_u16(), code)
}

async fn ws_with(server: &TestServer, token: &str) -> Result<YClient, ConnectError> {
    let url = format!("{}?token={token}", server.ws_url("ops/doc"));
    YClient::try_connect(&url, &[], Doc::new()).await
}

#[actix_rt::test]
async fn a_token_with_an_audience_is_accepted_when_none_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_env(dir.path(), &[], &[("COLLABD_AUTH_SECRET", SECRET)]);
    let from_idp = token(
        Some(Audience::One("some-other-api".into())),
        Some("https://login.example"),
    );
    assert_eq!(post_with(&server, &from_idp).await, (200, None));
    let many = token(Some(Audience::Many(vec!["a".into(), "b".into()])), None);
    let mut client = ws_with(&server, &many).await.unwrap();
    client.until("synced", |c| c.synced).await;
}

#[actix_rt::test]
async fn a_configured_audience_and_issuer_must_match_and_refusals_name_the_subject() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("COLLABD_AUTH_SECRET", SECRET),
        ("COLLABD_TOKEN_AUDIENCE", "collabd"),
        ("COLLABD_TOKEN_ISSUER", "https://login.example"),
    ];
    let server = TestServer::start_env(dir.path(), &[], &env);
    let aud = || Some(Audience::Many(vec!["api".into(), "collabd".into()]));
    let iss = Some("https://login.example");

    for (what, bad, code) in [
        (
            "wrong aud",
            token(Some(Audience::One("api".into())), iss),
            "token_wrong_audience",
        ),
        ("no aud", token(None, iss), "token_wrong_audience"),
        (
            "wrong iss",
            token(aud(), Some("https://evil.example")),
            "token_wrong_issuer",
        ),
        ("no iss", token(aud(), None), "token_wrong_issuer"),
    ] {
        assert_eq!(
            post_with(&server, &bad).await,
            (401, Some(code.to_string())),
            "POST with {what}"
        );
        assert!(
            matches!(ws_with(&server, &bad).await, Err(ConnectError::Status(401))),
            "WebSocket with {what}"
        );
    }
    let refusal = server
        .logs()
        .into_iter()
        .find(|l| l.contains("HTTP 401: token_wrong_issuer"))
        .unwrap();
    assert!(refusal.contains("(sub \"ops-user\")"), "{refusal}");

    let right = token(aud(), iss);
    assert_eq!(post_with(&server, &right).await, (200, None));
    let mut client = ws_with(&server, &right).await.unwrap();
    client.until("synced", |c| c.synced).await;
    server
        .wait_for_log("opened in room \"ops/doc\" (sub \"ops-user\")")
        .await;
    client.close().await;
    server
        .wait_for_log("closed in room \"ops/doc\" (sub \"ops-user\")")
        .await;

    // `collabd token` mints for the configured audience and issuer unless told otherwise.
    let cli = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_collabd"))
            .args(["token", "--room", "ops/doc", "--write", "--sub", "cli"])
            .args(extra)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(post_with(&server, &cli(&[])).await, (200, None));
    assert_eq!(
        post_with(&server, &cli(&["--aud", "elsewhere"])).await,
        (401, Some("token_wrong_audience".into()))
    );
}
