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
//! Two sled trees. No sled value is larger than [`sled::CHUNK_BYTES`] (4 KiB) of payload:
//! longer ones are cut into chunks stored under the head's key plus a chunk index, so
//! sled never writes a "blob" file (see Durability).
//!
//! | tree        | key                                              | value |
//! |-------------|--------------------------------------------------|-------|
//! | `log`       | room · `0x00` · seq (u64 BE)                     | version `2` · bincode(`UpdateHead { at_ms, len, first }`) |
//! | `log`       | room · `0x00` · seq (u64 BE) · chunk (u32 BE, 1…) | the update's next ≤ 4 KiB (raw bytes) |
//! | `snapshots` | room                                             | version `2` · bincode(`SnapshotHead { seq, at_ms, len, chunks }`) |
//! | `snapshots` | room · `0x00` · chunk (u32 BE, 0…)               | the state's next ≤ 4 KiB (raw bytes) |
//! | `webhooks`  | room                                             | delivered seq (u64 BE) · target seq (u64 BE): webhook delivery state |
//! | `webhook_marks` | room                                         | seq (u64 BE): changes up to it await webhook delivery (written with the record) |
//! | `authors`   | room · `0x00` · seq (u64 BE)                     | the writer's token `sub` (UTF-8), for updates that had one |
//! | `checkpoints` | room · `0x00` · seq (u64 BE) · `0x01` / `0x02` · chunk (u32 BE) | a checkpoint's head / its state's chunks, as for versions |
//! | `epochs`    | room                                             | version `2` · bincode(`EpochHead { number, base, deleting }`): a room deleted at least once |
//! | `epochs`    | room · `0x00` · `0x01` / `0x02` · chunk (u32 BE)  | its graveyard (a state vector), as for versions |
//! | `revocations` | `sub:` subject, or `tok:` SHA-256 (hex)         | a second (u64 BE): see `revocation` |
//! | `versions`  | room · `0x00` · name · `0x01`                    | version `2` · bincode(`SnapshotHead`): a named version's head |
//! | `versions`  | room · `0x00` · name · `0x02` · chunk (u32 BE)    | the version's state, ≤ 4 KiB per chunk |
//!
//! Room names never contain control characters (the HTTP edge rejects them, and the
//! store refuses them), so the `0x00` separator keeps each room's records contiguous and
//! sorted by seq, each head followed by its chunks: a prefix scan over `name · 0x00`
//! yields the room's log in order. `first` is the update's first ≤ 4 KiB and `len` its
//! whole length; a keystroke (~30 bytes) is one value. Heads and their chunks go in one
//! sled batch (atomic, after a crash too), so a head never survives without its chunks.
//!
//! bincode 2's standard configuration (varint integers, length-prefixed byte strings);
//! `at_ms` is the wall-clock time of the write in milliseconds since the Unix epoch. The
//! leading version byte lets the format evolve: a reader refuses versions it does not
//! know, and still reads version `1` (the whole update or state inline, no chunks).
//!
//! # Durability
//!
//! An append is visible to reads at once but durable only after [`Store::flush`]
//! returns. The [`commit::Flusher`] batches flushes (group commit) and tells each room
//! how far its log is durable; only then may a seq be shown to a client (acks, POST
//! answers, SSE ids, polls, full states). What "durable" rests on, for sled 0.34:
//!
//! - sled writes its log with `pwrite` into one file (`db`) and its own `flush` ends in
//!   `sync_file_range`, which neither records the file's new size nor flushes the
//!   device's cache. [`sled::SledStore::flush`] therefore follows it with `fdatasync`
//!   on `db`: after it returns, every byte sled wrote before is on stable storage.
//!   `tests/durability.rs` runs the server under `strace` and checks, for every POST
//!   answer, WebSocket ack and full state, that the record's `pwrite` is followed by an
//!   `fdatasync`/`fsync` of `db` before the answer leaves.
//! - sled puts any page over 128 KiB in a file of its own under `blobs/`, never fsyncs
//!   it, and refuses to open when one is torn. Chunking keeps every page far below that
//!   (a leaf holds at most ~20 values), so no blob is ever written (a unit test writes
//!   3 MiB values and checks `blobs/` stays empty).
//! - Opening fsyncs every file and directory under the data directory (and the parent
//!   of a new one) before anything on disk is treated as durable: a predecessor killed
//!   before its flush may have left records in the page cache only.
//! - A failed flush is final: the store refuses every later write and flush
//!   ([`StoreError::Failed`]). After a failed `fsync` Linux may have dropped the dirty
//!   pages and marked them clean, so a retry could "succeed" without the data; instead
//!   every room waiting on it fails (sessions closed with 1011, waiters answered 503) and
//!   no room loads again until the process restarts and reads what the disk really has.
//! - A store that is only *unavailable* (a database that went away; sled never is) is
//!   another matter: its flush answers [`StoreError::Unavailable`], keeps what it did not
//!   write, and the flusher retries; rooms refuse new writes while
//!   [`Store::unavailable`] says so, and no seq is shown before a flush covers it.
//! - A flush with nothing written since the last one costs nothing (no fsync): rooms
//!   flush when they load and when they stop, which is free when they only served reads.
//!
//! ## Crash matrix
//!
//! What a crash (process kill or power loss) at each moment leaves, and why:
//!
//! | crash during… | what survives | why |
//! |---|---|---|
//! | append, before the flush covering it returned | the log up to some seq ≥ the last one shown; maybe some later records, whole | nothing past the last completed flush was shown; sled recovers a prefix of its log, and a record's head and chunks are one atomic batch |
//! | the flush itself | as above | the seqs it covers are shown only after `fdatasync` returned |
//! | a snapshot write | the old snapshot or the new one, never a mix | head and chunks (and the removal of stale chunks) are one batch |
//! | compaction (deleting records a snapshot covers) | the snapshot, and all or some of the records it covers | compaction starts only after a flush that began *after* the snapshot was written (flushes are numbered; see [`commit`]), so a durable snapshot always covers what is deleted |
//! | anything, after a failed flush | what the last successful flush covered | no seq is shown, no write accepted after the failure |
//!
//! A restarted room shows as durable only what it loaded after its own load-time flush,
//! and seqs continue after the last stored record: a seq that was shown is never reused.
//! An update WebSocket peers received before its flush (they get updates at once) may be
//! lost by a power cut; they hold it, and it comes back when they re-sync by state vector.

