//! Loading a room: its snapshot and the records after it, replayed into a fresh document.
//! Plain blocking code, run off the room threads (the registry's rooms wait for it on the
//! blocking pool), so one large room loading never stalls the other rooms of its thread.

use std::time::Instant;

use log::{error, info};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use crate::metrics::metrics;
use crate::store::{Store, StoreError};

/// A room's state as the store holds it.
pub struct Loaded {
    pub doc: Doc,
    /// The newest stored seq (durable: the load flushed first).
    pub seq: u64,
    /// The seq the stored snapshot covers (0: none).
    pub snapshot_seq: u64,
    /// The document's estimated encoded size: the snapshot plus the records after it.
    pub doc_bytes: usize,
    /// The oldest retained record's seq, if any.
    pub first_seq: Option<u64>,
    /// The room's epoch (the seq it began at: `seq` for a room with nothing in it).
    pub epoch: crate::room::messages::EpochAt,
    /// What deleted epochs held (see [`crate::store::Epoch::graveyard`]).
    pub graveyard: Option<yrs::StateVector>,
}

/// Reads room `name` from `store`. It flushes first: the room will show every loaded seq
/// as durable, and a predecessor that stopped or crashed may have appended records no
/// flush covered yet. (A store with nothing unflushed answers at once; one whose flush
/// failed refuses, and so the room does not load.)
pub fn read(store: &dyn Store, name: &str) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    store.flush()?;
    let log = store.load(name)?;
    let doc = Doc::new();
    let mut skipped = 0usize;
    // One transaction per record: yrs' cost per apply grows with the transaction it
    // joins, so one transaction for all records is superlinear (100,000 keystrokes:
    // seconds instead of ~0.1 s; see BENCHMARKS.md, cold load).
    let snapshot = log.snapshot.as_ref().map(|s| (s.seq, &s.state));
    let records = log.updates.iter().map(|u| (u.seq, &u.update));
    for (seq, bytes) in snapshot.into_iter().chain(records) {
        let applied = Update::decode_v1(bytes)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                doc.transact_mut()
                    .apply_update(u)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = applied {
            error!("room {name:?}: stored record {seq} does not apply, skipped: {e}");
            skipped += 1;
        }
    }
    let seq = log.last_seq();
    let snapshot_seq = log.snapshot.as_ref().map_or(0, |s| s.seq);
    let doc_bytes = log.snapshot.as_ref().map_or(0, |s| s.state.len())
        + log.updates.iter().map(|u| u.update.len()).sum::<usize>();
    metrics()
        .room_load_seconds
        .observe(started.elapsed().as_secs_f64());
    info!(
        "room {name:?} loaded: seq {seq}, snapshot at {snapshot_seq}, {} records replayed{} in {} ms",
        log.updates.len(),
        if skipped > 0 {
            format!(" ({skipped} skipped)")
        } else {
            String::new()
        },
        started.elapsed().as_millis()
    );
    let graveyard = match log.epoch.graveyard.as_slice() {
        [] => None,
        bytes => match yrs::StateVector::decode_v1(bytes) {
            Ok(sv) => Some(sv),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    room: name.to_string(),
                    seq: log.epoch.base,
                    reason: format!("the epoch's graveyard does not decode: {e}"),
                });
            }
        },
    };
    Ok(Loaded {
        doc,
        seq,
        snapshot_seq,
        doc_bytes,
        first_seq: store.first_seq(name)?,
        epoch: crate::room::messages::EpochAt {
            number: log.epoch.number,
            base: log.epoch.base,
        },
        graveyard,
    })
}
