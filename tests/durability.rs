//! Durable means fsynced: every acknowledgement the server shows — a POST's `{"seq"}`, a
//! WebSocket write ack, a full state with its `X-Seq` — follows an fsync-class call (`fsync`, `fdatasync`) on the file
//! that holds the acknowledged record, issued after that record was written.
//!
//! A SIGKILL test cannot show this (the page cache survives a killed process), so this
//! one watches the syscalls: the real server runs under `strace`, a client makes
//! sequential acknowledged writes, each carrying a unique marker, and the trace must
//! show, for each: the `pwrite` of the record holding the marker → an fsync-class call
//! on the same file → the socket write that acknowledges it. `sync_file_range`, which
//! sled uses, does not count: it flushes neither the file's size nor the device cache.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use common::{HttpWriter, TestServer, YClient, post_update};

const SYSCALLS: &str = "trace=openat,close,pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg,\
                        fsync,fdatasync,sync_file_range";

/// One completed syscall from the trace, in completion order.
#[derive(Debug)]
struct Call {
    /// Position in the trace.
    index: usize,
    name: String,
    fd: Option<i64>,
    /// Every quoted buffer of the call, decoded and concatenated.
    data: Vec<u8>,
    result: i64,
}

/// Decodes strace's `-xx` strings (`"\x61\x62"`) out of an argument list.
fn buffers(args: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut inside = false;
    let bytes = args.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => inside = !inside,
            b'\\' if inside && bytes.get(i + 1) == Some(&b'x') => {
                let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn read_trace(path: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut unfinished: HashMap<String, (String, String)> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let (name, args) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            let Some((_, head)) = unfinished.remove(pid) else {
                continue;
            };
            (name.to_string(), head + tail)
        } else if let Some((name, args)) = rest.split_once('(') {
            if let Some(head) = args.strip_suffix(" <unfinished ...>") {
                unfinished.insert(pid.to_string(), (name.to_string(), head.to_string()));
                continue;
            }
            (name.to_string(), args.to_string())
        } else {
            continue; // "+++ exited", "--- SIG…"
        };
        let Some((args, result)) = args.rsplit_once(" = ") else {
            continue;
        };
        let result = result
            .split_whitespace()
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or(-1);
        let fd = args
            .split([',', ')'])
            .next()
            .and_then(|fd| fd.trim().parse().ok());
        calls.push(Call {
            index: calls.len(),
            name,
            fd,
            data: buffers(args),
            result,
        });
    }
    calls
}

/// Whether `needle` occurs in `haystack`, ignoring ASCII case (HTTP header names).
fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Checks, for each (marker, ack bytes): record written → fsync of that file → ack sent.
fn assert_each_ack_follows_an_fsync_of_its_record(calls: &[Call], acks: &[(String, Vec<u8>)]) {
    // Which calls act on sled's data file, the one file that holds records: its
    // descriptors from `openat` until `close` (descriptor numbers are reused).
    let mut data_fds = HashSet::new();
    let on_data_file: Vec<bool> = calls
        .iter()
        .map(|c| match c.name.as_str() {
            "openat" if c.data.ends_with(b"/db") && c.result >= 0 => {
                data_fds.insert(c.result);
                false
            }
            "close" => {
                if let Some(fd) = c.fd {
                    data_fds.remove(&fd);
                }
                false
            }
            _ => c.fd.is_some_and(|fd| data_fds.contains(&fd)),
        })
        .collect();
    assert!(
        on_data_file.contains(&true),
        "the trace shows the data file written"
    );
    let on_data = |c: &Call| on_data_file[c.index];
    for (marker, ack) in acks {
        let written = calls
            .iter()
            .position(|c| {
                c.name.starts_with("pwrite") && on_data(c) && find(&c.data, marker.as_bytes())
            })
            .unwrap_or_else(|| panic!("no write of the record holding {marker:?}"));
        let acked = calls
            .iter()
            .enumerate()
            .skip(written)
            .find(|(_, c)| !on_data(c) && c.name != "openat" && find(&c.data, ack))
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no acknowledgement for {marker:?} after its record"));
        let synced = calls[written..acked].iter().any(|c| {
            matches!(c.name.as_str(), "fsync" | "fdatasync") && on_data(c) && c.result == 0
        });
        assert!(
            synced,
            "{marker:?}: record written (call {written}) and acknowledged (call {acked}) \
             with no fsync of the data file between them: {:?}",
            calls[written..acked]
                .iter()
                .filter(|c| on_data(c))
                .map(|c| &c.name)
                .collect::<Vec<_>>()
        );
    }
}

