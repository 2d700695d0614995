//! Cluster mode's ordering, sans-IO: a room's log lives in Redis, which gives every
//! update its seq, so a room applies entries in seq order whichever node wrote them, and
//! learns its own updates' seqs from Redis' answers (see [`crate::cluster`]).
//!
//! What it keeps:
//! - **tickets**: this node's updates sent to Redis, in the order sent — in flight,
//!   failed (Redis went away before answering; sent again once it is back, unless the
//!   entry turns up in the log, which the ticket recognizes), or logged at a seq;
//! - **ahead**: entries received out of order (a seq whose predecessor has not arrived);
//!   a gap that persists is the room's cue for a catch-up read;
//! - **parked** waiters: someone asked for "everything this room accepted so far"
//!   (a write's answer, an ack, a full state) while tickets were unanswered; each waits
//!   on the newest ticket of that moment, and is released with the seq that ticket got
//!   (and at least the seq the room had applied when it asked) once every ticket up to it
//!   is logged *and* applied in order.
//!
//! The room applies what [`Sequencer::drain`] yields (its own entries are in its document
//! already), makes each durable at once (Redis holds it), and answers what
//! [`Sequencer::release`] yields through its durability bookkeeping.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::durability::Waiter;
use crate::cluster::Entry;

enum Ticket {
    InFlight(Bytes),
    Failed(Bytes),
    Logged(u64),
}

/// An entry ready to apply, in seq order.
#[derive(Debug)]
pub struct Drained {
    pub seq: u64,
    pub update: Bytes,
    /// This room instance wrote it: its document holds it already.
    pub own: bool,
}

pub struct Sequencer {
    node: u64,
    applied: u64,
    tickets: BTreeMap<u64, Ticket>,
    ahead: BTreeMap<u64, (Bytes, bool)>,
    parked: BTreeMap<u64, Vec<(u64, Waiter)>>,
    /// The highest seq of the tickets released so far.
    released_max: u64,
}

impl Sequencer {
    /// A room on `node` whose log is applied up to `applied`.
    pub fn new(node: u64, applied: u64) -> Sequencer {
        Sequencer {
            node,
            applied,
            tickets: BTreeMap::new(),
            ahead: BTreeMap::new(),
            parked: BTreeMap::new(),
            released_max: 0,
        }
    }

    /// The newest seq applied in order.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// An update of this room was sent to Redis with `ticket`.
    pub fn sent(&mut self, ticket: u64, update: Bytes) {
        self.tickets.insert(ticket, Ticket::InFlight(update));
    }

    /// Parks `waiter` until every update accepted so far has its seq and is applied;
    /// gives it back when nothing is unanswered (it waits for [`Self::applied`] then).
    pub fn park(&mut self, waiter: Waiter) -> Option<Waiter> {
        match self.tickets.keys().next_back() {
            None => Some(waiter),
            Some(&last) => {
                self.parked
                    .entry(last)
                    .or_default()
                    .push((self.applied, waiter));
                None
            }
        }
    }

    /// Redis logged `ticket` as `seq`.
    pub fn appended(&mut self, ticket: u64, seq: u64) {
        if let Some(t) = self.tickets.get_mut(&ticket) {
            let update = match std::mem::replace(t, Ticket::Logged(seq)) {
                Ticket::InFlight(u) | Ticket::Failed(u) => u,
                Ticket::Logged(_) => return,
            };
            if seq > self.applied {
                self.ahead.insert(seq, (update, true));
            }
        }
    }

    /// Redis did not answer `ticket` (it went away): the update is sent again once Redis
    /// is back ([`Self::retry`]). Everyone parked on it or later is given back, to be
    /// told "not stored": nothing is acknowledged before Redis has it.
    pub fn failed(&mut self, ticket: u64) -> Vec<Waiter> {
        if let Some(t) = self.tickets.get_mut(&ticket)
            && let Ticket::InFlight(u) = t
        {
            *t = Ticket::Failed(u.clone());
        }
        let later = self.parked.split_off(&ticket);
        later.into_values().flatten().map(|(_, w)| w).collect()
    }

