//! The op log in Redis, for cluster mode (`redis_url`): reads, snapshots and compaction
//! through the node's Redis thread ([`crate::cluster`]). Appends do not come here: in
//! cluster mode Redis gives each update its seq, so a room appends through
//! [`crate::cluster::Cluster::append`] and learns the seq from the answer.
//!
//! Every call blocks until Redis answers and is made off the room threads (the blocking
//! pool, a room's load), like the PostgreSQL store's. A write is durable when Redis
//! answered it (see the durability notes in [`crate::cluster`]), so [`Store::flush`] has
//! nothing to do.

use crate::cluster::{Cluster, roomlog};
use crate::store::{LoggedUpdate, Snapshot, Store, StoreError, check_room_name};

pub struct RedisStore {
    cluster: Cluster,
}

impl RedisStore {
    pub fn new(cluster: Cluster) -> RedisStore {
        RedisStore { cluster }
    }

    /// Runs one Redis call on the cluster's thread and waits for it; an unreachable Redis
    /// marks the node degraded (and starts its reconnection).
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let answer = self
            .cluster
            .block_on(f)
            .unwrap_or_else(|| Err(StoreError::Unavailable("the Redis thread ended".into())));
        if let Err(e) = &answer {
            self.cluster.conn().failed(e);
        }
        answer
    }
}

impl Store for RedisStore {
    fn append(&self, room: &str, seq: u64, _update: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Failed(format!(
            "room {room:?}: seq {seq} assigned by a node; in cluster mode Redis assigns seqs \
             (Cluster::append)"
        )))
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        let (conn, room, snapshot) = (
            self.cluster.conn().clone(),
            room.to_string(),
            snapshot.clone(),
        );
        self.call(async move { roomlog::put_snapshot(&conn, &room, &snapshot).await })
    }

    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        let hot = self.call(async move { roomlog::snapshot(&conn, &name).await })?;
        let Some(archive) = self.cluster.archive() else {
            return Ok(hot);
        };
        let cold = archive.log().snapshot(room)?;
        Ok(match (hot, cold) {
            (Some(h), Some(c)) => Some(if c.seq > h.seq { c } else { h }),
            (h, c) => h.or(c),
        })
    }

    fn has_snapshot(&self, room: &str) -> Result<bool, StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        if self.call(async move { roomlog::has_snapshot(&conn, &name).await })? {
            return Ok(true);
        }
        match self.cluster.archive() {
            Some(archive) => archive.log().has_snapshot(room),
            None => Ok(false),
        }
    }

    /// From the stream; with an archive, what the stream no longer holds (trimmed after
    /// archiving, or the room left Redis) comes from PostgreSQL first.
    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        let hot = self.call(async move {
            roomlog::range(&conn, &name, after, limit)
                .await
                .map(roomlog::logged)
        })?;
        let Some(archive) = self.cluster.archive() else {
            return Ok(hot);
        };
        if hot.first().is_some_and(|u| u.seq == after + 1) {
            return Ok(hot);
        }
        let first_hot = hot.first().map_or(u64::MAX, |u| u.seq);
        let mut all: Vec<LoggedUpdate> = archive
            .log()
            .updates_after(room, after, limit)?
            .into_iter()
            .filter(|u| u.seq < first_hot)
            .collect();
        all.extend(hot);
        all.truncate(limit);
        Ok(all)
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        if let Some(archive) = self.cluster.archive()
            && let Some(first) = archive.log().first_seq(room)?
        {
            return Ok(Some(first));
        }
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::first_seq(&conn, &room).await })
    }

    /// Compaction after a snapshot. With an archive, PostgreSQL keeps the whole history
    /// and only the archive trims the stream (after its commit): nothing to do here.
    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        if self.cluster.archive().is_some() {
            return Ok(0);
        }
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::delete_before(&conn, &room, seq).await })
    }

    fn put_revocation(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let (conn, key) = (self.cluster.conn().clone(), key.to_string());
        self.call(async move { crate::cluster::revoke::put(&conn, &key, value).await })
    }

    fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.cluster.conn().clone();
        self.call(async move { crate::cluster::revoke::all(&conn).await })
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Whatever Redis answered is as durable as its settings make it.
        match self.cluster.unavailable() {
            Some(why) => Err(StoreError::Unavailable(why)),
            None => Ok(()),
        }
    }

    fn unavailable(&self) -> Option<String> {
        self.cluster.unavailable()
    }
}