/// A marker no other bytes in the trace can contain by chance.
fn nonce() -> String {
    format!(
        "{:016x}",
        common::Rng(common::seed_from("DURABLE_SEED")).next()
    )
}

#[actix_rt::test]
async fn every_acknowledgement_follows_an_fsync_of_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut server = TestServer::start_traced(&dir.path().join("data"), &[], SYSCALLS, &trace);
    let nonce = nonce();
    let mut acks = Vec::new();

    // HTTP: each POST answers {"seq":N} once its record is durable.
    let writer = HttpWriter::new();
    for i in 0..15 {
        let marker = format!("http-{i:02}-{nonce}");
        let (status, body) = post_update(&server, "durable", writer.append("t", &marker)).await;
        assert_eq!(status, 200, "{body}");
        let seq = body["seq"].as_u64().unwrap();
        acks.push((marker, format!("{{\"seq\":{seq}}}").into_bytes()));
    }

    // WebSocket: each update followed by an ack request, answered [100, token, seq, 0].
    let mut client = YClient::connect(&server, "durable-ws").await;
    for token in 1..=15u64 {
        let marker = format!("ws-{token:02}-{nonce}");
        client.append("t", &marker).await;
        client.request_ack(token).await;
        client
            .until("the ack", |c| c.acks.iter().any(|a| a.0 == token))
            .await;
        let &(_, seq, stored) = client.acks.iter().find(|a| a.0 == token).unwrap();
        assert!(stored);
        assert!(token < 128 && seq < 128, "one-byte varints below");
        // A binary WebSocket frame of 5 bytes: type 100, a varbuf of token, seq, status 0.
        acks.push((marker, vec![0x82, 5, 100, 3, token as u8, seq as u8, 0]));
    }
    // Full states: a GET right after an unacknowledged write holds that write, so it may
    // leave only once the write is durable (and its X-Seq covers it).
    // An observer seeing the write proves the room applied it before the GET arrives.
    let mut observer = YClient::connect(&server, "durable-ws").await;
    for i in 0..10 {
        let marker = format!("state-{i:02}-{nonce}");
        client.append("t", &marker).await;
        observer
            .until("the write", |o| o.text("t").contains(&marker))
            .await;
        let (doc, seq) = server.state("durable-ws").await;
        assert!(common::text_of(&doc, "t").contains(&marker));
        assert_eq!(seq, 15 + i + 1, "X-Seq covers the write");
        acks.push((marker, format!("x-seq: {seq}\r\n").into_bytes()));
    }
    observer.close().await;
    client.close().await;
    assert!(server.terminate().success());

    let calls = read_trace(&trace);
    assert_each_ack_follows_an_fsync_of_its_record(&calls, &acks);
}

