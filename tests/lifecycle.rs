//! Room lifecycle against the real server: `GET /rooms` lists stored rooms by name, page
//! by page; `DELETE /rooms/{room}` removes a room's data and starts its next epoch, above
//! every seq the deleted one used. Every transport is told: WebSocket sessions close with
//! 4410, SSE streams get `event: reset`, and a cursor from the deleted epoch (SSE id,
//! poll cursor, `X-Seq`) gets a reset and the new state, never the new epoch's updates
//! as if they followed the old ones. A client that kept the deleted document cannot bring
//! it back. Both endpoints need an admin token when auth is on.

mod common;

use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint};
use common::*;
use yrs::Doc;

/// The room names of a listing page.
fn room_names(page: &serde_json::Value) -> Vec<&str> {
    page["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect()
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = awc::Client::new();
    let mut req = match method {
        "DELETE" => client.delete(server.url(path)),
        _ => client.get(server.url(path)),
    };
    if let Some(token) = bearer {
        req = req.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut res = req.send().await.unwrap();
    let body = res.body().limit(1 << 24).await.unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (res.status().as_u16(), json)
}

#[actix_rt::test]
async fn deleting_a_room_starts_a_new_epoch_on_every_transport() {
    every_transport(&[]).await;
}

/// The same on PostgreSQL: epochs, the graveyard and the deletion live in the database.
#[actix_rt::test]
async fn deleting_a_room_on_postgres() {
    let db = FreshDb::new();
    every_transport(&["--postgres-url", &db.url]).await;
    let rows: i64 = db.with(|c| {
        c.query_one("select count(*) from collabd_updates where seq < 6", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(rows, 0, "the deleted epochs' rows are gone");
}

async fn every_transport(args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), args);
    let room = "life/doc";

    // The old epoch: three updates over WebSocket; an SSE stream and a poll cursor on it.
    let mut old = YClient::connect(&server, room).await;
    old.until("synced", |c| c.synced).await;
    for chunk in ["one ", "two ", "three"] {
        old.append("t", chunk).await;
    }
    server.wait_for_seq(room, 3).await;
    let old_doc: Doc = old.doc().clone();
    let mut live = SseClient::connect(&server, room, None).await;
    assert_eq!(live.next_doc_event().await.kind, "snapshot");
    let (_, x_seq) = server.state(room).await;
    assert_eq!(x_seq, 3);

    // Delete: 200 with the new epoch and the seq it begins at.
    let (status, body) = send(&server, "DELETE", &format!("/rooms/{room}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["epoch"], 1);
    assert_eq!(body["seq"], 4, "the next epoch begins above every seq used");

    // WebSocket: closed with 4410. SSE: `reset`, then the stream ends.
    old.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(old.close_code(), Some(4410));
    let reset = live.next_doc_event().await;
    assert_eq!(reset.kind, "reset");
    assert_eq!(reset.data, r#"{"epoch":1,"seq":4}"#);
    live.until_ended().await;

    // The room is empty, at seq 4 of epoch 1.
    let (_, info) = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(
        (info["seq"].as_u64(), info["epoch"].as_u64()),
        (Some(4), Some(1))
    );
    let (doc, seq) = server.state(room).await;
    assert_eq!((text_of(&doc, "t"), seq), (String::new(), 4));

    // A new writer: seq 5.
    let mut fresh = YClient::connect(&server, room).await;
    fresh.until("synced", |c| c.synced).await;
    fresh.append("t", "new").await;
    server.wait_for_seq(room, 5).await;

    // Poll: a cursor of the old epoch (the X-Seq it had) gets a reset and the whole
    // state; one of this epoch gets exactly what follows.
    let (_, polled) = server
        .get_json(&format!("/rooms/{room}/updates?since={x_seq}"))
        .await;
    assert_eq!(polled["reset"], true, "{polled}");
    assert_eq!(
        (polled["epoch"].as_u64(), polled["seq"].as_u64()),
        (Some(1), Some(5))
    );
    let snapshot = b64(polled["snapshot"].as_str().unwrap());
    let doc = Doc::new();
    apply(&doc, &snapshot);
    assert_eq!(text_of(&doc, "t"), "new");
    let (_, polled) = server
        .get_json(&format!("/rooms/{room}/updates?since=4"))
        .await;
    assert!(polled.get("reset").is_none(), "{polled}");
    assert_eq!(polled["updates"].as_array().unwrap().len(), 1);
    assert_eq!(polled["updates"][0]["seq"], 5);

    // SSE resuming from the old epoch: reset, then a snapshot of the new one.
    let mut resumed = SseClient::connect(&server, room, Some("3")).await;
    let reset = resumed.next_doc_event().await;
    assert_eq!(
        (reset.kind.as_str(), reset.data.as_str()),
        ("reset", r#"{"epoch":1,"seq":4}"#)
    );
    let snap = resumed.next_doc_event().await;
    assert_eq!((snap.kind.as_str(), snap.id), ("snapshot", Some(5)));
    let mut current = SseClient::connect(&server, room, Some("4")).await;
    let update = current.next_doc_event().await;
    assert_eq!((update.kind.as_str(), update.id), ("update", Some(5)));

    // Time travel stops at the epoch: the deleted seqs are gone.
    let (status, body) = server.get_json(&format!("/rooms/{room}/json?at=2")).await;
    assert_eq!((status, body["nearest"].as_u64()), (410, Some(4)), "{body}");

    // A client that kept the deleted document cannot bring it back, over WebSocket...
    let mut stale = YClient::connect_with(&server, room, old_doc.clone()).await;
    stale.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(stale.close_code(), Some(4410));
    // ... or POST.
    let whole = {
        use yrs::{ReadTxn, StateVector, Transact};
        old_doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let (status, body) = post_update(&server, room, whole).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("room_deleted")),
        "{body}"
    );
    let (doc, seq) = server.state(room).await;
    assert_eq!((text_of(&doc, "t"), seq), ("new".to_string(), 5));

    // All of it survives a restart: the epoch, its seqs and the graveyard.
    drop((fresh, resumed, current));
    server.terminate();
    let server = TestServer::start(dir.path(), args);
    let (_, info) = server.get_json(&format!("/rooms/{room}")).await;
    assert_eq!(
        (info["seq"].as_u64(), info["epoch"].as_u64()),
        (Some(5), Some(1))
    );
    let mut stale = YClient::connect_with(&server, room, old_doc).await;
    stale.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(stale.close_code(), Some(4410));

    // Deleting again: epoch 2, above seq 5. A room with nothing stored: 404.
    let (status, body) = send(&server, "DELETE", &format!("/rooms/{room}"), None).await;
    assert_eq!(
        (status, body["epoch"].as_u64(), body["seq"].as_u64()),
        (200, Some(2), Some(6))
    );
    let (status, body) = send(&server, "DELETE", "/rooms/never-written", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[actix_rt::test]
async fn a_deleted_room_that_is_not_loaded_and_writes_during_deletion() {
    let dir = tempfile::tempdir().unwrap();
    // Rooms are evicted at once when idle: the deletion reads the document from the store.
    let server = TestServer::start(dir.path(), &["--room-idle-ms", "50"]);
    let room = "life/idle";
    let writer = HttpWriter::new();
    for i in 0..5 {
        let (status, _) = post_update(&server, room, writer.append("t", &format!("{i}"))).await;
        assert_eq!(status, 200);
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = send(&server, "DELETE", &format!("/rooms/{room}"), None).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(6)), "{body}");
    // The writer's next update builds on deleted content: refused, nothing stored.
    let (status, _) = post_update(&server, room, writer.append("t", "x")).await;
    assert!(status == 409 || status == 410, "{status}");
    let (doc, seq) = server.state(room).await;
    assert_eq!((text_of(&doc, "t"), seq), (String::new(), 6));
    // A new document is welcome.
    let (status, body) = post_update(&server, room, HttpWriter::new().append("t", "new")).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(7)));
}

#[actix_rt::test]
async fn listing_rooms_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (room, updates) in [("list/a", 1), ("list/b", 2), ("list/c", 3), ("other", 1)] {
        let writer = HttpWriter::new();
        for _ in 0..updates {
            post_update(&server, room, writer.append("t", "hello")).await;
        }
    }
    let (status, page) = server.get_json("/rooms?prefix=list/&limit=2").await;
    assert_eq!(status, 200, "{page}");
    let names = room_names(&page);
    assert_eq!(names, ["list/a", "list/b"]);
    assert_eq!(page["next"], "list/b");
    let b = &page["rooms"][1];
    assert_eq!((b["seq"].as_u64(), b["epoch"].as_u64()), (Some(2), Some(0)));
    assert!(b["size"].as_u64().unwrap() > 10);
    assert!(b["changed_ms"].as_u64().unwrap() >= before);
    let (_, page) = server
        .get_json("/rooms?prefix=list/&after=list/b&limit=2")
        .await;
    assert_eq!(page["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(page["rooms"][0]["room"], "list/c");
    assert_eq!(page["next"], serde_json::Value::Null);
    let (_, all) = server.get_json("/rooms").await;
    assert_eq!(all["rooms"].as_array().unwrap().len(), 4);

    send(&server, "DELETE", "/rooms/list/b", None).await;
    let (_, page) = server.get_json("/rooms?prefix=list/").await;
    let names = room_names(&page);
    assert_eq!(names, ["list/a", "list/c"], "a deleted room is not listed");

    for bad in [
        "/rooms?limit=0",
        "/rooms?limit=1001",
        "/rooms?limit=x",
        "/rooms?prefix=%01",
    ] {
        let (status, body) = server.get_json(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

const SECRET: &str = "lifecycle-secret-0123456789";

fn token(room: &str, perm: Access) -> String {
    let claims = Claims {
        room: room.into(),
        perm,
        exp: expiry_in(Duration::from_secs(600)),
        sub: Some("admin-test".into()),
        aud: None,
        iss: None,
        iat: None,
    };
    mint(SECRET, &claims).unwrap()
}

#[actix_rt::test]
async fn listing_and_deleting_need_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_env(dir.path(), &[], &[("COLLABD_AUTH_SECRET", SECRET)]);
    let write = token("*", Access::Write);
    let writer = HttpWriter::new();
    let mut res = awc::Client::new()
        .post(server.url("/rooms/team/a/updates"))
        .insert_header(("Authorization", format!("Bearer {write}")))
        .send_body(writer.append("t", "x"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);

    assert_eq!(send(&server, "GET", "/rooms", None).await.0, 401);
    assert_eq!(send(&server, "GET", "/rooms", Some(&write)).await.0, 403);
    assert_eq!(
        send(&server, "DELETE", "/rooms/team/a", Some(&write))
            .await
            .0,
        403
    );
    let team_admin = token("team/*", Access::Admin);
    let (status, page) = send(&server, "GET", "/rooms?prefix=team/", Some(&team_admin)).await;
    assert_eq!(
        (status, page["rooms"][0]["room"].as_str()),
        (200, Some("team/a"))
    );
    assert_eq!(
        send(&server, "GET", "/rooms", Some(&team_admin)).await.0,
        403,
        "every room"
    );
    assert_eq!(
        send(&server, "DELETE", "/rooms/other", Some(&team_admin))
            .await
            .0,
        403
    );
    let (status, body) = send(&server, "DELETE", "/rooms/team/a", Some(&team_admin)).await;
    assert_eq!((status, body["epoch"].as_u64()), (200, Some(1)), "{body}");
    // An admin token is a write token too.
    let mut res = awc::Client::new()
        .post(server.url("/rooms/team/a/updates"))
        .insert_header(("Authorization", format!("Bearer {team_admin}")))
        .send_body(HttpWriter::new().append("t", "y"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
}

/// Cluster mode: a room deleted on one node ends on every node (sessions 4410, SSE
/// `reset`), writes racing the deletion never reach the new epoch, every node serves the
/// new epoch and refuses the old content, and listings agree. With the PostgreSQL archive
/// the archived history goes too.
#[actix_rt::test]
async fn deleting_a_room_across_a_cluster() {
    let Some(redis) = redis_or_skip() else { return };
    let db = FreshDb::new();
    let url = redis.url();
    let args = [
        "--redis-url",
        url.as_str(),
        "--postgres-url",
        db.url.as_str(),
        "--archive-after",
        "2",
    ];
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestServer::start(dirs[0].path(), &args);
    let b = TestServer::start(dirs[1].path(), &args);
    let room = "life/cluster";

    let mut on_a = YClient::connect(&a, room).await;
    let mut on_b = YClient::connect(&b, room).await;
    on_a.until("synced", |c| c.synced).await;
    on_b.until("synced", |c| c.synced).await;
    for i in 0..3 {
        on_a.append("t", &format!("a{i} ")).await;
        on_b.append("t", &format!("b{i} ")).await;
    }
    a.wait_for_seq(room, 6).await;
    b.wait_for_seq(room, 6).await;
    let old_doc = on_b.doc().clone();
    let mut sse_b = SseClient::connect(&b, room, None).await;
    assert_eq!(sse_b.next_doc_event().await.kind, "snapshot");

    // A writer on B keeps posting while A deletes: whatever lands after the deletion
    // builds on deleted content and is refused.
    let writer_b = b.url("");
    let racing = actix_rt::spawn(async move {
        let writer = HttpWriter::new();
        let client = awc::Client::new();
        let mut statuses = Vec::new();
        for i in 0..40 {
            let res = client
                .post(format!("{writer_b}/rooms/{room}/updates"))
                .send_body(writer.append("t", &format!("w{i} ")))
                .await;
            statuses.push(res.map(|r| r.status().as_u16()).unwrap_or(0));
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        statuses
    });
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = send(&a, "DELETE", &format!("/rooms/{room}"), None).await;
    assert_eq!((status, body["epoch"].as_u64()), (200, Some(1)), "{body}");
    let base = body["seq"].as_u64().unwrap();
    assert!(base > 6);
    let statuses = racing.await.unwrap();
    assert!(
        statuses.iter().all(|s| [200, 409, 410, 503].contains(s)),
        "{statuses:?}"
    );

    // Every node's sessions and streams hear of it.
    for client in [&mut on_a, &mut on_b] {
        client.until("closed", |c| c.closed.is_some()).await;
        assert_eq!(client.close_code(), Some(4410));
    }
    // (Updates the racing writer got in before the deletion come first.)
    let mut reset = sse_b.next_doc_event().await;
    while reset.kind == "update" {
        assert!(reset.id.unwrap() < base);
        reset = sse_b.next_doc_event().await;
    }
    assert_eq!(reset.kind, "reset");
    assert_eq!(reset.data, format!(r#"{{"epoch":1,"seq":{base}}}"#));

    // Both nodes serve the new, empty epoch.
    for node in [&a, &b] {
        let (_, info) = node.get_json(&format!("/rooms/{room}")).await;
        assert_eq!(info["epoch"], 1, "{info}");
        let (doc, seq) = node.state(room).await;
        assert_eq!((text_of(&doc, "t"), seq), (String::new(), base));
    }

    // The new life: written on B, read on A; old cursors reset; old content refused.
    let mut fresh = YClient::connect(&b, room).await;
    fresh.until("synced", |c| c.synced).await;
    fresh.append("t", "new").await;
    a.wait_for_seq(room, base + 1).await;
    let (_, polled) = a.get_json(&format!("/rooms/{room}/updates?since=6")).await;
    assert_eq!(
        (polled["reset"].as_bool(), polled["epoch"].as_u64()),
        (Some(true), Some(1))
    );
    let (_, polled) = a
        .get_json(&format!("/rooms/{room}/updates?since={base}"))
        .await;
    assert_eq!(
        polled["updates"][0]["seq"].as_u64(),
        Some(base + 1),
        "{polled}"
    );
    let mut stale = YClient::connect_with(&a, room, old_doc).await;
    stale.until("closed", |c| c.closed.is_some()).await;
    assert_eq!(stale.close_code(), Some(4410));
    for node in [&a, &b] {
        let (doc, _) = node.state(room).await;
        assert_eq!(text_of(&doc, "t"), "new");
        let (status, page) = node.get_json("/rooms?prefix=life/").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["rooms"][0]["room"], room);
        assert_eq!(page["rooms"][0]["epoch"], 1);
        assert_eq!(page["rooms"][0]["seq"].as_u64(), Some(base + 1));
    }
    // The archive kept nothing of the deleted epoch.
    let old_rows: i64 = db.with(|c| {
        c.query_one(
            "select count(*) from collabd_updates where room = $1 and seq <= $2",
            &[&room, &(base as i64)],
        )
        .unwrap()
        .get(0)
    });
    assert_eq!(old_rows, 0);
}
