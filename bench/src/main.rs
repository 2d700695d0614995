//! collabd-bench: a fleet of y-websocket clients built on yrs, for any y-websocket server
//! (collabd, the reference `@y/websocket-server`, …).
//!
//! Each client speaks the protocol like `WebsocketProvider`: sync step 1 on connect,
//! answers the server's step 1, answers pings. Writers push items onto a `Y.Array`; each
//! item embeds its writer, a counter and the send time (`~Tw:n:nanos~`), so every
//! receiver measures end-to-end latency into one HDR histogram. At the end: connections,
//! deliveries expected vs received, latency percentiles, deliveries/s, server RSS per
//! connection (from /proc, given `--pid`), and convergence (every client of a room saw
//! the same set of updates; with `--apply`, identical yrs state vectors too).
//!
//! `--search` raises the rate round by round until p99 passes `--p99-limit-ms`, an
//! update is lost, or the writers cannot send 90% of the updates asked (TCP pushes back
//! when the server stops reading, or the generator runs out of CPU), and reports the
//! highest sustained deliveries/s.

mod cursors;
mod joiners;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame, Message};
use bytes::Bytes;
use clap::Parser;
use collabd::protocol::{self, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, ReadTxn, Transact, Update};

/// A scenario, by flags.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(version, about)]
struct Args {
    /// WebSocket base URL; a room is BASE/ROOM. collabd: ws://127.0.0.1:1234/ws;
    /// the reference server: ws://127.0.0.1:1235. Several, comma-separated (the nodes of
    /// a cluster): a room's members are spread over them, its writers on the first.
    #[arg(long, default_value = "ws://127.0.0.1:1234/ws")]
    url: String,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Clients per room (writers included).
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Writers per room.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Updates per second per writer.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Bytes of content per update.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Seconds of writing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 1000.0)]
    connect_rate: f64,
    /// Spread connections over source addresses 127.0.0.1 … 127.0.0.N (each has its own
    /// ~28,000 ephemeral ports). Binding a source address is slow in the kernel, so the
    /// default (1) does not bind at all.
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Spread connections over destination addresses 127.0.0.1 … 127.0.0.N (the server
    /// must listen on 0.0.0.0): connect() finds free ephemeral ports in the kernel in time
    /// that grows with the ports already used towards one destination (slow past ~14,000
    /// on Linux, which prefers even ports), so many connections need several.
    #[arg(long, default_value_t = 1)]
    dest_ips: u8,
    /// Server process id, to sample its RSS and CPU time from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// More server processes (a cluster's other nodes, Redis), comma-separated: their
    /// CPU time counts as the server's too.
    #[arg(long, value_delimiter = ',')]
    more_pids: Vec<u32>,
    /// Clock ticks per second of /proc/PID/stat's utime and stime (`getconf CLK_TCK`;
    /// 100 on every Linux this runs on; bench/compare.sh passes the real value).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Apply every received update to the client's yrs document (like a real client) and
    /// compare state vectors at the end. Costs the load generator CPU.
    #[arg(long)]
    apply: bool,
    /// Seconds to wait for late deliveries after writing stops.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Seconds to hold connections idle before sampling RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Room name prefix (a random suffix keeps runs apart).
    #[arg(long, default_value = "bench")]
    room_prefix: String,
    /// Saturation search: multiply the rate by `--search-step` each round until p99
    /// exceeds `--p99-limit-ms`, an update is lost, or the writers cannot send 90% of
    /// the updates asked (the server or the generator is saturated).
    #[arg(long)]
    search: bool,
    #[arg(long, default_value_t = 1.5)]
    search_step: f64,
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Joiners scenario (instead of writers): build a document of `--doc-mb` MiB in one
    /// room with one writer, then open this many connections at once; each sends sync
    /// step 1 with an empty state vector and times reading its whole sync step 2 (see
    /// joiners.rs). The rooms/clients/writers/rate flags do not apply.
    #[arg(long, default_value_t = 0)]
    joiners: usize,
    /// Size of the joiners' document (string content), MiB.
    #[arg(long, default_value_t = 20.0)]
    doc_mb: f64,
    /// Largest update the joiners' writer sends, MiB (below the server's frame limit).
    #[arg(long, default_value_t = 4.0)]
    doc_chunk_mb: f64,
    /// Cursors scenario (instead of writers): in each room, this many of the clients
    /// announce a presence state `--awareness-rate` times a second; every client
    /// measures the latency of others' states and ends checking it holds their last
    /// state (see cursors.rs).
    #[arg(long, default_value_t = 0)]
    awareness_senders: usize,
    /// Presence states per second per sender.
    #[arg(long, default_value_t = 30.0)]
    awareness_rate: f64,
    /// Print one JSON object per round instead of lines for people.
    #[arg(long)]
    json: bool,
}

