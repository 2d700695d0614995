//! Time travel over the op log: a room's document as it was right after a given seq, and
//! its updates' metadata. Plain blocking code over a [`Store`], run on the blocking pool.
//!
//! The state at seq `n` is a base plus the records after it up to `n`: the stored
//! snapshot when it covers no more than `n`, else the empty document when the log still
//! starts at seq 1. Compaction deletes records a snapshot covers beyond the replay
//! window, and only the latest snapshot is kept: a seq older than both is no longer
//! reachable, and the answer names the oldest seq that is ([`At::Compacted`]). With the
//! PostgreSQL archive behind a cluster, the archive keeps every record, so every seq is.

use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use crate::store::{LoggedUpdate, Store, StoreError};

/// The document at a seq, or why not.
pub enum At {
    State(Doc),
    /// Not reachable any more; `nearest` is the oldest seq that is.
    Compacted {
        nearest: u64,
    },
}

/// Records read per store call while replaying.
const PAGE: usize = 1_000;

/// `room`'s document right after seq `seq` (which the caller checked is durable).
pub fn state_at(store: &dyn Store, room: &str, seq: u64) -> Result<At, StoreError> {
    // A deleted epoch's seqs are gone with it; the current one begins empty at its base.
    let epoch_base = store.epoch(room)?.base;
    if seq < epoch_base {
        return Ok(At::Compacted {
            nearest: epoch_base,
        });
    }
    let snapshot = store.snapshot(room)?;
    let first = store.first_seq(room)?;
    // The nearest base at or before `seq`: the snapshot, a checkpoint, or (while the log
    // starts at 1) the empty document.
    let checkpoint = store.checkpoint_before(room, seq)?;
    let base = [snapshot.as_ref(), checkpoint.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| s.seq <= seq)
        .max_by_key(|s| s.seq);
    let doc = Doc::new();
    // The records after a base exist when the log reaches back to right after it.
    let reaches = |base: u64| base == seq || first.is_some_and(|f| f <= base + 1);
    let mut at = match base {
        Some(s) if reaches(s.seq) => {
            apply(&doc, room, s.seq, &s.state)?;
            s.seq
        }
        _ if first == Some(epoch_base + 1) || (first.is_none() && snapshot.is_none()) => epoch_base,
        // The oldest seq from which every later one is reachable (checkpoints are also
        // reachable at their own seqs).
        _ => {
            return Ok(At::Compacted {
                nearest: snapshot
                    .as_ref()
                    .map_or_else(|| first.map_or(0, |f| f - 1), |s| s.seq),
            });
        }
    };
    while at < seq {
        let page = store.updates_after(room, at, PAGE.min((seq - at) as usize))?;
        let Some(next) = page.first() else {
            break; // nothing more stored: `seq` was the room's last
        };
        if next.seq != at + 1 {
            // Compacted between the base and `seq`.
            return Ok(At::Compacted {
                nearest: snapshot.map_or(next.seq - 1, |s| s.seq),
            });
        }
        for LoggedUpdate { seq: s, update, .. } in page {
            apply(&doc, room, s, &update)?;
            at = s;
        }
    }
    Ok(At::State(doc))
}

fn apply(doc: &Doc, room: &str, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        room: room.to_string(),
        seq,
        reason,
    };
    let update = Update::decode_v1(bytes).map_err(|e| corrupt(e.to_string()))?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| corrupt(e.to_string()))
}

/// Up to `limit` records before seq `before`, newest first (metadata and bytes).
pub fn before(
    store: &dyn Store,
    room: &str,
    before: u64,
    limit: usize,
) -> Result<Vec<LoggedUpdate>, StoreError> {
    let after = before.saturating_sub(1).saturating_sub(limit as u64);
    let mut found: Vec<LoggedUpdate> = store
        .updates_after(room, after, limit)?
        .into_iter()
        .filter(|u| u.seq < before)
        .collect();
    found.reverse();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;
    use crate::store::memory::MemoryStore;
    use yrs::{GetString, ReadTxn, StateVector, Text};

    fn text_at(store: &dyn Store, seq: u64) -> Result<String, u64> {
        match state_at(store, "r", seq).unwrap() {
            At::State(doc) => Ok(doc.get_or_insert_text("t").get_string(&doc.transact())),
            At::Compacted { nearest } => Err(nearest),
        }
    }

    #[test]
    fn every_seq_until_compaction_then_the_nearest() {
        let store = MemoryStore::new();
        let writer = Doc::new();
        let text = writer.get_or_insert_text("t");
        for seq in 1..=20u64 {
            let update = {
                let mut txn = writer.transact_mut();
                text.push(&mut txn, &format!("{}", seq % 10));
                txn.encode_update_v1()
            };
            store.append("r", seq, &update).unwrap();
            if seq == 12 {
                let state = writer
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                store.put_snapshot("r", &Snapshot { seq, state }).unwrap();
            }
        }
        assert_eq!(text_at(&store, 0), Ok(String::new()));
        assert_eq!(text_at(&store, 3), Ok("123".into()));
        assert_eq!(text_at(&store, 15), Ok("123456789012345".into()));
        assert_eq!(text_at(&store, 20), Ok("12345678901234567890".into()));
        // Compaction: records below 10 go; seqs before the snapshot are lost.
        store.delete_before("r", 10).unwrap();
        assert_eq!(text_at(&store, 5), Err(12));
        assert_eq!(text_at(&store, 12), Ok("123456789012".into()));
        assert_eq!(text_at(&store, 13), Ok("1234567890123".into()));
        let newest: Vec<u64> = before(&store, "r", 21, 3)
            .unwrap()
            .iter()
            .map(|u| u.seq)
            .collect();
        assert_eq!(newest, vec![20, 19, 18]);
        let older: Vec<u64> = before(&store, "r", 12, 5)
            .unwrap()
            .iter()
            .map(|u| u.seq)
            .collect();
        assert_eq!(older, vec![11, 10]);
    }
}
