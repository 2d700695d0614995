//! Durability bookkeeping, sans-IO: which updates are appended but not yet durable, who
//! waits for which seq, and when the records a snapshot replaces may go. The room feeds
//! it appends, snapshots and the flusher's reports, and carries out what comes back.
//!
//! The rule it keeps: nothing is shown for a seq before a flush covering it completed —
//! SSE gets an update, a POST or long poll its answer, a WebSocket writer its ack, only
//! from [`Durability::advance`]; and compaction waits for a flush that *began after* the
//! snapshot was written (flushes are numbered, see `store::commit`), since a flush that
//! was already running may report the snapshot's seq without covering the snapshot.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::messages::{DocState, SessionId};

/// Someone waiting for a seq to become durable.
pub enum Waiter {
    /// An HTTP handler (a long poll): answered with the durable seq.
    Reply(oneshot::Sender<u64>),
    /// A writer (POST, a room handle): answered with its update's own seq.
    Seq {
        reply: oneshot::Sender<u64>,
        seq: u64,
    },
    /// A full-state reader, with the state encoded when it asked.
    State {
        reply: oneshot::Sender<DocState>,
        state: DocState,
    },
    /// A full-state reader whose state is encoded when the answer is due (cluster mode:
    /// the document held updates whose seqs were not known when it asked).
    FreshState(oneshot::Sender<DocState>),
    /// A WebSocket writer that asked for an ack (see `protocol::MSG_ACK`); `ok` is false
    /// if something it sent since its previous ack request was refused.
    Ack {
        session: SessionId,
        token: u64,
        ok: bool,
    },
}

/// What became durable: updates to publish (in seq order), waiters to answer with the
/// durable seq, and the snapshot seq whose covered records may now be compacted.
#[derive(Default)]
pub struct Advanced {
    pub published: Vec<(u64, Bytes)>,
    pub answered: Vec<Waiter>,
    pub compact: Option<u64>,
}

#[derive(Default)]
pub struct Durability {
    /// The newest durable seq: the only seq shown outside.
    durable: u64,
    /// Updates appended but not yet durable, oldest first.
    undurable: VecDeque<(u64, Bytes)>,
    /// Waiters by the seq they wait for.
    waiters: BTreeMap<u64, Vec<Waiter>>,
    /// The latest snapshot's seq and the number of the first flush that covers it.
    compaction_due: Option<(u64, u64)>,
}

impl Durability {
    /// A room whose log is durable up to `seq` (as loaded).
    pub fn at(seq: u64) -> Durability {
        Durability {
            durable: seq,
            ..Durability::default()
        }
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// `update` was appended as `seq`; it is published once durable.
    pub fn appended(&mut self, seq: u64, update: Bytes) {
        self.undurable.push_back((seq, update));
    }

    /// A snapshot at `seq` was written; flush number `flush` is the first to cover it.
    pub fn snapshot_written(&mut self, seq: u64, flush: u64) {
        self.compaction_due = Some((seq, flush));
    }

    /// Flush number `flush` made everything up to `seq` durable.
    pub fn advance(&mut self, seq: u64, flush: u64) -> Advanced {
        self.durable = self.durable.max(seq);
        let mut done = Advanced::default();
        while self
            .undurable
            .front()
            .is_some_and(|(s, _)| *s <= self.durable)
        {
            done.published
                .push(self.undurable.pop_front().expect("front exists"));
        }
        let later = self.waiters.split_off(&(self.durable + 1));
        done.answered = std::mem::replace(&mut self.waiters, later)
            .into_values()
            .flatten()
            .collect();
        if let Some((snapshot, covered_by)) = self.compaction_due
            && flush >= covered_by
        {
            self.compaction_due = None;
            done.compact = Some(snapshot);
        }
        done
    }

    /// Registers `waiter` for `seq`; if `seq` is durable already it comes straight back.
    pub fn wait_for(&mut self, seq: u64, waiter: Waiter) -> Option<Waiter> {
        if seq <= self.durable {
            return Some(waiter);
        }
        self.waiters.entry(seq).or_default().push(waiter);
        None
    }

    /// Forgets HTTP waiters that gave up (long polls that timed out).
    pub fn prune_abandoned(&mut self) {
        self.waiters.retain(|_, waiters| {
            waiters.retain(|w| !w.abandoned());
            !waiters.is_empty()
        });
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// The store failed: nothing pending will become durable; waiters are dropped (HTTP
    /// handlers answer 503, WebSocket writers get no ack).
    pub fn fail(&mut self) {
        *self = Durability::at(self.durable);
    }
}

impl Waiter {
    /// An HTTP handler that stopped waiting (a long poll that timed out).
    pub fn abandoned(&self) -> bool {
        match self {
            Waiter::Reply(reply) | Waiter::Seq { reply, .. } => reply.is_closed(),
            Waiter::State { reply, .. } | Waiter::FreshState(reply) => reply.is_closed(),
            Waiter::Ack { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> (Waiter, oneshot::Receiver<u64>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::Reply(tx), rx)
    }

    #[test]
    fn updates_and_answers_come_only_once_durable_and_in_order() {
        let mut d = Durability::at(10);
        for seq in 11..=13 {
            d.appended(seq, Bytes::from(vec![seq as u8]));
        }
        let (waiter, _rx) = reply();
        assert!(d.wait_for(12, waiter).is_none());
        let done = d.advance(11, 1);
        assert_eq!(
            done.published.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![11]
        );
        assert!(done.answered.is_empty());
        let done = d.advance(13, 2);
        assert_eq!(
            done.published.iter().map(|u| u.0).collect::<Vec<_>>(),
            vec![12, 13]
        );
        assert_eq!(done.answered.len(), 1);
        assert_eq!(d.durable(), 13);
        // A seq durable already is answered at once.
        let (waiter, _rx) = reply();
        assert!(d.wait_for(5, waiter).is_some());
    }

    #[test]
    fn compaction_waits_for_a_flush_that_began_after_the_snapshot() {
        let mut d = Durability::at(0);
        d.appended(1, Bytes::new());
        d.snapshot_written(1, 8);
        // Flush 7 was already running when the snapshot was written: it reports seq 1
        // durable, but not the snapshot.
        assert_eq!(d.advance(1, 7).compact, None);
        assert_eq!(d.advance(1, 8).compact, Some(1));
        assert_eq!(d.advance(1, 9).compact, None, "once");
    }

    #[test]
    fn a_failure_drops_waiters_and_pending_updates() {
        let mut d = Durability::at(3);
        d.appended(4, Bytes::new());
        let (waiter, rx) = reply();
        d.wait_for(4, waiter);
        d.fail();
        assert!(!d.has_waiters());
        assert!(d.advance(4, 1).published.is_empty());
        drop(d);
        assert!(rx.blocking_recv().is_err(), "the waiter hears the failure");
    }
}
