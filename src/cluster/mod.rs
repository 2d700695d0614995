//! Cluster mode: several nodes serve the same rooms through Redis (`redis_url`).
//!
//! # Model
//!
//! Redis is each room's log and seq authority. One Lua script ([`roomlog::APPEND`])
//! increments the room's counter, appends the update to the room's stream with that seq
//! as its entry id (`<seq>-0`, so seqs stay dense u64s, as on one node) and publishes it
//! on the room's channel, atomically. The node that sent the update learns its seq from
//! the script's reply; every node that has the room loaded learns it from the channel.
//! A room applies entries strictly in seq order ([`crate::room::sequencer`]): an entry
//! whose predecessor has not arrived waits, and a gap that persists (a message lost with
//! a pub/sub connection, a node that lagged) triggers a catch-up read of the stream
//! (`XRANGE`), or of the snapshot when the stream no longer reaches back that far. Never
//! a silent skip.
//!
//! Why pub/sub and not one blocking `XREAD` over every loaded room's stream: a Redis
//! Cluster refuses a multi-key `XREAD` whose keys live in different slots (every room is
//! its own slot, by its hash tag), so a batched blocking read cannot span rooms there.
//! One pub/sub connection per node carries every room's entries (Centrifugo does the
//! same: publish + stream, the stream for recovery). The stream stays the record; the
//! channel only says "something is new" and carries it, so a lost message costs a
//! catch-up read, never data.
//!
//! # Keys (one hash tag per room: a room never spans Redis Cluster shards)
//!
//! | key | type | what |
//! |---|---|---|
//! | `collabd:{ROOM}:seq` | string | the room's counter: its newest seq |
//! | `collabd:{ROOM}:log` | stream | entry `<seq>-0`: fields `u` (update), `n` (node), `t` (ticket), `w` (ms since the epoch), `a` (the author, when there is one) |
//! | `collabd:{ROOM}:snap` | hash | `seq`, `state` (Yjs update v1), `at` (ms since the epoch) |
//! | `collabd:{ROOM}:epoch` | hash | `number`, `base`, `graveyard`: the room's epoch once deleted (see [`crate::store::Epoch`]) |
//! | `collabd:{ROOM}:hook` | hash | `delivered`, `target`: webhook delivery state (the append script raises `target`) |
//! | `collabd:{ROOM}:hooklease` | string | the node delivering the room's webhooks, with an expiry |
//! | `collabd:revocations` | hash | revoked subjects and tokens (see [`revoke`]) |
//!
//! Channel `collabd:{ROOM}`: `u<seq>:<node>:<ticket>:<update>` for each entry,
//! `a<node>:<session>:<awareness update>` for presence (ephemeral, no seq), and
//! `d<number>:<base>:` when the room is deleted. Channel `collabd:revocations`: each
//! revocation.
//!
//! # Deleting a room
//!
//! [`roomlog::DELETE`] removes the room's keys, sets its counter to the new epoch's base
//! and records the epoch, unless a node wrote since the deleting node read the room (it
//! then reads again and retries). Every append carries the epoch its room instance
//! belongs to, and [`roomlog::APPEND`] refuses one of an epoch that is over: an instance
//! that missed the channel's `d` message learns of the deletion from its next append or
//! catch-up read, and nothing written on a deleted document reaches the new epoch. With
//! the archive, PostgreSQL forgets the room after Redis did; what an archiver wrote there
//! for a deleted epoch meanwhile is below the new base, and reads ignore it.
//!
//! # Durability
//!
//! An ack (and any seq shown) means Redis replied to the script or published its entry.
//! With `appendonly yes` and `appendfsync always`, Redis fsyncs its AOF before it sends
//! any reply or pub/sub message of that event loop iteration, so a seq shown is on disk.
//! Anything less is said loudly at startup ([`checks`]); a `maxmemory-policy` that may
//! evict room keys is refused.
//!
//! # Threads
//!
//! Every Redis call runs on one thread of its own (`collabd-redis`, a tokio runtime):
//! rooms hand it appends and get the answers as messages; the store's blocking reads
//! ([`crate::store::redis::RedisStore`]) wait for it from the blocking pool. A room
//! thread never waits on the network.

#[cfg(feature = "postgres")]
pub mod archive;
#[cfg(not(feature = "postgres"))]
#[path = "archive_off.rs"]
pub mod archive;
pub mod checks;
mod conn;
pub mod revoke;
pub mod roomlog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::{Message, Recipient};
use bytes::Bytes;
use log::{info, warn};
use tokio::sync::mpsc;

pub use conn::Conn;

