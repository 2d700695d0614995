//! Redis for cluster-mode tests: Debian's `redis-server` on a free port in a temp dir, with
//! the durability collabd asks for (AOF, `appendfsync always`, `noeviction`); killed,
//! restarted from its AOF on the same port; and a Redis Cluster of three masters.
//! Without the package a test is skipped with a message naming it, except under CI.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::PATIENCE;

/// Whether `redis-server` and `redis-cli` are installed.
pub fn redis_available() -> bool {
    ["redis-server", "redis-cli"].iter().all(|bin| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

/// Skips (returns false, with a message) when Redis is missing; under CI, fails instead.
fn check_redis() -> bool {
    if redis_available() {
        return true;
    }
    let message = "needs Debian's redis-server package (apt-get install redis-server)";
    assert!(std::env::var_os("CI").is_none(), "{message}");
    eprintln!("skipped: {message}");
    false
}

/// A started Redis, or `None` (skipped) when the package is missing outside CI.
pub fn redis_or_skip() -> Option<RedisServer> {
    check_redis().then(|| RedisServer::start_with(&[]))
}

/// A started Redis Cluster, or `None` (skipped) as [`redis_or_skip`].
pub fn redis_cluster_or_skip() -> Option<RedisCluster> {
    check_redis().then(RedisCluster::start)
}

/// A port nothing listens on now (and, with `bus`, its cluster bus port + 10000 too).
fn free_port(bus: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// What every test Redis runs with: AOF fsynced on every write, no RDB, no eviction.
fn base_args() -> Vec<String> {
    [
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts Redis with AOF and `appendfsync always`, plus `extra` arguments (which win).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(false);
        let mut args = base_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut redis = RedisServer {
            child: None,
            port,
            args,
            dir,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: what it had fsynced to its AOF is all a restart finds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and directory: it reloads its AOF.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        wait_for_pong(self.port, self.dir.path());
    }

    /// `redis-cli` against it; stdout, trimmed.
    pub fn command(&self, args: &[&str]) -> String {
        cli(self.port, false, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p PORT [-c] args…`.
fn cli(port: u16, cluster: bool, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]);
    if cluster {
        cmd.arg("-c");
    }
    let out = cmd.args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until Redis on `port` answers PING with PONG (not LOADING).
fn wait_for_pong(port: u16, dir: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && cli(port, false, &["PING"]) == "PONG"
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} (dir {}) never answered PING",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Redis Cluster of three masters (no replicas), each with AOF and `appendfsync always`.
pub struct RedisCluster {
    masters: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let masters: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let conf = dir.path().join("nodes.conf");
                let conf = conf.to_str().unwrap().to_string();
                let mut server = RedisServer {
                    child: None,
                    port: free_port(true),
                    args: Vec::new(),
                    dir,
                };
                server.args = base_args();
                server.args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "5000",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                server.restart();
                server
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for m in &masters {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + PATIENCE;
        while masters
            .iter()
            .any(|m| !cli(m.port, false, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { masters }
    }

    pub fn urls(&self) -> Vec<String> {
        self.masters.iter().map(RedisServer::url).collect()
    }

    pub fn node_ports(&self) -> Vec<u16> {
        self.masters.iter().map(|m| m.port).collect()
    }

    /// `redis-cli -c` against the first master.
    pub fn command(&self, args: &[&str]) -> String {
        cli(self.masters[0].port, true, args)
    }
}
