//! Durable appends over HTTP: `--writers` concurrent writers, each with its own Yjs
//! document, POST one keystroke update at a time to one of `--rooms` rooms (the next
//! leaves when the previous is answered, that is, durable) for `--duration` seconds.
//! Prints one JSON line: appends per second and the answer's latency.
//!
//! ```text
//! taskset -c 1 target/release/appends --url http://127.0.0.1:1234 --writers 200 --rooms 20 --duration 10
//! ```
//! `bench/appends.py` runs it against sled and PostgreSQL side by side.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use yrs::{Doc, GetString, Text, Transact};

#[derive(Parser)]
struct Args {
    /// The server's base URL; several, comma-separated (a cluster's nodes): writer `w`
    /// writes through the `w % n`-th.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 200)]
    writers: usize,
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Rooms are `appends/{first_room}` … `appends/{first_room + rooms - 1}`.
    #[arg(long, default_value_t = 0)]
    first_room: usize,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

fn main() {
    let args = Args::parse();
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(args.writers * 2))
            .timeout(Duration::from_secs(30))
            .finish();
        let latency = Rc::new(RefCell::new(
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        ));
        let failures = Rc::new(RefCell::new(0u64));
        let stop = Instant::now() + Duration::from_secs_f64(args.duration);
        let started = Instant::now();
        let writers = (0..args.writers).map(|w| {
            let (client, latency, failures) = (client.clone(), latency.clone(), failures.clone());
            let bases: Vec<&str> = args.url.split(',').collect();
            let url = format!(
                "{}/rooms/appends/{}/updates",
                bases[w % bases.len()],
                args.first_room + w % args.rooms
            );
            async move {
                let doc = Doc::new();
                let text = doc.get_or_insert_text("t");
                let mut done = 0u64;
                while Instant::now() < stop {
                    let update = {
                        let mut txn = doc.transact_mut();
                        let end = text.len(&txn);
                        text.insert(&mut txn, end, "x");
                        txn.encode_update_v1()
                    };
                    let sent = Instant::now();
                    match client.post(&url).send_body(update).await {
                        Ok(mut res) if res.status().is_success() => {
                            let _ = res.body().await;
                            let us = sent.elapsed().as_micros() as u64;
                            let _ = latency.borrow_mut().record(us.max(1));
                            done += 1;
                        }
                        _ => *failures.borrow_mut() += 1,
                    }
                }
                // Keeps the document alive (and checks it grew) until the writer ends.
                assert!(text.get_string(&doc.transact()).len() as u64 >= done);
                done
            }
        });
        let total: u64 = futures_util::future::join_all(writers).await.iter().sum();
        let elapsed = started.elapsed().as_secs_f64();
        let latency = latency.borrow();
        println!(
            "{}",
            serde_json::json!({
                "writers": args.writers,
                "rooms": args.rooms,
                "appends": total,
                "failures": *failures.borrow(),
                "appends_per_sec": total as f64 / elapsed,
                "latency_us_p50": latency.value_at_quantile(0.5),
                "latency_us_p99": latency.value_at_quantile(0.99),
            })
        );
    });
}
