//! Acknowledged means stored: an update the room cannot take whole is never answered as
//! if it were stored, and nothing of it lingers in the room's document.
//!
//! yrs keeps an update whose dependencies it lacks as *pending*: invisible, absent from
//! the transaction's diff (so from the log), and integrated later when the missing part
//! arrives. The cases: items that build on *another* client's items the room lacks, a gap
//! inside one client's clocks, deletions of items the room lacks. Each must get 409
//! `missing_dependencies` over HTTP, a re-sync (sync step 1) and a refused ack over
//! WebSocket — never `{"seq"}` or a "stored" ack.

mod common;

use std::time::Duration;

use collabd::auth::{Access, Claims, expiry_in, mint};
use common::{TestServer, YClient, post_update, sync_frame};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Appends `s` to text "t" of `doc`; returns the update.
fn type_into(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    txn.encode_update_v1()
}

/// Everything in `doc`.
fn full(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// Three updates the room cannot take whole, built as real clients would make them.
struct Cases {
    /// Bob's text, typed after Alice's (which the room never got).
    on_anothers_items: Vec<u8>,
    /// Alice's edits 1 and 3 in one update, without edit 2: a gap inside her clocks.
    gap_inside: Vec<u8>,
    /// Alice deleting her own text, which the room never got.
    delete_missing: Vec<u8>,
    /// What the room may apply of `gap_inside`: edit 1 alone.
    gap_inside_first: String,
}

fn cases() -> Cases {
    let alice = Doc::with_client_id(1001);
    type_into(&alice, "alice ");
    let bob = Doc::with_client_id(1002);
    common::apply(&bob, &full(&alice));
    let on_anothers_items = type_into(&bob, "bob");

    let carol = Doc::with_client_id(1003);
    let first = type_into(&carol, "one ");
    let _second = type_into(&carol, "two ");
    let third = type_into(&carol, "three");
    let gap_inside = Update::merge_updates([
        Update::decode_v1(&first).unwrap(),
        Update::decode_v1(&third).unwrap(),
    ])
    .encode_v1();

    let dave = Doc::with_client_id(1004);
    type_into(&dave, "gone");
    let text = dave.get_or_insert_text("t");
    let delete_missing = {
        let mut txn = dave.transact_mut();
        text.remove_range(&mut txn, 0, 4);
        txn.encode_update_v1()
    };
    Cases {
        on_anothers_items,
        gap_inside,
        delete_missing,
        gap_inside_first: "one ".into(),
    }
}

#[actix_rt::test]
async fn http_writes_with_missing_dependencies_get_409_and_leave_nothing_behind() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let cases = cases();
    for (room, update) in [
        ("another", &cases.on_anothers_items),
        ("gap", &cases.gap_inside),
        ("delete", &cases.delete_missing),
    ] {
        let (status, body) = post_update(&server, room, update.clone()).await;
        assert_eq!(status, 409, "{room}: {body}");
        assert_eq!(body["error"], "missing_dependencies", "{room}");
    }
    // Nothing of Bob's or Dave's was logged; of Carol's only edit 1, which applies alone.
    assert_eq!(server.seq("another").await, 0);
    assert_eq!(server.seq("delete").await, 0);
    assert_eq!(server.seq("gap").await, 1);
    let (doc, _) = server.state("gap").await;
    assert_eq!(common::text_of(&doc, "t"), cases.gap_inside_first);

    // Nothing pending lingers: once the missing part arrives, the room holds exactly
    // what was sent to it since, never the refused update coming back to life.
    let alice_again = Doc::with_client_id(1001);
    type_into(&alice_again, "alice ");
    let (status, body) = post_update(&server, "another", full(&alice_again)).await;
    assert_eq!(status, 200, "{body}");
    let (doc, seq) = server.state("another").await;
    assert_eq!(common::text_of(&doc, "t"), "alice ");
    assert_eq!(seq, 1);

    // The same text restarted from scratch after a restart: the log says the same.
    let mut server = server;
    assert!(server.terminate().success());
    let server = TestServer::start(dir.path(), &[]);
    let (doc, _) = server.state("another").await;
    assert_eq!(common::text_of(&doc, "t"), "alice ");
}

