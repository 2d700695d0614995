//! JSON for clients that do not speak Yjs: `PATCH /rooms/{room}/json` against the real
//! server. Operations land as one update with its seq, reach WebSocket clients like any
//! update and survive a restart; a failing operation answers 400 with its index and
//! nothing is applied; a body that is not a list of operations answers 400; a read-only
//! token cannot patch.

mod common;

use common::*;
use serde_json::{Value, json};

async fn patch(server: &TestServer, room: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut req = awc::Client::new().patch(server.url(&format!("/rooms/{room}/json")));
    if let Some(token) = token {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut res = req.send_json(&body).await.unwrap();
    let body = res.body().await.unwrap();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (res.status().as_u16(), json)
}

#[actix_rt::test]
async fn patches_apply_as_one_update_and_reach_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let room = "json/doc";
    let mut ws = YClient::connect(&server, room).await;
    ws.until("synced", |c| c.synced).await;
    ws.append("body", "Hello").await;
    server.wait_for_seq(room, 1).await;

    let (status, answer) = patch(
        &server,
        room,
        json!([
            {"op": "insert_text", "path": ["body"], "index": 5, "text": ", wörld"},
            {"op": "set", "path": ["meta", "title"], "value": "Greeting"},
            {"op": "set", "path": ["meta", "tags"], "value": ["a", "b"]},
            {"op": "insert", "path": ["log"], "index": 0, "values": [{"at": 1}, {"at": 2}]}
        ]),
        None,
    )
    .await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(2)), "{answer}");
    let (_, doc) = server.get_json(&format!("/rooms/{room}/json")).await;
    assert_eq!(doc["body"], "Hello, wörld");
    assert_eq!(
        doc["meta"],
        json!({"title": "Greeting", "tags": ["a", "b"]})
    );
    assert_eq!(doc["log"], json!([{"at": 1}, {"at": 2}]));
    ws.until("the patch over WebSocket", |c| {
        c.text("body") == "Hello, wörld"
    })
    .await;

    // The WebSocket client edits; a patch that deletes around it converges with it.
    ws.append("body", "!").await;
    server.wait_for_seq(room, 3).await;
    let (status, answer) = patch(
        &server,
        room,
        json!({"ops": [
            {"op": "delete_text", "path": ["body"], "index": 0, "length": 7},
            {"op": "delete", "path": ["meta", "tags"]},
            {"op": "remove", "path": ["log"], "index": 0}
        ]}),
        None,
    )
    .await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(4)), "{answer}");
    ws.until("the second patch", |c| c.text("body") == "wörld!")
        .await;
    let (_, doc) = server.get_json(&format!("/rooms/{room}/json")).await;
    assert_eq!(doc["meta"], json!({"title": "Greeting"}));
    assert_eq!(doc["log"], json!([{"at": 2}]));

    // A patch that changes nothing answers the room's seq.
    let (status, answer) = patch(&server, room, json!([]), None).await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(4)), "{answer}");
}

#[actix_rt::test]
async fn a_failing_operation_applies_nothing_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let room = "json/bad";
    let (status, _) = patch(
        &server,
        room,
        json!([{"op": "insert_text", "path": ["body"], "index": 0, "text": "abc"}]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, before) = server.get_json(&format!("/rooms/{room}/json")).await;
    for (ops, index) in [
        // The first two are fine; the third sets a key in a text.
        (
            json!([
                {"op": "set", "path": ["m", "k"], "value": 1},
                {"op": "insert_text", "path": ["body"], "index": 3, "text": "d"},
                {"op": "set", "path": ["body", "k"], "value": 1}
            ]),
            2,
        ),
        (
            json!([{"op": "insert_text", "path": ["body"], "index": 4, "text": "x"}]),
            0,
        ),
        (json!([{"op": "delete", "path": ["m", "missing"]}]), 0),
        (
            json!([{"op": "insert", "path": ["body"], "index": 0, "values": [1]}]),
            0,
        ),
        (
            json!([{"op": "set", "path": ["m", "a", "b"], "value": 1}]),
            0,
        ),
    ] {
        let (status, answer) = patch(&server, room, ops, None).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"], "bad_operation");
        assert_eq!(answer["op"], index, "{answer}");
    }
    for body in [
        json!({"op": "set"}),
        json!([{"op": "explode", "path": ["x"]}]),
        json!("nope"),
    ] {
        let (status, answer) = patch(&server, room, body, None).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_patch")),
            "{answer}"
        );
    }
    let (_, after) = server.get_json(&format!("/rooms/{room}/json")).await;
    assert_eq!(after, before, "nothing applied");
    assert_eq!(server.seq(room).await, 1);
}

