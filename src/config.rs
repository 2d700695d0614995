//! Settings and their defaults.
//!
//! Precedence, lowest first: the defaults in [`Settings::default`], an optional TOML file
//! (`collabd.toml` in the working directory, or `--config PATH`), environment variables
//! `COLLABD_<FIELD>` (e.g. `COLLABD_BIND`, `COLLABD_FLUSH_INTERVAL_MS`), command-line flags.
//! Every field is documented here and in `collabd.example.toml`.
//!
//! Unknown keys in the file are an error. `COLLABD_*` variables that name no setting are
//! ignored with one warning: orchestrators inject `<SERVICE>_PORT`-style variables
//! (`COLLABD_PORT=tcp://10.0.0.1:1234`, `COLLABD_SERVICE_HOST`) that share the prefix.
//! [`Settings::load`] then checks every value alone and against the others, so that a
//! bad combination stops the server before it binds rather than panicking or stalling.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::Source as _;
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
    /// makes everything appended so far durable with one flush. 0: flush as soon as
    /// anything is appended (no batching).
    pub flush_interval_ms: u64,
    /// A room with no sessions for this long is flushed and stopped; the next use reloads
    /// it. 0: as soon as it is unused.
    pub room_idle_ms: u64,
    /// Awareness entries (presence, cursors) not renewed for this long are removed.
    /// Yjs clients renew theirs every 15 s.
    pub awareness_timeout_ms: u64,
    /// Presence renewals (moving cursors) are merged and sent once per tick: the latest
    /// state of every client that changed, as one update shared by every receiver. A
    /// client's first state and removals go out at once. 0: relay every update at once.
    pub awareness_tick_ms: u64,
    /// Largest presence state (its JSON) a client may announce; larger ones are refused.
    pub awareness_max_state_bytes: usize,
    /// Most entries in one awareness update; a frame with more is refused whole.
    pub awareness_max_entries: usize,
    /// Most client ids one session may announce (a tab is one; more are refused).
    pub awareness_max_clients: usize,
    /// Most bytes a room's presence states may add up to (each counts its JSON plus 32).
    /// The budget used is at most half of `outbound_queue_bytes`, so that the full
    /// presence a joiner receives always fits its outbound queue.
    pub awareness_max_room_bytes: usize,
    /// A room writes a snapshot of its full state after this many logged updates.
    pub snapshot_every: u64,
    /// How many of the most recent updates stay in the log after a snapshot (the replay
    /// window that reconnecting clients are served from); older records are deleted.
    /// At least `snapshot_every`.
    pub replay_window: u64,
    /// WebSocket ping interval.
    pub heartbeat_interval_ms: u64,
    /// A WebSocket session that sends nothing (not even a pong) for this long is closed.
    /// Longer than `heartbeat_interval_ms`.
    pub client_timeout_ms: u64,
    /// Most messages a WebSocket session may have queued for sending; a session that falls
    /// further behind is closed with code 4008 ("slow consumer") and re-syncs on reconnect.
    pub outbound_queue_messages: usize,
    /// Comment heartbeat interval on SSE streams (keeps proxies from closing them).
    pub sse_heartbeat_ms: u64,
    /// The `retry:` hint sent to EventSource clients: how soon to reconnect (0: at once).
    pub sse_retry_ms: u64,
    /// Events an SSE stream may have queued; a stream that falls further behind is ended
    /// and the client resumes from its Last-Event-ID.
    pub sse_queue_events: usize,
    /// Longest a long poll is held (`wait` is capped to this; 0: no long polling, every
    /// poll is answered at once).
    pub poll_max_wait_ms: u64,
    /// Most updates in one poll answer; the client continues from the last seq it got.
    pub poll_batch_limit: usize,
    /// Threads that run room actors; 0 means one per CPU. At most [`MAX_THREADS`].
    pub room_threads: usize,
    /// Threads that run HTTP and WebSocket sessions; 0 means one per CPU. At most
    /// [`MAX_THREADS`].
    pub http_workers: usize,
    /// Bytes a WebSocket session may have queued for sending (with
    /// `outbound_queue_messages`, whichever is reached first); one frame larger than this
    /// is still sent when nothing else is queued. At least the largest update a client
    /// may send (`max_frame_bytes`, or `max_doc_bytes` if smaller), so that every
    /// accepted update can be queued for the other sessions.
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
    /// Per-session byte-rate limit (token bucket over inbound bytes): sustained bytes per
    /// second…
    pub session_bytes_rate: u32,
    /// …and burst (at least `max_frame_bytes`, so that one largest frame always fits). A
    /// session that exhausts it is closed with 1008 ("rate limit").
    pub session_bytes_burst: u32,
    /// Largest document a room may grow to, in bytes of its encoded state (estimated as
    /// the last snapshot plus the updates since). Writes that would exceed it are refused;
    /// the room stays readable.
    pub max_doc_bytes: usize,
    /// HS256 secret for access tokens (JWT). Unset: every room is open to everyone (the
    /// server warns at startup). Set it in the file or as `COLLABD_AUTH_SECRET`, never as a
    /// flag (flags are visible in `ps`).
    pub auth_secret: Option<String>,
    /// Browser origins allowed on every route — WebSocket, SSE, polling, state, writes —
    /// (exact match of the `Origin` header, e.g. `https://app.example.com`); a request
    /// from another origin gets 403 `origin_not_allowed`, listed origins get CORS
    /// answers. Empty: any origin (CORS with `*`). Requests without an `Origin` header
    /// (non-browser clients) are not affected. An origin has no
    /// path, not even a trailing `/`.
    pub allowed_origins: Vec<String>,
    /// With it set, a token is accepted only if its `aud` claim (a string or an array of
    /// strings) contains this value. Unset: `aud` is not checked, and a token may carry one
    /// or not. Needs `auth_secret`.
    pub token_audience: Option<String>,
    /// With it set, a token is accepted only if its `iss` claim is this value. Unset: `iss`
    /// is not checked. Needs `auth_secret`.
    pub token_issuer: Option<String>,
}

