//! Settings and their defaults.
//!
//! Precedence, lowest first: the defaults in [`Settings::default`], an optional TOML file
//! (`collabd.toml` in the working directory, or `--config PATH`), environment variables
//! `COLLABD_<FIELD>` (e.g. `COLLABD_BIND`, `COLLABD_FLUSH_INTERVAL_MS`), command-line flags.
//! Every field is documented here and in `collabd.example.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the server can be told. Durations are whole milliseconds so that a value
/// reads the same in TOML, in an environment variable and on the command line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port (the log line `listening on` says which).
    pub bind: String,
    /// Directory of the sled database holding every room's op log and snapshots.
    pub data_dir: PathBuf,
    /// Largest WebSocket frame (and HTTP body) accepted, in bytes. Large documents sync in
    /// one frame, so this must exceed the biggest document a client may send at once.
    pub max_frame_bytes: usize,
    /// Group commit: how long the flusher waits after the first unflushed append before it
    /// makes everything appended so far durable with one flush.
    pub flush_interval_ms: u64,
    /// A room with no sessions for this long is flushed and stopped; the next use reloads it.
    pub room_idle_ms: u64,
    /// Awareness entries (presence, cursors) not renewed for this long are removed.
    /// Yjs clients renew theirs every 15 s.
    pub awareness_timeout_ms: u64,
    /// A room writes a snapshot of its full state after this many logged updates.
    pub snapshot_every: u64,
    /// How many of the most recent updates stay in the log after a snapshot (the replay
    /// window that reconnecting clients are served from); older records are deleted.
    pub replay_window: u64,
    /// WebSocket ping interval.
    pub heartbeat_interval_ms: u64,
    /// A WebSocket session that sends nothing (not even a pong) for this long is closed.
    pub client_timeout_ms: u64,
    /// Most messages a WebSocket session may have queued for sending; a session that falls
    /// further behind is closed with code 4008 ("slow consumer") and re-syncs on reconnect.
    pub outbound_queue_messages: usize,
    /// Comment heartbeat interval on SSE streams (keeps proxies from closing them).
    pub sse_heartbeat_ms: u64,
    /// The `retry:` hint sent to EventSource clients: how soon to reconnect.
    pub sse_retry_ms: u64,
    /// Events an SSE stream may have queued; a stream that falls further behind is ended
    /// and the client resumes from its Last-Event-ID.
    pub sse_queue_events: usize,
    /// Longest a long poll is held (`wait` is capped to this).
    pub poll_max_wait_ms: u64,
    /// Most updates in one poll answer; the client continues from the last seq it got.
    pub poll_batch_limit: usize,
    /// Threads that run room actors; 0 means one per CPU.
    pub room_threads: usize,
    /// Threads that run HTTP and WebSocket sessions; 0 means one per CPU.
    pub http_workers: usize,
    /// Bytes a WebSocket session may have queued for sending (with
    /// `outbound_queue_messages`, whichever is reached first); one frame larger than this
    /// is still sent when nothing else is queued.
    pub outbound_queue_bytes: usize,
    /// Long-lived connections (WebSocket sessions, SSE streams and held long polls) the
    /// server holds at once; beyond that new ones get 503 with `Retry-After`.
    pub max_connections: usize,
    /// The same limit for one room.
    pub max_connections_per_room: usize,
    /// The same limit for one client IP address (the TCP peer; proxies are not trusted;
    /// IPv6 clients are counted per /64, the block one host typically holds).
    pub max_connections_per_ip: usize,
    /// Admission token bucket: new long-lived connections accepted per second, sustained…
    pub admission_rate: u32,
    /// …and in a burst. A reconnect storm beyond this gets 503 + `Retry-After` and spreads
    /// itself out instead of melting the server.
    pub admission_burst: u32,
    /// Each client's own share of admission (IPv4 address, IPv6 /64), sustained per
    /// second… Checked before the server-wide bucket, so one address that keeps being
    /// refused spends none of the tokens everyone else needs.
    pub admission_rate_per_ip: u32,
    /// …and in a burst.
    pub admission_burst_per_ip: u32,
    /// Plain HTTP requests to `/rooms/…` (metadata, state, polls, POST) per client
    /// (IPv4 address, IPv6 /64) per second, sustained… Beyond: 429 with `Retry-After`.
    pub http_rate_per_ip: u32,
    /// …and in a burst.
    pub http_burst_per_ip: u32,
    /// Rooms loaded in memory at once. A request that needs one more (a write, a
    /// WebSocket or SSE join, a long poll, a read of a stored room) gets 503 with
    /// `Retry-After`; reading a room that does not exist loads nothing.
    pub max_rooms: usize,
    /// Per-session message-rate limit (token bucket over inbound frames): sustained…
    pub session_rate: u32,
    /// …and burst. A session that exhausts it is closed with 1008 ("rate limit").
    pub session_burst: u32,
    /// Largest document a room may grow to, in bytes of its encoded state (estimated as
    /// the last snapshot plus the updates since). Writes that would exceed it are refused;
    /// the room stays readable.
    pub max_doc_bytes: usize,
    /// HS256 secret for access tokens (JWT). Unset: every room is open to everyone (the
    /// server warns at startup). Set it in the file or as `COLLABD_AUTH_SECRET`, never as a
    /// flag (flags are visible in `ps`).
    pub auth_secret: Option<String>,
    /// Browser origins allowed to open WebSocket and SSE connections (exact match of the
    /// `Origin` header, e.g. `https://app.example.com`). Empty: any origin. Requests
    /// without an `Origin` header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:1234".into(),
            data_dir: PathBuf::from("./data"),
            max_frame_bytes: 16 * 1024 * 1024,
            flush_interval_ms: 5,
            room_idle_ms: 30_000,
            awareness_timeout_ms: 30_000,
            snapshot_every: 1_000,
            replay_window: 10_000,
            heartbeat_interval_ms: 15_000,
            client_timeout_ms: 30_000,
            outbound_queue_messages: 4_096,
            sse_heartbeat_ms: 15_000,
            sse_retry_ms: 1_000,
            sse_queue_events: 4_096,
            poll_max_wait_ms: 30_000,
            poll_batch_limit: 1_000,
            room_threads: 0,
            http_workers: 0,
            outbound_queue_bytes: 16 * 1024 * 1024,
            max_connections: 20_000,
            max_connections_per_room: 5_000,
            max_connections_per_ip: 500,
            admission_rate: 1_000,
            admission_burst: 1_000,
            admission_rate_per_ip: 100,
            admission_burst_per_ip: 200,
            http_rate_per_ip: 200,
            http_burst_per_ip: 400,
            max_rooms: 10_000,
            session_rate: 200,
            session_burst: 2_000,
            max_doc_bytes: 64 * 1024 * 1024,
            auth_secret: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// Values given on the command line (`--bind`, `--data-dir`, … one flag per setting);