/// The administrators' answers are durable too: a revocation's answer and a deletion's
/// follow an fsync of the data file after the record they describe was written (the
/// revocation's key, the deleted room's new epoch), so neither is undone by a power cut.
#[actix_rt::test]
async fn revocations_and_deletions_are_answered_after_an_fsync() {
    use collabd::auth::{Access, Claims, expiry_in, mint};
    const SECRET: &str = "durability-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut server = TestServer::start_traced_env(
        &dir.path().join("data"),
        &[],
        &[("COLLABD_AUTH_SECRET", SECRET)],
        SYSCALLS,
        &trace,
    );
    let claims = Claims {
        room: "*".into(),
        perm: Access::Admin,
        exp: expiry_in(std::time::Duration::from_secs(600)),
        sub: Some("ops".into()),
        aud: None,
        iss: None,
        iat: None,
    };
    let admin = mint(SECRET, &claims).unwrap();
    let client = awc::Client::new();
    let nonce = nonce();
    let mut acks = Vec::new();
    for i in 0..5 {
        let marker = format!("revoked-{i}-{nonce}");
        let mut res = client
            .post(server.url("/admin/revoke"))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .send_json(&serde_json::json!({ "sub": marker }))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
        acks.push((marker.clone(), format!("\"sub\":\"{marker}\"").into_bytes()));
    }
    for i in 0..5 {
        let room = format!("deleted-{i}-{nonce}");
        let writer = HttpWriter::new();
        let mut res = client
            .post(server.url(&format!("/rooms/{room}/updates")))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .send_body(writer.append("t", "x"))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{:?}", res.body().await);
        let mut res = client
            .delete(server.url(&format!("/rooms/{room}")))
            .insert_header(("Authorization", format!("Bearer {admin}")))
            .send()
            .await
            .unwrap();
        let body = res.body().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{body:?}");
        // The epoch's key is the room's name; the answer names the room.
        acks.push((room.clone(), format!("{{\"room\":\"{room}\"").into_bytes()));
    }
    assert!(server.terminate().success());
    let calls = read_trace(&trace);
    assert_each_ack_follows_an_fsync_of_its_record(&calls, &acks);
}

// The same promise one level up, where the disk can be modelled: the room actor over the
// in-memory store, whose `power_cut` keeps exactly what the last successful flush covered.

mod power {
    use std::sync::Arc;
    use std::time::Duration;

    use std::sync::Mutex;

