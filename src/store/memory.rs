//! An in-memory op log for unit tests: same contract as the sled store, nothing on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{LoggedUpdate, Snapshot, Store, StoreError, check_room_name};

#[derive(Default)]
struct RoomRecords {
    log: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<Snapshot>,
}

/// Keeps every room in a map behind one mutex; `flush` is a no-op.
#[derive(Default)]
pub struct MemoryStore {
    /// A std mutex: every operation is short and never awaits while holding it.
    rooms: Mutex<HashMap<String, RoomRecords>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut RoomRecords) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        f(rooms.entry(room.to_string()).or_default())
    }
}

impl Store for MemoryStore {
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.with_room(room, |r| r.log.insert(seq, update.to_vec()));
        Ok(())
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_room_name(room)?;
        self.with_room(room, |r| r.snapshot = Some(snapshot.clone()));
        Ok(())
    }

    fn snapshot(&self, room: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.with_room(room, |r| r.snapshot.clone()))
    }

    fn updates_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LoggedUpdate>, StoreError> {
        Ok(self.with_room(room, |r| {
            r.log
                .range(after.saturating_add(1)..)
                .filter(|(seq, _)| **seq > after)
                .take(limit)
                .map(|(seq, update)| LoggedUpdate {
                    seq: *seq,
                    update: update.clone(),
                })
                .collect()
        }))
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.with_room(room, |r| r.log.keys().next().copied()))
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        Ok(self.with_room(room, |r| {
            let kept = r.log.split_off(&seq);
            let removed = r.log.len();
            r.log = kept;
            removed
        }))
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_store_contract() {
        crate::store::contract::check(&super::MemoryStore::new());
    }
}