/// `None` leaves the lower layers' value in place.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Address to listen on [default: 127.0.0.1:1234]
    #[arg(long)]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Data directory (sled) [default: ./data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Largest WebSocket frame accepted [default: 16777216]
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Group commit interval [default: 5]
    #[arg(long)]
    pub flush_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Unload a room this long after its last session left [default: 30000]
    #[arg(long)]
    pub room_idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Remove presence not renewed for this long [default: 30000]
    #[arg(long)]
    pub awareness_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Updates between snapshots [default: 1000]
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Updates kept in the log after a snapshot [default: 10000]
    #[arg(long)]
    pub replay_window: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// WebSocket ping interval [default: 15000]
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Close WebSocket sessions silent this long [default: 30000]
    #[arg(long)]
    pub client_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Frames queued per session before "slow consumer" [default: 4096]
    #[arg(long)]
    pub outbound_queue_messages: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// SSE comment heartbeat interval [default: 15000]
    #[arg(long)]
    pub sse_heartbeat_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The retry hint sent to EventSource clients [default: 1000]
    #[arg(long)]
    pub sse_retry_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Events queued per SSE stream before it is ended [default: 4096]
    #[arg(long)]
    pub sse_queue_events: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Longest a long poll is held [default: 30000]
    #[arg(long)]
    pub poll_max_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most updates in one poll answer [default: 1000]
    #[arg(long)]
    pub poll_batch_limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Threads for room actors, 0 = one per CPU [default: 0]
    #[arg(long)]
    pub room_threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// HTTP worker threads, 0 = one per CPU [default: 0]
    #[arg(long)]
    pub http_workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Bytes queued per session before "slow consumer" [default: 16777216]
    #[arg(long)]
    pub outbound_queue_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most WebSocket + SSE connections [default: 20000]
    #[arg(long)]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most connections in one room [default: 5000]
    #[arg(long)]
    pub max_connections_per_room: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most connections from one IP [default: 500]
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// New connections admitted per second [default: 1000]
    #[arg(long)]
    pub admission_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// New connections admitted in a burst [default: 1000]
    #[arg(long)]
    pub admission_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// New connections admitted per second from one IP (IPv6: one /64) [default: 100]
    #[arg(long)]
    pub admission_rate_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// New connections admitted in a burst from one IP [default: 200]
    #[arg(long)]
    pub admission_burst_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Plain HTTP requests per second from one IP (IPv6: one /64) [default: 200]
    #[arg(long)]
    pub http_rate_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Plain HTTP requests in a burst from one IP [default: 400]
    #[arg(long)]
    pub http_burst_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most rooms loaded in memory at once [default: 10000]
    #[arg(long)]
    pub max_rooms: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Inbound frames per second per session, sustained [default: 200]
    #[arg(long)]
    pub session_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Inbound frames per session in a burst [default: 2000]
    #[arg(long)]
    pub session_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Largest document per room, in bytes [default: 67108864]
    #[arg(long)]
    pub max_doc_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Browser origins allowed for WebSocket/SSE, comma-separated [default: any]
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
}

