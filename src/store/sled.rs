//! The op log on sled, made durable by our own fsyncs.
//!
//! Key layout, record format and the crash matrix are in the parent module's docs; this
//! file holds the encoding and the two things sled 0.34 does not do for us:
//!
//! - **A real fsync per flush.** `sled::Db::flush` writes its buffers with `pwrite` and
//!   ends in `sync_file_range(2)`: data pages reach the device, but neither the file's
//!   size (metadata) nor the device's write cache is flushed. [`SledStore::flush`] follows
//!   it with `fdatasync(2)` on sled's `db` file, which covers both.
//! - **No blob files.** sled writes any page larger than a quarter of a segment (128 KiB)
//!   to its own file under `blobs/`, which it never fsyncs, and refuses to open at all
//!   when one of them is torn. Every value we store is cut into chunks of at most
//!   [`CHUNK_BYTES`], so no leaf (≤ 20 entries) or index node comes near that size and sled
//!   never writes a blob; `tests::no_blob_files_even_for_large_values` checks it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{
    Epoch, LoggedUpdate, RoomSummary, Snapshot, Store, StoreError, check_room_name, now_ms,
};

/// First byte of every head value. Version 1 (no chunks) is still read.
const FORMAT_VERSION: u8 = 2;
const FORMAT_V1: u8 = 1;
/// Separates the room name from the seq in log keys; control characters never appear in names.
const KEY_SEPARATOR: u8 = 0x00;
/// The most payload bytes one sled value holds. A leaf node splits above 16 entries and
/// merges below 4 (at most ~20 entries), so its largest form stays near 20 × 4.3 KiB =
/// 86 KiB, under sled's 128 KiB blob threshold.
pub const CHUNK_BYTES: usize = 4096;

#[derive(Serialize)]
struct UpdateHeadRef<'a> {
    at_ms: u64,
    /// The whole update's length; what `first` lacks follows in chunk keys 1, 2, ….
    len: u64,
    #[serde(with = "serde_bytes")]
    first: &'a [u8],
}

#[derive(Deserialize)]
struct UpdateHead {
    #[allow(dead_code)] // kept on disk for operators and future history queries
    at_ms: u64,
    len: u64,
    #[serde(with = "serde_bytes")]
    first: Vec<u8>,
}

/// Version 1's log value: the whole update inline.
#[derive(Deserialize)]
struct UpdateRecordV1 {
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    update: Vec<u8>,
}

#[derive(Serialize)]
struct SnapshotHeadRef {
    seq: u64,
    at_ms: u64,
    len: u64,
    chunks: u32,
}

#[derive(Deserialize)]
struct SnapshotHead {
    seq: u64,
    #[allow(dead_code)]
    at_ms: u64,
    len: u64,
    chunks: u32,
}

/// A room's epoch head (the graveyard is a whole state under `room · 0x00`).
#[derive(Serialize, Deserialize)]
struct EpochHead {
    number: u64,
    base: u64,
    deleting: bool,
}

/// Version 1's snapshot value: the whole state inline.
#[derive(Deserialize)]
struct SnapshotRecordV1 {
    seq: u64,
    #[allow(dead_code)]
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// The op log in an embedded sled database.
///
/// Durability: a write is durable once [`Store::flush`] returns (sled's flush, then an
/// `fdatasync` of sled's data file). Opening fsyncs every file and directory under the
/// data directory first, so nothing a crashed predecessor left in the page cache is taken
/// for durable.
pub struct SledStore {
    db: ::sled::Db,
    log: ::sled::Tree,
    snapshots: ::sled::Tree,
    /// Webhook delivery state per room, and the seq each room's changes await delivery
    /// up to (see the module docs of `store`).
    webhooks: ::sled::Tree,
    webhook_marks: ::sled::Tree,
    /// Named versions: heads and chunks (see the module docs of `store`).
    versions: ::sled::Tree,
    /// Who wrote each update, when its writer had a `sub`.
    authors: ::sled::Tree,
    /// Checkpoints: whole states kept beyond the replay window, for time travel.
    checkpoints: ::sled::Tree,
    /// Rooms deleted at least once: their epoch and graveyard.
    epochs: ::sled::Tree,
    /// Revoked subjects and tokens.
    revocations: ::sled::Tree,
    /// sled's single data file (`<dir>/db`), opened read-only: `fdatasync` on any
    /// descriptor of the file flushes its dirty pages, its size and the device cache.
    data_file: File,
    dir: PathBuf,
    /// Writes so far, and how many of them the last successful flush covered: a flush
    /// with nothing new to cover costs no fsync (an idle room stopping, a room loading).
    writes: AtomicU64,
    flushed: AtomicU64,
    /// Set when a flush fails; from then on every write and flush is refused.
    failed: OnceLock<String>,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(dir, 64 * 1024 * 1024)
    }

