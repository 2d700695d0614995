//! Admission control: connection limits (total, per room, per client IP) and the token
//! buckets that smooth reconnect storms, bound each client's plain HTTP request rate and
//! each session's message rate.
//!
//! Checked before a WebSocket upgrade, an SSE stream or a held long poll starts, so a
//! refused client costs one HTTP answer (503 with `Retry-After`), never a room join. An
//! admitted connection holds a [`Permit`]; dropping it (the session or stream ends) gives
//! the slot back. Per-client limits key on [`client_key`]: the IPv4 address, or the
//! IPv6 /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Settings;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    /// Takes `n` tokens if there are that many (a byte budget takes a frame's size).
    pub fn take_n(&mut self, n: usize) -> bool {
        self.take_n_at(n as f64, Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        self.take_n_at(1.0, now)
    }

    fn take_n_at(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled to its burst by `now`: it is then no different
    /// from a new one.
    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Whole seconds until the next token (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        ((missing / self.rate.max(f64::MIN_POSITIVE)).ceil() as u64).max(1)
    }
}

/// The key per-client limits count under: an IPv4 address, or an IPv6 address's /64
/// prefix (one host is usually given a whole /64, so counting single IPv6 addresses would
/// give it 2^64 shares). An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        },
    }
}

/// Per-client bucket maps are swept once they hold this many clients…
const SWEEP_AT: usize = 4_096;
/// …at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A token bucket per client key, made on first use. A bucket that has refilled to its
/// burst is the same as a new one, so sweeps drop those: the map holds only clients
/// active within the last `burst / rate` seconds, however many addresses an attacker has.
struct PerClient {
    rate: u32,
    burst: u32,
    buckets: HashMap<IpAddr, TokenBucket>,
    swept: Instant,
}

impl PerClient {
    fn new(rate: u32, burst: u32) -> Mutex<PerClient> {
        Mutex::new(PerClient {
            rate,
            burst,
            buckets: HashMap::new(),
            swept: Instant::now(),
        })
    }

    /// Takes a token from `key`'s bucket, or says how many seconds until it has one.
    fn take(&mut self, key: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        if self.buckets.len() >= SWEEP_AT && now.duration_since(self.swept) >= SWEEP_EVERY {
            self.buckets.retain(|_, bucket| !bucket.is_full_at(now));
            self.swept = now;
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(rate, burst));
        if bucket.take_at(now) {
            Ok(())
        } else {
            Err(bucket.retry_after_secs())
        }
    }
}

/// `Retry-After` when the server is full (a connection limit, `max_rooms`): a guess at
/// when a slot frees up, since nothing says when one will.
pub const RETRY_WHEN_FULL_SECS: u64 = 5;

/// Why a connection or request was not admitted; [`Refusal::reason`] is the metric's
/// `reason` label and the JSON error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the server holds its maximum of {0} connections")]
    MaxConnections(usize),
    #[error("the room holds its maximum of {0} connections")]
    MaxConnectionsPerRoom(usize),
    #[error("this address holds its maximum of {0} connections")]
    MaxConnectionsPerIp(usize),
    #[error("too many new connections; retry in {0} s")]
    AdmissionRate(u64),
    #[error("too many new connections from this address; retry in {0} s")]
    AdmissionRatePerIp(u64),
    #[error("too many requests from this address; retry in {0} s")]
    HttpRate(u64),
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MaxConnections(_) => "max_connections",
            Refusal::MaxConnectionsPerRoom(_) => "max_connections_per_room",
            Refusal::MaxConnectionsPerIp(_) => "max_connections_per_ip",
            Refusal::AdmissionRate(_) => "admission_rate",
            Refusal::AdmissionRatePerIp(_) => "admission_rate_per_ip",
            Refusal::HttpRate(_) => "http_rate",
        }
    }

    /// Seconds a client should wait before trying again.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::AdmissionRate(secs)
            | Refusal::AdmissionRatePerIp(secs)
            | Refusal::HttpRate(secs) => *secs,
            _ => RETRY_WHEN_FULL_SECS,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_room: HashMap<Arc<str>, usize>,
    /// By [`client_key`].
    per_ip: HashMap<IpAddr, usize>,
}

