//! What the op log costs: bytes per update record and durable appends per second through
//! sled with group commit (the default 5 ms flush interval), each flush ending in an
//! `fdatasync` of sled's data file.
//!
//! Run: `cargo bench --bench oplog` (optionally `-- ROOMS UPDATES`).
//!
//! Each "room" only records the durable seq the flusher reports (a callback, as a room
//! actor's is); one writer thread appends realistic keystroke updates (one character typed per update,
//! encoded by yrs) round-robin over the rooms, as room actors would. The clock stops when
//! every room has heard that its last seq is durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use collabd::store::Store;
use collabd::store::commit::{FlushNotify, FlushReport, Flusher};
use collabd::store::sled::SledStore;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let rooms: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let total: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let updates = common::keystrokes(total);
    let payload: usize = updates.iter().map(Vec::len).sum();

    actix_rt::System::new().block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(SledStore::open(dir.path()).unwrap());
        let store: Arc<dyn Store> = sled.clone();
        let flusher = Flusher::start(store.clone(), Duration::from_millis(5));
        let durable: Vec<Arc<AtomicU64>> = (0..rooms).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let sinks: Vec<FlushNotify> = durable
            .iter()
            .map(|d| {
                let d = d.clone();
                let notify: FlushNotify = Arc::new(move |report| match report {
                    FlushReport::Durable { seq, .. } => {
                        d.fetch_max(seq, Ordering::Relaxed);
                    }
                    FlushReport::Failed(e) => panic!("flush failed: {e}"),
                });
                notify
            })
            .collect();
        let names: Vec<String> = (0..rooms).map(|r| format!("bench/room-{r}")).collect();
        let size_before = sled.size_on_disk();
        let key_bytes = names[0].len() + 1 + 8;

        let started = Instant::now();
        let writer_store = store.clone();
        let writer_flusher = flusher.clone();
        let writer = std::thread::spawn(move || {
            let mut seqs = vec![0u64; names.len()];
            for (i, update) in updates.iter().enumerate() {
                let r = i % names.len();
                seqs[r] += 1;
                writer_store.append(&names[r], seqs[r], update).unwrap();
                writer_flusher.mark(r as u64, seqs[r], &sinks[r]);
            }
            (started.elapsed(), seqs)
        });
        let (append_time, last) = writer.join().unwrap();
        while durable.iter().zip(&last).any(|(d, l)| d.load(Ordering::Relaxed) < *l) {
            actix_rt::time::sleep(Duration::from_micros(200)).await;
        }
        let durable_time = started.elapsed();
        flusher.shutdown();
        store.flush().unwrap();
        let grown = sled.size_on_disk().saturating_sub(size_before);

        println!("op log: {total} keystroke updates over {rooms} rooms, flush interval 5 ms");
        println!("  update payload      {:.1} bytes/update (yrs v1, one character each)", payload as f64 / total as f64);
        println!("  record (key+value)  {:.1} bytes/update (key {key_bytes} = name + 0x00 + seq; value = version + bincode(at_ms, len, bytes))",
            (payload + total * (key_bytes + 1 + 9 + 1 + 1)) as f64 / total as f64);
        println!("  sled on disk        {:.1} bytes/update after the final flush", grown as f64 / total as f64);
        println!("  appends (visible)   {:>9.0} /s", total as f64 / append_time.as_secs_f64());
        println!("  appends (durable)   {:>9.0} /s  ({} ms until the last seq was durable)",
            total as f64 / durable_time.as_secs_f64(), durable_time.as_millis());
        let flushes = collabd::metrics::metrics().oplog_flush_seconds.clone();
        println!("  flushes             {:>9} (sled flush + fdatasync), {:.2} ms each on average",
            flushes.get_sample_count(),
            flushes.get_sample_sum() * 1e3 / flushes.get_sample_count().max(1) as f64);
        actix_rt::System::current().stop();
    });
}
