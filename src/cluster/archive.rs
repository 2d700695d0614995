//! Cluster mode with PostgreSQL (`redis_url` and `postgres_url`): Redis is the hot log
//! and seq authority, PostgreSQL the archive.
//!
//! - **Archiving** a room copies its stream's entries (with their seqs) and its snapshot
//!   to PostgreSQL in one commit per batch, then records in Redis what is archived and
//!   trims the stream below it (keeping `archive_after` archived entries for quick
//!   catch-ups). Nothing leaves Redis before the commit that holds it. A node archives a
//!   room when `archive_after` entries wait, and when the room stops on it.
//! - **One node at a time** archives a room: the lease `collabd:{ROOM}:lease` (held
//!   [`LEASE_MS`], renewed per batch, lost when its node dies). Archiving is idempotent
//!   (`(room, seq)` is the archive's primary key, inserts skip what is there), so a node
//!   killed halfway leaves nothing torn, and the next holder finishes.
//! - **Leaving Redis**: a room whose log and snapshot are archived and that nobody wrote
//!   for `archive_idle_ms` is removed from Redis entirely ([`roomlog::LEAVE`], atomic with
//!   those checks). Each node sweeps the rooms it served (and, at startup, every room in
//!   Redis). A room not in Redis loads from PostgreSQL; its first write finds no counter
//!   and restores it from the archive's newest seq ([`roomlog::RESTORE`]) first.
//! - **PostgreSQL away**: acks go on (Redis holds them); archiving pauses and catches up
//!   later; a room with unarchived entries never leaves Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{debug, info, warn};
use redis::Value;

use super::conn::Conn;
use super::roomlog;
use super::{Cluster, Entry};
use crate::store::postgres::PostgresStore;
use crate::store::{Snapshot, Store, StoreError, now_ms};

/// How long an archive lease lasts without renewal.
pub const LEASE_MS: u64 = 10_000;
/// Entries per archive batch (one PostgreSQL commit).
const BATCH: usize = 1_000;

pub struct Archive {
    pg: Arc<PostgresStore>,
    archive_after: u64,
    idle_ms: u64,
    /// Rooms being archived by this node now, and whether another archive was asked for
    /// meanwhile (it runs right after).
    running: Mutex<HashMap<Arc<str>, bool>>,
    /// Rooms this node served or found in Redis: swept for leaving.
    candidates: Mutex<HashSet<Arc<str>>>,
}

impl Archive {
    pub fn new(pg: Arc<PostgresStore>, archive_after: u64, idle_ms: u64) -> Archive {
        Archive {
            pg,
            archive_after: archive_after.max(1),
            idle_ms,
            running: Mutex::default(),
            candidates: Mutex::default(),
        }
    }

    pub fn archive_after(&self) -> u64 {
        self.archive_after
    }

    /// The archive as a store (reads of what Redis no longer holds).
    pub fn log(&self) -> &dyn Store {
        &*self.pg
    }

    /// Remembers `room` for the sweep.
    pub fn candidate(&self, room: &Arc<str>) {
        self.candidates.lock().unwrap().insert(room.clone());
    }
}

/// Runs `f` (the blocking PostgreSQL client) on the Redis runtime's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Failed(format!("archive task: {e}"))))
}