    /// [`SledStore::open`] with sled's page cache bounded to `cache_bytes`
    /// (`store_cache_bytes`; sled's own default is 1 GiB).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let existed = dir.exists();
        if existed {
            sync_tree(dir)?;
        }
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        let webhooks = db.open_tree("webhooks")?;
        let webhook_marks = db.open_tree("webhook_marks")?;
        let versions = db.open_tree("versions")?;
        let authors = db.open_tree("authors")?;
        let checkpoints = db.open_tree("checkpoints")?;
        let epochs = db.open_tree("epochs")?;
        let revocations = db.open_tree("revocations")?;
        db.flush()?;
        let data_file = File::open(dir.join("db"))?;
        // sled created files (and maybe the directory): make their names durable.
        sync_tree(dir)?;
        if !existed && let Some(parent) = dir.parent() {
            sync_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })?;
        }
        let store = SledStore {
            db,
            log,
            snapshots,
            webhooks,
            webhook_marks,
            versions,
            authors,
            checkpoints,
            epochs,
            revocations,
            data_file,
            dir: dir.to_path_buf(),
            writes: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            failed: OnceLock::new(),
        };
        store.finish_deletions()?;
        Ok(store)
    }

    /// Finishes the deletions a stop interrupted (see [`Store::delete_room`]).
    fn finish_deletions(&self) -> Result<(), StoreError> {
        let mut pending = Vec::new();
        for entry in self.epochs.iter() {
            let (key, value) = entry?;
            if key.contains(&KEY_SEPARATOR) {
                continue; // a graveyard's head or chunk
            }
            let room = String::from_utf8_lossy(&key).into_owned();
            if self.epoch_head(&room, &value)?.deleting {
                pending.push(room);
            }
        }
        for room in pending {
            log::warn!("room {room:?}: finishing a deletion a stop interrupted");
            let epoch = self.epoch(&room)?;
            self.delete_room(&room, &epoch)?;
        }
        if self.writes.load(Ordering::SeqCst) > 0 {
            self.flush()?;
        }
        Ok(())
    }

    fn epoch_head(&self, room: &str, value: &[u8]) -> Result<EpochHead, StoreError> {
        match version(room, 0, value)? {
            (FORMAT_V1, _) => Err(corrupt(room, 0, "an epoch in an unknown format".into())),
            (_, body) => decode(room, 0, body),
        }
    }

    /// Removes every key of `room` in every tree but `epochs`.
    fn purge(&self, room: &str) -> Result<(), StoreError> {
        let trees = [
            &self.log,
            &self.snapshots,
            &self.authors,
            &self.checkpoints,
            &self.versions,
            &self.webhook_marks,
            &self.webhooks,
        ];
        for tree in trees {
            let mut batch = ::sled::Batch::default();
            batch.remove(room.as_bytes());
            for entry in tree.range(log_prefix(room)..log_end(room)) {
                batch.remove(entry?.0);
            }
            self.wrote(tree.apply_batch(batch))?;
        }
        Ok(())
    }

    /// The next room name in `tree` at or after `from` (keys are a room name, or a room
    /// name · `0x00` · …).
    fn next_room(tree: &::sled::Tree, from: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(entry) = tree.range(from..).next() else {
            return Ok(None);
        };
        let key = entry?.0;
        let end = key
            .iter()
            .position(|&b| b == KEY_SEPARATOR)
            .unwrap_or(key.len());
        Ok(Some(key[..end].to_vec()))
    }

    /// A listing's line for `room`, if it has anything stored.
    fn summary(&self, room: &str) -> Result<Option<RoomSummary>, StoreError> {
        let epoch = self.epoch(room)?;
        let head = match self.snapshot_head(room)? {
            Some(SnapshotHeadOrV1::Head(h)) => Some((h.seq, h.at_ms, h.len)),
            Some(SnapshotHeadOrV1::V1(r)) => Some((r.seq, r.at_ms, r.state.len() as u64)),
            None => None,
        };
        let (mut seq, mut changed_ms, mut size) = head.unwrap_or((0, 0, 0));
        let prefix_len = log_prefix(room).len();
        let head_len = prefix_len + 8;
        let mut any = head.is_some();
        for entry in self.log.range(log_key(room, seq + 1)..log_end(room)) {
            let (key, value) = entry?;
            if key.len() != head_len {
                continue;
            }
            let record = seq_of(&key, prefix_len);
            let (at_ms, len) = match version(room, record, &value)? {
                (FORMAT_V1, body) => {
                    let r = decode::<UpdateRecordV1>(room, record, body)?;
                    (r.at_ms, r.update.len() as u64)
                }
                (_, body) => {
                    let h: UpdateHead = decode(room, record, body)?;
                    (h.at_ms, h.len)
                }
            };
            any = true;
            seq = record;
            changed_ms = changed_ms.max(at_ms);
            size += len;
        }
        Ok(any.then(|| RoomSummary {
            room: room.to_string(),
            seq: seq.max(epoch.base),
            size,
            changed_ms,
            epoch: epoch.number,
        }))
    }

    /// Refuses writes after a failed flush.
    fn writable(&self) -> Result<(), StoreError> {
        match self.failed.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Counts a write once it is complete, so a flush that reads the count covers it.
    fn wrote<T>(&self, result: Result<T, ::sled::Error>) -> Result<(), StoreError> {
        result?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Total bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Files sled wrote under `blobs/` (the design keeps this at zero; see module docs).
    pub fn blob_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("blobs")).map_or(0, |d| d.count())
    }
}

