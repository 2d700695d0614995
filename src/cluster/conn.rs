//! The node's connections to Redis: one multiplexed command connection (a single Redis,
//! or a Redis Cluster client that routes each room's keys to its shard), one pub/sub
//! connection, and what happens when either goes away: the node says it is degraded,
//! reconnects with backoff and jitter, and tells every room to catch up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use log::{error, info, warn};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, Value};
use tokio::sync::{Notify, mpsc};

use super::Cluster;
use crate::store::StoreError;

/// How long one command may take before the connection counts as gone.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A live command connection.
#[derive(Clone)]
enum Live {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Live {
    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Live::Single(c) => c.req_packed_command(cmd).await,
            Live::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    async fn pipeline(&mut self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        let count = pipe.len();
        match self {
            Live::Single(c) => c.req_packed_commands(pipe, 0, count).await,
            Live::Cluster(c) => c.req_packed_commands(pipe, 0, count).await,
        }
    }
}

/// Where to connect.
enum Target {
    Single(Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// The command connection, shared by every task of the Redis thread (cheap to clone).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    target: Target,
    /// The first URL: pub/sub and the persistence checks of a single Redis.
    first: Client,
    urls: Vec<String>,
    live: Mutex<Option<Live>>,
    /// Why Redis is unreachable, while it is.
    down: Mutex<Option<String>>,
    reconnecting: AtomicBool,
    /// Signalled when the command connection came back.
    back: Notify,
}

impl Conn {
    /// Connects to `urls` (comma-separated); a Redis with `cluster_enabled:1` is driven as
    /// a Redis Cluster.
    pub async fn connect(urls: &str) -> Result<Conn, String> {
        let urls: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let first_url = urls.first().ok_or("redis_url is empty")?;
        let first = Client::open(first_url.as_str()).map_err(|e| format!("redis_url: {e}"))?;
        let mut probe = first
            .get_multiplexed_async_connection_with_config(&config())
            .await
            .map_err(|e| format!("cannot reach Redis at {first_url}: {e}"))?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut probe)
            .await
            .map_err(|e| format!("Redis at {first_url}: {e}"))?;
        let is_cluster = info.contains("cluster_enabled:1");
        let (target, live) = if is_cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .build()
                .map_err(|e| format!("redis_url: {e}"))?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| format!("cannot reach the Redis Cluster at {first_url}: {e}"))?;
            (Target::Cluster(Box::new(client)), Live::Cluster(conn))
        } else {
            (Target::Single(first.clone()), Live::Single(probe))
        };
        Ok(Conn {
            inner: Arc::new(ConnInner {
                target,
                first,
                urls,
                live: Mutex::new(Some(live)),
                down: Mutex::new(None),
                reconnecting: AtomicBool::new(false),
                back: Notify::new(),
            }),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }

    pub fn describe(&self) -> String {
        let kind = if self.is_cluster() {
            "Redis Cluster"
        } else {
            "Redis"
        };
        format!("{} ({kind})", self.inner.urls.join(","))
    }

    /// Why Redis cannot be reached now, while it cannot.
    pub fn down(&self) -> Option<String> {
        self.inner.down.lock().unwrap().clone()
    }

    /// A plain connection to the first URL (checks, pub/sub).
    pub fn first(&self) -> &Client {
        &self.inner.first
    }

    /// The masters' addresses (`host:port`): every master of a Redis Cluster, else the
    /// one Redis.
    pub async fn master_addrs(&self) -> Result<Vec<String>, String> {
        let first = self.first();
        let addr = first.get_connection_info().addr().to_string();
        if !self.is_cluster() {
            return Ok(vec![addr]);
        }
        let mut c = first
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis at {addr}: {e}"))?;
        let nodes: Value = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .map_err(|e| format!("CLUSTER NODES at {addr}: {e}"))?;
        let text = match nodes {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            other => return Err(format!("CLUSTER NODES answered {other:?}")),
        };
        Ok(text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags = fields.get(2)?;
                (flags.contains("master") && !flags.contains("fail"))
                    .then(|| fields.get(1)?.split('@').next().map(str::to_string))?
            })
            .collect())
    }

    /// A client for each master (see [`Conn::master_addrs`]).
    pub async fn masters(&self) -> Result<Vec<Client>, StoreError> {
        let addrs = self.master_addrs().await.map_err(StoreError::Unavailable)?;
        addrs
            .iter()
            .map(|a| {
                Client::open(format!("redis://{a}")).map_err(|e| StoreError::Failed(e.to_string()))
            })
            .collect()
    }

    /// Runs one command. An error reply (a script's `redis.error_reply`, a failed
    /// command) is an error here: redis-rs hands it back as a value.
    pub async fn query(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        let mut live = self.live()?;
        live.query(cmd)
            .await
            .and_then(Value::extract_error)
            .map_err(|e| self.classify(e))
    }

    /// Runs a pipeline (one round trip; in a Redis Cluster every key in one slot); an
    /// error reply to any of its commands is an error.
    pub async fn pipeline(&self, pipe: &Pipeline) -> Result<Vec<Value>, StoreError> {
        let mut live = self.live()?;
        live.pipeline(pipe)
            .await
            .and_then(|values| values.into_iter().map(Value::extract_error).collect())
            .map_err(|e| self.classify(e))
    }

    fn live(&self) -> Result<Live, StoreError> {
        if let Some(why) = self.down() {
            return Err(StoreError::Unavailable(why));
        }
        self.inner
            .live
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| StoreError::Unavailable("not connected to Redis".into()))
    }

    /// A Redis error as the store's: unreachable (retry later) or not.
    fn classify(&self, e: RedisError) -> StoreError {
        let transient = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_cluster_error()
            || matches!(e.kind(), ErrorKind::Io | ErrorKind::Client)
            || e.code().is_some_and(|code| {
                matches!(
                    code,
                    "OOM"
                        | "LOADING"
                        | "BUSY"
                        | "TRYAGAIN"
                        | "CLUSTERDOWN"
                        | "MASTERDOWN"
                        | "READONLY"
                        | "MISCONF"
                        | "NOREPLICAS"
                )
            });
        if transient {
            StoreError::Unavailable(format!("Redis: {e}"))
        } else {
            StoreError::Failed(format!("Redis: {e}"))
        }
    }

    /// A command failed with `e`: if Redis is unreachable, the node is degraded until a
    /// reconnect (with backoff and jitter) succeeds.
    pub fn failed(&self, e: &StoreError) {
        let StoreError::Unavailable(why) = e else {
            return;
        };
        {
            let mut down = self.inner.down.lock().unwrap();
            if down.is_none() {
                error!("Redis is unreachable, refusing writes until it is back: {why}");
                *down = Some(why.clone());
            }
        }
        if self.inner.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let conn = self.clone();
        tokio::spawn(async move { conn.reconnect().await });
    }

    async fn reconnect(self) {
        let mut attempt = 0;
        loop {
            tokio::time::sleep(super::backoff(attempt)).await;
            attempt += 1;
            match self.fresh().await {
                Ok(live) => {
                    *self.inner.live.lock().unwrap() = Some(live);
                    *self.inner.down.lock().unwrap() = None;
                    self.inner.reconnecting.store(false, Ordering::SeqCst);
                    info!("Redis is back after {attempt} attempts");
                    self.inner.back.notify_waiters();
                    return;
                }
                Err(e) => {
                    *self.inner.down.lock().unwrap() = Some(format!("Redis: {e}"));
                    if attempt % 10 == 1 {
                        warn!("Redis still unreachable (attempt {attempt}): {e}");
                    }
                }
            }
        }
    }

    /// A new command connection that answered PING.
    async fn fresh(&self) -> Result<Live, RedisError> {
        let mut live = match &self.inner.target {
            Target::Single(client) => Live::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config())
                    .await?,
            ),
            Target::Cluster(client) => Live::Cluster(client.get_async_connection().await?),
        };
        live.query(&redis::cmd("PING")).await?;
        Ok(live)
    }

    /// Waits until the command connection comes back from an outage.
    pub async fn back(&self) {
        self.inner.back.notified().await
    }
}