/// Nanoseconds since the load generator started: the clock every timestamp uses.
fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Connecting,
    Writing,
    Draining,
    Done,
}

/// What every client of one round shares (one thread: `Cell`s suffice).
struct Shared {
    phase: Cell<Phase>,
    /// Wakes every client when `phase` changes (idle clients must not poll for it: with
    /// 20,000 of them a 50 ms tick alone is 400,000 wakeups a second).
    phase_changed: tokio::sync::watch::Sender<()>,
    connected: Cell<usize>,
    failed: Cell<usize>,
    synced: Cell<usize>,
    finished: Cell<usize>,
    sent: RefCell<Vec<u64>>,
    received: Cell<u64>,
    last_received: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    results: RefCell<Vec<ClientResult>>,
    errors: RefCell<Vec<String>>,
}

/// Order-independent digest of the updates a client holds.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Digest {
    count: u64,
    sum: u64,
}

impl Digest {
    fn add(&mut self, writer: u64, counter: u64) {
        let mut z = (writer << 32 | counter).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.count += 1;
        self.sum = self.sum.wrapping_add(z ^ (z >> 31));
    }
}

struct ClientResult {
    room: usize,
    digest: Digest,
    state_vector: Option<Vec<u8>>,
}

/// Every `~Tw:n:nanos~` marker in an update: (writer, counter, send time).
fn markers(update: &[u8]) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let mut rest = update;
    std::iter::from_fn(move || {
        loop {
            let at = rest.windows(2).position(|w| w == b"~T")?;
            rest = &rest[at + 2..];
            let end = rest.iter().position(|&b| b == b'~')?;
            let text = std::str::from_utf8(&rest[..end]).ok();
            rest = &rest[end..];
            let mut fields = text?.split(':').map(|f| f.parse::<u64>().ok());
            if let (Some(Some(w)), Some(Some(n)), Some(Some(t))) =
                (fields.next(), fields.next(), fields.next())
            {
                return Some((w, n, t));
            }
        }
    })
}

struct Client {
    room: usize,
    writer: Option<u64>,
    doc: Doc,
    digest: Digest,
    shared: Rc<Shared>,
    args: Rc<Args>,
    synced: bool,
}