/// The server's connection counts and admission buckets, shared by every HTTP worker.
pub struct Admission {
    max_total: usize,
    max_per_room: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    bucket: Mutex<TokenBucket>,
    /// Each client's share of admission, checked before `bucket`.
    per_ip_bucket: Mutex<PerClient>,
    /// Each client's plain HTTP request rate.
    http: Mutex<PerClient>,
    /// `trusted_proxies`, parsed once: (network, prefix length).
    pub trusted_proxies: Vec<(std::net::IpAddr, u8)>,
}

impl Admission {
    pub fn new(settings: &Settings) -> Arc<Admission> {
        Arc::new(Admission {
            max_total: settings.max_connections,
            max_per_room: settings.max_connections_per_room,
            max_per_ip: settings.max_connections_per_ip,
            counts: Mutex::new(Counts::default()),
            bucket: Mutex::new(TokenBucket::new(
                settings.admission_rate,
                settings.admission_burst,
            )),
            per_ip_bucket: PerClient::new(
                settings.admission_rate_per_ip,
                settings.admission_burst_per_ip,
            ),
            http: PerClient::new(settings.http_rate_per_ip, settings.http_burst_per_ip),
            trusted_proxies: settings
                .trusted_proxies
                .iter()
                .filter_map(|p| crate::config::parse_net(p))
                .collect(),
        })
    }

    /// Admits one long-lived connection (WebSocket, SSE) from `ip` to `room`, or says why
    /// not. Limits are checked before the buckets, so a client refused for a limit spends
    /// no token; the client's own bucket before the server's, so a client refused for
    /// its own rate spends none of everyone else's.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, room: &Arc<str>) -> Result<Permit, Refusal> {
        self.enter(ip, room, true)
    }

    /// Admits a held long poll: it counts against the connection limits like any
    /// long-lived connection, but takes no admission token, because a long poller in a
    /// busy room comes back after every update (its request rate is bounded by the HTTP
    /// rate limit instead).
    pub fn hold(self: &Arc<Self>, ip: IpAddr, room: &Arc<str>) -> Result<Permit, Refusal> {
        self.enter(ip, room, false)
    }

    /// One plain HTTP request from `ip`: allowed, or refused for the client's rate.
    pub fn request(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        http.take(client_key(ip)).map_err(Refusal::HttpRate)
    }

    fn enter(
        self: &Arc<Self>,
        ip: IpAddr,
        room: &Arc<str>,
        rate_limited: bool,
    ) -> Result<Permit, Refusal> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refusal::MaxConnections(self.max_total));
        }
        if counts.per_room.get(room).copied().unwrap_or(0) >= self.max_per_room {
            return Err(Refusal::MaxConnectionsPerRoom(self.max_per_room));
        }
        if counts.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp(self.max_per_ip));
        }
        if rate_limited {
            let mut own = self.per_ip_bucket.lock().unwrap_or_else(|e| e.into_inner());
            own.take(ip).map_err(Refusal::AdmissionRatePerIp)?;
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            if !bucket.take() {
                return Err(Refusal::AdmissionRate(bucket.retry_after_secs()));
            }
        }
        counts.total += 1;
        *counts.per_room.entry(room.clone()).or_default() += 1;
        *counts.per_ip.entry(ip).or_default() += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
            room: room.clone(),
        })
    }

    /// Connections currently admitted.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted connection; its slot is given back when this is dropped.