/// fsyncs every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn log_prefix(room: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 13);
    key.extend_from_slice(room.as_bytes());
    key.push(KEY_SEPARATOR);
    key
}

fn log_key(room: &str, seq: u64) -> Vec<u8> {
    let mut key = log_prefix(room);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of chunk `index` (1, 2, …) of `head`'s value: it sorts right after the head.
fn chunk_key(head: &[u8], index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(head.len() + 4);
    key.extend_from_slice(head);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The first key after every key of the room's log.
fn log_end(room: &str) -> Vec<u8> {
    let mut key = log_prefix(room);
    *key.last_mut().expect("prefix ends in the separator") = KEY_SEPARATOR + 1;
    key
}

/// The seq in a log key (head or chunk) of a room whose prefix is `prefix_len` long.
fn seq_of(key: &[u8], prefix_len: usize) -> u64 {
    let bytes: [u8; 8] = key[prefix_len..prefix_len + 8]
        .try_into()
        .expect("log keys hold 8 bytes of seq after the prefix");
    u64::from_be_bytes(bytes)
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    out
}

/// The format version and the decoded body.
fn decode<T: for<'de> Deserialize<'de>>(
    room: &str,
    seq: u64,
    body: &[u8],
) -> Result<T, StoreError> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(record, _)| record)
        .map_err(|e| corrupt(room, seq, e.to_string()))
}

fn corrupt(room: &str, seq: u64, reason: String) -> StoreError {
    StoreError::Corrupt {
        room: room.to_string(),
        seq,
        reason,
    }
}

fn version<'v>(room: &str, seq: u64, value: &'v [u8]) -> Result<(u8, &'v [u8]), StoreError> {
    match value.split_first() {
        Some((&v, body)) if v == FORMAT_VERSION || v == FORMAT_V1 => Ok((v, body)),
        Some((v, _)) => Err(corrupt(room, seq, format!("unknown format version {v}"))),
        None => Err(corrupt(room, seq, "empty value".into())),
    }
}

/// Reassembles a value of `len` bytes from `first` and the chunks that follow it.
fn assemble(
    room: &str,
    seq: u64,
    first: Vec<u8>,
    len: u64,
    chunks: impl IntoIterator<Item = Result<::sled::IVec, ::sled::Error>>,
) -> Result<Vec<u8>, StoreError> {
    let len = usize::try_from(len).map_err(|_| corrupt(room, seq, "length overflows".into()))?;
    if first.len() >= len {
        return Ok(first);
    }
    let mut out = first;
    out.reserve(len - out.len());
    for chunk in chunks {
        out.extend_from_slice(&chunk?);
        if out.len() >= len {
            break;
        }
    }
    if out.len() != len {
        return Err(corrupt(
            room,
            seq,
            format!("{} of {len} bytes in its chunks", out.len()),
        ));
    }
    Ok(out)
}