impl Cluster {
    /// Archives `room` now if no archive of it runs on this node (fire and forget).
    pub fn archive_soon(&self, room: &Arc<str>) {
        let Some(archive) = self.archive() else {
            return;
        };
        archive.candidate(room);
        if let Some(again) = archive.running.lock().unwrap().get_mut(room) {
            *again = true;
            return;
        }
        archive.running.lock().unwrap().insert(room.clone(), false);
        let (cluster, room) = (self.clone(), room.clone());
        self.inner.runtime.spawn(async move {
            loop {
                if let Err(e) = cluster.archive_room(&room).await {
                    warn!("room {room:?}: archiving paused: {e}");
                }
                let Some(archive) = cluster.archive() else {
                    return;
                };
                let mut running = archive.running.lock().unwrap();
                match running.get_mut(&room) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&room);
                        return;
                    }
                }
            }
        });
    }

    /// Copies what PostgreSQL lacks of `room`'s Redis log, batch by batch, under the
    /// room's lease.
    async fn archive_room(&self, room: &Arc<str>) -> Result<(), StoreError> {
        let archive = self.archive().expect("an archive");
        let conn = self.conn();
        let node = self.node().to_string();
        if !lease(conn, room, &node).await? {
            debug!("room {room:?}: another node holds the archive lease");
            return Ok(());
        }
        let result = self.archive_batches(archive, conn, room, &node).await;
        let mut release = redis::cmd("EVAL");
        release
            .arg(roomlog::RELEASE)
            .arg(1)
            .arg(roomlog::lease_key(room))
            .arg(&node);
        let _ = conn.query(&release).await;
        result
    }

    async fn archive_batches(
        &self,
        archive: &Archive,
        conn: &Conn,
        room: &Arc<str>,
        node: &str,
    ) -> Result<(), StoreError> {
        loop {
            let (archived, snap_archived) = archived(conn, room).await?;
            let entries = roomlog::range(conn, room, archived, BATCH).await?;
            let snapshot = roomlog::snapshot(conn, room)
                .await?
                .filter(|s| s.seq > snap_archived);
            if entries.is_empty() && snapshot.is_none() {
                return Ok(());
            }
            let last = entries.last().map_or(archived, |e| e.seq);
            let snap_seq = snapshot.as_ref().map_or(snap_archived, |s| s.seq);
            let count = entries.len();
            let pg = archive.pg.clone();
            let name = room.clone();
            blocking(move || write_batch(&pg, &name, entries, snapshot)).await?;
            // Trimmed only now that PostgreSQL has committed it.
            let keep_from = (last + 1).saturating_sub(archive.archive_after);
            let mut mark = redis::cmd("EVAL");
            mark.arg(roomlog::ARCHIVED)
                .arg(3)
                .arg(roomlog::lease_key(room))
                .arg(roomlog::archived_key(room))
                .arg(roomlog::log_key(room))
                .arg(node)
                .arg(last)
                .arg(snap_seq)
                .arg(keep_from);
            if !matches!(conn.query(&mark).await?, Value::Int(1)) {
                return Ok(()); // the lease expired meanwhile: its next holder goes on
            }
            debug!("room {room:?}: archived up to seq {last} ({count} entries)");
            if count < BATCH {
                return Ok(());
            }
            if !lease(conn, room, node).await? {
                return Ok(());
            }
        }
    }

    /// Restores the counter of a room that left Redis from the archive's newest seq.
    pub(super) async fn restore(&self, room: &Arc<str>) -> Result<(), StoreError> {
        let archive = self.archive().expect("an archive");
        let (pg, name) = (archive.pg.clone(), room.clone());
        let seq = blocking(move || pg.max_seq(&name)).await?;
        let mut restore = redis::cmd("EVAL");
        restore
            .arg(roomlog::RESTORE)
            .arg(2)
            .arg(roomlog::seq_key(room))
            .arg(roomlog::archived_key(room))
            .arg(seq);
        self.conn().query(&restore).await?;
        info!("room {room:?}: back in Redis from the archive at seq {seq}");
        Ok(())
    }

    /// Every `idle / 4`: rooms this node served (not loaded here now) are archived, and
    /// leave Redis once archived and idle. At startup every room in Redis is a candidate.
    pub(super) async fn sweep_forever(self) {
        let Some(archive) = self.archive() else {
            return;
        };
        match roomlog::rooms(self.conn(), "").await {
            Ok(rooms) => {
                for room in rooms {
                    archive.candidate(&Arc::from(room));
                }
            }
            Err(e) => warn!("archive: could not list the rooms in Redis: {e}"),
        }
        let period = Duration::from_millis((archive.idle_ms / 4).clamp(50, 60_000));
        loop {
            tokio::time::sleep(period).await;
            let rooms: Vec<Arc<str>> = archive.candidates.lock().unwrap().iter().cloned().collect();
            for room in rooms {
                if self.is_loaded(&room) {
                    continue;
                }
                if archive.running.lock().unwrap().contains_key(&room) {
                    continue;
                }
                if let Err(e) = self.archive_room(&room).await {
                    debug!("room {room:?}: archiving paused: {e}");
                    continue;
                }
                match leave(self.conn(), &room, archive.idle_ms).await {
                    Ok(true) => {
                        info!("room {room:?} archived and idle: it left Redis");
                        archive.candidates.lock().unwrap().remove(&room);
                    }
                    Ok(false) => {}
                    Err(e) => debug!("room {room:?}: leaving Redis failed: {e}"),
                }
            }
        }
    }
}

/// Writes one batch to PostgreSQL in one commit (blocking).
fn write_batch(
    pg: &PostgresStore,
    room: &str,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
) -> Result<(), StoreError> {
    for entry in &entries {
        pg.append(room, entry.seq, &entry.update)?;
        if let Some(author) = &entry.author {
            pg.put_author(room, entry.seq, author)?;
        }
    }
    if let Some(snapshot) = &snapshot {
        pg.put_snapshot(room, snapshot)?;
    }
    pg.flush()
}

async fn lease(conn: &Conn, room: &str, node: &str) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(roomlog::LEASE)
        .arg(1)
        .arg(roomlog::lease_key(room))
        .arg(node)
        .arg(LEASE_MS);
    Ok(matches!(conn.query(&cmd).await?, Value::Int(1)))
}

/// What Redis says PostgreSQL holds of `room`: (log seq, snapshot seq).
async fn archived(conn: &Conn, room: &str) -> Result<(u64, u64), StoreError> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(roomlog::archived_key(room)).arg("seq").arg("snap");
    let Value::Array(values) = conn.query(&cmd).await? else {
        return Ok((0, 0));
    };
    let num = |v: Option<&Value>| match v {
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    Ok((num(values.first()), num(values.get(1))))
}

async fn leave(conn: &Conn, room: &str, idle_ms: u64) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(roomlog::LEAVE)
        .arg(6)
        .arg(roomlog::seq_key(room))
        .arg(roomlog::log_key(room))
        .arg(roomlog::snapshot_key(room))
        .arg(roomlog::archived_key(room))
        .arg(roomlog::touched_key(room))
        .arg(roomlog::lease_key(room))
        .arg(now_ms())
        .arg(idle_ms);
    Ok(matches!(conn.query(&cmd).await?, Value::Int(1)))
}

/// The archive's part of a catch-up read: entries after `after` that the stream no
/// longer holds, from PostgreSQL (blocking, on the blocking pool).
pub(super) async fn archived_after(
    archive: &Archive,
    room: &Arc<str>,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let (pg, name) = (archive.pg.clone(), room.clone());
    let updates = blocking(move || pg.updates_after(&name, after, limit)).await?;
    Ok(updates
        .into_iter()
        .map(|u| Entry {
            seq: u.seq,
            node: 0,
            ticket: 0,
            update: bytes::Bytes::from(u.update),
            at_ms: u.at_ms,
            author: None,
        })
        .collect())
}
