//! Admission control: connection limits (total, per room, per client IP) and the token
//! buckets that smooth reconnect storms and bound each session's message rate.
//!
//! Checked before a WebSocket upgrade or an SSE stream starts, so a refused client costs
//! one HTTP answer (503 with `Retry-After`), never a room join. An admitted connection
//! holds a [`Permit`]; dropping it (the session or stream ends) gives the slot back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole seconds until the next token (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        ((missing / self.rate.max(f64::MIN_POSITIVE)).ceil() as u64).max(1)
    }
}

/// Why a connection was not admitted; the variant names are the metric's `reason` label.
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
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::MaxConnections(_) => "max_connections",
            Refusal::MaxConnectionsPerRoom(_) => "max_connections_per_room",
            Refusal::MaxConnectionsPerIp(_) => "max_connections_per_ip",
            Refusal::AdmissionRate(_) => "admission_rate",
        }
    }

    /// Seconds a client should wait before trying again.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refusal::AdmissionRate(secs) => *secs,
            _ => 5,
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_room: HashMap<Arc<str>, usize>,
    per_ip: HashMap<IpAddr, usize>,
}

/// The server's connection counts and admission bucket, shared by every HTTP worker.
pub struct Admission {
    max_total: usize,
    max_per_room: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
    bucket: Mutex<TokenBucket>,
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
        })
    }

    /// Admits one long-lived connection from `ip` to `room`, or says why not. Limits are
    /// checked before the bucket, so a client refused for a limit spends no token.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, room: &Arc<str>) -> Result<Permit, Refusal> {
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
        {
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
}
