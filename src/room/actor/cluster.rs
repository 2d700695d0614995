//! The room in cluster mode: its own updates go to Redis, which gives their seqs; every
//! entry of its log (its own and other nodes') is applied in seq order as the
//! [`Sequencer`](crate::room::sequencer::Sequencer) releases it, made durable at once
//! (Redis holds it) and published like any durable update; gaps are filled by catch-up
//! reads; presence crosses nodes through the room's channel. A child of `actor.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{AsyncContext, Context, Handler, MessageResult};
use bytes::Bytes;
use log::{debug, error, warn};
use tokio::sync::oneshot;
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact, Update};

use super::Room;
use crate::cluster::{Entry, FromCluster};
use crate::metrics::metrics;
use crate::protocol;
use crate::room::durability::Waiter;
use crate::room::messages::SyncWithLog;
use crate::store::{Snapshot, StoreError};

/// How long entries may wait behind a missing seq before the room reads the log: the
/// missing one is usually a message still on its way on the pub/sub connection.
const GAP_PATIENCE: Duration = Duration::from_millis(200);

/// A presence owner on another node: its session id there, tagged with the node, in the
/// upper half of the id space (local sessions count up from 1).
fn remote_owner(node: u64, session: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (node, session).hash(&mut h);
    h.finish() | (1 << 63)
}

/// Applies a Yjs update v1 to `doc`.
fn apply_to(doc: &yrs::Doc, update: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| e.to_string())
}

impl Room {
    /// Hands one of this room's updates to Redis, with its author (the writer's `sub`).
    pub(super) fn send_to_cluster(&mut self, update: Bytes, author: Option<Arc<str>>) {
        let (Some(cluster), Some(sequencer)) = (&self.deps.cluster, &mut self.sequencer) else {
            return;
        };
        let ticket = cluster.ticket();
        sequencer.sent(ticket, update.clone());
        if let Some(author) = &author {
            self.cluster_authors.insert(ticket, author.clone());
        }
        let epoch = self.epoch.number;
        cluster.append(&self.name, ticket, update, false, epoch, author);
    }

    /// Applies what the sequencer now holds in order, answers who waited for it, and asks
    /// for the log when a gap persists.
    fn advance_cluster(&mut self, ctx: &mut Context<Self>) {
        let Some(sequencer) = &mut self.sequencer else {
            return;
        };
        let drained = sequencer.drain();
        let has_gap = sequencer.has_gap();
        if !sequencer.has_unlogged() {
            // Whatever Redis took without answering is in the log now.
            self.cluster_authors.clear();
        }
        let mut own_logged = false;
        let last = drained.last().map(|d| d.seq);
        for entry in drained {
            if entry.own {
                own_logged = true;
            } else {
                self.apply_remote(&entry.update);
            }
            self.seq = entry.seq;
            self.first_seq.get_or_insert(entry.seq);
            metrics().updates_accepted.inc();
            self.durability.appended(entry.seq, entry.update);
        }
        if let Some(last) = last {
            // Redis holds it: durable as its settings make it (flush number 0: compaction
            // still waits for the flusher's report on a snapshot).
            self.advance_durable(last, 0);
        }
        let released = self
            .sequencer
            .as_mut()
            .map(|s| s.release())
            .unwrap_or_default();
        for (at, waiter) in released {
            let waiter = match waiter {
                Waiter::Seq { reply, .. } => Waiter::Seq { reply, seq: at },
                other => other,
            };
            self.wait_for(at, waiter);
        }
        self.gap_since = match (has_gap, self.gap_since) {
            (false, _) => None,
            (true, None) => {
                self.check_cluster_later(ctx);
                Some(Instant::now())
            }
            (true, since) => since,
        };
        if let Some(cluster) = &self.deps.cluster
            && let Some(archive) = cluster.archive()
            && self.seq.saturating_sub(self.archive_asked_at) >= archive.archive_after()
        {
            // Every node asks; the lease lets one archive at a time.
            self.archive_asked_at = self.seq;
            cluster.archive_soon(&self.name);
        }
        if own_logged
            && self.seq - self.snapshot_seq >= self.deps.settings.snapshot_every
            && self.sequencer.as_ref().is_some_and(|s| s.settled())
        {
            // Only the node whose own entry crossed the threshold writes it, and only when
            // its document is exactly the log up to `seq`.
            self.start_snapshot(ctx);
        }
    }