impl Client {
    /// Handles one frame from the server; returns frames to send back. A message that
    /// does not decode ends the frame.
    fn on_frame(&mut self, frame: &[u8], replies: &mut Vec<Bytes>) {
        for message in protocol::decode_server_frame(frame) {
            match message {
                Ok(ServerMessage::SyncStep1(sv)) => {
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    replies.push(protocol::encode_sync_step2(&diff));
                }
                Ok(ServerMessage::SyncStep2(update)) => {
                    self.on_update(update);
                    if !self.synced {
                        self.synced = true;
                        self.shared.synced.set(self.shared.synced.get() + 1);
                    }
                }
                Ok(ServerMessage::Update(update)) => self.on_update(update),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    fn on_update(&mut self, update: &[u8]) {
        let now = now_nanos();
        let mut delivered = 0;
        for (writer, counter, sent_at) in markers(update) {
            if Some(writer) == self.writer {
                continue;
            }
            delivered += 1;
            self.digest.add(writer, counter);
            let micros = now.saturating_sub(sent_at) / 1_000;
            let _ = self.shared.latency.borrow_mut().record(micros.max(1));
        }
        if delivered > 0 {
            let s = &self.shared;
            s.received.set(s.received.get() + delivered);
            s.last_received.set(now);
        }
        if self.args.apply
            && let Ok(update) = Update::decode_v1(update)
        {
            let _ = self.doc.transact_mut().apply_update(update);
        }
    }

    /// A writer's next update: one array item of `payload` bytes with its marker.
    fn next_update(&mut self, counter: u64) -> Bytes {
        let writer = self.writer.expect("only writers write");
        let mut item = format!("~T{writer}:{counter}:{}~", now_nanos());
        if item.len() < self.args.payload {
            item.push_str(&"x".repeat(self.args.payload - item.len()));
        }
        let array = self.doc.get_or_insert_array("log");
        let update = {
            let mut txn = self.doc.transact_mut();
            array.push_back(&mut txn, item);
            txn.encode_update_v1()
        };
        self.digest.add(writer, counter);
        protocol::encode_update(&update)
    }
}

async fn run_client(http: awc::Client, url: String, mut client: Client) -> Result<(), String> {
    let (_, socket) = http
        .ws(url)
        .max_frame_size(64 << 20)
        .connect()
        .await
        .map_err(|e| match e {
            awc::error::WsClientError::InvalidResponseStatus(status) => {
                format!("upgrade refused: HTTP {status}")
            }
            other => other.to_string(),
        })?;
    let shared = client.shared.clone();
    shared.connected.set(shared.connected.get() + 1);
    let mut socket: Framed<BoxedSocket, Codec> = socket;
    let sv = client.doc.transact().state_vector();
    send(&mut socket, protocol::encode_sync_step1(&sv)).await?;

    let period = Duration::from_secs_f64(1.0 / client.args.rate.max(0.001));
    let mut counter = 0u64;
    let mut next_send: Option<Instant> = None;
    let mut phase_changed = shared.phase_changed.subscribe();
    let mut replies = Vec::new();
    loop {
        if shared.phase.get() == Phase::Done {
            break;
        }
        let writing = client.writer.is_some() && shared.phase.get() == Phase::Writing;
        if writing && next_send.is_none() {
            // Writers start spread over one period (golden-ratio offsets by writer id),
            // not in lockstep: a phase change wakes them all at the same instant.
            let offset = (client.writer.unwrap_or(0) as f64 * 0.618_033_988_75).fract();
            next_send = Some(Instant::now() + period.mul_f64(offset));
        }
        let due = next_send.filter(|_| writing);
        let wake = async {
            match due {
                Some(at) => actix_rt::time::sleep_until(at.into()).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Frame::Binary(bytes))) => {
                    client.on_frame(&bytes, &mut replies);
                    for reply in replies.drain(..) {
                        send(&mut socket, reply).await?;
                    }
                }
                Some(Ok(Frame::Ping(payload))) => {
                    socket.send(Message::Pong(payload)).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Frame::Close(reason))) => return Err(format!("closed by server: {reason:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection ended".into()),
            },
            () = wake => {
                if shared.phase.get() != Phase::Writing {
                    continue; // writing ended while we slept: the count of sent is final
                }
                let frame = client.next_update(counter);
                shared.sent.borrow_mut()[client.room] += 1;
                counter += 1;
                send(&mut socket, frame).await?;
                let at = next_send.expect("due") + period;
                // Behind schedule (the generator is saturated): do not burst to catch up.
                next_send = Some(at.max(Instant::now() - period));
            }
            _ = phase_changed.changed() => {}
        }
    }
    shared.results.borrow_mut().push(ClientResult {
        room: client.room,
        digest: client.digest,
        state_vector: client
            .args
            .apply
            .then(|| client.doc.transact().state_vector().encode_v1()),
    });
    let _ = socket.send(Message::Close(None)).await;
    Ok(())
}

async fn send(socket: &mut Framed<BoxedSocket, Codec>, frame: Bytes) -> Result<(), String> {
    socket
        .send(Message::Binary(frame))
        .await
        .map_err(|e| e.to_string())
}

/// awc's TCP connector with `TCP_NODELAY`, as browsers open WebSockets: with Nagle on,
/// a client's second small frame waits for the server's delayed ACK (~40 ms).
fn nodelay_tcp() -> impl actix_service::Service<
    actix_tls::connect::ConnectInfo<awc::http::Uri>,
    Response = actix_tls::connect::Connection<awc::http::Uri, actix_rt::net::TcpStream>,
    Error = actix_tls::connect::ConnectError,
> + Clone {
    use actix_service::Service;
    let tcp = actix_tls::connect::Connector::new(actix_tls::connect::Resolver::default()).service();
    actix_service::fn_service(move |req| {
        let connecting = tcp.call(req);
        async move {
            let connection = connecting.await?;
            connection
                .io_ref()
                .set_nodelay(true)
                .map_err(actix_tls::connect::ConnectError::Io)?;
            Ok(connection)
        }
    })
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system, all threads) a process has used so far, in clock ticks: fields
/// 14 and 15 of /proc/PID/stat (counted after the `(comm)` field, which may hold spaces).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the comm: state (field 3) … utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of `--pid` and every `--more-pids`.
fn server_cpu_ticks(args: &Args) -> Option<u64> {
    let main = cpu_ticks(args.pid?)?;
    Some(
        main + args
            .more_pids
            .iter()
            .filter_map(|p| cpu_ticks(*p))
            .sum::<u64>(),
    )
}

/// CPU time of the server (given `--pid`) and of the generator itself over a window.
struct CpuWindow {
    at: Instant,
    server: Option<u64>,
    generator: Option<u64>,
}

#[derive(Serialize, Debug, Default)]
struct CpuFigures {
    /// Wall time of the measured window.
    cpu_window_s: f64,
    server_cpu_seconds: Option<f64>,
    /// CPU time / wall time × 100 (a pinned server is at most 100).
    server_cpu_percent: Option<f64>,
    generator_cpu_percent: Option<f64>,
}

impl CpuWindow {
    fn start(args: &Args) -> CpuWindow {
        CpuWindow {
            at: Instant::now(),
            server: server_cpu_ticks(args),
            generator: cpu_ticks(std::process::id()),
        }
    }