impl Store for SledStore {
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        let key = log_key(room, seq);
        let first_len = update.len().min(CHUNK_BYTES);
        let head = encode(&UpdateHeadRef {
            at_ms: now_ms(),
            len: update.len() as u64,
            first: &update[..first_len],
        });
        if first_len == update.len() {
            return self.wrote(self.log.insert(key, head));
        }
        // Head and chunks in one batch: sled applies a batch atomically, after a crash too.
        let mut batch = ::sled::Batch::default();
        for (i, chunk) in update[first_len..].chunks(CHUNK_BYTES).enumerate() {
            batch.insert(chunk_key(&key, i as u32 + 1), chunk);
        }
        batch.insert(key, head);
        self.wrote(self.log.apply_batch(batch))
    }

    fn put_webhook(&self, room: &str, delivered: u64, target: u64) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&delivered.to_be_bytes());
        value[8..].copy_from_slice(&target.to_be_bytes());
        self.wrote(self.webhooks.insert(room.as_bytes(), &value[..]))
    }

    fn put_author(&self, room: &str, seq: u64, author: &str) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        self.wrote(self.authors.insert(log_key(room, seq), author.as_bytes()))
    }

    fn authors(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<std::collections::HashMap<u64, String>, StoreError> {
        let prefix_len = log_prefix(room).len();
        let mut out = std::collections::HashMap::new();
        for entry in self.authors.range(log_key(room, from)..=log_key(room, to)) {
            let (key, value) = entry?;
            let seq = seq_of(&key, prefix_len);
            out.insert(seq, String::from_utf8_lossy(&value).into_owned());
        }
        Ok(out)
    }

    fn put_version(&self, room: &str, name: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        check_room_name(name)?;
        self.writable()?;
        self.put_state(&self.versions, version_key(room, name), snapshot)
    }

    fn version(&self, room: &str, name: &str) -> Result<Option<Snapshot>, StoreError> {
        self.get_state(&self.versions, room, version_key(room, name))
    }

    fn put_checkpoint(
        &self,
        room: &str,
        snapshot: &Snapshot,
        before_ms: u64,
    ) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        self.put_state(
            &self.checkpoints,
            checkpoint_key(room, snapshot.seq),
            snapshot,
        )?;
        // Checkpoints older than the retention go, heads and chunks in one batch.
        let prefix = log_prefix(room);
        let mut stale = ::sled::Batch::default();
        let mut doomed: Option<Vec<u8>> = None;
        for entry in self.checkpoints.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let base = &key[..(prefix.len() + 8).min(key.len())];
            if key.len() == prefix.len() + 9 && key[key.len() - 1] == 0x01 {
                let head: SnapshotHead = match version(room, 0, &value)? {
                    (FORMAT_V1, _) => continue,
                    (_, body) => decode(room, 0, body)?,
                };
                doomed =
                    (head.at_ms < before_ms && head.seq != snapshot.seq).then(|| base.to_vec());
            }
            if doomed.as_deref() == Some(base) {
                stale.remove(key);
            }
        }
        self.wrote(self.checkpoints.apply_batch(stale))
    }

    fn checkpoint_before(&self, room: &str, seq: u64) -> Result<Option<Snapshot>, StoreError> {
        let prefix = log_prefix(room);
        let mut end = checkpoint_key(room, seq);
        end.push(0x03);
        for entry in self.checkpoints.range(prefix.clone()..end).rev() {
            let (key, _) = entry?;
            if key.len() == prefix.len() + 9 && key[key.len() - 1] == 0x01 {
                return self.get_state(&self.checkpoints, room, key[..key.len() - 1].to_vec());
            }
        }
        Ok(None)
    }

    fn versions(&self, room: &str) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let prefix = log_prefix(room);
        let mut out = Vec::new();
        for entry in self.versions.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let rest = &key[prefix.len()..];
            // Names hold no control characters: the first one says head (0x01, last) or
            // chunk (0x02).
            let Some(at) = rest.iter().position(|b| *b < 0x20) else {
                continue;
            };
            if rest[at] != 0x01 || at + 1 != rest.len() {
                continue;
            }
            let Ok(name) = std::str::from_utf8(&rest[..at]) else {
                continue;
            };
            if let (format, body) = version(room, 0, &value)?
                && format != FORMAT_V1
            {
                let head: SnapshotHead = decode(room, 0, body)?;
                out.push((name.to_string(), head.seq, head.at_ms));
            }
        }
        Ok(out)
    }

    fn mark_webhook(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        self.wrote(
            self.webhook_marks
                .insert(room.as_bytes(), &seq.to_be_bytes()[..]),
        )
    }

    fn webhooks(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut out = Vec::new();
        // Rooms marked but never delivered have no state yet: delivered 0.
        let mut marks: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        for entry in self.webhook_marks.iter() {
            let (key, value) = entry?;
            if let (Ok(room), Ok(bytes)) = (
                String::from_utf8(key.to_vec()),
                <[u8; 8]>::try_from(&value[..]),
            ) {
                marks.insert(room, u64::from_be_bytes(bytes));
            }
        }
        for entry in self.webhooks.iter() {
            let (key, value) = entry?;
            let (Ok(room), Ok(bytes)) = (
                String::from_utf8(key.to_vec()),
                <[u8; 16]>::try_from(&value[..]),
            ) else {
                continue;
            };
            let delivered = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
            let target = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
            let marked = marks.remove(&room).unwrap_or(0);
            out.push((room, delivered, target.max(marked)));
        }
        out.extend(marks.into_iter().map(|(room, seq)| (room, 0, seq)));
        Ok(out)
    }

    fn webhook(&self, room: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let marked = self
            .webhook_marks
            .get(room.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes);
        let state = self
            .webhooks
            .get(room.as_bytes())?
            .and_then(|v| <[u8; 16]>::try_from(&v[..]).ok())
            .map(|b| {
                let delivered = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
                let target = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
                (delivered, target)
            });
        Ok(match (state, marked) {
            (None, None) => None,
            (Some((d, t)), m) => Some((d, t.max(m.unwrap_or(0)))),
            (None, Some(m)) => Some((0, m)),
        })
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        let head_key = room.as_bytes();
        let chunk_prefix = log_prefix(room);
        let old_chunks = match self.snapshot_head(room)? {
            Some(SnapshotHeadOrV1::Head(head)) => head.chunks,
            _ => 0,
        };
        let chunks: Vec<&[u8]> = snapshot.state.chunks(CHUNK_BYTES).collect();
        let mut batch = ::sled::Batch::default();
        for (i, chunk) in chunks.iter().enumerate() {
            batch.insert(chunk_key(&chunk_prefix, i as u32), *chunk);
        }
        for stale in chunks.len() as u32..old_chunks {
            batch.remove(chunk_key(&chunk_prefix, stale));
        }
        batch.insert(
            head_key,
            encode(&SnapshotHeadRef {
                seq: snapshot.seq,
                at_ms: now_ms(),
                len: snapshot.state.len() as u64,
                chunks: chunks.len() as u32,
            }),
        );
        // One batch: a crash leaves the old snapshot or the new one, never a mix.
        self.wrote(self.snapshots.apply_batch(batch))
    }

    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError> {
        match self.snapshot_head(room)? {
            None => Ok(None),
            Some(SnapshotHeadOrV1::V1(record)) => Ok(Some(Snapshot {
                seq: record.seq,
                state: record.state,
            })),
            Some(SnapshotHeadOrV1::Head(head)) => {
                let prefix = log_prefix(room);
                let chunks = (0..head.chunks).map(|i| {
                    self.snapshots
                        .get(chunk_key(&prefix, i))
                        .map(|c| c.unwrap_or_default())
                });
                let state = assemble(room, head.seq, Vec::new(), head.len, chunks)?;
                Ok(Some(Snapshot {
                    seq: head.seq,
                    state,
                }))
            }
        }
    }

    fn has_snapshot(&self, room: &str) -> Result<bool, StoreError> {
        Ok(self.snapshots.contains_key(room.as_bytes())?)
    }

    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let prefix_len = log_prefix(room).len();
        let head_len = prefix_len + 8;
        let mut out = Vec::new();
        let mut entries = self
            .log
            .range(log_key(room, first)..log_end(room))
            .peekable();
        while out.len() < limit {
            let Some(entry) = entries.next() else { break };
            let (key, value) = entry?;
            if key.len() != head_len {
                // A chunk whose head is gone (compacted): not part of any record.
                continue;
            }
            let seq = seq_of(&key, prefix_len);
            let (update, at_ms) = match version(room, seq, &value)? {
                (FORMAT_V1, body) => {
                    let record = decode::<UpdateRecordV1>(room, seq, body)?;
                    (record.update, record.at_ms)
                }
                (_, body) => {
                    let head: UpdateHead = decode(room, seq, body)?;
                    let chunks = std::iter::from_fn(|| {
                        entries
                            .next_if(|e| e.as_ref().map_or(true, |(k, _)| k.len() != head_len))
                            .map(|e| e.map(|(_, v)| v))
                    });
                    (
                        assemble(room, seq, head.first, head.len, chunks)?,
                        head.at_ms,
                    )
                }
            };
            out.push(LoggedUpdate { seq, update, at_ms });
        }
        Ok(out)
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let prefix_len = log_prefix(room).len();
        let first = self.log.range(log_prefix(room)..log_end(room)).next();
        Ok(first.transpose()?.map(|(key, _)| seq_of(&key, prefix_len)))
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        self.writable()?;
        let head_len = log_prefix(room).len() + 8;
        let mut batch = ::sled::Batch::default();
        let mut count = 0;
        for entry in self.log.range(log_prefix(room)..log_key(room, seq)) {
            let (key, _) = entry?;
            count += usize::from(key.len() == head_len);
            batch.remove(key);
        }
        self.wrote(self.log.apply_batch(batch))?;
        // The authors of what went (a record's author is kept no longer than the record).
        let mut authors = ::sled::Batch::default();
        for entry in self.authors.range(log_prefix(room)..log_key(room, seq)) {
            authors.remove(entry?.0);
        }
        self.wrote(self.authors.apply_batch(authors))?;
        Ok(count)
    }

    fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    fn put_revocation(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.wrote(
            self.revocations
                .insert(key.as_bytes(), &value.to_be_bytes()),
        )
    }

    fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.revocations.iter() {
            let (key, value) = entry?;
            let value: [u8; 8] = value
                .as_ref()
                .try_into()
                .map_err(|_| corrupt("", 0, format!("revocation {key:?}: not a u64")))?;
            out.push((
                String::from_utf8_lossy(&key).into_owned(),
                u64::from_be_bytes(value),
            ));
        }
        Ok(out)
    }

    fn epoch(&self, room: &str) -> Result<Epoch, StoreError> {
        let Some(value) = self.epochs.get(room.as_bytes())? else {
            return Ok(Epoch::default());
        };
        let head = self.epoch_head(room, &value)?;
        let graveyard = self.get_state(&self.epochs, room, log_prefix(room))?;
        Ok(Epoch {
            number: head.number,
            base: head.base,
            graveyard: graveyard.map(|g| g.state).unwrap_or_default(),
            deleting: head.deleting,
        })
    }

    fn delete_room(&self, room: &str, next: &Epoch) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.writable()?;
        let head = |deleting| {
            encode(&EpochHead {
                number: next.number,
                base: next.base,
                deleting,
            })
        };
        // The graveyard first, then the head saying "deleting": a crash before the head
        // leaves the old epoch whole (a new graveyard beside it means nothing without it).
        let graveyard = Snapshot {
            seq: next.base,
            state: next.graveyard.clone(),
        };
        self.put_state(&self.epochs, log_prefix(room), &graveyard)?;
        self.wrote(self.epochs.insert(room.as_bytes(), head(true)))?;
        self.purge(room)?;
        self.wrote(self.epochs.insert(room.as_bytes(), head(false)))
    }

    fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        // A skip scan over the two trees that say a room has data: one seek per room.
        let mut from = match after {
            Some(after) if after >= prefix => {
                let mut key = after.as_bytes().to_vec();
                key.push(KEY_SEPARATOR + 1);
                key
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        while out.len() < limit.min(super::MAX_LISTING) {
            let next = [&self.log, &self.snapshots]
                .into_iter()
                .map(|tree| SledStore::next_room(tree, &from))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .min();
            let Some(room) = next else { break };
            if !room.starts_with(prefix.as_bytes()) {
                break;
            }
            from = room.clone();
            from.push(KEY_SEPARATOR + 1);
            let room = String::from_utf8_lossy(&room).into_owned();
            if let Some(summary) = self.summary(&room)? {
                out.push(summary);
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.failed.get() {
            return Err(StoreError::Failed(reason.clone()));
        }
        let writes = self.writes.load(Ordering::SeqCst);
        if writes == self.flushed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let synced = self
            .db
            .flush()
            .map_err(StoreError::from)
            .and_then(|_| Ok(self.data_file.sync_data()?));
        match synced {
            Ok(()) => {
                self.flushed.fetch_max(writes, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                let _ = self.failed.set(e.to_string());
                Err(StoreError::Failed(e.to_string()))
            }
        }
    }
}

enum SnapshotHeadOrV1 {
    Head(SnapshotHead),
    V1(SnapshotRecordV1),
}

impl SledStore {
    fn snapshot_head(&self, room: &str) -> Result<Option<SnapshotHeadOrV1>, StoreError> {
        let Some(value) = self.snapshots.get(room.as_bytes())? else {
            return Ok(None);
        };
        Ok(Some(match version(room, 0, &value)? {
            (FORMAT_V1, body) => SnapshotHeadOrV1::V1(decode(room, 0, body)?),
            (_, body) => SnapshotHeadOrV1::Head(decode(room, 0, body)?),
        }))
    }
}

impl SledStore {
    /// Writes a whole state under `base` in `tree`: head at `base · 0x01`, chunks at
    /// `base · 0x02 · chunk (u32 BE)`, all in one batch (whole or absent after a crash).
    fn put_state(
        &self,
        tree: &::sled::Tree,
        base: Vec<u8>,
        snapshot: &Snapshot,
    ) -> Result<(), StoreError> {
        let chunks: Vec<&[u8]> = snapshot.state.chunks(CHUNK_BYTES).collect();
        let mut batch = ::sled::Batch::default();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut key = base.clone();
            key.push(0x02);
            key.extend_from_slice(&(i as u32).to_be_bytes());
            batch.insert(key, *chunk);
        }
        let mut head = base;
        head.push(0x01);
        batch.insert(
            head,
            encode(&SnapshotHeadRef {
                seq: snapshot.seq,
                at_ms: now_ms(),
                len: snapshot.state.len() as u64,
                chunks: chunks.len() as u32,
            }),
        );
        self.wrote(tree.apply_batch(batch))
    }

    /// The whole state written by [`SledStore::put_state`] under `base`, if any.
    fn get_state(
        &self,
        tree: &::sled::Tree,
        room: &str,
        base: Vec<u8>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let mut head_key = base.clone();
        head_key.push(0x01);
        let Some(value) = tree.get(&head_key)? else {
            return Ok(None);
        };
        let head: SnapshotHead = match version(room, 0, &value)? {
            (FORMAT_V1, _) => return Err(corrupt_version(room)),
            (_, body) => decode(room, 0, body)?,
        };
        let chunks = (0..head.chunks).map(|i| {
            let mut key = base.clone();
            key.push(0x02);
            key.extend_from_slice(&i.to_be_bytes());
            tree.get(key).map(|c| c.unwrap_or_default())
        });
        let state = assemble(room, head.seq, Vec::new(), head.len, chunks)?;
        Ok(Some(Snapshot {
            seq: head.seq,
            state,
        }))
    }
}

/// room · 0x00 · seq (u64 BE): where a checkpoint's keys start.
fn checkpoint_key(room: &str, seq: u64) -> Vec<u8> {
    let mut key = log_prefix(room);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// room · 0x00 · name: where a named version's keys start.
fn version_key(room: &str, name: &str) -> Vec<u8> {
    let mut key = log_prefix(room);
    key.extend_from_slice(name.as_bytes());
    key
}

fn corrupt_version(room: &str) -> StoreError {
    StoreError::Corrupt {
        room: room.to_string(),
        seq: 0,
        reason: "a named version in an unknown format".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_versions_keep_whole_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big = vec![7u8; CHUNK_BYTES * 3 + 5];
        store
            .put_version(
                "r",
                "v1",
                &Snapshot {
                    seq: 3,
                    state: big.clone(),
                },
            )
            .unwrap();
        store
            .put_version(
                "r",
                "v2",
                &Snapshot {
                    seq: 9,
                    state: b"small".to_vec(),
                },
            )
            .unwrap();
        store
            .put_version(
                "r/x",
                "other",
                &Snapshot {
                    seq: 1,
                    state: b"x".to_vec(),
                },
            )
            .unwrap();
        assert_eq!(store.version("r", "v1").unwrap().unwrap().state, big);
        let mut names: Vec<(String, u64)> = store
            .versions("r")
            .unwrap()
            .into_iter()
            .map(|(n, s, _)| (n, s))
            .collect();
        names.sort();
        assert_eq!(names, vec![("v1".to_string(), 3), ("v2".to_string(), 9)]);
        assert!(store.version("r", "nope").unwrap().is_none());
    }

    #[test]
    fn deletes_rooms_and_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        crate::store::contract::check_deletion(&store);
        // Every tree forgets the room.
        store.put_author("docs/a", 5, "alice").unwrap();
        store.mark_webhook("docs/a", 5).unwrap();
        let snap = Snapshot {
            seq: 5,
            state: vec![7; 3 * CHUNK_BYTES],
        };
        store.put_version("docs/a", "v1", &snap).unwrap();
        store.put_checkpoint("docs/a", &snap, 0).unwrap();
        store.put_snapshot("docs/a", &snap).unwrap();
        let next = Epoch {
            number: 2,
            base: 6,
            graveyard: vec![1; 5000],
            deleting: false,
        };
        store.delete_room("docs/a", &next).unwrap();
        assert!(store.versions("docs/a").unwrap().is_empty());
        assert!(store.checkpoint_before("docs/a", 10).unwrap().is_none());
        assert!(store.snapshot("docs/a").unwrap().is_none());
        assert!(store.authors("docs/a", 0, 10).unwrap().is_empty());
        assert!(
            store
                .webhooks()
                .unwrap()
                .iter()
                .all(|(room, ..)| room != "docs/a")
        );
        assert_eq!(store.epoch("docs/a").unwrap(), next);
        assert_eq!(store.versions("docs/b").unwrap().len(), 0);
        assert!(
            store.snapshot("docs/b").unwrap().is_some(),
            "other rooms stay"
        );
    }

    #[test]
    fn an_interrupted_deletion_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for seq in 1..=3 {
                store.append("r", seq, b"x").unwrap();
            }
            // What a crash right after the intent leaves: the new epoch marked
            // "deleting", the old records still there.
            let next = Epoch {
                number: 1,
                base: 4,
                graveyard: vec![],
                deleting: false,
            };
            store
                .epochs
                .insert(
                    "r",
                    encode(&EpochHead {
                        number: 1,
                        base: 4,
                        deleting: true,
                    }),
                )
                .unwrap();
            store.flush().unwrap();
            let _ = next;
        }
        let store = SledStore::open(dir.path()).unwrap();
        let epoch = store.epoch("r").unwrap();
        assert_eq!((epoch.number, epoch.base, epoch.deleting), (1, 4, false));
        assert!(store.load("r").unwrap().updates.is_empty());
        assert_eq!(store.load("r").unwrap().last_seq(), 4);
    }

    #[test]
    fn keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        crate::store::contract::check(&store);
    }

    #[test]
    fn survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.append("r", 1, b"one").unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.load("r").unwrap();
        assert_eq!(log.updates[0].update, b"one".to_vec());
    }

    #[test]
    fn unknown_format_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.log.insert(log_key("r", 1), vec![99, 0, 0]).unwrap();
        let err = store.load("r").unwrap_err();
        assert!(
            err.to_string().contains("unknown format version 99"),
            "{err}"
        );
    }

    #[test]
    fn version_1_records_still_load() {
        #[derive(Serialize)]
        struct V1<'a> {
            at_ms: u64,
            #[serde(with = "serde_bytes")]
            update: &'a [u8],
        }
        #[derive(Serialize)]
        struct SnapV1<'a> {
            seq: u64,
            at_ms: u64,
            #[serde(with = "serde_bytes")]
            state: &'a [u8],
        }
        let v1 = |record: &dyn erased::Encode| {
            let mut value = record.encode();
            value[0] = FORMAT_V1;
            value
        };
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let update = V1 {
            at_ms: 1,
            update: b"old",
        };
        let snapshot = SnapV1 {
            seq: 3,
            at_ms: 1,
            state: b"state",
        };
        store.log.insert(log_key("r", 4), v1(&update)).unwrap();
        store.snapshots.insert("r", v1(&snapshot)).unwrap();
        let log = store.load("r").unwrap();
        assert_eq!(log.snapshot.unwrap().state, b"state".to_vec());
        assert_eq!(log.updates[0].update, b"old".to_vec());
        // A new snapshot replaces the old one.
        store
            .put_snapshot(
                "r",
                &Snapshot {
                    seq: 4,
                    state: vec![1; 10],
                },
            )
            .unwrap();
        assert_eq!(store.snapshot("r").unwrap().unwrap().seq, 4);
    }

    mod erased {
        pub trait Encode {
            fn encode(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Encode for T {
            fn encode(&self) -> Vec<u8> {
                super::encode(self)
            }
        }
    }

    #[test]
    fn large_values_round_trip_through_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| i as u8).collect();
        for seq in 1..=4 {
            let len = [1, CHUNK_BYTES, CHUNK_BYTES + 1, big.len()][seq as usize - 1];
            store.append("r", seq, &big[..len]).unwrap();
        }
        let log = store.load("r").unwrap();
        let lens: Vec<usize> = log.updates.iter().map(|u| u.update.len()).collect();
        assert_eq!(lens, vec![1, CHUNK_BYTES, CHUNK_BYTES + 1, big.len()]);
        assert_eq!(log.updates[3].update, big);
        assert_eq!(
            store.updates_after("r", 2, 1).unwrap()[0].update,
            big[..CHUNK_BYTES + 1].to_vec()
        );
        assert_eq!(store.first_seq("r").unwrap(), Some(1));
        assert_eq!(store.delete_before("r", 4).unwrap(), 3);
        assert_eq!(store.first_seq("r").unwrap(), Some(4));
        assert_eq!(store.load("r").unwrap().updates[0].update, big);
        // Snapshots shrink and grow without leaving stale chunks behind.
        for len in [big.len(), 5, 2 * CHUNK_BYTES, 0] {
            let snapshot = Snapshot {
                seq: len as u64,
                state: big[..len].to_vec(),
            };
            store.put_snapshot("r", &snapshot).unwrap();
            assert_eq!(store.snapshot("r").unwrap(), Some(snapshot));
        }
        assert_eq!(store.snapshots.len(), 1);
    }

    #[test]
    fn no_blob_files_even_for_large_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let big = vec![7u8; 3 << 20];
        for seq in 1..=40 {
            store
                .append("r", seq, &big[..seq as usize * 50_000])
                .unwrap();
            store
                .put_snapshot(
                    "r",
                    &Snapshot {
                        seq,
                        state: big.clone(),
                    },
                )
                .unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.blob_files(), 0);
        assert_eq!(store.updates_after("r", 0, usize::MAX).unwrap().len(), 40);
    }

    #[test]
    fn record_overhead_is_small() {
        // A 30-byte update (a typical keystroke) costs its bytes plus a few of framing.
        let value = encode(&UpdateHeadRef {
            at_ms: now_ms(),
            len: 30,
            first: &[7u8; 30],
        });
        assert!(value.len() <= 30 + 1 + 9 + 1 + 1, "{} bytes", value.len());
    }
}
