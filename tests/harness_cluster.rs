//! The cluster-mode harness itself: a Redis killed and restarted reloads its AOF, a Redis
//! Cluster comes up ok, and nginx round-robins over its upstreams and skips a dead one.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

#[test]
fn redis_reloads_its_aof_after_sigkill() {
    let Some(mut redis) = redis_or_skip() else {
        return;
    };
    assert_eq!(redis.command(&["SET", "k", "v"]), "OK");
    redis.kill();
    redis.restart();
    assert_eq!(redis.command(&["GET", "k"]), "v");
    assert_eq!(
        redis.command(&["CONFIG", "GET", "appendfsync"]),
        "appendfsync\nalways"
    );
    assert_eq!(
        redis.command(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction"
    );
}

#[test]
fn redis_cluster_is_ok_and_routes_every_slot() {
    let Some(cluster) = redis_cluster_or_skip() else {
        return;
    };
    assert!(
        cluster
            .command(&["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
    );
    assert_eq!(cluster.node_ports().len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    // Keys in different slots, so on different masters: `command` follows redirections.
    for key in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(cluster.command(&["SET", key, key]), "OK");
        assert_eq!(cluster.command(&["GET", key]), key);
    }
}

/// A std-only HTTP server on a thread that answers every request with its name and the
/// `X-Forwarded-For` it was sent, then closes the connection.
struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, name),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("upstream {name}: accept: {e}"),
                }
            }
            // The listener is dropped here: the port refuses connections from now on.
        });
        Upstream {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and closes the listener (connections are refused afterwards).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("upstream thread panicked");
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head from `stream` and answers `{name} {X-Forwarded-For}`.
fn answer(mut stream: TcpStream, name: &str) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return, // the proxy gave up on this connection; nothing to answer
        }
    }
    let head = String::from_utf8_lossy(&head);
    let forwarded = head
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case("x-forwarded-for")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    let body = format!("{name} {forwarded}");
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// `GET path` through `nginx` on a fresh connection: status and body.
fn get(nginx: &Nginx, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(nginx.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head:?}"));
    (status, body.to_string())
}

#[test]
fn nginx_round_robins_and_skips_a_dead_upstream() {
    let a = Upstream::start("a");
    let mut b = Upstream::start("b");
    let Some(nginx) = nginx_or_skip(&[a.addr, b.addr]) else {
        return;
    };
    assert!(nginx.url("/x").starts_with("http://127.0.0.1:"));

    let answers: Vec<String> = (0..6)
        .map(|_| {
            let (status, body) = get(&nginx, "/who");
            assert_eq!(status, 200, "{body}");
            body
        })
        .collect();
    for answer in &answers {
        assert!(
            answer == "a 127.0.0.1" || answer == "b 127.0.0.1",
            "an answer without the name or X-Forwarded-For: {answers:?}"
        );
    }
    for pair in answers.windows(2) {
        assert_ne!(pair[0], pair[1], "no round robin: {answers:?}");
    }

    b.kill();
    for _ in 0..6 {
        let (status, body) = get(&nginx, "/who");
        assert_eq!(
            (status, body.as_str()),
            (200, "a 127.0.0.1"),
            "the dead upstream was not skipped"
        );
    }
}
