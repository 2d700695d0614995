//! The `--awareness-senders` scenario: cursors, as whiteboards send them.
//!
//! In each of `--rooms` rooms, `--clients` clients join; the first `--awareness-senders`
//! of them announce a presence state `--awareness-rate` times a second (a user's name
//! and colour, a cursor position, the send time `t` and a sequence number `n`), each a
//! y-protocols awareness update for its own client id with a rising clock. Every client
//! reads every frame; for each awareness entry of another sender it records the latency
//! `now − t`. After `--drain` seconds of quiet, the check: does every client hold every
//! other sender's last state (its last `n`)?
//!
//! "Deliveries", to compare servers: states sent × (clients in the room − 1), what a
//! server that relays each state to everyone else delivers; a server that merges states
//! delivers fewer frames for the same outcome.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use collabd::protocol::{self, ServerMessage};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

use crate::joiners::{RawWs, client_frame};
use crate::{Args, CpuFigures, CpuWindow, now_nanos};

type Error = String;

#[derive(Serialize, Debug)]
pub struct CursorReport {
    scenario: &'static str,
    url: String,
    rooms: usize,
    clients_per_room: usize,
    senders_per_room: usize,
    rate_per_sender: f64,
    duration_s: f64,
    connections_ok: usize,
    states_sent: u64,
    /// states sent × (clients in the room − 1).
    deliveries: u64,
    deliveries_per_sec: f64,
    frames_received: u64,
    entries_received: u64,
    latency_us_p50: u64,
    latency_us_p90: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
    /// Receivers holding every other sender's last state / receivers × senders checked.
    final_states_ok: String,
    /// Close codes the server sent (code → how many clients).
    closed: HashMap<u16, usize>,
    client_errors: usize,
    first_error: Option<String>,
    #[serde(flatten)]
    cpu: CpuFigures,
    server_cpu_us_per_delivery: Option<f64>,
}

#[derive(Default)]
struct Shared {
    latency: Option<Histogram<u64>>,
    frames: u64,
    entries: u64,
    /// (receiver, sender client id) → last `n` seen.
    seen: HashMap<(usize, u64), u64>,
    closed: HashMap<u16, usize>,
    errors: Vec<String>,
}

/// Reads one frame: (opcode, payload).
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok((head[0] & 0x0f, payload))
}

fn state_json(client: u64, x: u64, n: u64) -> String {
    format!(
        r##"{{"user":{{"name":"u{client}","color":"#ff8800"}},"cursor":{{"x":{x},"y":{}}},"t":{},"n":{n}}}"##,
        (x * 7) % 1000,
        now_nanos() / 1000
    )
}

