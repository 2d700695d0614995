//! The server process: the real `collabd` binary on 127.0.0.1:0 with a temp data dir,
//! its logs, and what tests read from it over HTTP (metrics, seq, state).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use super::PATIENCE;

/// A `collabd` process.
pub struct TestServer {
    child: Child,
    /// The server's own pid (the child's, or under a tracer the tracer's child's).
    pid: u32,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the binary on 127.0.0.1:0 with `data_dir` and extra flags, and waits until
    /// it logs the address it listens on.
    pub fn start(data_dir: &Path, args: &[&str]) -> TestServer {
        TestServer::start_env(data_dir, args, &[])
    }

    /// [`TestServer::start`] with extra environment variables (e.g. `COLLABD_AUTH_SECRET`).
    pub fn start_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        TestServer::start_under(&[], data_dir, args, env)
    }

    /// [`TestServer::start`] under `strace`, recording `syscalls` of every thread (with
    /// every byte of their buffers, in hex) to `trace`.
    pub fn start_traced(
        data_dir: &Path,
        args: &[&str],
        syscalls: &str,
        trace: &Path,
    ) -> TestServer {
        TestServer::start_traced_env(data_dir, args, &[], syscalls, trace)
    }

    /// [`TestServer::start_traced`] with extra environment.
    pub fn start_traced_env(
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        syscalls: &str,
        trace: &Path,
    ) -> TestServer {
        let trace = trace.to_str().unwrap();
        let tracer = [
            "strace",
            "-f",
            "-qq",
            "-xx",
            "-s",
            "16777216",
            "-e",
            syscalls,
            "-e",
            "signal=none",
            "-o",
            trace,
        ];
        TestServer::start_under(&tracer, data_dir, args, env)
    }

    /// Starts on `addr` (e.g. the address of a server that was killed: a restart that
    /// clients reconnect to).
    pub fn start_at(addr: std::net::SocketAddr, data_dir: &Path, args: &[&str]) -> TestServer {
        TestServer::start_bound(&[], &addr.to_string(), data_dir, args, &[])
    }

    fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        TestServer::start_bound(wrapper, "127.0.0.1:0", data_dir, args, env)
    }

    fn start_bound(
        wrapper: &[&str],
        bind: &str,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> TestServer {
        let binary = env!("CARGO_BIN_EXE_collabd");
        let mut command = match wrapper.split_first() {
            None => Command::new(binary),
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
        };
        let mut child = command
            .args(["--bind", bind, "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,collabd=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start collabd");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap().to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("server did not start: {:?}", logs.lock().unwrap()));
        let pid = if wrapper.is_empty() {
            child.id()
        } else {
            let children = format!("/proc/{0}/task/{0}/children", child.id());
            let children = std::fs::read_to_string(children).unwrap();
            children.split_whitespace().next().unwrap().parse().unwrap()
        };
        TestServer {
            child,
            pid,
            addr: addr.parse().unwrap(),
            data_dir: data_dir.to_path_buf(),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{}", self.addr, room)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory of the server process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// The value of one sample from `/metrics` (`name` with its labels as exported, e.g.
    /// `collabd_connections{transport="ws"}`); 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut res = awc::Client::new()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let body = res.body().limit(8 << 20).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until `metric(name)` satisfies `ok`.
    pub async fn wait_for_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.metric(name).await;
            if ok(value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} stuck at {value}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no final flush.
    /// SIGKILL to the server (and to its tracer, if it runs under one), then reap.
    pub fn kill(&mut self) {
        if self.pid != self.child.id() {
            // Under strace, killing the tracer alone would leave the server running.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            self.pid = self.child.id();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Gone (with its tracer, if any): nothing left to kill on drop.
                self.pid = self.child.id();
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.logs().iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "no log line with {needle:?}");
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        let body = res.body().limit(64 << 20).await.unwrap();
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap(),
        )
    }

    /// The room's full state, decoded into a fresh document.
    pub async fn state(&self, room: &str) -> (Doc, u64) {
        self.state_at(&format!("/rooms/{room}/state")).await
    }

    /// [`TestServer::state`] from a path with its query (e.g. `?token=`).
    pub async fn state_at(&self, path: &str) -> (Doc, u64) {
        let mut res = awc::Client::new().get(self.url(path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let seq = res
            .headers()
            .get("x-seq")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = res.body().limit(64 << 20).await.unwrap();
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&body).unwrap())
            .unwrap();
        (doc, seq)
    }

    /// The room's durable seq from `GET /rooms/{room}`.
    pub async fn seq(&self, room: &str) -> u64 {
        self.get_json(&format!("/rooms/{room}")).await.1["seq"]
            .as_u64()
            .unwrap()
    }

    /// Waits until the room's durable seq reaches `seq`.
    pub async fn wait_for_seq(&self, room: &str, seq: u64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.seq(room).await;
            if now >= seq {
                return;
            }
            assert!(Instant::now() < deadline, "seq stuck at {now}, want {seq}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}