pub mod commit;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod redis;
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
    /// When it was stored, in milliseconds since the Unix epoch (0: not known).
    pub at_ms: u64,
}

/// Everything needed to rebuild a room: its epoch, the snapshot (if any) and the records
/// after it.
#[derive(Debug, Default)]
pub struct RoomLog {
    pub epoch: Epoch,
    pub snapshot: Option<Snapshot>,
    pub updates: Vec<LoggedUpdate>,
}

impl RoomLog {
    /// The highest seq this log knows of (the epoch's base for a room with nothing in it).
    pub fn last_seq(&self) -> u64 {
        let snap = self
            .snapshot
            .as_ref()
            .map_or(0, |s| s.seq)
            .max(self.epoch.base);
        self.updates.last().map_or(snap, |u| u.seq.max(snap))
    }
}

/// A room's current life. Deleting a room ([`Store::delete_room`]) removes its data and
/// starts the next epoch, whose seqs continue above every seq the deleted ones used: a
/// seq, and so every cursor a client holds (SSE id, poll cursor, `X-Seq`), names its
/// epoch. A cursor below `base` is from a deleted epoch: its holder gets a reset and a
/// snapshot, never another epoch's updates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Epoch {
    /// 0 for a room never deleted; one more per deletion.
    pub number: u64,
    /// The seq the epoch began at: its empty document is the state "after" `base`, its
    /// first update gets `base + 1`. Every seq of an earlier epoch is below it.
    pub base: u64,
    /// The state vector (Yjs v1 encoding; empty: none) of every deleted epoch's document:
    /// an update that carries an item below it brings deleted content back (a client
    /// that kept the old document), and the room refuses it.
    pub graveyard: Vec<u8>,
    /// Set while a deletion is under way: what it had not removed yet when the process
    /// stopped is removed before the room loads (see [`Store::delete_room`]).
    pub deleting: bool,
}

pub use crate::protocol::json::RoomSummary;

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
    /// The store cannot be reached now (a database that went away); nothing was lost and
    /// the flush may be retried: what it would have covered is kept and written later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("record for room {room:?} seq {seq}: {reason}")]
    Corrupt {
        room: String,
        seq: u64,
        reason: String,
    },
    #[error("room name {0:?} cannot be stored (control character)")]
    InvalidRoom(String),
    /// This store does not keep what was asked (webhook delivery state outside sled).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
    /// The room changed while it was being deleted (another node wrote to it): nothing was
    /// deleted; read it again and retry.
    #[error("room {0:?} changed during its deletion")]
    Changed(String),
}

