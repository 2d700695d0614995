//! Replay cost: serving an SSE resume from 10,000 updates back, and a snapshot of a 1 MB
//! document, through the real server (in process) and a real HTTP client.
//!
//! Run: `cargo bench --bench replay`.
//!
//! The op log is written straight into the data directory first (10,001 keystroke
//! updates in one room; one 1 MB text in another), then the server starts on it. Each
//! figure is the time from sending the request to having received the whole answer.

use std::time::{Duration, Instant};

mod common;

use collabd::store::Store;
use collabd::store::sled::SledStore;
use collabd::{Server, Settings};
use futures_util::StreamExt;
use yrs::{Doc, Text, Transact};

const UPDATES: u64 = 10_001;
const RUNS: usize = 20;

fn one_megabyte() -> Vec<u8> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(
        &mut txn,
        0,
        &"lorem ipsum "
            .repeat(1 << 20)
            .chars()
            .take(1 << 20)
            .collect::<String>(),
    );
    txn.encode_update_v1()
}

/// Reads an SSE response until the event `header` (e.g. "event: update\nid: 7\n") has
/// arrived completely; returns the bytes read. Scans each byte once.
async fn read_event(url: &str, last_event_id: Option<&str>, header: &str) -> usize {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let mut req = client.get(url);
    if let Some(id) = last_event_id {
        req = req.insert_header(("Last-Event-ID", id));
    }
    let mut res = req.send().await.unwrap();
    let (header, end) = (header.as_bytes(), b"\n\n");
    let mut seen = Vec::new();
    let mut scanned = 0;
    let mut event_at: Option<usize> = None;
    while let Some(chunk) = res.next().await {
        seen.extend_from_slice(&chunk.unwrap());
        if event_at.is_none() {
            event_at = find(&seen, scanned, header).map(|at| at + header.len());
            scanned = match event_at {
                Some(body) => body,
                None => seen.len().saturating_sub(header.len()),
            };
        }
        if let Some(body) = event_at {
            if find(&seen, body.max(scanned), end).is_some() {
                return seen.len();
            }
            scanned = seen.len().saturating_sub(end.len());
        }
    }
    panic!("stream ended before {:?}", String::from_utf8_lossy(header));
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| from + i)
}

fn report(what: &str, mut times: Vec<Duration>, bytes: usize) {
    let cold = times.remove(0);
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "  {what:<44} cold {:>7.2} ms   warm median {:>7.2} ms   p90 {:>7.2} ms   ({} KiB)",
        cold.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        times[times.len() * 9 / 10].as_secs_f64() * 1e3,
        bytes / 1024
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        for (i, update) in common::keystrokes(UPDATES as usize).iter().enumerate() {
            store.append("bench/replay", i as u64 + 1, update).unwrap();
        }
        store.append("bench/big", 1, &one_megabyte()).unwrap();
        store.flush().unwrap();
    }
    let settings = Settings {
        bind: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        snapshot_every: 100_000,
        ..Settings::default()
    };
    actix_rt::System::new().block_on(async move {
        let server = Server::start(settings).unwrap();
        let base = format!("http://{}", server.local_addr());
        println!("replay: SSE through the real server, {RUNS} runs each (first = cold room load)");

        let url = format!("{base}/rooms/bench/replay/events");
        let header = format!("event: update\nid: {UPDATES}\n");
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..RUNS {
            let started = Instant::now();
            bytes = read_event(&url, Some("1"), &header).await;
            times.push(started.elapsed());
        }
        report("resume from 10,000 updates back", times, bytes);

        let url = format!("{base}/rooms/bench/big/events");
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            bytes = read_event(&url, None, "event: snapshot\nid: 1\n").await;
            times.push(started.elapsed());
        }
        report("snapshot of a 1 MB document (SSE)", times, bytes);

        let url = format!("{base}/rooms/bench/big/state");
        let client = awc::Client::default();
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            let mut res = client.get(&url).send().await.unwrap();
            bytes = res.body().limit(1 << 24).await.unwrap().len();
            times.push(started.elapsed());
        }
        report("full state of a 1 MB document (GET /state)", times, bytes);
        server.shutdown().await;
    });
}