    /// Failed updates to send again, with their tickets (now in flight again).
    pub fn retry(&mut self) -> Vec<(u64, Bytes)> {
        let mut again = Vec::new();
        for (&ticket, t) in self.tickets.iter_mut() {
            if let Ticket::Failed(u) = t {
                again.push((ticket, u.clone()));
                *t = Ticket::InFlight(u.clone());
            }
        }
        again
    }

    /// An entry of the room's log arrived (from the channel or a catch-up read).
    pub fn received(&mut self, entry: Entry) {
        if entry.seq <= self.applied {
            return;
        }
        if entry.node == self.node
            && let Some(t) = self.tickets.get_mut(&entry.ticket)
        {
            if !matches!(t, Ticket::Logged(_)) {
                *t = Ticket::Logged(entry.seq);
            }
            self.ahead.insert(entry.seq, (entry.update, true));
            return;
        }
        self.ahead.entry(entry.seq).or_insert((entry.update, false));
    }

    /// The entries that now follow the applied seq without a gap, in order.
    pub fn drain(&mut self) -> Vec<Drained> {
        let mut out = Vec::new();
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.applied + 1 {
                break;
            }
            let (seq, (update, own)) = entry.remove_entry();
            self.applied = seq;
            out.push(Drained { seq, update, own });
        }
        // Entries at or below what was applied (a snapshot jumped past them) go.
        while self
            .ahead
            .first_key_value()
            .is_some_and(|(&seq, _)| seq <= self.applied)
        {
            self.ahead.pop_first();
        }
        out
    }

    /// Waiters whose tickets are all logged and applied, each with the seq it may be
    /// answered at.
    pub fn release(&mut self) -> Vec<(u64, Waiter)> {
        let mut out = Vec::new();
        while let Some(entry) = self.tickets.first_entry() {
            let Ticket::Logged(seq) = *entry.get() else {
                break;
            };
            if seq > self.applied {
                break;
            }
            let ticket = *entry.key();
            entry.remove();
            self.released_max = self.released_max.max(seq);
            if let Some(waiters) = self.parked.remove(&ticket) {
                let at = self.released_max;
                out.extend(waiters.into_iter().map(|(floor, w)| (at.max(floor), w)));
            }
        }
        if self.tickets.is_empty() {
            // Parked on tickets that are gone (none should be): answer at what is applied.
            let applied = self.applied;
            for (_, waiters) in std::mem::take(&mut self.parked) {
                out.extend(
                    waiters
                        .into_iter()
                        .map(|(floor, w)| (floor.max(applied), w)),
                );
            }
        }
        out
    }

    /// Entries wait behind a missing seq.
    pub fn has_gap(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// Updates of this room wait for Redis (in flight or to be sent again).
    pub fn has_unlogged(&self) -> bool {
        self.tickets
            .values()
            .any(|t| !matches!(t, Ticket::Logged(_)))
    }

    /// Updates failed and wait to be sent again.
    pub fn has_failed(&self) -> bool {
        self.tickets
            .values()
            .any(|t| matches!(t, Ticket::Failed(_)))
    }

    /// Nothing in flight, nothing out of order: the document is exactly the log up to
    /// [`Self::applied`] (a snapshot may be taken).
    pub fn settled(&self) -> bool {
        self.tickets.is_empty() && self.ahead.is_empty()
    }

    /// The room applied a snapshot at `seq` (the log no longer reached back to what it
    /// lacked).
    pub fn jump_to(&mut self, seq: u64) {
        if seq > self.applied {
            self.applied = seq;
        }
    }

    /// Waiters still parked (the room is failing): given back to be answered "not
    /// stored".
    pub fn take_parked(&mut self) -> Vec<Waiter> {
        std::mem::take(&mut self.parked)
            .into_values()
            .flatten()
            .map(|(_, w)| w)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    const NODE: u64 = 7;

    fn entry(seq: u64, node: u64, ticket: u64) -> Entry {
        Entry {
            seq,
            node,
            ticket,
            update: Bytes::from(vec![seq as u8]),
            at_ms: 0,
            author: None,
        }
    }

    fn seqs(drained: &[Drained]) -> Vec<(u64, bool)> {
        drained.iter().map(|d| (d.seq, d.own)).collect()
    }

    fn waiter() -> (Waiter, oneshot::Receiver<u64>) {
        let (tx, rx) = oneshot::channel();
        (Waiter::Reply(tx), rx)
    }

    #[test]
    fn entries_apply_in_seq_order_whatever_order_they_come_in() {
        let mut s = Sequencer::new(NODE, 10);
        s.received(entry(12, 1, 1));
        assert!(s.drain().is_empty());
        assert!(s.has_gap());
        s.received(entry(11, 2, 1));
        assert_eq!(seqs(&s.drain()), vec![(11, false), (12, false)]);
        assert!(!s.has_gap());
        s.received(entry(12, 1, 1)); // a duplicate: already applied
        assert!(s.drain().is_empty());
        assert_eq!(s.applied(), 12);
    }

    #[test]
    fn own_updates_are_recognized_by_answer_or_by_channel() {
        let mut s = Sequencer::new(NODE, 0);
        s.sent(100, Bytes::from_static(b"a"));
        s.sent(101, Bytes::from_static(b"b"));
        let (w, _rx) = waiter();
        assert!(s.park(w).is_none());
        // The channel brings ticket 101's entry before Redis answers either append, and
        // another node's entry sits between them.
        s.received(entry(3, NODE, 101));
        s.received(entry(2, 9, 1));
        assert!(s.drain().is_empty());
        assert!(s.release().is_empty());
        s.appended(100, 1);
        s.appended(101, 3); // late answer: changes nothing
        assert_eq!(seqs(&s.drain()), vec![(1, true), (2, false), (3, true)]);
        let released = s.release();
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].0, 3);
        assert!(s.settled());
    }

    #[test]
    fn a_waiter_is_released_at_its_own_ticket_not_later_ones() {
        let mut s = Sequencer::new(NODE, 5);
        s.sent(1, Bytes::new());
        let (w, _rx) = waiter();
        assert!(s.park(w).is_none());
        s.sent(2, Bytes::new());
        s.appended(1, 6);
        s.appended(2, 7);
        s.drain();
        let released = s.release();
        assert_eq!(
            released.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
            vec![6]
        );
        // Nothing unanswered: a new waiter is not parked.
        let (w, _rx) = waiter();
        assert!(s.park(w).is_some());
    }

    #[test]
    fn a_failed_append_answers_its_waiters_and_is_sent_again_unless_logged() {
        let mut s = Sequencer::new(NODE, 0);
        s.sent(1, Bytes::from_static(b"x"));
        s.sent(2, Bytes::from_static(b"y"));
        let (w, _rx) = waiter();
        assert!(s.park(w).is_none());
        assert_eq!(s.failed(1).len(), 1);
        assert_eq!(s.failed(2).len(), 0);
        assert!(s.has_failed());
        // A catch-up read finds ticket 1 in the log after all (Redis ran it, the answer
        // was lost): only ticket 2 is sent again.
        s.received(entry(1, NODE, 1));
        assert_eq!(seqs(&s.drain()), vec![(1, true)]);
        let again = s.retry();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0, 2);
        assert!(!s.has_failed());
        s.appended(2, 2);
        assert_eq!(seqs(&s.drain()), vec![(2, true)]);
        s.release();
        assert!(s.settled());
    }

    #[test]
    fn a_snapshot_jump_drops_what_it_covers() {
        let mut s = Sequencer::new(NODE, 3);
        s.received(entry(9, 1, 1));
        s.received(entry(12, 1, 2));
        s.jump_to(10);
        assert!(s.drain().is_empty());
        assert!(s.has_gap()); // 12 waits for 11
        s.received(entry(11, 1, 3));
        assert_eq!(seqs(&s.drain()), vec![(11, false), (12, false)]);
    }
}
