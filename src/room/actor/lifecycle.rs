//! How a room's state reaches the disk and how a room ends: snapshots (on the blocking
//! pool), compaction once a flush covers the snapshot, eviction, the final flush, and
//! stopping when the store fails. A child of `actor.rs`: the same `Room`, its other half.

use std::time::Instant;

use actix::{ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};
use log::{debug, error, info};
use yrs::{Doc, ReadTxn, StateVector, Transact};

use super::Room;
use crate::metrics::metrics;
use crate::protocol::{self, close};
use crate::room::core::Refused;
use crate::store::{Snapshot, Store, StoreError};

impl Room {
    /// Ends the room for its deletion (see [`crate::room::messages::Delete`]): closes
    /// every session with 4410, resets and ends every SSE stream, and answers `reply`
    /// with its seq and state vector once no snapshot of it is being written (one written
    /// after the deletion would bring the room back). Waiters are dropped with the room:
    /// their requests answer 503, and a retry goes to the next epoch.
    pub(super) fn delete(
        &mut self,
        reply: tokio::sync::oneshot::Sender<(u64, StateVector)>,
        ctx: &mut Context<Self>,
    ) {
        if self.snapshot_running {
            ctx.run_later(std::time::Duration::from_millis(5), move |room, ctx| {
                room.delete(reply, ctx)
            });
            return;
        }
        let _ = reply.send((self.seq, self.doc.transact().state_vector()));
        // The next epoch's start as far as this room knows (the registry's answer has
        // the exact one; SSE clients resume and get it).
        self.end_deleted(self.epoch.number + 1, self.seq + 1, ctx);
    }

    /// Ends the room because it was deleted (here, or on another node: epoch `number`
    /// began at seq `base`): sessions close with 4410, SSE streams get `event: reset`
    /// and end, nothing more is appended, and the room stops.
    pub(super) fn end_deleted(&mut self, number: u64, base: u64, ctx: &mut Context<Self>) {
        self.failed = true; // nothing more is appended
        info!("room {:?} deleted at seq {}", self.name, self.seq);
        self.fanout.close_all(
            close::ROOM_DELETED,
            "the room was deleted; drop the document and reconnect",
        );
        let event = crate::protocol::sse::reset(number, base);
        self.streams.publish(
            &self.name,
            crate::room::messages::LiveEvent::Reset { event },
            usize::MAX,
        );
        self.streams.clear();
        ctx.stop();
    }