    fn stop(&self, args: &Args) -> CpuFigures {
        let wall = self.at.elapsed().as_secs_f64();
        let tck = args.clk_tck.max(1) as f64;
        let seconds = |before: Option<u64>, after: Option<u64>| {
            before
                .zip(after)
                .map(|(b, a)| a.saturating_sub(b) as f64 / tck)
        };
        let server = seconds(self.server, server_cpu_ticks(args));
        let generator = seconds(self.generator, cpu_ticks(std::process::id()));
        CpuFigures {
            cpu_window_s: wall,
            server_cpu_seconds: server,
            server_cpu_percent: server.map(|s| s / wall * 100.0),
            generator_cpu_percent: generator.map(|s| s / wall * 100.0),
        }
    }
}

/// One round's figures.
#[derive(Serialize, Debug)]
struct Report {
    url: String,
    rooms: usize,
    clients_per_room: usize,
    writers_per_room: usize,
    rate_per_writer: f64,
    payload_bytes: usize,
    duration_s: f64,
    connections_ok: usize,
    connections_failed: usize,
    connect_seconds: f64,
    updates_sent: u64,
    deliveries_expected: u64,
    deliveries_received: u64,
    deliveries_lost: u64,
    deliveries_per_sec: f64,
    latency_us_p50: u64,
    latency_us_p90: u64,
    latency_us_p99: u64,
    latency_us_max: u64,
    server_rss_baseline_bytes: Option<u64>,
    server_rss_connected_bytes: Option<u64>,
    server_rss_per_connection_bytes: Option<u64>,
    rooms_converged: usize,
    state_vectors_equal: Option<bool>,
    client_errors: usize,
    first_error: Option<String>,
    /// Server and generator CPU from the start of writing until the last delivery
    /// arrived (or the drain time ran out), from /proc/PID/stat.
    #[serde(flatten)]
    cpu: CpuFigures,
    /// Server CPU time in that window / deliveries received, in µs.
    server_cpu_us_per_delivery: Option<f64>,
}

fn set_phase(shared: &Shared, phase: Phase) {
    shared.phase.set(phase);
    shared.phase_changed.send_replace(());
}

async fn round(args: Rc<Args>, rate: f64, tag: &str) -> Report {
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Connecting),
        phase_changed: tokio::sync::watch::channel(()).0,
        connected: Cell::new(0),
        failed: Cell::new(0),
        synced: Cell::new(0),
        finished: Cell::new(0),
        sent: RefCell::new(vec![0; args.rooms]),
        received: Cell::new(0),
        last_received: Cell::new(0),
        latency: RefCell::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds")),
        results: RefCell::new(Vec::new()),
        errors: RefCell::new(Vec::new()),
    });
    let round_args = Rc::new(Args {
        rate,
        ..(*args).clone()
    });
    let connectors: Vec<awc::Client> = (1..=args.source_ips.max(1))
        .map(|i| {
            let mut connector = awc::Connector::new().connector(nodelay_tcp()).limit(0);
            // Binding a source address makes the kernel search a free port at bind()
            // time, which grows with the sockets already bound (quadratic over a run);
            // connect() without bind picks ports cheaply. Bind only when asked to spread.
            if args.source_ips > 1 {
                connector = connector.local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)));
            }
            awc::Client::builder()
                .connector(connector)
                .timeout(Duration::from_secs(30))
                .finish()
        })
        .collect();
    let baseline = args.pid.and_then(rss_bytes);
    let total = args.rooms * args.clients;
    let started = Instant::now();
    let pace = Duration::from_secs_f64(1.0 / args.connect_rate.max(1.0));
    for index in 0..total {
        let room = index % args.rooms;
        let member = index / args.rooms;
        let writer = (member < args.writers).then_some(index as u64);
        let bases: Vec<&str> = args.url.split(',').collect();
        let base = bases[member % bases.len()];
        let mut url = format!("{base}/{}-{tag}-{room}", args.room_prefix);
        if args.dest_ips > 1 {
            let host = format!("127.0.0.{}", 1 + index % usize::from(args.dest_ips));
            url = url.replacen("127.0.0.1", &host, 1);
        }
        let client = Client {
            room,
            writer,
            doc: Doc::new(),
            digest: Digest::default(),
            shared: shared.clone(),
            args: round_args.clone(),
            synced: false,
        };
        let http = connectors[index % connectors.len()].clone();
        let shared = shared.clone();
        actix_rt::spawn(async move {
            if let Err(e) = run_client(http, url, client).await {
                if shared.phase.get() == Phase::Connecting && shared.connected.get() < total {
                    shared.failed.set(shared.failed.get() + 1);
                }
                shared.errors.borrow_mut().push(e);
            }
            shared.finished.set(shared.finished.get() + 1);
        });
        let next = started + pace * (index as u32 + 1);
        actix_rt::time::sleep_until(next.into()).await;
    }
    // Wait for every handshake (or failure).
    let deadline = Instant::now() + Duration::from_secs(120);
    while shared.synced.get() + shared.failed.get() + shared.errors.borrow().len() < total
        && Instant::now() < deadline
    {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    actix_rt::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let connected_rss = args.pid.and_then(rss_bytes);

    let cpu_window = CpuWindow::start(&args);
    set_phase(&shared, Phase::Writing);
    let writing_from = now_nanos();
    actix_rt::time::sleep(Duration::from_secs_f64(args.duration)).await;
    set_phase(&shared, Phase::Draining);
    let writing_to = now_nanos();
    // Drain: until everything expected arrived, or the drain time is up.
    let expected = || {
        let sent = shared.sent.borrow();
        let clients = shared.connected.get() as u64 / args.rooms.max(1) as u64;
        sent.iter()
            .map(|s| s * clients.saturating_sub(1))
            .sum::<u64>()
    };
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while shared.received.get() < expected() && Instant::now() < drain_until {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu = cpu_window.stop(&args);
    set_phase(&shared, Phase::Done);
    let finish_by = Instant::now() + Duration::from_secs(10);
    while shared.finished.get() < total && Instant::now() < finish_by {
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }

    let received = shared.received.get();
    let expected = expected();
    let window = shared.last_received.get().max(writing_to) - writing_from;
    let hist = shared.latency.borrow();
    let results = shared.results.borrow();
    let mut rooms_converged = 0;
    let mut svs_equal = args.apply.then_some(true);
    for room in 0..args.rooms {
        let members: Vec<_> = results.iter().filter(|r| r.room == room).collect();
        if let Some(first) = members.first() {
            if members.iter().all(|m| m.digest == first.digest)
                && first.digest.count == shared.sent.borrow()[room]
            {
                rooms_converged += 1;
            }
            if members.iter().any(|m| m.state_vector != first.state_vector) {
                svs_equal = Some(false);
            }
        }
    }
    let errors = shared.errors.borrow();
    let connections_ok = shared.connected.get();
    Report {
        url: args.url.clone(),
        rooms: args.rooms,
        clients_per_room: args.clients,
        writers_per_room: args.writers,
        rate_per_writer: rate,
        payload_bytes: args.payload,
        duration_s: args.duration,
        connections_ok,
        connections_failed: total - connections_ok,
        connect_seconds,
        updates_sent: shared.sent.borrow().iter().sum(),
        deliveries_expected: expected,
        deliveries_received: received,
        deliveries_lost: expected.saturating_sub(received),
        deliveries_per_sec: received as f64 / (window as f64 / 1e9).max(1e-9),
        latency_us_p50: hist.value_at_quantile(0.50),
        latency_us_p90: hist.value_at_quantile(0.90),
        latency_us_p99: hist.value_at_quantile(0.99),
        latency_us_max: hist.max(),
        server_rss_baseline_bytes: baseline,
        server_rss_connected_bytes: connected_rss,
        server_rss_per_connection_bytes: baseline
            .zip(connected_rss)
            .filter(|_| connections_ok > 0)
            .map(|(b, c)| c.saturating_sub(b) / connections_ok as u64),
        rooms_converged,
        state_vectors_equal: svs_equal,
        client_errors: errors.len(),
        first_error: errors.first().cloned(),
        server_cpu_us_per_delivery: cpu
            .server_cpu_seconds
            .filter(|_| received > 0)
            .map(|s| s * 1e6 / received as f64),
        cpu,
    }
}

fn print_human(r: &Report) {
    println!(
        "{} rooms × {} clients ({} writers × {:.1}/s, {} B) for {:.0} s against {}",
        r.rooms,
        r.clients_per_room,
        r.writers_per_room,
        r.rate_per_writer,
        r.payload_bytes,
        r.duration_s,
        r.url
    );
    println!(
        "  connections: {} ok, {} failed ({:.1} s to connect and sync)",
        r.connections_ok, r.connections_failed, r.connect_seconds
    );
    println!(
        "  updates sent {}; deliveries expected {}, received {}, lost {}",
        r.updates_sent, r.deliveries_expected, r.deliveries_received, r.deliveries_lost
    );
    println!(
        "  latency µs: p50 {}  p90 {}  p99 {}  max {};  {:.0} deliveries/s",
        r.latency_us_p50,
        r.latency_us_p90,
        r.latency_us_p99,
        r.latency_us_max,
        r.deliveries_per_sec
    );
    if let (Some(b), Some(c)) = (r.server_rss_baseline_bytes, r.server_rss_connected_bytes) {
        println!(
            "  server RSS: {:.1} MiB idle → {:.1} MiB connected = {} B per connection",
            b as f64 / 1048576.0,
            c as f64 / 1048576.0,
            r.server_rss_per_connection_bytes.unwrap_or(0)
        );
    }
    if let Some(cpu) = r.cpu.server_cpu_percent {
        println!(
            "  server CPU: {cpu:.1}% of one core over {:.1} s, {:.1} µs per delivery; generator CPU {:.1}%",
            r.cpu.cpu_window_s,
            r.server_cpu_us_per_delivery.unwrap_or(0.0),
            r.cpu.generator_cpu_percent.unwrap_or(0.0)
        );
    }
    println!(
        "  converged rooms: {}/{}{}",
        r.rooms_converged,
        r.rooms,
        match r.state_vectors_equal {
            Some(true) => ", state vectors equal",
            Some(false) => ", STATE VECTORS DIFFER",
            None => "",
        }
    );
    if let Some(e) = &r.first_error {
        println!("  client errors: {} (first: {e})", r.client_errors);
    }
}

/// Prints a one-shot scenario's report (JSON or for people); a failure exits with 1.
fn report_once<R: Serialize + std::fmt::Debug>(
    args: &Args,
    scenario: &str,
    result: Result<R, String>,
) {
    match result {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string(&report).expect("serializable"))
        }
        Ok(report) => println!("{report:#?}"),
        Err(e) => {
            eprintln!("{scenario}: {e}");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "scenario": scenario, "error": e })
                );
            }
            std::process::exit(1);
        }
    }
}

