//! Settings and their defaults.
//!
//! Precedence, lowest first: the defaults in [`Settings::default`], an optional TOML file
//! (`collabd.toml` in the working directory, or `--config PATH`), environment variables
//! `COLLABD_<FIELD>` (e.g. `COLLABD_BIND`, `COLLABD_FLUSH_INTERVAL_MS`), command-line flags
//! `--<field-with-dashes>` (every setting but `auth_secret`).
//!
//! Each setting is declared once, in the `settings!` invocation below: its name, type,
//! default and doc. From that one declaration come the [`Settings`] field, its default,
//! its flag in [`Overrides`] and the flag's `--help` text, its place in
//! [`Settings::NAMES`] (which decides what is a key), and its entry in
//! `collabd.example.toml` ([`Settings::reference_toml`]) and in the README's configuration
//! table ([`Settings::markdown_table`]). Tests check both files against the declarations;
//! `UPDATE_DOCS=1 cargo test --lib config` rewrites them.
//!
//! Unknown keys in the file are an error. `COLLABD_*` variables that name no setting are
//! ignored with one warning: orchestrators inject `<SERVICE>_PORT`-style variables
//! (`COLLABD_PORT=tcp://10.0.0.1:1234`, `COLLABD_SERVICE_HOST`) that share the prefix.
//! [`Settings::load`] then checks every value alone and against the others, so that a
//! bad combination stops the server before it binds rather than panicking or stalling.

#[cfg(feature = "cli")]
use std::ffi::OsString;
#[cfg(feature = "cli")]
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "cli")]
use config::Source as _;
use serde::{Deserialize, Serialize};

mod docs;

pub use docs::Declared;

/// Declares every setting once. An entry is
///
/// ```text
/// /// Summary: one sentence (the `-h` help and the README's table).
/// ///
/// /// More paragraphs (`--help`, `collabd.example.toml`, rustdoc).
/// name: Type = default_expression;
/// ```
///
/// An `Option` setting names a value for the example file instead of a default it does
/// not have: `name: Option<T> = None, example value;`. Extra clap attributes for the
/// flag go in `#[arg(...)]` before the name; `#[no_flag]` there gives the setting no flag
/// at all (it can still be set in the file and the environment).
///
/// The entries are first normalized one by one (`@munch`), because what an entry turns
/// into depends on its form (an `Option` setting's flag is `Option<T>`, not
/// `Option<Option<T>>`), then everything is generated at once (`@emit`).
macro_rules! settings {
    (@emit $({
        docs [$($doc:literal)*]
        flag [$($flag:tt)*]
        name [$name:ident]
        ty [$ty:ty]
        flag_ty [$flag_ty:ty]
        default [$default:expr]
        example [$($example:expr)?]
    })*) => {
        /// Everything the server can be told. Durations are whole milliseconds so that a
        /// value reads the same in TOML, in an environment variable and on the command
        /// line.
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $name: $default, )* }
            }
        }

        /// Values given on the command line: one flag per setting (`--bind`, `--data-dir`,
        /// …; none for `auth_secret`), documented on [`Settings`]; `None` leaves the lower
        /// layers' value in place.
        #[cfg(feature = "cli")]
        #[derive(Debug, Default, Clone, Serialize, clap::Args)]
        pub struct Overrides {
            $(
                $(#[doc = $doc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                #[arg($($flag)*)]
                #[arg(
                    help = docs::flag_help(stringify!($name)),
                    long_help = docs::flag_long_help(stringify!($name))
                )]
                pub $name: $flag_ty,
            )*
        }

        impl Settings {
            /// The name of every setting, in the order declared: the keys of the file,
            /// `COLLABD_<NAME>` in the environment.
            pub const NAMES: &[&str] = &[$( stringify!($name) ),*];

            /// Every setting as declared, in order: name, doc, default.
            pub fn declared() -> &'static [Declared] {
                static DECLARED: std::sync::LazyLock<Vec<Declared>> =
                    std::sync::LazyLock::new(|| {
                        let defaults = Settings::default();
                        vec![$(
                            Declared {
                                name: stringify!($name),
                                doc: concat!($( $doc, "\n", )*),
                                default: docs::toml_value(&defaults.$name),
                                example: None $( .or(docs::toml_value(&$example)) )?,
                            },
                        )*]
                    });
                &DECLARED
            }
        }
    };

    (@munch [$($done:tt)*]) => {
        settings!(@emit $($done)*);
    };
    // Without a flag.
    (@munch [$($done:tt)*]
        $(#[doc = $doc:literal])*
        #[no_flag]
        $name:ident : Option<$inner:ty> = $default:expr, example $example:expr;
        $($rest:tt)*
    ) => {
        settings!(@munch [$($done)* {
            docs [$($doc)*] flag [skip] name [$name] ty [Option<$inner>]
            flag_ty [Option<$inner>] default [$default] example [$example]
        }] $($rest)*);
    };
    (@munch [$($done:tt)*]
        $(#[doc = $doc:literal])*
        #[no_flag]
        $name:ident : $ty:ty = $default:expr;
        $($rest:tt)*
    ) => {
        settings!(@munch [$($done)* {
            docs [$($doc)*] flag [skip] name [$name] ty [$ty]
            flag_ty [Option<$ty>] default [$default] example []
        }] $($rest)*);
    };
    // With a flag.
    (@munch [$($done:tt)*]
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])?
        $name:ident : Option<$inner:ty> = $default:expr, example $example:expr;
        $($rest:tt)*
    ) => {
        settings!(@munch [$($done)* {
            docs [$($doc)*] flag [long $(, $($arg)*)?] name [$name] ty [Option<$inner>]
            flag_ty [Option<$inner>] default [$default] example [$example]
        }] $($rest)*);
    };
    (@munch [$($done:tt)*]
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])?
        $name:ident : $ty:ty = $default:expr;
        $($rest:tt)*
    ) => {
        settings!(@munch [$($done)* {
            docs [$($doc)*] flag [long $(, $($arg)*)?] name [$name] ty [$ty]
            flag_ty [Option<$ty>] default [$default] example []
        }] $($rest)*);
    };

    ($($entries:tt)*) => {
        settings!(@munch [] $($entries)*);
    };
}