/// Why the settings could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Source(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "collabd.toml";

impl Settings {
    /// Layers defaults, the file, the environment and `overrides`, then validates.
    /// An explicitly named file must exist; the default one is optional.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let defaults = config::Config::try_from(&Settings::default())?;
        let file_source = match file {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name(DEFAULT_CONFIG_FILE).required(false),
        };
        let flags = config::Config::try_from(overrides)?;
        let settings: Settings = config::Config::builder()
            .add_source(defaults)
            .add_source(file_source.format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("COLLABD")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("allowed_origins"),
            )
            .add_source(flags)
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("flush_interval_ms", self.flush_interval_ms.max(1)),
            ("snapshot_every", self.snapshot_every),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("client_timeout_ms", self.client_timeout_ms),
            ("awareness_timeout_ms", self.awareness_timeout_ms),
            (
                "outbound_queue_messages",
                self.outbound_queue_messages as u64,
            ),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_room",
                self.max_connections_per_room as u64,
            ),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("admission_rate", self.admission_rate.into()),
            ("admission_burst", self.admission_burst.into()),
            ("admission_rate_per_ip", self.admission_rate_per_ip.into()),
            ("admission_burst_per_ip", self.admission_burst_per_ip.into()),
            ("http_rate_per_ip", self.http_rate_per_ip.into()),
            ("http_burst_per_ip", self.http_burst_per_ip.into()),
            ("max_rooms", self.max_rooms as u64),
            ("session_rate", self.session_rate.into()),
            ("session_burst", self.session_burst.into()),
            ("max_doc_bytes", self.max_doc_bytes as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "{name} must be greater than 0"
            )));
        }
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::Invalid(
                "client_timeout_ms must be greater than heartbeat_interval_ms".into(),
            ));
        }
        if self.auth_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError::Invalid(
                "auth_secret must be at least 16 bytes".into(),
            ));
        }
        Ok(())
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
    pub fn room_idle(&self) -> Duration {
        Duration::from_millis(self.room_idle_ms)
    }
    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_millis(self.awareness_timeout_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn sse_heartbeat(&self) -> Duration {
        Duration::from_millis(self.sse_heartbeat_ms)
    }
    pub fn poll_max_wait(&self) -> Duration {
        Duration::from_millis(self.poll_max_wait_ms)
    }
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "bind = \"0.0.0.0:9\"\nsnapshot_every = 7\n").unwrap();
        let overrides = Overrides {
            snapshot_every: Some(9),
            ..Overrides::default()
        };
        let s = Settings::load(Some(&file), &overrides).unwrap();
        assert_eq!(s.bind, "0.0.0.0:9");
        assert_eq!(s.snapshot_every, 9);
        assert_eq!(s.replay_window, Settings::default().replay_window);
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("collabd.example.toml");
        let from_file = Settings::load(Some(&example), &Overrides::default()).unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn unknown_keys_and_zero_limits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "bindd = \"x\"\n").unwrap();
        assert!(Settings::load(Some(&file), &Overrides::default()).is_err());
        let zero = Overrides {
            snapshot_every: Some(0),
            ..Overrides::default()
        };
        let err = Settings::load(Some(&file.with_file_name("none.toml")), &zero);
        assert!(err.is_err());
        std::fs::write(&file, "").unwrap();
        let err = Settings::load(Some(&file), &zero).unwrap_err();
        assert!(err.to_string().contains("snapshot_every"), "{err}");
    }
}
