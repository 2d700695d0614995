//! How a seq becomes visible: the flusher reports a flush, the room moves its durable seq,
//! publishes what is now durable to SSE streams and answers everyone waiting for it
//! (POSTs, long polls, full-state readers, WebSocket acks). A child of `actor.rs`.

use super::Room;
use crate::protocol;
use crate::room::durability::Waiter;
use crate::room::messages::{DocState, LiveEvent};

impl Room {
    /// Sends an event to every SSE stream; ends the streams that cannot take it.
    pub(super) fn publish(&mut self, event: LiveEvent) {
        let budget = self.deps.settings.outbound_queue_bytes;
        self.streams.publish(&self.name, event, budget);
    }

    /// Everything up to `seq` is durable (by flush number `flush`): publish it to SSE
    /// streams, answer waiters, and compact once the latest snapshot is durable.
    pub(super) fn advance_durable(&mut self, seq: u64, flush: u64) {
        if self.failed {
            return;
        }
        let done = self.durability.advance(seq, flush);
        if let Some(changes) = &self.deps.changes {
            changes.send(&self.name, &done.published);
        }
        if let (Some(webhooks), Some((last, _))) = (&self.deps.webhooks, done.published.last()) {
            webhooks.changed(&self.name, *last);
        }
        if !self.streams.is_empty() {
            for (seq, update) in done.published {
                let event = protocol::sse::event("update", Some(seq), &update);
                self.publish(LiveEvent::Update { seq, event, update });
            }
        }
        for waiter in done.answered {
            self.answer(waiter);
        }
        if let Some(snapshot_seq) = done.compact {
            self.compact(snapshot_seq);
        }
    }

    /// Tells `waiter` that what it waited for is durable, covered by the durable seq.
    pub(super) fn answer(&mut self, waiter: Waiter) {
        let durable = self.durability.durable();
        match waiter {
            Waiter::Reply(reply) => {
                let _ = reply.send(durable);
            }
            Waiter::Seq { reply, seq } => {
                let _ = reply.send(seq);
            }
            Waiter::State { reply, state } => {
                let _ = reply.send(state);
            }
            Waiter::FreshState(reply) => {
                let state = DocState {
                    state: self.full_state(),
                    seq: self.seq,
                };
                let _ = reply.send(state);
            }
            Waiter::Ack { session, token, ok } => {
                self.send_to(session, protocol::encode_ack(token, durable, ok));
            }
        }
    }

    /// Tells `waiter` that what it waited for was not stored: HTTP handlers answer 503,
    /// a WebSocket writer gets an ack that says "refused".
    pub(super) fn answer_refused(&mut self, waiter: Waiter) {
        if let Waiter::Ack { session, token, .. } = waiter {
            let durable = self.durability.durable();
            self.send_to(session, protocol::encode_ack(token, durable, false));
        }
    }

    /// Registers `waiter` for everything the room accepted so far: the newest seq on one
    /// node; in cluster mode, the seqs Redis has yet to give the room's own updates.
    pub(super) fn wait_for_accepted(&mut self, waiter: Waiter) {
        let waiter = match &mut self.sequencer {
            Some(sequencer) => sequencer.park(waiter),
            None => Some(waiter),
        };
        if let Some(waiter) = waiter {
            let seq = match waiter {
                Waiter::Seq { seq, .. } => seq,
                _ => self.seq,
            };
            self.wait_for(seq, waiter);
        }
    }

    /// Registers `waiter` for `seq`, or answers it now if `seq` is durable already.
    pub(super) fn wait_for(&mut self, seq: u64, waiter: Waiter) {
        if let Some(waiter) = self.durability.wait_for(seq, waiter) {
            self.answer(waiter);
        }
    }
}