    /// A room the store knows nothing of: the embedding application's load hook may give
    /// its first update, applied (and logged, as seq 1) before anyone is served, so that
    /// it happens once however many clients arrive together. A hook that fails, panics or
    /// times out leaves the room unloaded: the requests waiting for it fail, and the next
    /// one tries again.
    pub(super) fn seed(&mut self, ctx: &mut Context<Self>) {
        let Some(hook) = self.deps.hooks.load.clone() else {
            return;
        };
        let timeout = self.deps.hooks.timeout;
        let asked = hook(self.name.clone());
        ctx.wait(
            crate::hooks::run("load", timeout, asked)
                .into_actor(self)
                .map(|answer, room, ctx| {
                    let update = match answer {
                        Ok(Ok(Some(update))) => update,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            error!("room {:?}: the load hook failed: {e}", room.name);
                            return ctx.stop();
                        }
                        Err(_) => return ctx.stop(),
                    };
                    let len = update.len();
                    let applied = protocol::decode_update(&update)
                        .map_err(|e| Refused::Invalid(e.to_string()))
                        .and_then(|decoded| room.apply_update(None, decoded, len, ctx));
                    match applied {
                        Ok(()) => debug!("room {:?} seeded by the load hook", room.name),
                        Err(e) => {
                            error!(
                                "room {:?}: the load hook's update is refused: {e}",
                                room.name
                            );
                            ctx.stop();
                        }
                    }
                }),
        );
    }

    /// The store failed a write or a flush: the document may hold updates the disk does
    /// not, so the room stops at once (appending nothing more, showing no further seq);
    /// clients reconnect, the room reloads from what the store really holds, and the
    /// clients' state vectors bring the missing updates back.
    pub(super) fn fail(&mut self, ctx: &mut Context<Self>, e: &str) {
        error!(
            "room {:?}: the store failed at seq {} (durable {}), closing the room: {e}",
            self.name,
            self.seq,
            self.durability.durable()
        );
        self.failed = true;
        self.durability.fail();
        self.fanout
            .close_all(close::INTERNAL_ERROR, "storage failure");
        self.streams.clear();
        ctx.stop();
    }

    /// Writes a snapshot at the current seq on the blocking pool: encoding a large
    /// document and storing it does not hold up the room thread's other rooms, and this
    /// room keeps serving meanwhile (a write arriving during the encoding waits for it on
    /// the document's lock).
    pub(super) fn start_snapshot(&mut self, ctx: &mut Context<Self>) {
        if self.snapshot_running || self.failed {
            return;
        }
        self.snapshot_running = true;
        let checkpoint = self.checkpoint_due(self.seq);
        let (doc, store, name, seq) = (
            self.doc.clone(),
            self.deps.store.clone(),
            self.name.clone(),
            self.seq,
        );
        let (started, bytes_before) = (Instant::now(), self.doc_bytes);
        ctx.spawn(
            actix_rt::task::spawn_blocking(move || {
                store_snapshot(&doc, &*store, &name, seq, checkpoint)
            })
            .into_actor(self)
            .map(move |stored, room, ctx| {
                room.snapshot_running = false;
                let stored = stored.unwrap_or_else(|e| Err(StoreError::Io(e.into())));
                // What was accepted while it encoded counts on top of the snapshot.
                let since = room.doc_bytes.saturating_sub(bytes_before);
                room.snapshot_written(seq, stored.map(|len| len + since), started, ctx);
            }),
        );
    }

    /// Writes a snapshot at the current seq here and now (the room is stopping).
    pub(super) fn write_snapshot(&mut self, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let checkpoint = self.checkpoint_due(self.seq);
        let stored = store_snapshot(
            &self.doc,
            &*self.deps.store,
            &self.name,
            self.seq,
            checkpoint,
        );
        self.snapshot_written(self.seq, stored, started, ctx);
    }

    /// A snapshot at `seq` was stored (its size, plus what was accepted meanwhile) or not:
    /// its flush is asked for, and compaction waits for a flush that covers it.
    pub(super) fn snapshot_written(
        &mut self,
        seq: u64,
        stored: Result<usize, StoreError>,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        if self.failed {
            return;
        }
        match stored {
            Ok(doc_bytes) => {
                metrics()
                    .snapshot_seconds
                    .observe(started.elapsed().as_secs_f64());
                debug!(
                    "room {:?}: snapshot at seq {seq} in {} µs",
                    self.name,
                    started.elapsed().as_micros()
                );
                self.doc_bytes = doc_bytes;
                self.snapshot_seq = self.snapshot_seq.max(seq);
                let flush = self.mark_dirty();
                self.durability.snapshot_written(seq, flush);
                // Updates accepted while it ran may call for the next one already.
                if self.seq - self.snapshot_seq >= self.deps.settings.snapshot_every {
                    self.start_snapshot(ctx);
                }
            }
            Err(e) => {
                error!("room {:?}: snapshot failed: {e}", self.name);
                if matches!(e, StoreError::Failed(_)) {
                    self.fail(ctx, &e.to_string());
                }
            }
        }
    }

    /// Deletes records that the durable snapshot at `snapshot_seq` covers and that fall
    /// out of the replay window, on the blocking pool (a database store deletes over the
    /// network). Nothing waits for it: a deletion that does not happen only leaves
    /// records the next compaction deletes.
    pub(super) fn compact(&mut self, snapshot_seq: u64) {
        let keep_from = (snapshot_seq + 1).saturating_sub(self.deps.settings.replay_window);
        self.first_seq = match self.first_seq {
            _ if keep_from > self.seq => None,
            first => first.map(|f| f.max(keep_from)),
        };
        let (store, name) = (self.deps.store.clone(), self.name.clone());
        actix_rt::task::spawn_blocking(move || {
            let started = Instant::now();
            let deleted = store.delete_before(&name, keep_from);
            metrics()
                .compaction_seconds
                .observe(started.elapsed().as_secs_f64());
            match deleted {
                Ok(n) => debug!("room {name:?}: compacted {n} records before seq {keep_from}"),
                Err(e) => error!("room {name:?}: compaction failed: {e}"),
            }
        });
    }

    /// Stops an idle room: a snapshot (if the log grew since the last one) and a flush (if
    /// anything is not yet durable) on the blocking pool, while the room's mailbox waits;
    /// then the actor stops. Messages that arrive meanwhile find it stopped and go to its
    /// next instance ([`super::ask`] retries).
    pub(super) fn evict(&mut self, ctx: &mut Context<Self>) {
        let snapshot_due = self.seq > self.snapshot_seq && !self.failed;
        let flush_due = !self.failed && (snapshot_due || self.seq > self.durability.durable());
        let checkpoint = self.checkpoint_due(self.seq);
        let (doc, store, name, seq) = (
            self.doc.clone(),
            self.deps.store.clone(),
            self.name.clone(),
            self.seq,
        );
        let idle = self.last_activity.elapsed();
        ctx.wait(
            actix_rt::task::spawn_blocking(move || -> Result<(), StoreError> {
                if snapshot_due {
                    store_snapshot(&doc, &*store, &name, seq, checkpoint)?;
                }
                if flush_due {
                    let started = Instant::now();
                    store.flush()?;
                    metrics()
                        .oplog_flush_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                Ok(())
            })
            .into_actor(self)
            .map(move |done, room, ctx| {
                match done.unwrap_or_else(|e| Err(StoreError::Io(e.into()))) {
                    Ok(()) if flush_due => room.advance_durable(seq, u64::MAX),
                    Ok(()) => {}
                    Err(e) => error!("room {:?}: final snapshot or flush failed: {e}", room.name),
                }
                info!(
                    "room {:?} evicted after {} ms idle, seq {}",
                    room.name,
                    idle.as_millis(),
                    room.durability.durable()
                );
                ctx.stop();
            }),
        );
    }

    /// Before the room stops at shutdown: a snapshot (if the log grew since the last
    /// one), so the next load applies one state instead of replaying records, then a
    /// flush (counted in `collabd_oplog_flush_seconds` like the flusher's) if anything is
    /// not yet durable. A room that only served reads stops without one: a flush is an
    /// fsync. (Eviction does the same off the room thread, see [`Room::evict`].)
    pub(super) fn snapshot_and_flush(&mut self, ctx: &mut Context<Self>) {
        let snapshot_due = self.seq > self.snapshot_seq;
        if snapshot_due {
            self.write_snapshot(ctx);
        }
        if !snapshot_due && self.seq == self.durability.durable() {
            return;
        }
        let started = Instant::now();
        self.flush_now();
        metrics()
            .oplog_flush_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Makes everything appended so far durable, now (costs nothing if nothing is
    /// unflushed: the store skips a flush that has nothing new to cover).
    pub(super) fn flush_now(&mut self) {
        if self.failed {
            return;
        }
        let store = &self.deps.store;
        match super::off_thread(|| store.flush()) {
            // A flush that starts after every write covers the latest snapshot too.
            Ok(()) => self.advance_durable(self.seq, u64::MAX),
            Err(e) => error!("room {:?}: final flush failed: {e}", self.name),
        }
    }

    /// Expires awareness entries not renewed in time; stops the room when idle long enough.
    pub(super) fn tick(&mut self, ctx: &mut Context<Self>) {
        let timeout = self.deps.settings.awareness_timeout();
        if let Some(expired) = self.presence.expire(timeout, Instant::now()) {
            debug!(
                "room {:?}: {} awareness states expired",
                self.name,
                expired.clients.len()
            );
            self.broadcast_awareness(expired);
        }
        self.streams.prune_closed();
        if self.resync_when_stored && self.deps.store.unavailable().is_none() {
            self.resync_when_stored = false;
            debug!(
                "room {:?}: the store is back; re-syncing every member",
                self.name
            );
            let step1 = protocol::encode_sync_step1(&self.doc().transact().state_vector());
            self.broadcast(&step1, None);
        }
        self.cluster_tick(ctx);
        // Long polls that timed out leave their waiter behind.
        self.durability.prune_abandoned();
        let busy = !self.fanout.is_empty()
            || !self.streams.is_empty()
            || self.durability.has_waiters()
            || self.cluster_busy();
        if busy {
            self.last_activity = Instant::now();
        } else if self.last_activity.elapsed() >= self.deps.settings.room_idle() {
            self.evict(ctx);
        }
    }

    /// A snapshot at `seq` is also a checkpoint when it crosses a multiple of
    /// `checkpoint_every` since the last snapshot; then the retention's cut-off (ms since
    /// the epoch).
    fn checkpoint_due(&self, seq: u64) -> Option<u64> {
        let every = self.deps.settings.checkpoint_every;
        (every > 0 && seq / every > self.snapshot_seq / every).then(|| {
            crate::store::now_ms().saturating_sub(self.deps.settings.checkpoint_retention_ms)
        })
    }

    pub(super) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }
}

/// Encodes `doc` whole and stores it as the snapshot of `name` at `seq` (and as a
/// checkpoint, when one is due: `Some(checkpoints written before this go)`); returns its
/// size. Blocking: the room runs it on the blocking pool except when it stops.
fn store_snapshot(
    doc: &Doc,
    store: &dyn Store,
    name: &str,
    seq: u64,
    checkpoint: Option<u64>,
) -> Result<usize, StoreError> {
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let len = state.len();
    let snapshot = Snapshot { seq, state };
    store.put_snapshot(name, &snapshot)?;
    if let Some(before_ms) = checkpoint {
        store.put_checkpoint(name, &snapshot, before_ms)?;
    }
    Ok(len)
}