#[actix_rt::test]
async fn websocket_writes_with_missing_dependencies_are_resynced_and_never_acked_as_stored() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &[]);
    let cases = cases();
    for (room, update) in [
        ("ws-another", &cases.on_anothers_items),
        ("ws-gap", &cases.gap_inside),
        ("ws-delete", &cases.delete_missing),
    ] {
        let mut client = YClient::connect(&server, room).await;
        client.until("synced", |c| c.synced).await;
        let step1_before = client.sync_step1_heard;
        client.send_raw(sync_frame(2, update)).await;
        client.request_ack(1).await;
        client
            .until("the ack", |c| c.acks.iter().any(|a| a.0 == 1))
            .await;
        let (_, _, stored) = client.acks[0];
        assert!(!stored, "{room}: an ack said stored for a refused update");
        assert!(
            client.sync_step1_heard > step1_before,
            "{room}: the room asks for what it lacks"
        );
        // A clean write afterwards is acked as stored again.
        client.append("ok", "fine").await;
        client.request_ack(2).await;
        client
            .until("the second ack", |c| c.acks.iter().any(|a| a.0 == 2))
            .await;
        assert!(client.acks.iter().any(|a| a.0 == 2 && a.2));
        client.close().await;
    }
    let (doc, _) = server.state("ws-another").await;
    assert_eq!(common::text_of(&doc, "t"), "");
}

#[actix_rt::test]
async fn a_read_only_sessions_ack_never_says_stored() {
    let dir = tempdir();
    let secret = "integrity-secret-0123456789";
    let server = TestServer::start_env(dir.path(), &[], &[("COLLABD_AUTH_SECRET", secret)]);
    let claims = Claims {
        room: "ro".into(),
        perm: Access::Read,
        exp: expiry_in(Duration::from_secs(600)),
        sub: Some("reader".into()),
        aud: None,
        iss: None,
        iat: None,
    };
    let token = mint(secret, &claims).unwrap();
    let url = format!("{}?token={token}", server.ws_url("ro"));
    let mut reader = YClient::try_connect(&url, &[], Doc::new()).await.unwrap();
    reader.until("synced", |c| c.synced).await;
    reader.append("t", "not allowed").await;
    reader.request_ack(9).await;
    reader
        .until("the ack", |c| c.acks.iter().any(|a| a.0 == 9))
        .await;
    assert!(!reader.acks[0].2, "a dropped write acked as stored");
    // Nothing else between: the ack after a clean interval says stored.
    reader.request_ack(10).await;
    reader
        .until("the second ack", |c| c.acks.iter().any(|a| a.0 == 10))
        .await;
    assert!(reader.acks.iter().any(|a| a.0 == 10 && a.2));
    let (status, info) = server.get_json(&format!("/rooms/ro?token={token}")).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["seq"], 0);
}

/// A write over `max_doc_bytes` is refused before it is applied: a client repeating it
/// costs the room a comparison each, not a reload of the whole document from the store.
#[actix_rt::test]
async fn oversized_writes_are_refused_without_reloading_the_document() {
    let dir = tempdir();
    let server = TestServer::start(dir.path(), &["--max-doc-bytes", "4000"]);
    let writer = common::HttpWriter::new();
    let (status, _) = post_update(&server, "big", writer.append("t", &"a".repeat(2000))).await;
    assert_eq!(status, 200);
    for i in 0..10 {
        let other = common::HttpWriter::new();
        let update = other.append("u", &format!("{i}").repeat(3000));
        let (status, body) = post_update(&server, "big", update).await;
        assert_eq!(status, 413, "{body}");
    }
    let (doc, seq) = server.state("big").await;
    assert_eq!((common::text_of(&doc, "t"), seq), ("a".repeat(2000), 1));
    let reloads: Vec<String> = server
        .logs()
        .into_iter()
        .filter(|l| l.contains("document reloaded"))
        .collect();
    assert!(reloads.is_empty(), "{reloads:?}");
}
