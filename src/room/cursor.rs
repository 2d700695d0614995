//! The seq cursor shared by every transport (ARCHITECTURE.md, contract 4): given "I have
//! everything up to seq N" and the room's durable seq, what does the client get?

use crate::store::{LoggedUpdate, Store, StoreError};

/// How a client catches up.
#[derive(Debug, PartialEq)]
pub enum CatchUp {
    /// Exactly the updates after the cursor, in order (possibly none, possibly only the
    /// first `limit` of them).
    Updates(Vec<LoggedUpdate>),
    /// Replay is impossible (no cursor, a cursor older than the retained log, or one from
    /// the future): the client needs the full state.
    Snapshot,
}

/// Reads what a client at `since` needs to reach `durable`, at most `limit` updates.
/// Records past `durable` (appended, not yet flushed) are never returned. A gap in what
/// the store holds (compacted meanwhile) turns into [`CatchUp::Snapshot`], never into a
/// silent hole.
pub fn catch_up(
    store: &dyn Store,
    room: &str,
    since: Option<u64>,
    durable: u64,
    limit: usize,
) -> Result<CatchUp, StoreError> {
    let Some(since) = since else {
        return Ok(CatchUp::Snapshot);
    };
    if since > durable {
        return Ok(CatchUp::Snapshot);
    }
    let wanted = usize::try_from(durable - since)
        .unwrap_or(usize::MAX)
        .min(limit);
    if wanted == 0 {
        return Ok(CatchUp::Updates(Vec::new()));
    }
    let updates = store.updates_after(room, since, wanted)?;
    let contiguous = updates
        .iter()
        .enumerate()
        .all(|(i, u)| u.seq == since + 1 + i as u64);
    if updates.is_empty() || !contiguous {
        return Ok(CatchUp::Snapshot);
    }
    Ok(CatchUp::Updates(updates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn store_with(seqs: std::ops::RangeInclusive<u64>) -> MemoryStore {
        let store = MemoryStore::new();
        for seq in seqs {
            store.append("r", seq, &[seq as u8]).unwrap();
        }
        store
    }

    fn seqs(c: CatchUp) -> Vec<u64> {
        match c {
            CatchUp::Updates(u) => u.iter().map(|u| u.seq).collect(),
            CatchUp::Snapshot => panic!("snapshot"),
        }
    }

    #[test]
    fn a_cursor_inside_the_window_gets_exactly_what_follows() {
        let store = store_with(5..=20);
        assert_eq!(
            seqs(catch_up(&store, "r", Some(10), 20, 100).unwrap()),
            (11..=20).collect::<Vec<_>>()
        );
        assert_eq!(
            seqs(catch_up(&store, "r", Some(4), 20, 3).unwrap()),
            vec![5, 6, 7]
        );
        assert_eq!(
            seqs(catch_up(&store, "r", Some(20), 20, 100).unwrap()),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn records_not_yet_durable_are_not_served() {
        let store = store_with(1..=20);
        assert_eq!(
            seqs(catch_up(&store, "r", Some(15), 17, 100).unwrap()),
            vec![16, 17]
        );
    }

    #[test]
    fn no_cursor_an_old_one_or_one_from_the_future_gets_a_snapshot() {
        let store = store_with(5..=20);
        for since in [None, Some(0), Some(3), Some(21)] {
            assert_eq!(
                catch_up(&store, "r", since, 20, 100).unwrap(),
                CatchUp::Snapshot,
                "{since:?}"
            );
        }
        let empty = MemoryStore::new();
        assert_eq!(
            catch_up(&empty, "r", Some(0), 0, 100).unwrap(),
            CatchUp::Updates(vec![])
        );
    }
}
