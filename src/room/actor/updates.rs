//! The update path of a room: apply a client's update under `room::core`'s rules, give
//! what changed the next seq, append it, mark the room dirty at the flusher and send it to
//! every other member; and the repairs when an update builds on what the room lacks
//! (re-sync) or the document and the log may differ (reload). A child of `actor.rs`.

use std::time::Instant;

use actix::Context;
use bytes::Bytes;
use log::{debug, error, warn};
use yrs::{ReadTxn, Transact, Update};

use super::Room;
use crate::metrics::metrics;
use crate::protocol;
use crate::room::core::{self, Refused, Rejected};
use crate::room::load;
use crate::room::messages::SessionId;

impl Room {
    /// Applies one client update under the rules of [`core::apply`]; what changed the
    /// document is logged and broadcast. `Err(MissingDependencies)` may follow a partial
    /// apply: the part that applied is logged like any update, the rest is refused.
    pub(super) fn apply_update(
        &mut self,
        origin: Option<SessionId>,
        update: Update,
        wire_len: usize,
        ctx: &mut Context<Self>,
    ) -> Result<(), Refused> {
        let refused = |why: Refused| {
            metrics()
                .updates_rejected
                .with_label_values(&[why.label()])
                .inc();
            Err(why)
        };
        if self.failed {
            return refused(Refused::Invalid("the room's store failed".into()));
        }
        // Nothing is taken that could not be stored: the sender keeps it, and WebSocket
        // members are re-synced once the store is back (see `tick`).
        if self.deps.store.unavailable().is_some() || self.cluster_refuses_writes() {
            self.resync_when_stored = true;
            return refused(Refused::StoreUnavailable);
        }
        if let Some(graveyard) = &self.graveyard
            && core::resurrects(graveyard, &update)
        {
            return refused(Refused::Deleted);
        }
        let limit = self.deps.settings.max_doc_bytes;
        // Refused before it is applied when even its encoded size does not fit: a
        // client repeating such writes costs a comparison each, not a document reload.
        if self.doc_bytes.saturating_add(wire_len) > limit {
            return refused(Refused::TooLarge(limit));
        }
        let applied = match core::apply(self.doc(), update, self.doc_bytes, limit) {
            Ok(applied) => applied,
            Err(Rejected {
                why,
                document_dirty,
            }) => {
                if document_dirty {
                    self.reload_document(&why.to_string());
                }
                return refused(why);
            }
        };
        if let Some(diff) = applied.diff {
            self.log_and_broadcast(origin, diff, ctx);
        }
        if applied.missing_dependencies {
            return refused(Refused::MissingDependencies);
        }
        Ok(())
    }

    /// Gives an accepted change the next seq, appends it, and sends it to every peer. (In
    /// cluster mode Redis gives the seq: the change goes to Redis, and to this node's
    /// WebSocket peers at once; see `cluster.rs`.)
    pub(super) fn log_and_broadcast(
        &mut self,
        origin: Option<SessionId>,
        diff: Vec<u8>,
        ctx: &mut Context<Self>,
    ) {
        self.doc_bytes += diff.len();
        self.version += 1;
        // The author, for the history: the session's `sub`, or the HTTP writer's.
        let author = match origin {
            Some(session) => self.fanout.get_mut(session).and_then(|m| m.subject.clone()),
            None => self.http_author.clone(),
        };
        if self.sequencer.is_some() {
            self.broadcast(&protocol::encode_update(&diff), origin);
            self.send_to_cluster(Bytes::from(diff), author);
            return;
        }
        self.seq += 1;
        let started = Instant::now();
        if let Err(e) = self.deps.store.append(&self.name, self.seq, &diff) {
            self.fail(ctx, &e.to_string());
            return;
        }
        if let Some(author) = author
            && let Err(e) = self.deps.store.put_author(&self.name, self.seq, &author)
        {
            self.fail(ctx, &e.to_string());
            return;
        }
        // Webhooks: the same flush makes the record and its pending delivery durable.
        if self.deps.webhooks.is_some()
            && let Err(e) = self.deps.store.mark_webhook(&self.name, self.seq)
        {
            self.fail(ctx, &e.to_string());
            return;
        }
        let m = metrics();
        m.oplog_append_seconds
            .observe(started.elapsed().as_secs_f64());
        m.updates_accepted.inc();
        self.mark_dirty();
        self.first_seq.get_or_insert(self.seq);
        self.broadcast(&protocol::encode_update(&diff), origin);
        self.durability.appended(self.seq, Bytes::from(diff));
        if self.seq - self.snapshot_seq >= self.deps.settings.snapshot_every {
            self.start_snapshot(ctx);
        }
    }

    /// Asks the flusher to make everything appended so far durable; returns the number of
    /// the flush that will cover it.
    pub(super) fn mark_dirty(&self) -> u64 {
        let notify = self
            .flush_notify
            .as_ref()
            .expect("the room's flush callback is set when it starts");
        self.deps.flusher.mark(self.id, self.seq, notify)
    }

    /// Replaces the in-memory document with what the store holds (undoing `why`).
    pub(super) fn reload_document(&mut self, why: &str) {
        let (store, name) = (&self.deps.store, &self.name);
        match super::off_thread(|| load::read(&**store, name)) {
            Ok(fresh) => {
                self.doc = fresh.doc;
                self.doc_bytes = fresh.doc_bytes;
                self.version += 1;
                self.state_cache = None;
                self.json_cache = None;
                warn!(
                    "room {:?}: document reloaded from the store after {why}",
                    self.name
                );
            }
            Err(e) => error!("room {:?}: reload failed: {e}", self.name),
        }
    }

    /// Asks `session` for everything we lack (sync step 1; y-websocket answers with step
    /// 2). False if we asked already and it sent another incomplete update instead.
    pub(super) fn request_resync(&mut self, session: SessionId) -> bool {
        let Some(member) = self.fanout.get_mut(session) else {
            return true;
        };
        if member.resync_requested {
            return false;
        }
        member.resync_requested = true;
        debug!(
            "room {:?}: session {session} sent an update with missing dependencies; re-syncing",
            self.name
        );
        let step1 = protocol::encode_sync_step1(&self.doc().transact().state_vector());
        self.send_to(session, step1);
        true
    }
}
