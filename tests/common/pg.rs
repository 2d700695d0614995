//! PostgreSQL for the tests: a fresh database on the machine's server for each test
//! (`COLLABD_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped afterwards, and a TCP proxy in front of it that a test can cut and restore
//! (the shared server itself is never stopped).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use collabd::store::postgres::off_runtime;
use postgres::{Client, NoTls};

/// A database of its own.
pub struct FreshDb {
    admin: String,
    pub name: String,
    /// Its URL, straight to the server.
    pub url: String,
}

impl FreshDb {
    pub fn new() -> FreshDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = std::env::var("COLLABD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!(
            "collabd_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        off_runtime(|| {
            let mut client = Client::connect(&admin, NoTls).unwrap_or_else(|e| {
                panic!("PostgreSQL must be reachable at {admin} (apt-get install postgresql): {e}")
            });
            client
                .batch_execute(&format!("create database {name}"))
                .unwrap();
        });
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        FreshDb { admin, name, url }
    }

    /// Its URL through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        let target = self.url.split_once('@').unwrap().1;
        let (_, path) = target.split_once('/').unwrap();
        let user = self.url.split_once('@').unwrap().0;
        format!("{user}@{}/{path}", proxy.addr)
    }

    /// Runs `f` with a connection to the database, on a thread of its own (the blocking
    /// client may not run inside the test's async runtime).
    pub fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> T + Send) -> T {
        off_runtime(|| f(&mut Client::connect(&self.url, NoTls).unwrap()))
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        off_runtime(|| {
            if let Ok(mut client) = Client::connect(&self.admin, NoTls) {
                let _ = client.batch_execute(&format!(
                    "drop database if exists {} with (force)",
                    self.name
                ));
            }
        });
    }
}

/// A TCP proxy to `target`. `cut()` closes every connection and refuses new ones until
/// `restore()`; `stall()` closes every connection and accepts new ones that never get an
/// answer (a server that hangs).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn to(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (is_cut, is_stalled, conns) = (cut.clone(), stalled.clone(), open.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for client in listener.incoming().map_while(Result::ok) {
                if is_cut.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                if is_stalled.load(Ordering::SeqCst) {
                    held.push(client); // open, never answered
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = conns.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy {
            addr,
            cut,
            stalled,
            open,
        }
    }

    pub fn to_postgres() -> Proxy {
        Proxy::to("127.0.0.1:5432".parse().unwrap())
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
