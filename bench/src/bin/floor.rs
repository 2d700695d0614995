//! The physical floor of fan-out on this machine: a program that does nothing but write
//! one small WebSocket frame to each of N loopback sockets per tick, and reports its CPU
//! per write. No server, no protocol, no queues: what any server pays at least.
//!
//! ```text
//! taskset -c 0 target/release/floor --conns 200 --rate 100 --duration 10
//! taskset -c 0 target/release/floor --conns 200 --rate 100 --duration 10 --frames-per-write 4
//! ```
//!
//! The readers run in a child process (this binary with `--sink`) pinned to `--sink-cpu`
//! (default 1), one thread draining every socket, like the load generator.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Sockets to write to.
    #[arg(long, default_value_t = 200)]
    conns: usize,
    /// Ticks per second; each tick writes one frame to every socket.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per frame (a y-websocket update of a 100-byte item is ~120).
    #[arg(long, default_value_t = 120)]
    frame_bytes: usize,
    /// Frames that share one write() (1: one write per frame, as a server that writes at
    /// once must; more: what batching buys, at the cost of latency).
    #[arg(long, default_value_t = 1)]
    frames_per_write: usize,
    /// Core for the reading process.
    #[arg(long, default_value_t = 1)]
    sink_cpu: usize,
    /// Internal: be the reading process, connecting to this address.
    #[arg(long)]
    sink: Option<String>,
}

/// User + system CPU of the calling thread, in clock ticks (100 per second).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
    // Fields after the parenthesised name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn sink(addr: &str, conns: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut stream = stream;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

fn main() {
    let args = Args::parse();
    if let Some(addr) = &args.sink {
        sink(addr, args.conns);
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(args.sink_cpu.to_string())
        .arg(exe)
        .args(["--sink", &addr, "--conns", &args.conns.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("taskset and this binary");
    let mut sockets: Vec<TcpStream> = (0..args.conns)
        .map(|_| {
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();

    assert!(
        (3..=127).contains(&args.frame_bytes),
        "--frame-bytes: 3 to 127 (a one-byte length)"
    );
    let mut frame = vec![0x82u8, (args.frame_bytes - 2) as u8];
    frame.resize(args.frame_bytes, b'x');
    let write: Vec<u8> = frame.repeat(args.frames_per_write);
    let ticks = (args.rate * args.duration / args.frames_per_write as f64) as u64;
    let period = Duration::from_secs_f64(args.frames_per_write as f64 / args.rate);

    let start_cpu = thread_cpu_ticks();
    let start = Instant::now();
    let mut next = start;
    let mut writes = 0u64;
    for _ in 0..ticks {
        for socket in &mut sockets {
            socket.write_all(&write).unwrap();
            writes += 1;
        }
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ticks() - start_cpu) as f64 / 100.0;
    let frames = writes * args.frames_per_write as u64;
    println!(
        "{} sockets, {:.0} frames/s each, {} frames of {} bytes, {} per write: \
         {:.2} s CPU in {:.2} s ({:.1} %), {:.2} µs per write, {:.2} µs per frame",
        args.conns,
        args.rate,
        frames,
        args.frame_bytes,
        args.frames_per_write,
        cpu,
        elapsed,
        100.0 * cpu / elapsed,
        cpu * 1e6 / writes as f64,
        cpu * 1e6 / frames as f64,
    );
    drop(sockets);
    let _ = child.wait();
}