#[actix_rt::test]
async fn patches_need_write_access_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "json-api-test-secret";
    let env = [("COLLABD_AUTH_SECRET", secret)];
    let mut server = TestServer::start_env(dir.path(), &[], &env);
    let token = |perm: &str| {
        let mut args = vec!["token", "--room", "json/*"];
        if perm == "write" {
            args.push("--write");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_collabd"))
            .args(&args)
            .env("COLLABD_AUTH_SECRET", secret)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let ops = json!([{"op": "set", "path": ["m", "k"], "value": "v"}]);
    let (status, _) = patch(&server, "json/auth", ops.clone(), None).await;
    assert_eq!(status, 401);
    let (status, answer) = patch(&server, "json/auth", ops.clone(), Some(&token("read"))).await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = patch(&server, "json/auth", ops, Some(&token("write"))).await;
    assert_eq!((status, answer["seq"].as_u64()), (200, Some(1)), "{answer}");
    server.kill();
    let server = TestServer::start_env(dir.path(), &[], &env);
    let (status, doc) = awc::Client::new()
        .get(server.url("/rooms/json/auth/json"))
        .insert_header(("Authorization", format!("Bearer {}", token("read"))))
        .send()
        .await
        .map(|mut r| (r.status().as_u16(), r.body()))
        .unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_slice(&doc.await.unwrap()).unwrap();
    assert_eq!(doc["m"], json!({"k": "v"}));
}

/// `GET /rooms/{room}/events?format=json`: each update as the JSON changes it made (path,
/// kind, value or delta), with the same ids and resume rules as the binary stream; a
/// stream without a resume point starts with the state as JSON.
#[actix_rt::test]
async fn events_in_json_form() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let room = "json/events";
    let (status, _) = patch(
        &server,
        room,
        json!([{"op": "insert_text", "path": ["body"], "index": 0, "text": "Hello"}]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut stream = SseClient::open(
        &server,
        &format!("/rooms/{room}/events?format=json&since=0"),
        None,
    )
    .await;
    let first = stream.next_doc_event().await;
    assert_eq!((first.kind.as_str(), first.id), ("update", Some(1)));
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        data["changes"],
        json!([{"path": ["body"], "kind": "set", "value": "Hello"}]),
        "{data}"
    );
    // Live: a map key, then a text edit in the middle.
    patch(
        &server,
        room,
        json!([{"op": "set", "path": ["meta", "title"], "value": "Hi"}]),
        None,
    )
    .await;
    patch(
        &server,
        room,
        json!([{"op": "insert_text", "path": ["body"], "index": 5, "text": ", you"}]),
        None,
    )
    .await;
    let second = stream.next_doc_event().await;
    assert_eq!(second.id, Some(2));
    let data: Value = serde_json::from_str(&second.data).unwrap();
    assert_eq!(
        data["changes"],
        json!([{"path": ["meta"], "kind": "set", "value": {"title": "Hi"}}])
    );
    let third = stream.next_doc_event().await;
    let data: Value = serde_json::from_str(&third.data).unwrap();
    assert_eq!(
        data["changes"],
        json!([{"path": ["body"], "kind": "text", "index": 5, "delete": 0, "insert": ", you"}])
    );
    // Resume after seq 2: the next change is relative to the document at seq 2.
    let mut resumed = SseClient::open(
        &server,
        &format!("/rooms/{room}/events?format=json"),
        Some("2"),
    )
    .await;
    let next = resumed.next_doc_event().await;
    assert_eq!(next.id, Some(3));
    assert_eq!(
        serde_json::from_str::<Value>(&next.data).unwrap()["changes"],
        data["changes"]
    );
    // Polling in JSON form: the same changes, from the same cursor.
    let (status, polled) = server
        .get_json(&format!("/rooms/{room}/updates?since=1&format=json"))
        .await;
    assert_eq!(status, 200, "{polled}");
    let seqs: Vec<u64> = polled["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(polled["updates"][1]["changes"], data["changes"]);
    // No resume point: the state first.
    let mut fresh =
        SseClient::open(&server, &format!("/rooms/{room}/events?format=json"), None).await;
    let snapshot = fresh.next_doc_event().await;
    assert_eq!((snapshot.kind.as_str(), snapshot.id), ("snapshot", Some(3)));
    let data: Value = serde_json::from_str(&snapshot.data).unwrap();
    assert_eq!(
        data["state"],
        json!({"body": "Hello, you", "meta": {"title": "Hi"}})
    );
}
