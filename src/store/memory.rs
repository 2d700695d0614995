//! An in-memory op log for tests: same contract as the sled store, nothing on disk, and
//! a model of the disk underneath: what [`Store::flush`] made durable is kept apart from
//! what was only written, so a test can cut the power ([`MemoryStore::power_cut`]) and
//! see exactly what a real crash would leave, or make flushes fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{Epoch, LoggedUpdate, RoomSummary, Snapshot, Store, StoreError, check_room_name};

#[derive(Default, Clone)]
struct RoomRecords {
    log: BTreeMap<u64, (Vec<u8>, u64)>,
    snapshot: Option<Snapshot>,
    epoch: Epoch,
}

#[derive(Default)]
struct Disk {
    /// What reads see: everything written.
    written: HashMap<String, RoomRecords>,
    /// What survives a power cut: the state at the last successful flush.
    durable: HashMap<String, RoomRecords>,
    /// Set by [`MemoryStore::fail_flushes`]; the next flush fails with it and poisons.
    fail_next_flush: Option<String>,
    /// Set once a flush failed: every later write and flush is refused.
    failed: Option<String>,
    /// Revocations (kept whatever a power cut does: only tests of revocation use them).
    revocations: BTreeMap<String, u64>,
    /// Set by [`MemoryStore::set_unavailable`]: flushes fail without harm until cleared.
    unavailable: Option<String>,
    /// What [`Store::unavailable`] says: set by a flush that failed so, cleared by one
    /// that succeeds (as a database store learns of an outage: by failing to commit).
    known_unavailable: Option<String>,
}

/// Keeps every room in maps behind one mutex.
#[derive(Default)]
pub struct MemoryStore {
    /// A std mutex: every operation is short and never awaits while holding it.
    disk: Mutex<Disk>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Loses everything written since the last successful flush, as a power cut would.
    pub fn power_cut(&self) {
        let mut disk = self.lock();
        disk.written = disk.durable.clone();
    }

    /// Makes the next flush fail with `reason` (and the store refuse writes after it).
    pub fn fail_flushes(&self, reason: &str) {
        self.lock().fail_next_flush = Some(reason.to_string());
    }

    /// Models a database that went away (`Some`) or came back (`None`): meanwhile flushes
    /// answer [`StoreError::Unavailable`] and keep what they did not make durable, and
    /// once one has, the store reports itself unavailable until a flush succeeds.
    pub fn set_unavailable(&self, why: Option<&str>) {
        self.lock().unavailable = why.map(String::from);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_room<T>(&self, room: &str, f: impl FnOnce(&mut RoomRecords) -> T) -> T {
        f(self.lock().written.entry(room.to_string()).or_default())
    }

    fn write<T>(&self, room: &str, f: impl FnOnce(&mut RoomRecords) -> T) -> Result<T, StoreError> {
        check_room_name(room)?;
        let mut disk = self.lock();
        if let Some(reason) = &disk.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        Ok(f(disk.written.entry(room.to_string()).or_default()))
    }
}

impl Store for MemoryStore {
    fn append(&self, room: &str, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        self.write(room, |r| {
            r.log.insert(seq, (update.to_vec(), super::now_ms()));
        })
    }

    fn put_snapshot(&self, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.write(room, |r| r.snapshot = Some(snapshot.clone()))
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
                .map(|(seq, (update, at_ms))| LoggedUpdate {
                    seq: *seq,
                    update: update.clone(),
                    at_ms: *at_ms,
                })
                .collect()
        }))
    }

    fn first_seq(&self, room: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.with_room(room, |r| r.log.keys().next().copied()))
    }

    fn delete_before(&self, room: &str, seq: u64) -> Result<usize, StoreError> {
        self.write(room, |r| {
            let kept = r.log.split_off(&seq);
            let removed = r.log.len();
            r.log = kept;
            removed
        })
    }

    fn put_revocation(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.lock().revocations.insert(key.to_string(), value);
        Ok(())
    }

    fn revocations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self.lock().revocations.clone().into_iter().collect())
    }

    fn epoch(&self, room: &str) -> Result<Epoch, StoreError> {
        Ok(self.with_room(room, |r| r.epoch.clone()))
    }

    fn delete_room(&self, room: &str, next: &Epoch) -> Result<(), StoreError> {
        self.write(room, |r| {
            *r = RoomRecords {
                epoch: Epoch {
                    deleting: false,
                    ..next.clone()
                },
                ..RoomRecords::default()
            };
        })
    }

    fn rooms(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        let disk = self.lock();
        let mut names: Vec<&String> = disk
            .written
            .iter()
            .filter(|(name, r)| {
                name.starts_with(prefix)
                    && after.is_none_or(|a| name.as_str() > a)
                    && (r.snapshot.is_some() || !r.log.is_empty())
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        Ok(names
            .into_iter()
            .take(limit.min(super::MAX_LISTING))
            .map(|name| {
                let r = &disk.written[name];
                let snap = r.snapshot.as_ref();
                let after = snap.map_or(0, |s| s.seq);
                let records = r.log.range(after + 1..);
                RoomSummary {
                    room: name.clone(),
                    seq: r
                        .log
                        .keys()
                        .last()
                        .copied()
                        .unwrap_or(0)
                        .max(after)
                        .max(r.epoch.base),
                    size: snap.map_or(0, |s| s.state.len() as u64)
                        + records.map(|(_, (u, _))| u.len() as u64).sum::<u64>(),
                    changed_ms: r.log.values().last().map_or(0, |(_, at)| *at),
                    epoch: r.epoch.number,
                }
            })
            .collect())
    }

    fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn unavailable(&self) -> Option<String> {
        self.lock().known_unavailable.clone()
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut disk = self.lock();
        if let Some(reason) = disk.fail_next_flush.take() {
            disk.failed = Some(reason);
        }
        if let Some(reason) = &disk.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        if let Some(why) = disk.unavailable.clone() {
            disk.known_unavailable = Some(why.clone());
            return Err(StoreError::Unavailable(why));
        }
        disk.known_unavailable = None;
        disk.durable = disk.written.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_store_contract() {
        crate::store::contract::check(&MemoryStore::new());
        crate::store::contract::check_deletion(&MemoryStore::new());
    }

    #[test]
    fn a_power_cut_keeps_exactly_what_was_flushed() {
        let store = MemoryStore::new();
        store.append("r", 1, b"one").unwrap();
        store.flush().unwrap();
        store.append("r", 2, b"two").unwrap();
        store.power_cut();
        assert_eq!(store.load("r").unwrap().last_seq(), 1);
    }
}