    use actix::{Actor, Context, Handler};
    use bytes::Bytes;
    use collabd::config::Settings;
    use collabd::room::messages::{ApplyUpdate, CloseSession, GetState, Join};
    use collabd::room::{Registry, ask};
    use collabd::store::Store;
    use collabd::store::commit::Flusher;
    use collabd::store::memory::MemoryStore;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, Text, Transact, Update};

    /// The room machinery over `store`, wired as the server wires it (1 ms group commit).
    fn rooms(store: &Arc<dyn Store>) -> (Flusher, actix::Addr<Registry>) {
        let flusher = Flusher::start(store.clone(), Duration::from_millis(1));
        let registry = Registry::without_hooks(store.clone(), flusher.clone(), settings()).start();
        (flusher, registry)
    }

    /// A writer: each call appends `chunk` to the text `t` and returns that update.
    fn writer() -> impl Fn(&str) -> Bytes {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        move |chunk| {
            let mut txn = doc.transact_mut();
            text.push(&mut txn, chunk);
            Bytes::from(txn.encode_update_v1())
        }
    }

    fn settings() -> Arc<Settings> {
        // Snapshots and compaction every few updates, so a cut can fall between a
        // snapshot, its flush and the deletion of the records it replaces.
        Arc::new(Settings {
            snapshot_every: 7,
            replay_window: 7,
            ..Settings::default()
        })
    }

    fn text_of(state: &[u8]) -> String {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(state).unwrap())
            .unwrap();
        let text = doc.get_or_insert_text("t");
        text.get_string(&doc.transact())
    }

    /// A store that cannot be reached (a database away): the write taken before is acked
    /// only once it is stored; writes meanwhile are refused, not taken; then resumed.
    #[actix_rt::test]
    async fn an_unavailable_store_refuses_writes_and_acks_only_what_it_stored() {
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn Store> = memory.clone();
        let (flusher, registry) = rooms(&store);
        let name: Arc<str> = "away".into();
        let next = writer();
        let first = next("a");
        let (_, applied) = ask(
            &registry,
            &name,
            ApplyUpdate {
                update: first,
                author: None,
            },
        )
        .await
        .unwrap();
        applied.unwrap().await.unwrap();

        memory.set_unavailable(Some("database away"));
        // Taken before the store was known to be away: its ack waits.
        let taken = next("b");
        let (_, applied) = ask(
            &registry,
            &name,
            ApplyUpdate {
                update: taken,
                author: None,
            },
        )
        .await
        .unwrap();
        let mut durable = applied.unwrap();
        // The flush fails, the store says so; the next write is refused.
        while store.unavailable().is_none() {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(matches!(
            durable.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        let refused = next("c");
        let (_, applied) = ask(
            &registry,
            &name,
            ApplyUpdate {
                update: refused,
                author: None,
            },
        )
        .await
        .unwrap();
        assert!(matches!(
            applied,
            Err(collabd::room::actor::Refused::StoreUnavailable)
        ));

        memory.set_unavailable(None);
        assert_eq!(durable.await.unwrap(), 2, "acked once stored, with its seq");
        assert_eq!(memory.load("away").unwrap().last_seq(), 2);
        flusher.shutdown();
    }

    #[actix_rt::test]
    async fn a_power_cut_loses_nothing_acknowledged() {
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn Store> = memory.clone();
        let (flusher, registry) = rooms(&store);
        let name: Arc<str> = "power".into();
        let writer = Doc::new();
        let text = writer.get_or_insert_text("t");
        let mut acked = Vec::new();
        let mut in_flight = Vec::new();
        for i in 0..300 {
            let marker = format!("<{i}>");
            let update = {
                let mut txn = writer.transact_mut();
                text.push(&mut txn, &marker);
                txn.encode_update_v1()
            };
            let update = Bytes::from(update);
            let (_, applied) = ask(
                &registry,
                &name,
                ApplyUpdate {
                    update,
                    author: None,
                },
            )
            .await
            .unwrap();
            let durable = applied.unwrap();
            // Every third write waits for its ack; the rest stay in flight.
            if i % 3 == 0 {
                acked.push((durable.await.unwrap(), marker));
            } else {
                in_flight.push(durable);
            }
        }
        memory.power_cut();
        flusher.shutdown();

        // A new process over what the disk kept.
        let (flusher, registry) = rooms(&store);
        let (_, state) = ask(&registry, &name, GetState).await.unwrap();
        let state = state.await.unwrap();
        let kept = text_of(&state.state);
        for (seq, marker) in &acked {
            assert!(
                kept.contains(marker.as_str()),
                "acked {marker} (seq {seq}) lost"
            );
            assert!(state.seq >= *seq, "seq {} behind acked {seq}", state.seq);
        }
        flusher.shutdown();
    }

    /// A session as the room sees it: records the close codes it is sent.
    struct Closes(Arc<Mutex<Vec<u16>>>);

    impl Actor for Closes {
        type Context = Context<Self>;
    }

    impl Handler<CloseSession> for Closes {
        type Result = ();
        fn handle(&mut self, msg: CloseSession, _ctx: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg.code);
        }
    }

    #[actix_rt::test]
    async fn a_failed_flush_acknowledges_nothing_and_the_room_does_not_come_back_dirty() {
        let memory = Arc::new(MemoryStore::new());
        let store: Arc<dyn Store> = memory.clone();
        let (flusher, registry) = rooms(&store);
        let name: Arc<str> = "failing".into();
        let edit = writer();
        let (_, first) = ask(
            &registry,
            &name,
            ApplyUpdate {
                update: edit("a"),
                author: None,
            },
        )
        .await
        .unwrap();
        first.unwrap().await.unwrap();

        // A WebSocket session in the room, which must be told to go (1011) and reconnect.
        let closes = Arc::new(Mutex::new(Vec::new()));
        let join = Join {
            subject: None,
            session: 1,
            peer: Arc::new(crate::common::DiscardingPeer {
                outbox: Closes(closes.clone()).start().recipient(),
            }),
        };
        ask(&registry, &name, join).await.unwrap();

        memory.fail_flushes("EIO (simulated)");
        let (_, second) = ask(
            &registry,
            &name,
            ApplyUpdate {
                update: edit("b"),
                author: None,
            },
        )
        .await
        .unwrap();
        let durable = second.unwrap();
        assert!(
            durable.await.is_err(),
            "no ack for an update the flush lost"
        );
        // The room stops (or, if it has not heard yet, fails this request when it does);
        // loading it again needs a flush, which the store refuses: it never shows seq 2
        // as durable.
        let again = ask(&registry, &name, GetState).await;
        match again {
            Err(_) => {}
            Ok((_, state)) => {
                if let Ok(state) = state.await {
                    assert!(state.seq < 2, "seq 2 shown as durable");
                }
            }
        }
        assert!(
            memory.append("failing", 3, b"x").is_err(),
            "no append after the failure"
        );
        flusher.shutdown();
    }
}