    /// Applies another node's entry to the document and sends it to this node's peers.
    fn apply_remote(&mut self, update: &Bytes) {
        match apply_to(&self.doc, update) {
            Ok(()) => {
                self.doc_bytes += update.len();
                self.version += 1;
                self.broadcast(&protocol::encode_update(update), None);
            }
            // Logged by a node that accepted it; a document that cannot take it is
            // reloaded from the log (which holds it) on the next failure of this kind.
            Err(e) => error!(
                "room {:?}: an entry from Redis does not apply: {e}",
                self.name
            ),
        }
    }

    /// The log no longer reaches back to what this room lacks: the snapshot replaces the
    /// missing entries. Its difference goes to this node's peers; SSE streams, which
    /// would miss seqs, are ended (they resume from their last id and get a snapshot).
    fn apply_snapshot(&mut self, snapshot: Snapshot) {
        warn!(
            "room {:?}: behind the log's retained range (applied {}, snapshot {}): applying \
             the snapshot",
            self.name, self.seq, snapshot.seq
        );
        let before = self.doc.transact().state_vector();
        if let Err(e) = apply_to(&self.doc, &snapshot.state) {
            error!("room {:?}: the snapshot does not apply: {e}", self.name);
            return;
        }
        let diff = self.doc.transact().encode_state_as_update_v1(&before);
        self.version += 1;
        self.broadcast(&protocol::encode_update(&diff), None);
        self.streams.clear();
        if let Some(sequencer) = &mut self.sequencer {
            sequencer.jump_to(snapshot.seq);
        }
        self.seq = self.seq.max(snapshot.seq);
        self.snapshot_seq = self.snapshot_seq.max(snapshot.seq);
        self.advance_durable(self.seq, 0);
    }

    /// Reads the log after what this room applied (a gap, or Redis came back).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        if self.catching_up {
            return;
        }
        let Some(cluster) = &self.deps.cluster else {
            return;
        };
        self.catching_up = true;
        debug!(
            "room {:?}: reading the log after seq {}",
            self.name, self.seq
        );
        self.caught_up_waiters
            .append(&mut self.next_catch_up_waiters);
        let epoch = self.epoch.number;
        cluster.catch_up(&self.name, self.seq, epoch, ctx.address().recipient());
    }

    /// A catch-up read ended (applied, or failed): who waited for it hears so, and a read
    /// asked for meanwhile starts.
    fn catch_up_done(&mut self, ctx: &mut Context<Self>) {
        self.catching_up = false;
        for waiter in self.caught_up_waiters.drain(..) {
            let _ = waiter.send(());
        }
        if !self.next_catch_up_waiters.is_empty() {
            self.catch_up(ctx);
        }
    }

    /// Cluster mode's share of the room's tick: a gap that persisted is filled from the
    /// log; once Redis is back, updates it did not take are sent again (after a catch-up
    /// read, which finds those Redis took without answering).
    pub(super) fn cluster_tick(&mut self, ctx: &mut Context<Self>) {
        let Some(sequencer) = &self.sequencer else {
            return;
        };
        let gap_old = self.gap_since.is_some_and(|t| t.elapsed() >= GAP_PATIENCE);
        let retry_due = sequencer.has_failed() && self.deps.store.unavailable().is_none();
        if gap_old || retry_due {
            self.catch_up(ctx);
        }
        if self.gap_since.is_some() || self.sequencer.as_ref().is_some_and(|s| s.has_failed()) {
            self.check_cluster_later(ctx);
        }
    }

    /// Runs [`Room::cluster_tick`] again soon (a gap, or updates waiting to be sent again):
    /// one timer per room only while it has something to repair.
    fn check_cluster_later(&mut self, ctx: &mut Context<Self>) {
        if std::mem::replace(&mut self.cluster_check_due, true) {
            return;
        }
        ctx.run_later(GAP_PATIENCE, |room, ctx| {
            room.cluster_check_due = false;
            room.cluster_tick(ctx);
        });
    }

    /// Updates Redis did not take wait to be sent again: until they are, new writes are
    /// refused (they could build on them, and must not reach the log before them).
    pub(super) fn cluster_refuses_writes(&self) -> bool {
        self.sequencer.as_ref().is_some_and(|s| s.has_failed())
    }

    /// Updates of this room wait for Redis: the room is not idle.
    pub(super) fn cluster_busy(&self) -> bool {
        self.sequencer.as_ref().is_some_and(|s| s.has_unlogged())
    }

    /// Relays a local session's presence update (what this room took of it) to the
    /// room's other nodes.
    pub(super) fn relay_awareness(&self, session: u64, update: &AwarenessUpdate) {
        if let Some(cluster) = &self.deps.cluster
            && !update.clients.is_empty()
        {
            cluster.publish_awareness(&self.name, session, Bytes::from(update.encode_v1()));
        }
    }
}