/// Most threads `room_threads` and `http_workers` may ask for; more is taken for a typo
/// (spawning them would fail, and fail late).
pub const MAX_THREADS: usize = 1024;

/// Most frames or events a queue may be bounded to (tokio's channels cannot count more).
pub const MAX_QUEUE_LEN: usize = tokio::sync::Semaphore::MAX_PERMITS;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:1234".into(),
            data_dir: PathBuf::from("./data"),
            max_frame_bytes: 16 * 1024 * 1024,
            flush_interval_ms: 5,
            room_idle_ms: 30_000,
            awareness_timeout_ms: 30_000,
            awareness_tick_ms: 30,
            awareness_max_state_bytes: 64 * 1024,
            awareness_max_entries: 100,
            awareness_max_clients: 16,
            awareness_max_room_bytes: 4 * 1024 * 1024,
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
            session_bytes_rate: 1024 * 1024,
            session_bytes_burst: 32 * 1024 * 1024,
            max_doc_bytes: 64 * 1024 * 1024,
            auth_secret: None,
            allowed_origins: Vec::new(),
            token_audience: None,
            token_issuer: None,
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
    /// Send presence renewals merged, once per this many ms; 0: at once [default: 30]
    #[arg(long)]
    pub awareness_tick_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Largest presence state in bytes [default: 65536]
    #[arg(long)]
    pub awareness_max_state_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most entries per awareness update [default: 100]
    #[arg(long)]
    pub awareness_max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most presence client ids per session [default: 16]
    #[arg(long)]
    pub awareness_max_clients: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Most bytes of presence per room (capped at half of outbound_queue_bytes) [default: 4194304]
    #[arg(long)]
    pub awareness_max_room_bytes: Option<usize>,
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
    /// Inbound bytes per second per session, sustained [default: 1048576]
    #[arg(long)]
    pub session_bytes_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Inbound bytes per session in a burst, at least max_frame_bytes [default: 33554432]
    #[arg(long)]
    pub session_bytes_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Largest document per room, in bytes [default: 67108864]
    #[arg(long)]
    pub max_doc_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Browser origins allowed on every route, comma-separated [default: any]
    #[arg(long, value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Tokens must name this audience in `aud` [default: not checked]
    #[arg(long)]
    pub token_audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// Tokens must name this issuer in `iss` [default: not checked]
    #[arg(long)]
    pub token_issuer: Option<String>,
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

/// Environment variables `COLLABD_<FIELD>` set the field.
const ENV_PREFIX: &str = "COLLABD";

/// Whether `key` names a field of [`Settings`].
fn is_setting(key: &str) -> bool {
    let fields = serde_json::to_value(Settings::default()).expect("settings serialize");
    fields.as_object().is_some_and(|f| f.contains_key(key))
}