/// The longest room listing one call returns.
pub const MAX_LISTING: usize = 1_000;

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

    /// Whether the room has a snapshot, without reading it.
    fn has_snapshot(&self, room: &str) -> Result<bool, StoreError> {
        Ok(self.snapshot(room)?.is_some())
    }

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

    /// Why the store refuses writes, once a flush failed (see [`StoreError::Failed`]).
    fn failure(&self) -> Option<String> {
        None
    }

    /// Why the store cannot be reached now, while it cannot (see
    /// [`StoreError::Unavailable`]): rooms refuse new writes meanwhile.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// The room's changes up to `seq` await webhook delivery. Written by the room with the
    /// record of `seq`, so that the same flush makes both durable: a restart finds every
    /// change not yet delivered. Visible at once, durable after `flush`.
    fn mark_webhook(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        let _ = (room, seq);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Records the room's webhook delivery state: delivered up to seq `delivered`, changes
    /// known up to seq `target`. Visible at once, durable after `flush`.
    fn put_webhook(&self, room: &str, delivered: u64, target: u64) -> Result<(), StoreError> {
        let _ = (room, delivered, target);
        Err(StoreError::Unsupported("webhooks"))
    }

    /// Every room's webhook delivery state: (room, delivered, target).
    fn webhooks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        Err(StoreError::Unsupported("webhooks"))
    }

    /// One room's webhook delivery state, as [`Store::webhooks`] gives it.
    fn webhook(&self, room: &str) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self
            .webhooks()?
            .into_iter()
            .find(|(r, ..)| r == room)
            .map(|(_, delivered, target)| (delivered, target)))
    }

    /// Whether this process may deliver `room`'s webhooks now: always on one node; in
    /// cluster mode the node holding the room's webhook lease (taken or renewed for
    /// `ms`), so that one node at a time delivers a room.
    fn webhook_lease(&self, room: &str, ms: u64) -> Result<bool, StoreError> {
        let _ = (room, ms);
        Ok(true)
    }

    /// Records who wrote the update at `seq` (the writer's token `sub`), for the room's
    /// history. Written by the room with the record, durable with it; deleted with it by
    /// compaction. Stores without it keep no authors (the history shows none).
    fn put_author(&self, room: &str, seq: u64, author: &str) -> Result<(), StoreError> {
        let _ = (room, seq, author);
        Ok(())
    }

    /// Who wrote the updates in `from..=to` that have a recorded author.
    fn authors(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<std::collections::HashMap<u64, String>, StoreError> {
        let _ = (room, from, to);
        Ok(Default::default())
    }

    /// Keeps a checkpoint: the room's whole state at `snapshot.seq`, for time travel
    /// beyond the replay window; checkpoints written before `before_ms` (ms since the
    /// epoch) go. Stores without them keep none (time travel then ends at the window).
    fn put_checkpoint(
        &self,
        room: &str,
        snapshot: &Snapshot,
        before_ms: u64,
    ) -> Result<(), StoreError> {
        let _ = (room, snapshot, before_ms);
        Ok(())
    }

    /// The newest checkpoint at or before `seq`.
    fn checkpoint_before(&self, room: &str, seq: u64) -> Result<Option<Snapshot>, StoreError> {
        let _ = (room, seq);
        Ok(None)
    }

    /// Keeps the room's state at `snapshot.seq` as the named version `name`, whatever
    /// compaction does later. Visible at once, durable after `flush`.
    fn put_version(&self, room: &str, name: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        let _ = (room, name, snapshot);
        Err(StoreError::Unsupported("named versions"))
    }

    /// The named version `name` of the room, if it exists.
    fn version(&self, room: &str, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let _ = (room, name);
        Err(StoreError::Unsupported("named versions"))
    }

    /// The room's named versions: (name, seq, ms since the epoch when pinned).
    fn versions(&self, room: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let _ = room;
        Err(StoreError::Unsupported("named versions"))
    }

    /// Keeps a revocation (see [`crate::revocation`]: `key` names a subject or a token,
    /// `value` is a second). Visible at once, durable after `flush`.
    fn put_revocation(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let _ = (key, value);
        Err(StoreError::Unsupported("revocations"))
    }

    /// Every revocation kept: (key, value).
    fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }

    /// The room's current epoch ([`Epoch::default`] for a room never deleted).
    fn epoch(&self, room: &str) -> Result<Epoch, StoreError> {
        let _ = room;
        Ok(Epoch::default())
    }

    /// Deletes the room: every record, snapshot, checkpoint, named version, author and
    /// webhook mark, and starts `next` (its number and base above the old ones; the
    /// caller computes them). Crash-safe: `next` is written first with
    /// [`Epoch::deleting`] set and cleared last, and the store finishes a deletion a
    /// crash interrupted when it opens, before anything reads. Durable after `flush`.
    fn delete_room(&self, room: &str, next: &Epoch) -> Result<(), StoreError> {
        let _ = (room, next);
        Err(StoreError::Unsupported("room deletion"))
    }

    /// Rooms with anything stored in their current epoch, sorted by name: those whose
    /// name starts with `prefix`, after `after` (exclusive), at most `limit`.
    fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let _ = (prefix, after, limit);
        Err(StoreError::Unsupported("room listing"))
    }

    /// Everything needed to rebuild the room: its epoch, the latest snapshot and the
    /// records after it.
    fn load(&self, room: &str) -> Result<RoomLog, StoreError> {
        let epoch = self.epoch(room)?;
        let snapshot = self.snapshot(room)?;
        let after = snapshot.as_ref().map_or(0, |s| s.seq).max(epoch.base);
        let updates = self.updates_after(room, after, usize::MAX)?;
        Ok(RoomLog {
            epoch,
            snapshot,
            updates,
        })
    }
}