settings! {
    /// Address to listen on.
    ///
    /// Port 0 picks a free port; the log line `listening on` names it.
    bind: String = "127.0.0.1:1234".into();

    /// Directory of the sled database holding every room's op log and snapshots.
    data_dir: PathBuf = PathBuf::from("./data");

    /// Largest WebSocket frame (and HTTP body) accepted, in bytes; a larger frame closes
    /// its session with 1009, a larger body gets 413.
    ///
    /// A client's first sync sends its whole document in one frame, so this must exceed
    /// the biggest document a client may send at once.
    max_frame_bytes: usize = 16 * 1024 * 1024;

    /// Group commit: at most one flush (fsync) per this many milliseconds.
    ///
    /// The flusher waits this long after the first unflushed append, then makes
    /// everything appended so far durable with one flush. A seq is shown to clients only
    /// once durable. 0: flush as soon as anything is appended (no batching).
    flush_interval_ms: u64 = 5;

    /// A room with no sessions for this many milliseconds is flushed and unloaded.
    ///
    /// The next use reloads it. 0: as soon as it is unused.
    room_idle_ms: u64 = 30_000;

    /// Awareness entries (presence, cursors) not renewed for this many milliseconds are
    /// removed.
    ///
    /// Yjs clients renew theirs every 15 s.
    awareness_timeout_ms: u64 = 30_000;

    /// Presence renewals (moving cursors) are merged and sent once per this many
    /// milliseconds; 0 relays every update at once.
    ///
    /// Each tick the room sends the latest state of every client that changed, as one
    /// update shared by every receiver. A client's first state and removals go out at once.
    awareness_tick_ms: u64 = 30;

    /// Largest presence state (its JSON, in bytes) a client may announce; larger ones are
    /// refused.
    awareness_max_state_bytes: usize = 64 * 1024;

    /// Most entries in one awareness update; a frame with more is refused whole.
    awareness_max_entries: usize = 100;

    /// Most presence client ids one session may announce (a tab is one; more are
    /// refused).
    awareness_max_clients: usize = 16;

    /// Most bytes a room's presence states may add up to (each counts its JSON plus 32),
    /// capped at half of `outbound_queue_bytes`.
    ///
    /// The cap keeps the full presence a joiner receives within its outbound queue.
    awareness_max_room_bytes: usize = 4 * 1024 * 1024;

    /// A room writes a snapshot of its full state after this many logged updates.
    snapshot_every: u64 = 1_000;

    /// Every this many updates a snapshot is also kept as a checkpoint, for time travel
    /// (`?at=`) beyond the replay window: a seq older than the window is reachable
    /// exactly at a checkpoint's seq, and a replay starts from the nearest checkpoint.
    /// 0 keeps none. Kept by sled, PostgreSQL, and in cluster mode by the PostgreSQL
    /// archive.
    checkpoint_every: u64 = 10_000;

    /// How long checkpoints are kept, in milliseconds (default 30 days).
    checkpoint_retention_ms: u64 = 2_592_000_000;

    /// Updates kept in the log after a snapshot; at least `snapshot_every`.
    ///
    /// The most recent updates stay (the replay window that reconnecting clients are
    /// served from); older records are deleted.
    replay_window: u64 = 10_000;

    /// WebSocket ping interval, in milliseconds.
    heartbeat_interval_ms: u64 = 15_000;

    /// A WebSocket session that sends nothing (not even a pong) for this many
    /// milliseconds is closed with 4000; longer than `heartbeat_interval_ms`.
    client_timeout_ms: u64 = 30_000;

    /// Frames a WebSocket session may have queued for sending before it is closed with
    /// 4008 ("slow consumer").
    ///
    /// Its client re-syncs when it reconnects.
    outbound_queue_messages: usize = 4_096;

    /// Interval of the comment heartbeat on SSE streams, in milliseconds (keeps proxies
    /// from closing idle streams).
    sse_heartbeat_ms: u64 = 15_000;

    /// The `retry:` hint sent to EventSource clients: how soon to reconnect, in
    /// milliseconds (0: at once).
    sse_retry_ms: u64 = 1_000;

    /// Events an SSE stream may have queued before it is ended.
    ///
    /// Its client then resumes from its Last-Event-ID.
    sse_queue_events: usize = 4_096;

    /// Longest a long poll is held, in milliseconds (0: no long polling).
    ///
    /// A poll's `wait` is capped to this; with 0 every poll is answered at once.
    poll_max_wait_ms: u64 = 30_000;

    /// Most updates in one poll answer; the client continues from the last seq it got.
    poll_batch_limit: usize = 1_000;

    /// Threads that run room actors; 0 means one per CPU; at most 1024.
    room_threads: usize = 0;

    /// Threads that run HTTP and WebSocket sessions; 0 means one per CPU; at most 1024.
    http_workers: usize = 0;

    /// Bytes a WebSocket session or an SSE stream may have queued for sending before it is
    /// closed as a slow consumer; at least `max_frame_bytes` (or `max_doc_bytes`, if
    /// smaller).
    ///
    /// Whichever of this and `outbound_queue_messages` is reached first counts. One frame
    /// larger than this (a big document's first sync) is still sent when nothing else is
    /// queued. The lower bound is the largest update a client may send, so that every
    /// accepted update can be queued for the other sessions.
    outbound_queue_bytes: usize = 16 * 1024 * 1024;

    /// Long-lived connections (WebSocket sessions, SSE streams and held long polls) the
    /// server holds at once; beyond it new ones get 503 with `Retry-After`.
    max_connections: usize = 20_000;

    /// Long-lived connections one room holds at once; beyond it new ones get 503 with
    /// `Retry-After`.
    max_connections_per_room: usize = 5_000;

    /// Long-lived connections one client IP address (the TCP peer's; IPv6 per /64) holds
    /// at once; beyond it new ones get 503 with `Retry-After`.
    ///
    /// Proxy headers are not trusted. IPv6 clients are counted per /64, the block one host
    /// typically holds.
    max_connections_per_ip: usize = 500;

    /// New long-lived connections admitted per second, sustained (the server's token
    /// bucket).
    ///
    /// A reconnect storm beyond `admission_rate` and `admission_burst` gets 503 with
    /// `Retry-After` and spreads itself out instead of melting the server.
    admission_rate: u32 = 1_000;

    /// New long-lived connections admitted in a burst (the server's token bucket).
    admission_burst: u32 = 1_000;

    /// New long-lived connections admitted per second from one client (IPv4 address,
    /// IPv6 /64), sustained.
    ///
    /// Each client's bucket is checked before the server's, so that an address that keeps
    /// being refused spends none of the tokens everyone else needs.
    admission_rate_per_ip: u32 = 100;

    /// New long-lived connections admitted in a burst from one client (IPv4 address, IPv6
    /// /64).
    admission_burst_per_ip: u32 = 200;

    /// Plain HTTP requests to `/rooms/…` per second from one client (IPv4 address, IPv6
    /// /64), sustained; beyond the burst, 429 with `Retry-After`.
    ///
    /// Metadata, state, polls and POSTs count; checked before the access token.
    http_rate_per_ip: u32 = 200;

    /// Plain HTTP requests to `/rooms/…` in a burst from one client (IPv4 address, IPv6
    /// /64).
    http_burst_per_ip: u32 = 400;

    /// Rooms loaded in memory at once; a request that needs one more gets 503 with
    /// `Retry-After`.
    ///
    /// A write, a WebSocket or SSE join, a long poll and a read of a stored room need
    /// their room loaded; reading a room that does not exist loads nothing.
    max_rooms: usize = 10_000;

    /// Inbound frames per second per WebSocket session, sustained (a token bucket).
    ///
    /// A session that exhausts `session_burst` is closed with 1008 ("rate limit").
    session_rate: u32 = 200;

    /// Inbound frames per WebSocket session in a burst; beyond it the session is closed
    /// with 1008 ("rate limit").
    session_burst: u32 = 2_000;

    /// Inbound bytes per second per WebSocket session, sustained (a token bucket).
    ///
    /// A session that exhausts `session_bytes_burst` is closed with 1008 ("rate limit").
    session_bytes_rate: u32 = 1024 * 1024;

    /// Inbound bytes per WebSocket session in a burst, at least `max_frame_bytes` (so
    /// that one largest frame always fits); beyond it the session is closed with 1008.
    session_bytes_burst: u32 = 32 * 1024 * 1024;

    /// Largest document a room may grow to, in bytes of its encoded state; writes past it
    /// are refused, the room stays readable.
    ///
    /// The size is estimated as the last snapshot plus the updates since. A refused
    /// WebSocket write gets y-protocols' permission-denied message, a POST 413
    /// `document_too_large`.
    max_doc_bytes: usize = 64 * 1024 * 1024;

    /// HS256 secret for access tokens (JWT), at least 16 bytes, from the file or
    /// `COLLABD_AUTH_SECRET` only; unset, every room is open to everyone.
    ///
    /// Unset, the server warns at startup. There is no `--auth-secret`: flags are visible
    /// in `ps`.
    #[no_flag]
    auth_secret: Option<String> = None, example "change-me-to-32-random-bytes.....";

    /// Browser origins allowed on every route (403 `origin_not_allowed` for others), as
    /// `scheme://host[:port]`; empty: any origin (CORS with `*`).
    ///
    /// WebSocket, SSE, polling, state and writes alike; listed origins get CORS answers.
    /// An origin is `scheme://host[:port]` (an exact match of the `Origin` header, e.g.
    /// `https://app.example.com`), without a path, not even a trailing `/`. Requests
    /// without an `Origin` header (non-browser clients) are not affected. Several:
    /// `COLLABD_ALLOWED_ORIGINS=https://a.example,https://b.example` or
    /// `--allowed-origins https://a.example,https://b.example`.
    #[arg(value_delimiter = ',')]
    allowed_origins: Vec<String> = Vec::new();

    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges
    /// (`10.0.0.0/8`, `::1`); empty: none (the TCP peer is the client).
    ///
    /// A request from one of them is counted against the per-IP limits
    /// (`max_connections_per_ip`, `admission_rate_per_ip`, `http_rate_per_ip`) under the
    /// rightmost address of its `X-Forwarded-For` that is not itself a trusted proxy.
    /// Several: `--trusted-proxies 127.0.0.1,10.0.0.0/8` or
    /// `COLLABD_TRUSTED_PROXIES=127.0.0.1,10.0.0.0/8`.
    #[arg(value_delimiter = ',')]
    trusted_proxies: Vec<String> = Vec::new();

    /// When set, a token is accepted only if its `aud` claim (a string or an array of
    /// strings) contains this value (else 401 `token_wrong_audience`).
    ///
    /// Unset: `aud` is not checked, and a token may carry one or not. Needs
    /// `auth_secret`.
    token_audience: Option<String> = None, example "collabd";

    /// When set, a token is accepted only if its `iss` claim is this value (else 401
    /// `token_wrong_issuer`).
    ///
    /// Unset: `iss` is not checked, and a token may carry one or not. Needs
    /// `auth_secret`.
    token_issuer: Option<String> = None, example "https://login.example.com";

    /// PostgreSQL connection URL: when set, the op log and snapshots live in this database
    /// instead of sled (`data_dir` is not opened).
    ///
    /// `postgres://user:password@host:5432/database`. The schema is created and migrated
    /// at startup (or beforehand by `collabd migrate`). An ack means the transaction
    /// holding the update has committed; with `synchronous_commit` or `fsync` off on the
    /// server, collabd says at startup that a commit is not on disk. Needs the `postgres`
    /// feature (on by default).
    postgres_url: Option<String> = None, example "postgres://collabd@localhost:5432/collabd";

    /// Redis URL: when set, the node runs in cluster mode. Several nodes started with the
    /// same `redis_url` serve the same rooms, behind a load balancer without stickiness.
    ///
    /// Redis holds every room's log, seq counter and snapshot (sled is not opened); an ack
    /// means Redis has the entry. With `postgres_url` too, PostgreSQL is the archive
    /// behind Redis (see `archive_after`, `archive_idle_ms`). Start Redis with `appendonly yes` and `appendfsync always` for an
    /// ack to mean "on disk" (collabd says at startup what it means otherwise), and a
    /// `maxmemory-policy` that never evicts (`noeviction`; `allkeys-*` is refused). A
    /// node of a Redis Cluster works too; separate several seed URLs with commas.
    redis_url: Option<String> = None, example "redis://127.0.0.1:6379";

    /// Webhook URL (`http://…`): after changes, collabd POSTs `{room, from_seq, to_seq, id}`
    /// there, at most once per `webhook_debounce_ms` per room, until it answers 2xx.
    ///
    /// At least once, driven by the op log: each room's delivery cursor is stored
    /// durably, so a restart or a receiver outage loses no change; retries back off
    /// exponentially with jitter. Each delivery carries an `Idempotency-Key`
    /// (`room:from:to`) and, with `webhook_secret`, an HMAC-SHA256 signature. A
    /// deleted room's deletion is delivered instead of its deleted changes. Every store;
    /// in cluster mode one node at a time delivers a room. Plain http: put a
    /// TLS-terminating proxy in front of an https receiver.
    webhook_url: Option<String> = None, example "http://127.0.0.1:8080/collabd";

    /// Secret for the webhook signature: `X-Collabd-Signature: sha256=HEX`, the
    /// HMAC-SHA256 of `TIMESTAMP.BODY` with `TIMESTAMP` from `X-Collabd-Timestamp`.
    webhook_secret: Option<String> = None, example "change-me";

    /// Shortest time between two webhook deliveries of one room, in milliseconds.
    webhook_debounce_ms: u64 = 1_000;

    /// Webhook deliveries also carry the room's root types as JSON at `to_seq` (`state`).
    webhook_state: bool = false;

    /// Cluster mode with `postgres_url`: a room's entries in Redis beyond what PostgreSQL
    /// archived, before the node that holds the room's archive lease archives them.
    ///
    /// PostgreSQL is then the archive: every update with its seq, and the snapshots.
    /// Redis keeps the unarchived entries and about this many archived ones (for quick
    /// catch-ups); older ones are trimmed from Redis only after the PostgreSQL commit
    /// that holds them.
    archive_after: u64 = 1_000;

    /// Cluster mode with `postgres_url`: milliseconds without a write after which a room
    /// whose log is fully archived leaves Redis entirely.
    ///
    /// Redis' memory is then bounded by the rooms in use, not by every room ever written.
    /// A room not in Redis loads from PostgreSQL, exactly, and its seqs go on where they
    /// stopped.
    archive_idle_ms: u64 = 600_000;

    /// Longest a hook of an embedding application may run, in milliseconds.
    ///
    /// Applies to every hook (authenticate, load, change, connect, disconnect; see the
    /// README's "Embedding"). A hook that runs longer fails what it was called for (the
    /// request, the room's load) and nothing else.
    hook_timeout_ms: u64 = 5_000;

    /// Most memory the store's page cache may use, in bytes.
    ///
    /// sled keeps recently used pages of the op log and the snapshots in memory, up to
    /// this. Rooms themselves are in memory while loaded, whatever this says; this bounds
    /// the store's share. A small host (an app embedding collabd) can set it lower.
    store_cache_bytes: u64 = 64 * 1024 * 1024;
}