fn main() {
    let args = Rc::new(Args::parse());
    now_nanos();
    actix_rt::System::new().block_on(async move {
        let tag = format!("{:x}", now_nanos() ^ u64::from(std::process::id()) << 20);
        if args.awareness_senders > 0 {
            report_once(&args, "cursors", cursors::run(args.clone(), &tag).await);
            return;
        }
        if args.joiners > 0 {
            report_once(&args, "joiners", joiners::run(args.clone(), &tag).await);
            return;
        }
        let mut rate = args.rate;
        let mut best: Option<Report> = None;
        for n in 0.. {
            let report = round(args.clone(), rate, &format!("{tag}-{n}")).await;
            if args.json {
                println!("{}", serde_json::to_string(&report).expect("serializable"));
            } else {
                print_human(&report);
            }
            if !args.search {
                break;
            }
            let p99_ms = report.latency_us_p99 as f64 / 1000.0;
            let wanted = rate * (args.writers * args.rooms) as f64 * args.duration;
            let achieved = report.updates_sent as f64 / wanted.max(1.0);
            if report.deliveries_lost > 0
                || p99_ms > args.p99_limit_ms
                || report.connections_failed > 0
                || achieved < 0.9
            {
                if !args.json {
                    println!(
                        "saturation at {rate:.1}/s per writer: p99 {p99_ms:.1} ms, {} lost, \
                         {:.0}% of the updates could be sent",
                        report.deliveries_lost,
                        achieved * 100.0
                    );
                }
                break;
            }
            best = Some(report);
            rate *= args.search_step;
        }
        if let Some(best) = best {
            let line = format!(
                "highest sustained: {:.0} deliveries/s at {:.1} updates/s per writer (p99 {} µs, nothing lost)",
                best.deliveries_per_sec, best.rate_per_writer, best.latency_us_p99
            );
            if args.json {
                println!("{}", serde_json::json!({ "search_result": best }));
            } else {
                println!("{line}");
            }
        }
    });
}
