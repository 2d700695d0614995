//! The op log on sled: key layout and record format are described in the parent module.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{LoggedUpdate, Snapshot, Store, StoreError, check_room_name, now_ms};

/// First byte of every value; bump it when the record shapes change.
const FORMAT_VERSION: u8 = 1;
/// Separates the room name from the seq in log keys; control characters never appear in names.
const KEY_SEPARATOR: u8 = 0x00;

#[derive(Serialize)]
struct UpdateRecordRef<'a> {
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    update: &'a [u8],
}

#[derive(Deserialize)]
struct UpdateRecord {
    #[allow(dead_code)] // kept on disk for operators and future history queries
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    update: Vec<u8>,
}

#[derive(Serialize)]
struct SnapshotRecordRef<'a> {
    seq: u64,
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    state: &'a [u8],
}

#[derive(Deserialize)]
struct SnapshotRecord {
    seq: u64,
    #[allow(dead_code)]
    at_ms: u64,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// The op log in an embedded sled database.
///
/// Durability: sled makes writes durable when [`Store::flush`] (an fsync) returns, and
/// recovers after a crash to a state that contains every flushed write. Appends between
/// flushes may be lost in a crash; that is why a seq is shown to clients only after the
/// flush that covers it.
pub struct SledStore {
    db: ::sled::Db,
    log: ::sled::Tree,
    snapshots: ::sled::Tree,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = ::sled::Config::new()
            .path(dir)
            .mode(::sled::Mode::HighThroughput)
            .open()?;
        let log = db.open_tree("log")?;
        let snapshots = db.open_tree("snapshots")?;
        Ok(SledStore { db, log, snapshots })
    }

    /// Total bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn log_prefix(room: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 9);
    key.extend_from_slice(room.as_bytes());
    key.push(KEY_SEPARATOR);
    key
}

fn log_key(room: &str, seq: u64) -> Vec<u8> {
    let mut key = log_prefix(room);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The first key after every key of the room's log.
fn log_end(room: &str) -> Vec<u8> {
    let mut key = log_prefix(room);
    *key.last_mut().expect("prefix ends in the separator") = KEY_SEPARATOR + 1;
    key
}

fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len() - 8..]
        .try_into()
        .expect("log keys end in 8 bytes");
    u64::from_be_bytes(tail)
}

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(record, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    out
}

fn decode<T: for<'de> Deserialize<'de>>(
    room: &str,
    seq: u64,
    value: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        room: room.to_string(),
        seq,
        reason,
    };
    match value.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map(|(record, _)| record)
                .map_err(|e| corrupt(e.to_string()))
        }
        Some((version, _)) => Err(corrupt(format!("unknown format version {version}"))),
        None => Err(corrupt("empty value".into())),
    }
}

impl Store for SledStore {
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        check_room_name(room)?;
        let value = encode(&UpdateRecordRef {
            at_ms: now_ms(),
            update,
        });
        self.log.insert(log_key(room, seq), value)?;
        Ok(())
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        let value = encode(&SnapshotRecordRef {
            seq: snapshot.seq,
            at_ms: now_ms(),
            state: &snapshot.state,
        });
        self.snapshots.insert(room.as_bytes(), value)?;
        Ok(())
    }

    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(value) = self.snapshots.get(room.as_bytes())? else {
            return Ok(None);
        };
        let record: SnapshotRecord = decode(room, 0, &value)?;
        Ok(Some(Snapshot {
            seq: record.seq,
            state: record.state,
        }))
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
        let mut out = Vec::new();
        for entry in self
            .log
            .range(log_key(room, first)..log_end(room))
            .take(limit)
        {
            let (key, value) = entry?;
            let seq = seq_of(&key);
            let record: UpdateRecord = decode(room, seq, &value)?;
            out.push(LoggedUpdate {
                seq,
                update: record.update,
            });
        }
        Ok(out)
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        let first = self.log.range(log_prefix(room)..log_end(room)).next();
        Ok(first.transpose()?.map(|(key, _)| seq_of(&key)))
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        let mut batch = ::sled::Batch::default();
        let mut count = 0;
        for entry in self.log.range(log_prefix(room)..log_key(room, seq)) {
            let (key, _) = entry?;
            batch.remove(key);
            count += 1;
        }
        self.log.apply_batch(batch)?;
        Ok(count)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn record_overhead_is_small() {
        // A 30-byte update (a typical keystroke) costs its bytes plus a few of framing.
        let value = encode(&UpdateRecordRef {
            at_ms: now_ms(),
            update: &[7u8; 30],
        });
        assert!(value.len() <= 30 + 1 + 9 + 1, "{} bytes", value.len());
    }
}