/// One client: reads everything until `stop`, recording sender states.
async fn reader(
    me: usize,
    mut read: impl AsyncRead + Unpin,
    write: Rc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Rc<RefCell<Shared>>,
) {
    loop {
        let (opcode, payload) = match read_frame(&mut read).await {
            Ok(frame) => frame,
            Err(_) => return,
        };
        match opcode {
            0x9 => {
                let pong = client_frame(0xA, &payload);
                let _ = write.lock().await.write_all(&pong).await;
            }
            0x8 => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                *shared.borrow_mut().closed.entry(code).or_default() += 1;
                return;
            }
            0x2 => {
                let now_us = now_nanos() / 1000;
                let mut s = shared.borrow_mut();
                s.frames += 1;
                for message in protocol::decode_server_frame(&payload) {
                    let Ok(ServerMessage::Awareness(update)) = message else {
                        continue;
                    };
                    for (id, entry) in update.clients {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&entry.json) else {
                            continue;
                        };
                        let (Some(t), Some(n)) = (v["t"].as_u64(), v["n"].as_u64()) else {
                            continue;
                        };
                        s.entries += 1;
                        let key = (me, id.get());
                        if s.seen.get(&key).is_some_and(|&old| old >= n) {
                            continue; // an echo of something already seen
                        }
                        s.seen.insert(key, n);
                        if let Some(h) = s.latency.as_mut() {
                            let _ = h.record(now_us.saturating_sub(t).max(1));
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

pub async fn run(args: Rc<Args>, tag: &str) -> Result<CursorReport, Error> {
    let shared = Rc::new(RefCell::new(Shared {
        latency: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        ..Shared::default()
    }));
    let senders = args.awareness_senders.min(args.clients);
    // Connect everyone (at --connect-rate), each with sync step 1 so that servers treat
    // it as a y-websocket client.
    let mut writers = Vec::new(); // (room, index, client id, write half)
    let mut tasks = Vec::new();
    let mut me = 0;
    let gap = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    for room in 0..args.rooms {
        for i in 0..args.clients {
            let url = format!("{}/cursors-{tag}-{room}", args.url);
            let mut ws = match RawWs::connect(&url).await {
                Ok(ws) => ws,
                Err(e) => {
                    shared.borrow_mut().errors.push(e);
                    continue;
                }
            };
            let step1 = protocol::encode_sync_step1(&yrs::StateVector::default());
            ws.send_binary_pub(&step1).await?;
            let (read, write) = ws.into_split();
            let write = Rc::new(tokio::sync::Mutex::new(write));
            let client = ((room * 10_000 + i) as u64 + 1) * 7 + 1_000_000;
            tasks.push(actix_rt::spawn(reader(
                me,
                read,
                write.clone(),
                shared.clone(),
            )));
            if i < senders {
                writers.push((room, client, write));
            }
            me += 1;
            actix_rt::time::sleep(gap).await;
        }
    }
    let connections_ok = me;
    actix_rt::time::sleep(Duration::from_secs_f64(args.settle)).await;

    // Send: each sender `rate` times a second, spread over the period.
    let window = CpuWindow::start(&args);
    let period = Duration::from_secs_f64(1.0 / args.awareness_rate.max(0.001));
    let ticks = (args.duration * args.awareness_rate) as u64;
    let sent = Rc::new(RefCell::new(0u64));
    let last_n: Rc<RefCell<HashMap<u64, u64>>> = Rc::default();
    let mut send_tasks = Vec::new();
    for (k, (_, client, write)) in writers.iter().enumerate() {
        let (client, write, sent, last_n) = (*client, write.clone(), sent.clone(), last_n.clone());
        let offset = period.mul_f64(k as f64 / writers.len().max(1) as f64);
        send_tasks.push(actix_rt::spawn(async move {
            actix_rt::time::sleep(offset).await;
            let mut interval = actix_rt::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 1..=ticks {
                interval.tick().await;
                let entry = AwarenessUpdateEntry {
                    clock: n as u32,
                    json: state_json(client, n % 1000, n).into(),
                };
                let update = AwarenessUpdate {
                    clients: [(yrs::ClientID::new(client), entry)].into_iter().collect(),
                };
                let frame = client_frame(0x2, &protocol::encode_awareness(&update));
                if write.lock().await.write_all(&frame).await.is_err() {
                    return;
                }
                *sent.borrow_mut() += 1;
                last_n.borrow_mut().insert(client, n);
            }
        }));
    }
    for task in send_tasks {
        let _ = task.await;
    }
    let cpu = window.stop(&args);
    actix_rt::time::sleep(Duration::from_secs_f64(args.drain)).await;

    // The check: every client holds every other sender's last state.
    let s = shared.borrow();
    let last_n = last_n.borrow();
    let (mut ok, mut total) = (0usize, 0usize);
    let mut receiver = 0;
    for room in 0..args.rooms {
        let room_senders: Vec<u64> = writers
            .iter()
            .filter(|(r, _, _)| *r == room)
            .map(|(_, c, _)| *c)
            .collect();
        for i in 0..args.clients {
            for (k, sender) in room_senders.iter().enumerate() {
                if k == i {
                    continue; // its own state
                }
                total += 1;
                if s.seen.get(&(receiver, *sender)) == last_n.get(sender) {
                    ok += 1;
                }
            }
            receiver += 1;
        }
    }
    let states_sent = *sent.borrow();
    let deliveries = states_sent * (args.clients.saturating_sub(1)) as u64;
    let h = s.latency.as_ref().expect("histogram");
    let report = CursorReport {
        scenario: "cursors",
        url: args.url.clone(),
        rooms: args.rooms,
        clients_per_room: args.clients,
        senders_per_room: senders,
        rate_per_sender: args.awareness_rate,
        duration_s: args.duration,
        connections_ok,
        states_sent,
        deliveries,
        deliveries_per_sec: deliveries as f64 / cpu.cpu_window_s.max(1e-9),
        frames_received: s.frames,
        entries_received: s.entries,
        latency_us_p50: h.value_at_quantile(0.5),
        latency_us_p90: h.value_at_quantile(0.9),
        latency_us_p99: h.value_at_quantile(0.99),
        latency_us_max: h.max(),
        final_states_ok: format!("{ok}/{total}"),
        closed: s.closed.clone(),
        client_errors: s.errors.len(),
        first_error: s.errors.first().cloned(),
        server_cpu_us_per_delivery: cpu
            .server_cpu_seconds
            .map(|c| c * 1e6 / deliveries.max(1) as f64),
        cpu,
    };
    drop(s);
    for task in tasks {
        task.abort();
    }
    Ok(report)
}