fn config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
}

/// What rooms ask of the pub/sub connection.
pub enum PubSubCommand {
    Subscribe {
        channel: String,
        done: std::sync::mpsc::SyncSender<()>,
    },
    Unsubscribe {
        channel: String,
    },
}

/// The node's pub/sub connection: subscribes the channels of loaded rooms, hands their
/// messages to the rooms, and after any outage (its own or the command connection's)
/// subscribes everything again and tells every room to catch up. Runs for the life of
/// the process on the Redis thread.
pub async fn run_pubsub(cluster: Cluster, mut commands: mpsc::UnboundedReceiver<PubSubCommand>) {
    let conn = cluster.conn().clone();
    let mut attempt = 0u32;
    let mut first = true;
    loop {
        let pubsub = match conn.first().get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                if attempt.is_multiple_of(10) {
                    warn!("Redis pub/sub connection failed (attempt {attempt}): {e}");
                }
                tokio::time::sleep(super::backoff(attempt)).await;
                attempt += 1;
                // Subscriptions asked for meanwhile are made once connected.
                while let Ok(command) = commands.try_recv() {
                    if let PubSubCommand::Subscribe { done, .. } = command {
                        let _ = done.send(());
                    }
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for channel in cluster.channels() {
            if sink.subscribe(&channel).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            tokio::time::sleep(super::backoff(attempt)).await;
            attempt += 1;
            continue;
        }
        if !first || attempt > 0 {
            info!("Redis pub/sub connected again; rooms catch up");
            cluster.reconnected();
        } else {
            // Revocations made before the subscription took hold are read instead.
            let again = cluster.clone();
            tokio::spawn(async move { again.reload_revocations().await });
        }
        first = false;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(PubSubCommand::Subscribe { channel, done }) => {
                        let subscribed = sink.subscribe(&channel).await;
                        let _ = done.send(());
                        if subscribed.is_err() {
                            break;
                        }
                    }
                    Some(PubSubCommand::Unsubscribe { channel }) => {
                        if sink.unsubscribe(&channel).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                message = stream.next() => match message {
                    Some(message) => {
                        let channel = message.get_channel_name().to_string();
                        if channel == super::revoke::KEY {
                            match super::revoke::decode(message.get_payload_bytes()) {
                                Some((key, value)) => cluster.revoked(&key, value),
                                None => warn!("unreadable revocation on Redis"),
                            }
                            continue;
                        }
                        let decoded =
                            super::roomlog::decode_message(&channel, message.get_payload_bytes());
                        match decoded {
                            // Our own presence, echoed by Redis.
                            Some((_, super::FromCluster::Awareness { node, .. }))
                                if node == cluster.node() => {}
                            Some((room, decoded)) => cluster.deliver(room, decoded),
                            None => warn!("unreadable message on Redis channel {channel:?}"),
                        }
                    }
                    None => break,
                },
                () = conn.back() => {
                    // Commands came back from an outage: the channel may have lost
                    // messages too (same server); rooms catch up.
                    cluster.reconnected();
                }
            }
        }
        warn!("Redis pub/sub connection lost; reconnecting");
        attempt = 1;
        tokio::time::sleep(super::backoff(0)).await;
    }
}