/// Splits the `COLLABD_*` variables of `env` into those that name a setting (matched
/// case-insensitively, as the `config` crate does) and the names of the others. Other
/// variables are left out. A setting's value must be UTF-8.
fn settings_in_env(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<(config::Map<String, String>, Vec<String>), ConfigError> {
    let prefix = format!("{ENV_PREFIX}_").to_lowercase();
    let mut known = config::Map::new();
    let mut ignored = Vec::new();
    for (key, value) in env {
        let key = key.to_string_lossy().into_owned();
        let Some(field) = key.to_lowercase().strip_prefix(&prefix).map(str::to_owned) else {
            continue;
        };
        if !is_setting(&field) {
            ignored.push(key);
            continue;
        }
        let value = value.into_string().map_err(|_| {
            ConfigError::Invalid(format!("environment variable {key} is not valid UTF-8"))
        })?;
        known.insert(key, value);
    }
    ignored.sort();
    Ok((known, ignored))
}

impl Settings {
    /// Layers defaults, the file, the environment and `overrides`, then validates.
    /// An explicitly named file must exist; the default one is optional.
    /// `COLLABD_*` variables that name no setting are ignored with one warning.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let (settings, ignored) = Settings::load_with_env(file, overrides, std::env::vars_os())?;
        if !ignored.is_empty() {
            log::warn!(
                "ignoring {} environment variables that share the COLLABD_ prefix but name \
                 no setting: {}",
                ignored.len(),
                ignored.join(", ")
            );
        }
        Ok(settings)
    }

    /// [`Settings::load`] with the environment given; also returns the names of the
    /// `COLLABD_*` variables that were ignored.
    fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<(Settings, Vec<String>), ConfigError> {
        let (env, ignored) = settings_in_env(env)?;
        let defaults = config::Config::try_from(&Settings::default())?;
        let file_source = match file {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name(DEFAULT_CONFIG_FILE).required(false),
        }
        .format(config::FileFormat::Toml);
        // Checked here rather than left to serde, so that the error names the file.
        let mut unknown: Vec<String> = file_source.collect()?.into_keys().collect();
        unknown.retain(|key| !is_setting(key));
        if !unknown.is_empty() {
            unknown.sort();
            let name = file.unwrap_or(Path::new(DEFAULT_CONFIG_FILE)).display();
            return Err(ConfigError::Invalid(format!(
                "{name}: unknown keys: {} (see collabd.example.toml for every key)",
                unknown.join(", ")
            )));
        }
        let flags = config::Config::try_from(overrides)?;
        let settings: Settings = config::Config::builder()
            .add_source(defaults)
            .add_source(file_source)
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .source(Some(env))
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("allowed_origins"),
            )
            .add_source(flags)
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok((settings, ignored))
    }

    /// Checks every setting alone and against the others; the error names every
    /// violation and the settings involved.
    ///
    /// Zero is refused where it would panic (timers, channels), stall (a poll batch of
    /// nothing) or refuse everything (limits, rates). It is allowed where it means
    /// something: `flush_interval_ms` (flush at once), `room_idle_ms` (unload at once),
    /// `sse_retry_ms` (reconnect at once), `poll_max_wait_ms` (no long polling),
    /// `awareness_tick_ms` (relay presence at once),
    /// `room_threads` and `http_workers` (one per CPU).
    fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("snapshot_every", self.snapshot_every),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("client_timeout_ms", self.client_timeout_ms),
            ("awareness_timeout_ms", self.awareness_timeout_ms),
            (
                "outbound_queue_messages",
                self.outbound_queue_messages as u64,
            ),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("sse_heartbeat_ms", self.sse_heartbeat_ms),
            ("sse_queue_events", self.sse_queue_events as u64),
            ("poll_batch_limit", self.poll_batch_limit as u64),
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
            ("session_bytes_rate", self.session_bytes_rate.into()),
            (
                "awareness_max_state_bytes",
                self.awareness_max_state_bytes as u64,
            ),
            ("awareness_max_entries", self.awareness_max_entries as u64),
            ("awareness_max_clients", self.awareness_max_clients as u64),
            (
                "awareness_max_room_bytes",
                self.awareness_max_room_bytes as u64,
            ),
            ("session_bytes_burst", self.session_bytes_burst.into()),
            ("max_doc_bytes", self.max_doc_bytes as u64),
        ];
        for (name, _) in positive.iter().filter(|(_, v)| *v == 0) {
            errors.push(format!("{name} must be greater than 0"));
        }
        for (name, value) in [
            ("outbound_queue_messages", self.outbound_queue_messages),
            ("sse_queue_events", self.sse_queue_events),
        ] {
            if value > MAX_QUEUE_LEN {
                errors.push(format!("{name} must be at most {MAX_QUEUE_LEN}"));
            }
        }
        for (name, value) in [
            ("room_threads", self.room_threads),
            ("http_workers", self.http_workers),
        ] {
            if value > MAX_THREADS {
                errors.push(format!(
                    "{name} must be at most {MAX_THREADS} (0 = one per CPU)"
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            errors.push("data_dir must not be empty".into());
        }
        if self.client_timeout_ms <= self.heartbeat_interval_ms {
            errors.push(format!(
                "client_timeout_ms ({}) must be greater than heartbeat_interval_ms ({}): \
                 a client answering every ping would still time out",
                self.client_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.replay_window < self.snapshot_every {
            errors.push(format!(
                "replay_window ({}) must be at least snapshot_every ({})",
                self.replay_window, self.snapshot_every
            ));
        }
        // The largest update a client can get accepted is bounded by both limits; it is
        // broadcast as one frame, which must fit the other sessions' byte budget.
        let largest_update = self.max_frame_bytes.min(self.max_doc_bytes);
        if self.outbound_queue_bytes < largest_update {
            let (name, value) = if self.max_frame_bytes <= self.max_doc_bytes {
                ("max_frame_bytes", self.max_frame_bytes)
            } else {
                ("max_doc_bytes", self.max_doc_bytes)
            };
            errors.push(format!(
                "outbound_queue_bytes ({}) must be at least {name} ({value}): an update of \
                 that size could not be queued for the other sessions",
                self.outbound_queue_bytes
            ));
        }
        let presence_budget = self.presence_room_bytes();
        if self.awareness_max_state_bytes + 32 > presence_budget {
            errors.push(format!(
                "awareness_max_state_bytes ({}) must fit a room's presence budget ({presence_budget}: \
                 awareness_max_room_bytes, at most half of outbound_queue_bytes)",
                self.awareness_max_state_bytes
            ));
        }
        if (self.session_bytes_burst as usize) < self.max_frame_bytes {
            errors.push(format!(
                "session_bytes_burst ({}) must be at least max_frame_bytes ({}): a frame of \
                 that size could never be accepted",
                self.session_bytes_burst, self.max_frame_bytes
            ));
        }
        if self.auth_secret.as_deref().is_some_and(|s| s.len() < 16) {
            errors.push("auth_secret must be at least 16 bytes".into());
        }
        for (name, value) in [
            ("token_audience", &self.token_audience),
            ("token_issuer", &self.token_issuer),
        ] {
            match value.as_deref() {
                None => {}
                Some("") => errors.push(format!("{name} must not be empty (leave it unset)")),
                Some(_) if self.auth_secret.is_none() => errors.push(format!(
                    "{name} is set but auth_secret is not: without a secret no token is checked"
                )),
                Some(_) => {}
            }
        }
        for origin in &self.allowed_origins {
            let path = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.contains('/'));
            if origin.is_empty() || path {
                errors.push(format!(
                    "allowed_origins: {origin:?} is not an origin (scheme://host[:port], no \
                     path, no trailing /)"
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors.join("; ")))
        }
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
    pub fn room_idle(&self) -> Duration {
        Duration::from_millis(self.room_idle_ms)
    }
    /// The bytes a room's presence may add up to: `awareness_max_room_bytes`, capped at
    /// half of `outbound_queue_bytes`.
    pub fn presence_room_bytes(&self) -> usize {
        self.awareness_max_room_bytes
            .min(self.outbound_queue_bytes / 2)
    }

    pub fn awareness_tick(&self) -> Duration {
        Duration::from_millis(self.awareness_tick_ms)
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
        let err = Settings::load(Some(&file), &Overrides::default()).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("c.toml: unknown keys: bindd"), "{err}");
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

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<(Settings, Vec<String>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "").unwrap();
        Settings::load_with_env(Some(&file), &Overrides::default(), env(vars))
    }

    #[test]
    fn prefixed_variables_that_name_no_setting_are_ignored_and_named() {
        let (settings, ignored) = load_env(&[
            ("COLLABD_PORT", "tcp://10.0.0.1:1234"),
            ("COLLABD_SERVICE_HOST", "10.0.0.1"),
            ("COLLABD_SNAPSHOT_EVERY", "7"),
            ("collabd_replay_window", "70"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(ignored, ["COLLABD_PORT", "COLLABD_SERVICE_HOST"]);
        assert_eq!(settings.snapshot_every, 7);
        assert_eq!(settings.replay_window, 70);
        // A setting's bad value is still an error.
        let err = load_env(&[("COLLABD_SNAPSHOT_EVERY", "many")]).unwrap_err();
        assert!(err.to_string().contains("snapshot_every"), "{err}");
    }

    #[test]
    fn a_non_utf8_value_is_ignored_unless_it_is_a_setting() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let vars = vec![("COLLABD_SERVICE_HOST".into(), bad.clone())];
        assert!(Settings::load_with_env(None, &Overrides::default(), vars).is_ok());
        let vars = vec![("COLLABD_BIND".into(), bad)];
        let err = Settings::load_with_env(None, &Overrides::default(), vars).unwrap_err();
        assert!(err.to_string().contains("COLLABD_BIND"), "{err}");
    }

    /// The validation error for `settings`, which must be invalid.
    fn invalid(settings: Settings) -> String {
        settings.validate().unwrap_err().to_string()
    }

    #[test]
    fn zero_is_refused_where_it_would_panic_or_stall() {
        for (name, settings) in [
            (
                "sse_queue_events",
                Settings {
                    sse_queue_events: 0,
                    ..Settings::default()
                },
            ),
            (
                "sse_heartbeat_ms",
                Settings {
                    sse_heartbeat_ms: 0,
                    ..Settings::default()
                },
            ),
            (
                "poll_batch_limit",
                Settings {
                    poll_batch_limit: 0,
                    ..Settings::default()
                },
            ),
            (
                "outbound_queue_messages",
                Settings {
                    outbound_queue_messages: 0,
                    ..Settings::default()
                },
            ),
        ] {
            let err = invalid(settings);
            assert!(
                err.contains(&format!("{name} must be greater than 0")),
                "{err}"
            );
        }
        let meaningful_zeros = Settings {
            flush_interval_ms: 0,
            room_idle_ms: 0,
            sse_retry_ms: 0,
            poll_max_wait_ms: 0,
            room_threads: 0,
            http_workers: 0,
            ..Settings::default()
        };
        meaningful_zeros.validate().unwrap();
    }

    #[test]
    fn queue_lengths_and_thread_counts_are_bounded() {
        let err = invalid(Settings {
            sse_queue_events: usize::MAX,
            ..Settings::default()
        });
        assert!(err.contains("sse_queue_events must be at most"), "{err}");
        let err = invalid(Settings {
            room_threads: 100_000,
            ..Settings::default()
        });
        assert!(err.contains("room_threads must be at most 1024"), "{err}");
    }

    #[test]
    fn the_replay_window_covers_at_least_one_snapshot_interval() {
        let err = invalid(Settings {
            snapshot_every: 10,
            replay_window: 5,
            ..Settings::default()
        });
        assert!(
            err.contains("replay_window (5) must be at least snapshot_every (10)"),
            "{err}"
        );
        Settings {
            snapshot_every: 10,
            replay_window: 10,
            ..Settings::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn the_outbound_queue_holds_the_largest_acceptable_update() {
        let err = invalid(Settings {
            max_frame_bytes: 2_000_000,
            outbound_queue_bytes: 1_000_000,
            ..Settings::default()
        });
        assert!(
            err.contains(
                "outbound_queue_bytes (1000000) must be at least max_frame_bytes (2000000)"
            ),
            "{err}"
        );
        // A smaller document limit bounds updates too.
        let err = invalid(Settings {
            max_doc_bytes: 2_000_000,
            outbound_queue_bytes: 1_000_000,
            ..Settings::default()
        });
        assert!(
            err.contains("must be at least max_doc_bytes (2000000)"),
            "{err}"
        );
        Settings {
            max_doc_bytes: 1_000_000,
            outbound_queue_bytes: 1_000_000,
            ..Settings::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn token_claim_checks_need_a_secret_and_a_value() {
        let err = invalid(Settings {
            token_audience: Some("collabd".into()),
            ..Settings::default()
        });
        assert!(
            err.contains("token_audience is set but auth_secret is not"),
            "{err}"
        );
        let err = invalid(Settings {
            auth_secret: Some("0123456789abcdef".into()),
            token_issuer: Some(String::new()),
            ..Settings::default()
        });
        assert!(err.contains("token_issuer must not be empty"), "{err}");
    }

    #[test]
    fn origins_with_a_path_are_refused() {
        let err = invalid(Settings {
            allowed_origins: vec!["https://a.example/".into(), "https://b.example".into()],
            ..Settings::default()
        });
        assert!(
            err.contains("\"https://a.example/\" is not an origin"),
            "{err}"
        );
        assert!(!err.contains("b.example"), "{err}");
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let err = invalid(Settings {
            poll_batch_limit: 0,
            heartbeat_interval_ms: 60_000,
            ..Settings::default()
        });
        assert!(err.contains("poll_batch_limit"), "{err}");
        assert!(
            err.contains(
                "client_timeout_ms (30000) must be greater than heartbeat_interval_ms (60000)"
            ),
            "{err}"
        );
    }
}