/// Most threads `room_threads` and `http_workers` may ask for; more is taken for a typo
/// (spawning them would fail, and fail late).
pub const MAX_THREADS: usize = 1024;

/// Most frames or events a queue may be bounded to (tokio's channels cannot count more).
pub const MAX_QUEUE_LEN: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// Why the settings could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or parsed.
    #[cfg(feature = "cli")]
    #[error("configuration: {0}")]
    Source(#[from] config::ConfigError),
    /// A setting is out of range, or settings contradict each other.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "collabd.toml";

/// Environment variables `COLLABD_<FIELD>` set the field.
#[cfg(feature = "cli")]
const ENV_PREFIX: &str = "COLLABD";

/// Whether `key` names a field of [`Settings`].
#[cfg(feature = "cli")]
fn is_setting(key: &str) -> bool {
    Settings::NAMES.contains(&key)
}

/// Splits the `COLLABD_*` variables of `env` into those that name a setting (matched
/// case-insensitively, as the `config` crate does) and the names of the others. Other
/// variables are left out. A setting's value must be UTF-8.
#[cfg(feature = "cli")]
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

#[cfg(feature = "cli")]
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
                    .with_list_parse_key("allowed_origins")
                    .with_list_parse_key("trusted_proxies"),
            )
            .add_source(flags)
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok((settings, ignored))
    }
}