use crate::store::{Snapshot, StoreError};

/// One entry of a room's log as the cluster carries it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// The node that appended it, and its ticket there (see [`Cluster::ticket`]).
    pub node: u64,
    pub ticket: u64,
    pub update: Bytes,
    /// When Redis took it, ms since the epoch (0: not known).
    pub at_ms: u64,
    /// Who wrote it (the writer's token `sub`), when it was read from the stream.
    pub author: Option<String>,
}

/// What the cluster tells a room.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum FromCluster {
    /// New entries (from the room's channel), in seq order.
    Entries(Vec<Entry>),
    /// The answer to this room's append with `ticket`.
    Appended {
        ticket: u64,
        result: Result<u64, StoreError>,
    },
    /// The answer to a catch-up read: the snapshot when the stream no longer reaches back
    /// to what was asked, then the entries after.
    CaughtUp {
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
    },
    /// A catch-up read failed (Redis away); the room asks again later.
    CatchUpFailed,
    /// A presence update from `session` on another node.
    Awareness {
        node: u64,
        session: u64,
        update: Bytes,
    },
    /// A connection to Redis came back: messages may have been missed.
    Reconnected,
    /// The room was deleted: epoch `number` began at seq `base` (see
    /// [`crate::store::Epoch`]). A room instance of an earlier epoch ends.
    Deleted { number: u64, base: u64 },
}

/// An append a room hands to its appender.
struct Append {
    ticket: u64,
    update: Bytes,
    /// Sent again after Redis did not answer it.
    retry: bool,
    /// The room's epoch as the room knows it: Redis refuses the update if it is over.
    epoch: u64,
    /// The writer's token `sub`, for the history.
    author: Option<Arc<str>>,
}

struct Subscription {
    /// The room instance (a reloaded room is a new one).
    id: u64,
    to: Recipient<FromCluster>,
    appends: mpsc::UnboundedSender<Append>,
}

/// The cluster as a node sees it: cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: u64,
    runtime: tokio::runtime::Handle,
    conn: Conn,
    rooms: Mutex<HashMap<Arc<str>, Subscription>>,
    pubsub: mpsc::UnboundedSender<conn::PubSubCommand>,
    tickets: AtomicU64,
    stopping: AtomicBool,
    /// PostgreSQL as the archive (with `postgres_url`).
    archive: OnceLock<archive::Archive>,
    /// The node's revocation list, which other nodes' revocations reach through Redis.
    revocations: OnceLock<Arc<crate::revocation::Revocations>>,
    /// Webhooks are on (`webhook_url`): appends mark what awaits delivery.
    webhooks: AtomicBool,
}

