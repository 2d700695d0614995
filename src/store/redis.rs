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
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::snapshot(&conn, &room).await })
    }

    fn has_snapshot(&self, room: &str) -> Result<bool, StoreError> {
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::has_snapshot(&conn, &room).await })
    }

    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError> {
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move {
            roomlog::range(&conn, &room, after, limit)
                .await
                .map(roomlog::logged)
        })
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::first_seq(&conn, &room).await })
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        let (conn, room) = (self.cluster.conn().clone(), room.to_string());
        self.call(async move { roomlog::delete_before(&conn, &room, seq).await })
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