impl Handler<FromCluster> for Room {
    type Result = ();

    fn handle(&mut self, msg: FromCluster, ctx: &mut Context<Self>) {
        if self.failed {
            return;
        }
        match msg {
            FromCluster::Entries(entries) => {
                self.receive(entries);
                self.advance_cluster(ctx);
            }
            FromCluster::Appended { ticket, result } => match result {
                Ok(seq) => {
                    self.cluster_authors.remove(&ticket);
                    if let Some(sequencer) = &mut self.sequencer {
                        sequencer.appended(ticket, seq);
                    }
                    self.advance_cluster(ctx);
                }
                Err(StoreError::Unavailable(why)) => {
                    debug!("room {:?}: append {ticket} not taken: {why}", self.name);
                    self.resync_when_stored = true;
                    self.check_cluster_later(ctx);
                    let refused = self
                        .sequencer
                        .as_mut()
                        .map(|s| s.failed(ticket))
                        .unwrap_or_default();
                    for waiter in refused {
                        self.answer_refused(waiter);
                    }
                }
                Err(e) => {
                    if let Some(sequencer) = &mut self.sequencer {
                        let parked = sequencer.take_parked();
                        drop(parked);
                    }
                    self.fail(ctx, &e.to_string());
                }
            },
            FromCluster::CaughtUp { snapshot, entries } => {
                if let Some(snapshot) = snapshot
                    && snapshot.seq > self.seq
                {
                    self.apply_snapshot(snapshot);
                }
                self.receive(entries);
                self.advance_cluster(ctx);
                // Updates Redis did not take, and that the log does not hold, go again.
                if self.deps.store.unavailable().is_none() {
                    let again = self
                        .sequencer
                        .as_mut()
                        .map(|s| s.retry())
                        .unwrap_or_default();
                    if let Some(cluster) = &self.deps.cluster {
                        if !again.is_empty() {
                            debug!(
                                "room {:?}: sending {} updates Redis did not take again",
                                self.name,
                                again.len()
                            );
                        }
                        for (ticket, update) in again {
                            let epoch = self.epoch.number;
                            let author = self.cluster_authors.get(&ticket).cloned();
                            cluster.append(&self.name, ticket, update, true, epoch, author);
                        }
                    }
                }
                if self.gap_since.is_some() {
                    // More than one read's worth behind, or still a hole: read on.
                    self.gap_since = Some(Instant::now() - GAP_PATIENCE);
                }
                self.catch_up_done(ctx);
            }
            FromCluster::CatchUpFailed => self.catch_up_done(ctx),
            FromCluster::Awareness {
                node,
                session,
                update,
            } => match AwarenessUpdate::decode_v1(&update) {
                Ok(update) => {
                    self.take_awareness(remote_owner(node, session), update, ctx);
                }
                Err(e) => debug!("room {:?}: unreadable relayed presence: {e}", self.name),
            },
            FromCluster::Reconnected => self.catch_up(ctx),
            FromCluster::Deleted { number, base } => {
                if number > self.epoch.number {
                    self.end_deleted(number, base, ctx);
                }
            }
        }
    }
}

impl Handler<SyncWithLog> for Room {
    type Result = MessageResult<SyncWithLog>;

    fn handle(&mut self, _msg: SyncWithLog, ctx: &mut Context<Self>) -> Self::Result {
        let (done, answer) = oneshot::channel();
        if self.sequencer.is_none() {
            let _ = done.send(());
        } else {
            self.next_catch_up_waiters.push(done);
            self.catch_up(ctx);
        }
        MessageResult(answer)
    }
}

impl Room {
    fn receive(&mut self, entries: Vec<Entry>) {
        if let Some(sequencer) = &mut self.sequencer {
            for entry in entries {
                sequencer.received(entry);
            }
        }
    }
}
