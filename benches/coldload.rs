//! Cold load: how long a room takes to come back from the store after a crash, with
//! 100,000 updates in its history.
//!
//! Run: `cargo bench --bench coldload`.
//!
//! Two histories are written into a fresh sled database, and then into a fresh database
//! of the machine's PostgreSQL (`COLLABD_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; skipped with a message when it does not
//! answer), one keystroke update per seq:
//! - as the server keeps it: a snapshot every `snapshot_every` (1,000) updates and the
//!   last `replay_window` (10,000) records kept, crashed just before the next snapshot
//!   (100,999 updates: the load applies the snapshot at 100,000 and replays 999 records,
//!   the worst case);
//! - a log with no snapshot at all (100,000 records to replay), the naive bound.
//!
//! Each figure is `Room::load` — the code path the registry runs for a room's first use:
//! read the snapshot and records from the store, apply them.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use actix::Actor;
use collabd::Settings;
use collabd::room::Registry;
use collabd::room::actor::{Room, RoomDeps};
use collabd::store::commit::Flusher;
use collabd::store::postgres::PostgresStore;
use collabd::store::sled::SledStore;
use collabd::store::{Snapshot, Store};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

const RUNS: usize = 10;

fn write_history(store: &dyn Store, room: &str, updates: &[Vec<u8>], settings: &Settings) {
    let doc = Doc::new();
    for (i, update) in updates.iter().enumerate() {
        let seq = i as u64 + 1;
        store.append(room, seq, update).unwrap();
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
        if seq.is_multiple_of(settings.snapshot_every) {
            let state = doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            store.put_snapshot(room, &Snapshot { seq, state }).unwrap();
            store.flush().unwrap();
            let keep_from = (seq + 1).saturating_sub(settings.replay_window);
            store.delete_before(room, keep_from).unwrap();
        }
        if seq.is_multiple_of(1000) {
            store.flush().unwrap();
        }
    }
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {what:<58} min {:>7.1} ms   median {:>7.1} ms   max {:>7.1} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}

fn main() {
    let keystrokes = common::keystrokes(100_999);
    let dir = tempfile::tempdir().unwrap();
    let settings = Arc::new(Settings {
        data_dir: dir.path().to_path_buf(),
        ..Settings::default()
    });
    println!("sled:");
    bench(
        Arc::new(SledStore::open(dir.path()).unwrap()),
        &keystrokes,
        &settings,
    );
    let admin = std::env::var("COLLABD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let Ok(mut client) = postgres::Client::connect(&admin, postgres::NoTls) else {
        println!("PostgreSQL: skipped, nothing answers at {admin}");
        return;
    };
    let db = format!("collabd_coldload_{}", std::process::id());
    client
        .batch_execute(&format!("create database {db}"))
        .unwrap();
    let url = format!("{}/{db}", admin.rsplit_once('/').unwrap().0);
    println!("PostgreSQL:");
    bench(
        Arc::new(PostgresStore::open(&url).unwrap()),
        &keystrokes,
        &settings,
    );
    client
        .batch_execute(&format!("drop database {db} with (force)"))
        .unwrap();
}

fn bench(store: Arc<dyn Store>, keystrokes: &[Vec<u8>], settings: &Arc<Settings>) {
    let started = Instant::now();
    write_history(&*store, "bench/policy", keystrokes, settings);
    let no_snapshots = Settings {
        snapshot_every: u64::MAX,
        ..(**settings).clone()
    };
    write_history(
        &*store,
        "bench/log-only",
        &keystrokes[..100_000],
        &no_snapshots,
    );
    store.flush().unwrap();
    println!(
        "  histories written in {:.1} s; {RUNS} loads each",
        started.elapsed().as_secs_f64()
    );
    let settings = settings.clone();
    actix_rt::System::new().block_on(async move {
        let flusher = Flusher::start(store.clone(), settings.flush_interval());
        let registry =
            Registry::without_hooks(store.clone(), flusher.clone(), settings.clone()).start();
        let deps = RoomDeps::new(
            store.clone(),
            flusher.clone(),
            settings.clone(),
            registry.recipient(),
        );
        for (room, what) in [
            (
                "bench/policy",
                "100,999 updates, snapshot at 100,000 + 999 records",
            ),
            ("bench/log-only", "100,000 records, no snapshot"),
        ] {
            let times = (0..RUNS)
                .map(|i| {
                    // Off the runtime's thread, as the registry loads rooms (a database
                    // store's blocking client may not run on it).
                    let deps = deps.clone();
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            let started = Instant::now();
                            let loaded = Room::load(i as u64, room.into(), deps);
                            assert!(loaded.is_ok());
                            started.elapsed()
                        })
                        .join()
                        .unwrap()
                    })
                })
                .collect();
            report(what, times);
        }
        flusher.shutdown();
    });
}