/// A listing's line for `room` from what `store` holds of its current epoch (`None`:
/// nothing): for stores without a cheaper way.
pub fn summarize(store: &dyn Store, room: &str) -> Result<Option<RoomSummary>, StoreError> {
    let epoch = store.epoch(room)?;
    let snapshot = store.snapshot(room)?.filter(|s| s.seq >= epoch.base);
    let after = snapshot.as_ref().map_or(0, |s| s.seq).max(epoch.base);
    let updates = store.updates_after(room, after, usize::MAX)?;
    if snapshot.is_none() && updates.is_empty() {
        return Ok(None);
    }
    Ok(Some(RoomSummary {
        room: room.to_string(),
        seq: updates.last().map_or(after, |u| u.seq),
        size: snapshot.as_ref().map_or(0, |s| s.state.len() as u64)
            + updates.iter().map(|u| u.update.len() as u64).sum::<u64>(),
        changed_ms: updates.last().map_or(0, |u| u.at_ms),
        epoch: epoch.number,
    }))
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
        assert!(store.has_snapshot("a").unwrap());
        assert!(!store.has_snapshot("a/b").unwrap());
        assert_eq!(
            log.updates.iter().map(|u| u.seq).collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(log.last_seq(), 5);
        assert_eq!(store.first_seq("a/b").unwrap(), Some(1));
        assert!(store.append("bad\0name", 1, b"x").is_err());
        store.flush().unwrap();
    }

    /// Deletion, epochs and listing.
    pub fn check_deletion(store: &dyn Store) {
        for (room, seqs) in [
            ("docs/a", 3u64),
            ("docs/b", 2),
            ("docs/bb", 1),
            ("other", 1),
        ] {
            for seq in 1..=seqs {
                store.append(room, seq, &[seq as u8; 4]).unwrap();
            }
        }
        store
            .put_snapshot(
                "docs/b",
                &Snapshot {
                    seq: 1,
                    state: b"s".to_vec(),
                },
            )
            .unwrap();
        // Listings show what is durable (the HTTP handler flushes first).
        store.flush().unwrap();
        let names = |listing: Vec<RoomSummary>| -> Vec<String> {
            listing.into_iter().map(|r| r.room).collect()
        };
        assert_eq!(
            names(store.rooms("docs/", None, 10).unwrap()),
            ["docs/a", "docs/b", "docs/bb"]
        );
        assert_eq!(
            names(store.rooms("docs/", Some("docs/a"), 1).unwrap()),
            ["docs/b"]
        );
        assert_eq!(
            names(store.rooms("", Some("docs/bb"), 10).unwrap()),
            ["other"]
        );
        let a = &store.rooms("docs/a", None, 1).unwrap()[0];
        assert_eq!((a.seq, a.size, a.epoch), (3, 12, 0));
        assert!(a.changed_ms > 0);
        let b = &store.rooms("docs/b", None, 1).unwrap()[0];
        assert_eq!(
            (b.seq, b.size),
            (2, 1 + 4),
            "the snapshot and the record after it"
        );

        let next = Epoch {
            number: 1,
            base: 4,
            graveyard: b"sv".to_vec(),
            deleting: false,
        };
        store.delete_room("docs/a", &next).unwrap();
        assert_eq!(store.epoch("docs/a").unwrap(), next);
        assert_eq!(store.epoch("docs/b").unwrap(), Epoch::default());
        let log = store.load("docs/a").unwrap();
        assert!(log.snapshot.is_none() && log.updates.is_empty());
        assert_eq!(log.last_seq(), 4, "seqs go on above the deleted ones");
        assert_eq!(store.first_seq("docs/a").unwrap(), None);
        assert_eq!(
            names(store.rooms("docs/", None, 10).unwrap()),
            ["docs/b", "docs/bb"]
        );
        store.append("docs/a", 5, b"new").unwrap();
        store.flush().unwrap();
        let a = &store.rooms("docs/a", None, 1).unwrap()[0];
        assert_eq!((a.seq, a.size, a.epoch), (5, 3, 1));
        assert_eq!(store.load("docs/a").unwrap().updates.len(), 1);
        store.flush().unwrap();
    }
}
