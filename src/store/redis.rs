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
use crate::store::{
    Epoch, LoggedUpdate, MAX_LISTING, RoomSummary, Snapshot, Store, StoreError, check_room_name,
};

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

    /// The seq the room's epoch began at: what the archive holds below it is a deleted
    /// epoch's (an archiver that read it before the deletion may have written it after).
    fn epoch_base(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self.epoch(room)?.base)
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
        let base = self.epoch_base(room)?;
        let cold = archive.log().snapshot(room)?.filter(|s| s.seq >= base);
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
            Some(_) => self.snapshot(room).map(|s| s.is_some()),
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
            && first > self.epoch_base(room)?
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

    fn epoch(&self, room: &str) -> Result<Epoch, StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::epoch(&conn, &name).await })
    }

    /// The script removes the room from Redis and starts the epoch there (refused when a
    /// node wrote meanwhile: [`StoreError::Changed`]), and every node hears of it; then
    /// the archive forgets the room.
    fn delete_room(&self, room: &str, next: &Epoch) -> Result<(), StoreError> {
        check_room_name(room)?;
        let (conn, name, epoch) = (self.cluster.conn().clone(), room.to_string(), next.clone());
        if !self.call(async move { roomlog::delete(&conn, &name, &epoch).await })? {
            return Err(StoreError::Changed(room.to_string()));
        }
        if let Some(archive) = self.cluster.archive() {
            archive.log().delete_room(room, next)?;
        }
        Ok(())
    }

    /// The rooms with a counter in Redis and, with the archive, those that left it for
    /// PostgreSQL; each summed up from what the store holds. A scan of Redis' keys per
    /// call: fine for an administrator's listing, not for a hot path.
    fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let (conn, pattern) = (self.cluster.conn().clone(), prefix.to_string());
        let mut names = self.call(async move { roomlog::rooms(&conn, &pattern).await })?;
        if let Some(archive) = self.cluster.archive() {
            let mut from = after.map(str::to_string);
            loop {
                let page = archive.log().rooms(prefix, from.as_deref(), MAX_LISTING)?;
                let done = page.len() < MAX_LISTING;
                from = page.last().map(|r| r.room.clone());
                names.extend(page.into_iter().map(|r| r.room));
                if done || names.len() > 100 * MAX_LISTING {
                    break;
                }
            }
        }
        names.retain(|n| n.starts_with(prefix) && after.is_none_or(|a| n.as_str() > a));
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            if out.len() >= limit.min(MAX_LISTING) {
                break;
            }
            if let Some(summary) = super::summarize(self, &name)? {
                out.push(summary);
            }
        }
        Ok(out)
    }

    /// Marked by the append script, with the entries.
    fn mark_webhook(&self, _room: &str, _seq: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn put_webhook(&self, room: &str, delivered: u64, target: u64) -> Result<(), StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::put_hook(&conn, &name, delivered, target).await })
    }

    fn webhooks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let conn = self.cluster.conn().clone();
        self.call(async move { roomlog::hooks(&conn).await })
    }

    fn webhook(&self, room: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::hook(&conn, &name).await })
    }

    fn webhook_lease(&self, room: &str, ms: u64) -> Result<bool, StoreError> {
        let (conn, name, node) = (
            self.cluster.conn().clone(),
            room.to_string(),
            self.cluster.node(),
        );
        self.call(async move { roomlog::hook_lease(&conn, &name, node, ms).await })
    }

    /// From the stream's `a` fields; what the stream no longer holds, from the archive.
    fn authors(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<std::collections::HashMap<u64, String>, StoreError> {
        let mut out = match self.cluster.archive() {
            Some(archive) => archive.log().authors(room, from, to)?,
            None => Default::default(),
        };
        let (conn, name) = (self.cluster.conn().clone(), room.to_string());
        let limit = usize::try_from(to.saturating_sub(from) + 1).unwrap_or(usize::MAX);
        let entries =
            self.call(
                async move { roomlog::range(&conn, &name, from.saturating_sub(1), limit).await },
            )?;
        for entry in entries.into_iter().filter(|e| e.seq <= to) {
            if let Some(author) = entry.author {
                out.insert(entry.seq, author);
            }
        }
        Ok(out)
    }

    /// Checkpoints go to the archive (PostgreSQL), when there is one, committed with its
    /// next batch; without one there are none.
    fn put_checkpoint(
        &self,
        room: &str,
        snapshot: &Snapshot,
        before_ms: u64,
    ) -> Result<(), StoreError> {
        match self.cluster.archive() {
            Some(archive) => archive.log().put_checkpoint(room, snapshot, before_ms),
            None => Ok(()),
        }
    }

    fn checkpoint_before(&self, room: &str, seq: u64) -> Result<Option<Snapshot>, StoreError> {
        match self.cluster.archive() {
            Some(archive) => {
                let base = self.epoch_base(room)?;
                Ok(archive
                    .log()
                    .checkpoint_before(room, seq)?
                    .filter(|c| c.seq >= base))
            }
            None => Ok(None),
        }
    }

    /// Named versions live in the archive (PostgreSQL), when there is one.
    fn put_version(&self, room: &str, name: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        match self.cluster.archive() {
            Some(archive) => archive.log().put_version(room, name, snapshot),
            None => Err(StoreError::Unsupported(
                "named versions without postgres_url",
            )),
        }
    }

    fn version(&self, room: &str, name: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.cluster.archive() {
            Some(archive) => archive.log().version(room, name),
            None => Err(StoreError::Unsupported(
                "named versions without postgres_url",
            )),
        }
    }

    fn versions(&self, room: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        match self.cluster.archive() {
            Some(archive) => archive.log().versions(room),
            None => Err(StoreError::Unsupported(
                "named versions without postgres_url",
            )),
        }
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