impl Cluster {
    /// Connects to Redis at `url` (a single node or any node of a Redis Cluster; several
    /// seed URLs may be separated by commas), checks its persistence settings and starts
    /// the node's Redis thread. Blocking; call before serving.
    pub fn connect(url: &str) -> Result<Cluster, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("redis runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (started, start_result) = std::sync::mpsc::channel();
        let url = url.to_string();
        std::thread::Builder::new()
            .name("collabd-redis".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (pubsub_tx, pubsub_rx) = mpsc::unbounded_channel();
                    let conn = match Conn::connect(&url).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    if let Err(e) = checks::persistence(&conn).await {
                        let _ = started.send(Err(e));
                        return;
                    }
                    let inner = Arc::new(Inner {
                        node: random_u64() >> 1,
                        runtime: tokio::runtime::Handle::current(),
                        conn,
                        rooms: Mutex::new(HashMap::new()),
                        pubsub: pubsub_tx,
                        tickets: AtomicU64::new(1),
                        stopping: AtomicBool::new(false),
                        archive: OnceLock::new(),
                        revocations: OnceLock::new(),
                        webhooks: AtomicBool::new(false),
                    });
                    let cluster = Cluster {
                        inner: inner.clone(),
                    };
                    let _ = started.send(Ok(cluster.clone()));
                    conn::run_pubsub(cluster, pubsub_rx).await;
                })
            })
            .map_err(|e| format!("redis thread: {e}"))?;
        let cluster = start_result
            .recv()
            .map_err(|_| "the redis thread ended".to_string())??;
        drop(handle);
        info!(
            "cluster mode: node {:016x}, Redis at {}",
            cluster.inner.node,
            cluster.inner.conn.describe()
        );
        Ok(cluster)
    }

    /// Makes PostgreSQL the archive behind Redis (see [`archive`]) and starts the sweep
    /// that lets idle, archived rooms leave Redis. Before any room loads.
    #[cfg(feature = "postgres")]
    pub fn set_archive(
        &self,
        pg: Arc<crate::store::postgres::PostgresStore>,
        settings: &crate::config::Settings,
    ) {
        let archive = archive::Archive::new(pg, settings.archive_after, settings.archive_idle_ms);
        if self.inner.archive.set(archive).is_ok() {
            let cluster = self.clone();
            self.inner.runtime.spawn(cluster.sweep_forever());
        }
    }

    /// Webhooks are on: every append marks its room's changes for delivery, with the
    /// entries (see [`crate::webhooks`]).
    pub fn set_webhooks(&self, on: bool) {
        self.inner.webhooks.store(on, Ordering::SeqCst);
    }

    /// Makes `list` the list that revocations published by any node reach.
    pub fn set_revocations(&self, list: Arc<crate::revocation::Revocations>) {
        let _ = self.inner.revocations.set(list);
    }

    /// A revocation heard on the channel: applied to this node's list.
    fn revoked(&self, key: &str, value: u64) {
        let Some(list) = self.inner.revocations.get() else {
            return;
        };
        match crate::revocation::Revocation::decode(key, value) {
            Some(revocation) => list.apply(revocation, crate::auth::now_secs()),
            None => warn!("unknown revocation {key:?} heard on Redis"),
        }
    }

    /// Reads every revocation again (after an outage: messages may have been lost).
    async fn reload_revocations(&self) {
        match revoke::all(self.conn()).await {
            Ok(all) => {
                for (key, value) in all {
                    self.revoked(&key, value);
                }
            }
            Err(e) => warn!("reading revocations from Redis failed: {e}"),
        }
    }

    /// The archive, when there is one.
    pub fn archive(&self) -> Option<&archive::Archive> {
        self.inner.archive.get()
    }

    /// Whether a room instance of `room` is loaded on this node.
    pub fn is_loaded(&self, room: &str) -> bool {
        self.inner.rooms.lock().unwrap().contains_key(room)
    }

    /// This node's id (random per process).
    pub fn node(&self) -> u64 {
        self.inner.node
    }

    /// A ticket for an append: unique on this node for the life of the process, so that a
    /// node recognizes its own entries whichever way they come back.
    pub fn ticket(&self) -> u64 {
        self.inner.tickets.fetch_add(1, Ordering::Relaxed)
    }

    /// Why Redis cannot be reached now, while it cannot.
    pub fn unavailable(&self) -> Option<String> {
        self.inner.conn.down()
    }

    /// What `/healthz` says of Redis.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "redis": self.inner.conn.down().unwrap_or_else(|| "ok".into()),
            "node": format!("{:016x}", self.inner.node),
        })
    }

    pub(crate) fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    /// Runs `f` on the Redis thread and waits for its answer. For the store's blocking
    /// calls, made from the blocking pool (never from the Redis thread itself).
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().ok()
    }

    /// Registers room instance `id` of `room`: its channel is subscribed (done when this
    /// returns, so that a read made afterwards misses nothing published since), and its
    /// appender started. Blocking: the room calls it from its load, on the blocking pool.
    pub fn join(&self, room: &Arc<str>, id: u64, to: Recipient<FromCluster>) -> Result<(), String> {
        let (appends, queue) = mpsc::unbounded_channel();
        let previous = self.inner.rooms.lock().unwrap().insert(
            room.clone(),
            Subscription {
                id,
                to: to.clone(),
                appends,
            },
        );
        if previous.is_none() {
            let (done, subscribed) = std::sync::mpsc::sync_channel(1);
            let _ = self.inner.pubsub.send(conn::PubSubCommand::Subscribe {
                channel: roomlog::channel(room),
                done,
            });
            // Bounded: a pub/sub connection that is down subscribes everything again when
            // it comes back, and its rooms catch up then.
            let _ = subscribed.recv_timeout(Duration::from_secs(5));
        }
        let cluster = self.clone();
        let room = room.clone();
        self.inner
            .runtime
            .spawn(async move { cluster.append_loop(room, to, queue).await });
        Ok(())
    }

    /// Room instance `id` of `room` stopped: its channel is unsubscribed (unless a newer
    /// instance took the room meanwhile).
    pub fn leave(&self, room: &Arc<str>, id: u64) {
        let mut rooms = self.inner.rooms.lock().unwrap();
        if rooms.get(room).is_some_and(|s| s.id == id) {
            rooms.remove(room);
            let _ = self.inner.pubsub.send(conn::PubSubCommand::Unsubscribe {
                channel: roomlog::channel(room),
            });
        }
        drop(rooms);
        // What it wrote goes to the archive; the sweep lets it leave Redis once idle.
        self.archive_soon(room);
    }

    /// Hands `update` to the room's appender; the answer comes as
    /// [`FromCluster::Appended`]. Never blocks. `retry`: an update Redis did not answer,
    /// sent again (see [`Cluster::append_loop`] for why it matters).
    pub fn append(
        &self,
        room: &Arc<str>,
        ticket: u64,
        update: Bytes,
        retry: bool,
        epoch: u64,
        author: Option<Arc<str>>,
    ) {
        let rooms = self.inner.rooms.lock().unwrap();
        if let Some(sub) = rooms.get(room) {
            let _ = sub.appends.send(Append {
                ticket,
                update,
                retry,
                epoch,
                author,
            });
        }
    }

    /// Reads what follows `after` in the room's log; the answer comes as
    /// [`FromCluster::CaughtUp`] (or `CatchUpFailed`), or as [`FromCluster::Deleted`]
    /// when the room is no longer in `epoch` (its deletion's message was missed).
    pub fn catch_up(&self, room: &Arc<str>, after: u64, epoch: u64, to: Recipient<FromCluster>) {
        let (cluster, room) = (self.clone(), room.clone());
        self.inner.runtime.spawn(async move {
            let conn = cluster.inner.conn.clone();
            let read = async {
                let now = roomlog::epoch(&conn, &room).await?;
                if now.number != epoch {
                    return Ok(Err(now));
                }
                cluster.read_after(&room, after).await.map(Ok)
            };
            match read.await {
                Ok(Err(now)) => to.do_send(FromCluster::Deleted {
                    number: now.number,
                    base: now.base,
                }),
                Ok(Ok((snapshot, entries))) => {
                    to.do_send(FromCluster::CaughtUp { snapshot, entries })
                }
                Err(e) => {
                    warn!("room {room:?}: catch-up read failed: {e}");
                    conn.failed(&e);
                    to.do_send(FromCluster::CatchUpFailed);
                }
            }
        });
    }

    /// What follows `after` in `room`'s log: from the stream; with an archive, what the
    /// stream no longer holds comes from PostgreSQL first.
    async fn read_after(
        &self,
        room: &Arc<str>,
        after: u64,
    ) -> Result<(Option<Snapshot>, Vec<Entry>), StoreError> {
        let conn = &self.inner.conn;
        let Some(archive) = self.archive() else {
            return roomlog::catch_up(conn, room, after).await;
        };
        let entries = roomlog::range(conn, room, after, 10_000).await?;
        if entries.first().is_some_and(|e| e.seq == after + 1) {
            return Ok((None, entries));
        }
        let older = archive::archived_after(archive, room, after, 10_000).await?;
        if older.is_empty() {
            return Ok((None, entries));
        }
        let first_redis = entries.first().map_or(u64::MAX, |e| e.seq);
        let mut all: Vec<Entry> = older.into_iter().filter(|e| e.seq < first_redis).collect();
        all.extend(entries);
        Ok((None, all))
    }

    /// Publishes a presence update of local `session` to the room's other nodes.
    pub fn publish_awareness(&self, room: &Arc<str>, session: u64, update: Bytes) {
        let (conn, room, node) = (self.inner.conn.clone(), room.clone(), self.inner.node);
        self.inner.runtime.spawn(async move {
            if let Err(e) = roomlog::publish_awareness(&conn, &room, node, session, &update).await {
                log::debug!("room {room:?}: presence not relayed: {e}");
            }
        });
    }

    /// Stops handing out work (the server is stopping).
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// Delivers a message that came on a room's channel.
    fn deliver(&self, room: &str, message: FromCluster) {
        let rooms = self.inner.rooms.lock().unwrap();
        if let Some(sub) = rooms.get(room) {
            sub.to.do_send(message);
        }
    }

    /// Tells every loaded room that it may have missed entries, and reads the
    /// revocations again.
    fn reconnected(&self) {
        for sub in self.inner.rooms.lock().unwrap().values() {
            sub.to.do_send(FromCluster::Reconnected);
        }
        let cluster = self.clone();
        self.inner
            .runtime
            .spawn(async move { cluster.reload_revocations().await });
    }

    /// The channels to subscribe (again, after a reconnect): revocations, and those of
    /// every loaded room.
    fn channels(&self) -> Vec<String> {
        let rooms = self.inner.rooms.lock().unwrap();
        let rooms = rooms.keys().map(|room| roomlog::channel(room));
        std::iter::once(revoke::KEY.to_string())
            .chain(rooms)
            .collect()
    }

    /// One room's appends, in the order the room made them: each batch that queued while
    /// the previous one was in flight goes as one script call (one round trip, one slot).
    ///
    /// Order matters beyond one batch: an update may build on the one before it, and the
    /// log must hold them in that order (a node applying them out of order would hold the
    /// later one as pending). So once a batch fails, the appender refuses every update
    /// after it until the room sends the failed ones again (`retry`), which it does in
    /// their original order before anything new.
    async fn append_loop(
        self,
        room: Arc<str>,
        to: Recipient<FromCluster>,
        mut queue: mpsc::UnboundedReceiver<Append>,
    ) {
        const BATCH: usize = 128;
        let node = self.inner.node;
        let mut batch = Vec::with_capacity(BATCH);
        let mut poisoned = false;
        while queue.recv_many(&mut batch, BATCH).await > 0 {
            if poisoned && let Some(first_retry) = batch.iter().position(|a| a.retry) {
                // The failed updates come again: refuse what came before them.
                for append in batch.drain(..first_retry) {
                    to.do_send(FromCluster::Appended {
                        ticket: append.ticket,
                        result: Err(StoreError::Unavailable("sent after a failed append".into())),
                    });
                }
                poisoned = false;
            }
            if poisoned {
                for append in batch.drain(..) {
                    to.do_send(FromCluster::Appended {
                        ticket: append.ticket,
                        result: Err(StoreError::Unavailable("sent after a failed append".into())),
                    });
                }
                continue;
            }
            let updates: Vec<(u64, &str, &[u8])> = batch
                .iter()
                .map(|a| (a.ticket, a.author.as_deref().unwrap_or(""), &a.update[..]))
                .collect();
            let strict = self.archive().is_some();
            let epoch = batch.first().map_or(0, |a| a.epoch);
            let conn = &self.inner.conn;
            let hooks = self.inner.webhooks.load(Ordering::Relaxed);
            let mut answers =
                roomlog::append(conn, &room, node, strict, epoch, hooks, &updates).await;
            if matches!(&answers, Err(StoreError::Failed(why)) if why.contains("NOCOUNTER")) {
                // The room left Redis for the archive: its counter comes back first.
                answers = match self.restore(&room).await {
                    Ok(()) => {
                        roomlog::append(conn, &room, node, strict, epoch, hooks, &updates).await
                    }
                    Err(e) => Err(e),
                };
            }
            if let Err(StoreError::Failed(why)) = &answers
                && let Some((number, base)) = deleted_epoch(why)
            {
                // The room was deleted under this instance: nothing of it is taken.
                info!("room {room:?}: epoch {number} began at seq {base}; appends refused");
                to.do_send(FromCluster::Deleted { number, base });
                for append in batch.drain(..) {
                    to.do_send(FromCluster::Appended {
                        ticket: append.ticket,
                        result: Err(StoreError::Unavailable("the room was deleted".into())),
                    });
                }
                continue;
            }
            if let Err(e) = &answers {
                self.inner.conn.failed(e);
                poisoned = true;
            }
            for (i, append) in batch.drain(..).enumerate() {
                let result = match &answers {
                    Ok(seqs) => match &seqs[i] {
                        Ok(seq) => Ok(*seq),
                        Err(e) => Err(duplicate(e)),
                    },
                    Err(e) => Err(duplicate(e)),
                };
                to.do_send(FromCluster::Appended {
                    ticket: append.ticket,
                    result,
                });
            }
        }
    }
}

/// The epoch (number, base) an append script refused with: `EPOCH number base`.
fn deleted_epoch(why: &str) -> Option<(u64, u64)> {
    let rest = &why[why.find("EPOCH")? + "EPOCH".len()..];
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>());
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

#[cfg(test)]
#[test]
fn a_refusal_names_the_epoch() {
    assert_eq!(deleted_epoch("EPOCH 3 1207"), Some((3, 1207)));
    assert_eq!(deleted_epoch("NOCOUNTER the room is not in Redis"), None);
}

/// The same error again, for each append of a batch it failed.
fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        other => StoreError::Failed(other.to_string()),
    }
}

/// A random u64 without a crate for it: std's hasher is seeded randomly per process.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Backoff with full jitter: a random wait below `base × 2^attempt`, capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(5_000);
    let ceiling = Duration::from_millis(100)
        .saturating_mul(1 << attempt.min(10))
        .min(cap);
    let jitter = random_u64() % (ceiling.as_millis() as u64 + 1);
    Duration::from_millis(jitter.max(20))
}