pub struct Permit {
    admission: Arc<Admission>,
    /// The [`client_key`] it counts under.
    ip: IpAddr,
    room: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        release(&mut counts.per_room, &self.room);
        release(&mut counts.per_ip, &self.ip);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        let start = bucket.refilled;
        assert!((0..3).all(|_| bucket.take_at(start)));
        assert!(!bucket.take_at(start));
        assert_eq!(bucket.retry_after_secs(), 1);
        assert!(bucket.take_at(start + Duration::from_millis(100)));
        assert!(!bucket.take_at(start + Duration::from_millis(150)));
        // Never more than the burst saved up.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take_at(later)));
        assert!(!bucket.take_at(later));
    }

    #[test]
    fn limits_hold_and_permits_give_slots_back() {
        let settings = Settings {
            max_connections: 3,
            max_connections_per_room: 2,
            max_connections_per_ip: 2,
            ..Settings::default()
        };
        let admission = Admission::new(&settings);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = admission.admit(ip1, &a).unwrap();
        let _p2 = admission.admit(ip2, &a).unwrap();
        assert_eq!(
            admission.admit(ip1, &a).err(),
            Some(Refusal::MaxConnectionsPerRoom(2))
        );
        let _p3 = admission.admit(ip1, &b).unwrap();
        assert_eq!(
            admission.admit(ip2, &b).err(),
            Some(Refusal::MaxConnections(3))
        );
        drop(p1);
        assert_eq!(admission.total(), 2);
        assert_eq!(
            admission.admit(ip1, &b).map(|_| ()).err(),
            None,
            "a slot freed by a dropped permit is reusable"
        );
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2::"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("::1"), key("::2"));
    }

    #[test]
    fn one_ipv6_host_cannot_take_more_slots_by_changing_address() {
        let settings = Settings {
            max_connections_per_ip: 2,
            ..Settings::default()
        };
        let admission = Admission::new(&settings);
        let room: Arc<str> = "r".into();
        let _a = admission
            .admit("2001:db8::1".parse().unwrap(), &room)
            .unwrap();
        let _b = admission
            .hold("2001:db8::2".parse().unwrap(), &room)
            .unwrap();
        assert_eq!(
            admission
                .admit("2001:db8::ffff:3".parse().unwrap(), &room)
                .err(),
            Some(Refusal::MaxConnectionsPerIp(2))
        );
        assert!(
            admission
                .admit("2001:db8:0:1::1".parse().unwrap(), &room)
                .is_ok()
        );
    }

    #[test]
    fn one_client_cannot_drain_admission_for_everyone() {
        // Rate 0 (refused by config validation): no refill, so no timing in the test.
        let settings = Settings {
            admission_rate: 0,
            admission_burst: 5,
            admission_rate_per_ip: 0,
            admission_burst_per_ip: 2,
            ..Settings::default()
        };
        let admission = Admission::new(&settings);
        let room: Arc<str> = "r".into();
        let greedy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut held = Vec::new();
        let mut refusals = Vec::new();
        for _ in 0..50 {
            match admission.admit(greedy, &room) {
                Ok(permit) => held.push(permit),
                Err(e) => refusals.push(e.reason()),
            }
        }
        assert_eq!(held.len(), 2);
        assert!(refusals.iter().all(|r| *r == "admission_rate_per_ip"));
        // Its 48 refused attempts spent none of the server's tokens.
        for other in ["127.0.0.2", "127.0.0.3"] {
            let ip: IpAddr = other.parse().unwrap();
            held.push(admission.admit(ip, &room).unwrap());
        }
        // A long poll takes no admission token, only a slot.
        held.push(admission.hold(greedy, &room).unwrap());
    }

    #[test]
    fn http_requests_are_limited_per_client() {
        let settings = Settings {
            http_rate_per_ip: 0,
            http_burst_per_ip: 3,
            ..Settings::default()
        };
        let admission = Admission::new(&settings);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a2: IpAddr = "2001:db8::2".parse().unwrap();
        assert!((0..3).all(|_| admission.request(a).is_ok()));
        assert!(matches!(admission.request(a2), Err(Refusal::HttpRate(_))));
        assert!(
            admission
                .request("2001:db8:0:1::1".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn per_client_buckets_are_forgotten_once_full_again() {
        let mut buckets = PerClient::new(1_000_000, 1).into_inner().unwrap();
        for i in 0..SWEEP_AT as u32 {
            buckets.take(IpAddr::from(i.to_be_bytes())).unwrap();
        }
        buckets.swept -= SWEEP_EVERY;
        std::thread::sleep(Duration::from_millis(5));
        buckets.take("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(buckets.buckets.len(), 1, "refilled buckets were swept");
    }
}
