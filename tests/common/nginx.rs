//! nginx in front of cluster nodes: Debian's `nginx` (package `nginx-light`) on a free
//! port in a temp dir, running `deploy/nginx.conf` — the config the README recommends —
//! with the test's nodes as its upstreams. Round robin, no stickiness. Without the
//! package a test is skipped with a message naming it, except under CI.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::PATIENCE;

const NGINX: &str = "/usr/sbin/nginx";

/// An nginx process load-balancing over some nodes.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// A started nginx over `upstreams`, or `None` (skipped) when the package is missing
/// outside CI.
pub fn nginx_or_skip(upstreams: &[SocketAddr]) -> Option<Nginx> {
    if !Path::new(NGINX).exists() {
        let message = "needs Debian's nginx-light package (apt-get install nginx-light)";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return None;
    }
    Some(Nginx::start(upstreams))
}

impl Nginx {
    /// `deploy/nginx.conf` with `upstreams` as its servers, listening on a free port, its
    /// pid, logs and temp files in a temp dir, in the foreground.
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let template = std::fs::read_to_string(root.join("deploy/nginx.conf")).unwrap();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("        server {a} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let mut conf = String::new();
        let mut servers_written = false;
        for line in template.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server 127.0.0.1:808") {
                if !std::mem::replace(&mut servers_written, true) {
                    conf.push_str(&servers);
                }
                continue;
            }
            if trimmed.starts_with("worker_processes") {
                conf.push_str(&format!(
                    "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
                ));
                continue;
            }
            if trimmed.starts_with("listen 8080;") {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
                continue;
            }
            conf.push_str(line);
            conf.push('\n');
            if trimmed.starts_with("http {") {
                conf.push_str(&format!(
                    "    access_log off;\n    client_body_temp_path {d}/body;\n    \
                     proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
                     uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n"
                ));
            }
        }
        assert!(
            servers_written,
            "deploy/nginx.conf lost its upstream servers"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