impl Settings {
    /// Checks every setting alone and against the others; the error names every
    /// violation and the settings involved.
    ///
    /// Zero is refused where it would panic (timers, channels), stall (a poll batch of
    /// nothing) or refuse everything (limits, rates). It is allowed where it means
    /// something: `flush_interval_ms` (flush at once), `room_idle_ms` (unload at once),
    /// `sse_retry_ms` (reconnect at once), `poll_max_wait_ms` (no long polling),
    /// `awareness_tick_ms` (relay presence at once),
    /// `room_threads` and `http_workers` (one per CPU).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("hook_timeout_ms", self.hook_timeout_ms),
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
        if let Some(url) = &self.webhook_url
            && !url.starts_with("http://")
        {
            errors.push(format!(
                "webhook_url ({url:?}) must be an http:// URL (put a TLS-terminating proxy \
                 in front of an https receiver)"
            ));
        }
        if self.archive_after == 0 {
            errors.push("archive_after must be greater than 0".into());
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
        for proxy in &self.trusted_proxies {
            if parse_net(proxy).is_none() {
                errors.push(format!(
                    "trusted_proxies: {proxy:?} is not an address or a CIDR range (10.0.0.0/8)"
                ));
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

    /// `hook_timeout_ms` as a duration.
    pub fn hook_timeout(&self) -> Duration {
        Duration::from_millis(self.hook_timeout_ms)
    }

    /// `flush_interval_ms` as a duration.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
    /// `room_idle_ms` as a duration.
    pub fn room_idle(&self) -> Duration {
        Duration::from_millis(self.room_idle_ms)
    }
    /// The bytes a room's presence may add up to: `awareness_max_room_bytes`, capped at
    /// half of `outbound_queue_bytes`.
    pub fn presence_room_bytes(&self) -> usize {
        self.awareness_max_room_bytes
            .min(self.outbound_queue_bytes / 2)
    }

    /// `awareness_tick_ms` as a duration.
    pub fn awareness_tick(&self) -> Duration {
        Duration::from_millis(self.awareness_tick_ms)
    }
    /// `awareness_timeout_ms` as a duration.
    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_millis(self.awareness_timeout_ms)
    }
    /// `heartbeat_interval_ms` as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    /// `sse_heartbeat_ms` as a duration.
    pub fn sse_heartbeat(&self) -> Duration {
        Duration::from_millis(self.sse_heartbeat_ms)
    }
    /// `poll_max_wait_ms` as a duration.
    pub fn poll_max_wait(&self) -> Duration {
        Duration::from_millis(self.poll_max_wait_ms)
    }
    /// `client_timeout_ms` as a duration.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }
}

/// An address or a CIDR range: the network address and the prefix length.
pub fn parse_net(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (address, bits) = match text.trim().split_once('/') {
        Some((address, bits)) => (address, Some(bits.parse::<u8>().ok()?)),
        None => (text.trim(), None),
    };
    let address: std::net::IpAddr = address.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((address.to_canonical(), bits))
}

/// Whether `ip` lies in the network `net` (from [`parse_net`]).
pub fn in_net(ip: std::net::IpAddr, (net, bits): (std::net::IpAddr, u8)) -> bool {
    use std::net::IpAddr;
    match (ip.to_canonical(), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
#[test]
fn networks_match_addresses_and_ranges() {
    let net = |t: &str| parse_net(t).unwrap();
    let ip = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
    assert!(in_net(ip("10.1.2.3"), net("10.0.0.0/8")));
    assert!(!in_net(ip("11.1.2.3"), net("10.0.0.0/8")));
    assert!(in_net(ip("127.0.0.1"), net("127.0.0.1")));
    assert!(
        in_net(ip("::ffff:127.0.0.1"), net("127.0.0.1")),
        "a mapped v4 peer"
    );
    assert!(in_net(ip("fd00::1"), net("fd00::/8")));
    assert!(in_net(ip("1.2.3.4"), net("0.0.0.0/0")));
    assert!(!in_net(ip("::1"), net("127.0.0.1")));
    for bad in ["", "10.0.0.0/33", "x", "::1/129", "10.0.0.0/a"] {
        assert!(parse_net(bad).is_none(), "{bad}");
    }
}

#[cfg(all(test, feature = "cli"))]
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

    /// Checks that the part of the file at `path` (relative to the crate) between the
    /// lines `markers` (or all of it) is `expected`; with `UPDATE_DOCS=1`, writes it.
    fn check_generated(path: &str, markers: Option<(&str, &str)>, expected: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&path).unwrap();
        let (before, actual, after) = match markers {
            None => ("", text.as_str(), ""),
            Some((begin, end)) => {
                let start =
                    text.find(&format!("{begin}\n")).expect("begin marker") + begin.len() + 1;
                let stop = start + text[start..].find(&format!("{end}\n")).expect("end marker");
                (&text[..start], &text[start..stop], &text[stop..])
            }
        };
        if actual == expected {
            return;
        }
        if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
            std::fs::write(&path, format!("{before}{expected}{after}")).unwrap();
            return;
        }
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or(actual.lines().count().min(expected.lines().count()));
        panic!(
            "{} is not what the declarations in src/config.rs generate (first difference \
             at line {} of the generated part):\n  file:      {:?}\n  generated: {:?}\n\
             Edit the declarations, not the file, then run UPDATE_DOCS=1 cargo test --lib config",
            path.display(),
            line + 1,
            actual.lines().nth(line).unwrap_or("<end>"),
            expected.lines().nth(line).unwrap_or("<end>"),
        );
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        check_generated("collabd.example.toml", None, &Settings::reference_toml());
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("collabd.example.toml");
        let from_file = Settings::load(Some(&example), &Overrides::default()).unwrap();
        assert_eq!(from_file, Settings::default());
    }

    #[test]
    fn the_readme_table_lists_every_setting_as_declared() {
        let table = Settings::markdown_table();
        for name in Settings::NAMES {
            assert!(table.contains(&format!("| `{name}` |")), "{name}");
        }
        check_generated(
            "README.md",
            Some((docs::TABLE_BEGIN, docs::TABLE_END)),
            &table,
        );
    }

    #[test]
    fn every_setting_is_documented_and_has_a_flag_but_the_secret() {
        let command = <Overrides as clap::Args>::augment_args(clap::Command::new("collabd"));
        command.clone().debug_assert();
        let flags: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        let expected: Vec<&str> = Settings::NAMES
            .iter()
            .copied()
            .filter(|&name| name != "auth_secret")
            .collect();
        assert_eq!(flags, expected);
        for d in Settings::declared() {
            let summary = d.summary();
            assert!(summary.ends_with('.'), "{}: {summary:?}", d.name);
            assert!(d.default.is_some() || d.example.is_some(), "{}", d.name);
        }
        let fields = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(fields.as_object().unwrap().len(), Settings::NAMES.len());
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
