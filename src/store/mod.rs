//! The op log: every accepted update of every room, in seq order, plus snapshots.
//!
//! # Model
//!
//! Each room has an append-only log of records, one per accepted update, numbered by the
//! room's sequence counter (1, 2, 3, …; 0 means "nothing yet"), and at most one snapshot:
//! the room's full state as a Yjs update v1, tagged with the seq it covers. Loading a room
//! is "latest snapshot, then every record after it". After a snapshot at seq `s`, records
//! older than the replay window are deleted, but never one newer than `s`.
//!
//! # On disk (sled, see [`sled::SledStore`])
//!
//! Two sled trees:
//!
//! | tree        | key                                      | value                              |
//! |-------------|------------------------------------------|------------------------------------|
//! | `log`       | room name (UTF-8) · `0x00` · seq (u64 BE) | version byte `1` · bincode(`UpdateRecord`) |
//! | `snapshots` | room name (UTF-8)                        | version byte `1` · bincode(`SnapshotRecord`) |
//!
//! Room names never contain control characters (the HTTP edge rejects them, and the
//! store refuses them), so the `0x00` separator keeps each room's records contiguous and
//! sorted by seq: a prefix scan over `name · 0x00` yields the room's log in order.
//!
//! `UpdateRecord { at_ms: u64, update: bytes }` and
//! `SnapshotRecord { seq: u64, at_ms: u64, state: bytes }` are serde structs encoded with
//! bincode 2's standard configuration (varint integers, length-prefixed byte strings);
//! `at_ms` is the wall-clock time of the write in milliseconds since the Unix epoch. The
//! leading version byte lets the format evolve: a reader refuses versions it does not know.
//!
//! # Durability
//!
//! An append is visible to reads at once but durable only after [`Store::flush`] returns.
//! The [`commit::Flusher`] batches flushes (group commit) and tells each room how far
//! its log is durable; only then may a seq be shown to a client (DESIGN.md, contract 1).

pub mod commit;
pub mod memory;
pub mod sled;

use std::time::{SystemTime, UNIX_EPOCH};

/// A room's latest snapshot: its full state as a Yjs update v1, covering seqs `1..=seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub seq: u64,
    pub state: Vec<u8>,
}

/// One logged update.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedUpdate {
    pub seq: u64,
    pub update: Vec<u8>,
}

/// Everything needed to rebuild a room: the snapshot (if any) and the records after it.
#[derive(Debug, Default)]
pub struct RoomLog {
    pub snapshot: Option<Snapshot>,
    pub updates: Vec<LoggedUpdate>,
}

impl RoomLog {
    /// The highest seq this log knows of (0 for an empty room).
    pub fn last_seq(&self) -> u64 {
        let snap = self.snapshot.as_ref().map_or(0, |s| s.seq);
        self.updates.last().map_or(snap, |u| u.seq.max(snap))
    }
}

/// What can go wrong below the room.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A flush failed earlier. After a failed fsync the kernel may have dropped the dirty
    /// pages and a retry can report success for data that never reached the disk, so the
    /// store refuses every later write and flush instead of pretending.
    #[error("the store failed to make writes durable earlier and refuses further writes: {0}")]
    Failed(String),
    #[error("record for room {room:?} seq {seq}: {reason}")]
    Corrupt {
        room: String,
        seq: u64,
        reason: String,
    },
    #[error("room name {0:?} cannot be stored (control character)")]
    InvalidRoom(String),
}

/// The op log's interface; rooms see only this. Implementations must be cheap to call
/// from an actor (no blocking beyond local I/O) except [`Store::flush`], which blocks
/// until everything appended before the call is durable.
pub trait Store: Send + Sync + 'static {
    /// Appends the record for `seq`. Visible to reads at once, durable after `flush`.
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError>;

    /// Replaces the room's snapshot. Visible at once, durable after `flush`.
    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// The room's latest snapshot, if any.
    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Up to `limit` records with seq greater than `after`, in seq order.
    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError>;

    /// The seq of the room's oldest retained record, if it has any.
    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError>;

    /// Deletes the room's records with seq lower than `seq`; returns how many went.
    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError>;

    /// Blocks until every earlier append and snapshot is durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Everything needed to rebuild the room: latest snapshot and the records after it.
    fn load(&self, room: &str) -> Result<RoomLog, StoreError> {
        let snapshot = self.snapshot(room)?;
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let updates = self.updates_after(room, after, usize::MAX)?;
        Ok(RoomLog { snapshot, updates })
    }
}

/// Refuses names the key layout cannot hold (see the module docs).
pub(crate) fn check_room_name(room: &str) -> Result<(), StoreError> {
    if room.chars().any(char::is_control) {
        return Err(StoreError::InvalidRoom(room.to_string()));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The same behaviour, checked against every backend.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;

    pub fn check(store: &dyn Store) {
        for room in ["a", "a/b", "ä"] {
            assert_eq!(store.load(room).unwrap().last_seq(), 0);
        }
        for seq in 1..=5u64 {
            store.append("a", seq, &[seq as u8; 3]).unwrap();
        }
        store.append("a/b", 1, b"other").unwrap();
        let log = store.load("a").unwrap();
        assert_eq!(log.updates.len(), 5);
        assert_eq!(log.updates[4].update, vec![5u8; 3]);
        assert_eq!(log.last_seq(), 5);
        assert_eq!(store.load("a/b").unwrap().updates.len(), 1);

        let after = store.updates_after("a", 2, 2).unwrap();
        assert_eq!(after.iter().map(|u| u.seq).collect::<Vec<_>>(), vec![3, 4]);

        let snap = Snapshot {
            seq: 4,
            state: b"state".to_vec(),
        };
        store.put_snapshot("a", &snap).unwrap();
        assert_eq!(store.delete_before("a", 3).unwrap(), 2);
        assert_eq!(store.first_seq("a").unwrap(), Some(3));
        let log = store.load("a").unwrap();
        assert_eq!(log.snapshot, Some(snap));
        assert_eq!(
            log.updates.iter().map(|u| u.seq).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(log.last_seq(), 5);
        assert_eq!(store.first_seq("a/b").unwrap(), Some(1));
        assert!(store.append("bad\0name", 1, b"x").is_err());
        store.flush().unwrap();
    }
}
