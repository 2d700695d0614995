//! The Rust client (`clients/rust`) against the real server: two clients converge, a
//! server that dies and comes back on the same address is reconnected to with backoff,
//! and edits made meanwhile reach everyone exactly once.

mod common;

use std::time::{Duration, Instant};

use collabd_client::{Client, Options};
use common::*;
use yrs::{Doc, GetString, Text, Transact};

fn text(doc: &Doc) -> String {
    let t = doc.get_or_insert_text("t");
    t.get_string(&doc.transact())
}

fn push(doc: &Doc, s: &str) {
    let t = doc.get_or_insert_text("t");
    t.push(&mut doc.transact_mut(), s);
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn clients_converge_and_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &[]);
    let url = server.url("");
    let options = Options {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..Options::default()
    };
    let (a, b) = (Doc::new(), Doc::new());
    let ca = Client::connect(&url, "rust/client", a.clone(), options.clone());
    let cb = Client::connect(&url, "rust/client", b.clone(), options);
    ca.wait_synced().await;
    cb.wait_synced().await;
    push(&a, "one ");
    push(&b, "two ");
    until("converged", || text(&a).len() == 8 && text(&a) == text(&b)).await;

    // The server dies; both keep editing; it comes back on the same address.
    let addr = server.addr;
    server.kill();
    push(&a, "offline-a ");
    push(&b, "offline-b ");
    let server = TestServer::start_at(addr, dir.path(), &[]);
    until("reconnected", || {
        ca.connections() >= 2 && cb.connections() >= 2
    })
    .await;
    until("converged after the restart", || {
        text(&a) == text(&b) && text(&a).contains("offline-a") && text(&a).contains("offline-b")
    })
    .await;
    // Nothing twice, and the server comes to hold the same.
    assert_eq!(text(&a).matches("offline-a").count(), 1);
    assert_eq!(text(&a).matches("one").count(), 1);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (stored, _) = server.state("rust/client").await;
        if text(&stored) == text(&a) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never held {:?}",
            text(&a)
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
