//! A room's members: delivering frames to its sessions (the slow-consumer rule is in
//! `room::fanout`), closing and forgetting them, and their presence — applied under
//! `room::presence`'s rules, sent at once or merged per tick. A child of `actor.rs`.

use std::sync::Arc;
use std::time::Instant;

use actix::{AsyncContext, Context};
use bytes::Bytes;
use log::debug;
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;

use super::Room;
use crate::metrics::metrics;
use crate::protocol;
use crate::room::messages::{LiveEvent, SessionId};
use crate::room::presence;

impl Room {
    pub(super) fn send_to(&mut self, session: SessionId, frame: Bytes) {
        let dropped = self.fanout.send_to(session, frame);
        self.forget_sessions(dropped);
    }

    /// Sends `frame` (one shared buffer) to every session but `except`.
    pub(super) fn broadcast(&mut self, frame: &Bytes, except: Option<SessionId>) {
        let dropped = self.fanout.broadcast(frame, except);
        self.forget_sessions(dropped);
    }

    pub(super) fn close_session(&mut self, session: SessionId, code: u16, reason: String) {
        if self.fanout.close(session, code, reason) {
            self.forget_sessions(vec![session]);
        }
    }

    pub(super) fn remove_session(&mut self, session: SessionId) {
        if self.fanout.remove(session) {
            self.forget_sessions(vec![session]);
        }
    }

    /// Sessions that left the room (closed, gone, slow): their presence goes too.
    pub(super) fn forget_sessions(&mut self, sessions: Vec<SessionId>) {
        for session in sessions {
            if let Some(removed) = self.presence.remove_session(session) {
                self.relay_awareness(session, &removed);
                self.broadcast_awareness(removed);
            }
        }
    }

    /// Applies a presence update of a session of this node (WebSocket, or HTTP's
    /// `X-Presence-Session`); in cluster mode what it took goes to the room's other nodes.
    pub(super) fn apply_awareness(
        &mut self,
        origin: SessionId,
        update: AwarenessUpdate,
        ctx: &mut Context<Self>,
    ) -> Vec<(u64, presence::Refusal)> {
        let relayed = self.deps.cluster.is_some().then(|| update.clients.clone());
        let refused = self.take_awareness(origin, update, ctx);
        if let Some(mut clients) = relayed {
            clients.retain(|id, _| !refused.iter().any(|(r, _)| *r == id.get()));
            self.relay_awareness(origin, &AwarenessUpdate { clients });
        }
        refused
    }

    /// Applies a presence update from `origin` (a local session, or a session of another
    /// node) under `room::presence`'s rules and sends what changed.
    pub(super) fn take_awareness(
        &mut self,
        origin: SessionId,
        update: AwarenessUpdate,
        ctx: &mut Context<Self>,
    ) -> Vec<(u64, presence::Refusal)> {
        let tick = self.deps.settings.awareness_tick();
        let applied = self
            .presence
            .apply(origin, update, Instant::now(), !tick.is_zero());
        if let Some((id, why)) = applied.refused.first() {
            let m = metrics();
            for (_, refusal) in &applied.refused {
                m.awareness_refused
                    .with_label_values(&[refusal.label()])
                    .inc();
            }
            debug!(
                "room {:?}: session {origin}: {} presence entries refused (client {id}: {})",
                self.name,
                applied.refused.len(),
                why.label()
            );
        }
        // Everyone, the sender included: a lone y-websocket client counts the echo of its
        // own renewals as a sign of life (it reconnects after 30 s without a message).
        if let Some(changes) = applied.changes {
            self.broadcast_awareness(changes);
        }
        if applied.deferred && !self.presence_tick_due {
            self.presence_tick_due = true;
            ctx.run_later(tick, |room, _| {
                room.presence_tick_due = false;
                if let Some(merged) = room.presence.take_dirty() {
                    room.broadcast_awareness(merged);
                }
            });
        }
        applied.refused
    }

    /// Sends presence changes to every session and SSE stream.
    pub(super) fn broadcast_awareness(&mut self, changes: AwarenessUpdate) {
        let frame = protocol::encode_awareness(&changes);
        let changes = Arc::new(changes);
        let dropped = self.fanout.broadcast_presence(&frame, &changes);
        self.forget_sessions(dropped);
        if !self.streams.is_empty() {
            let event = protocol::sse::event("awareness", None, &changes.encode_v1());
            self.publish(LiveEvent::Awareness { event });
        }
    }
}
