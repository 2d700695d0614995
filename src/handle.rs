//! Server code's access to a room ([`Collabd::room`](crate::Collabd::room)): read the
//! document, change it as a peer of its own (the change gets a seq, is durable before
//! the call returns, and reaches every client like any update), and follow its updates
//! as a stream of seqs, resumable from any seq.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, TransactionMut, Update};

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::rooms::{self, catch_up};
use crate::room::cursor::CatchUp;
use crate::room::messages::{GetJson, LiveEvent, Subscribe};
use crate::room::{absent, ask, ask_existing};

/// A room, seen from server code. Cheap to clone (clones share the handle's writer id);
/// holds no room open by itself.
#[derive(Clone)]
pub struct RoomHandle {
    name: Arc<str>,
    state: AppState,
    /// The client id [`RoomHandle::transact`] writes under, one transaction at a time:
    /// a document gains one client id per handle rather than one per change. Replaced
    /// by a fresh one after a change that failed, which may have reached some clients
    /// and not the store (its clocks must never be reused for other content).
    writer: Arc<tokio::sync::Mutex<yrs::block::ClientID>>,
}

/// The document at a seq: every update up to `seq`, as one Yjs update v1.
#[derive(Debug, Clone)]
pub struct State {
    /// The seq the state covers (durable).
    pub seq: u64,
    /// The state as a Yjs update v1 (`Y.applyUpdate` / `Update::decode_v1` take it).
    pub update: Bytes,
}

/// What a subscription yields, in seq order.
#[derive(Debug, Clone)]
pub enum RoomEvent {
    /// One durable update (a Yjs update v1) and its seq.
    Update {
        /// Its seq.
        seq: u64,
        /// The update.
        update: Bytes,
    },
    /// The whole document at `seq`, when the updates after the cursor were compacted
    /// away (or the cursor is from the future): apply it, then updates continue.
    Snapshot {
        /// The seq it covers.
        seq: u64,
        /// The state as a Yjs update v1.
        state: Bytes,
    },
    /// The room was deleted: drop the document you built (start from an empty one);
    /// epoch `epoch` began, empty, at `seq`, and its updates follow.
    Reset {
        /// The new epoch's number.
        epoch: u64,
        /// The seq it began at.
        seq: u64,
    },
}

impl RoomHandle {
    pub(crate) fn new(name: Arc<str>, state: AppState) -> RoomHandle {
        RoomHandle {
            name,
            state,
            writer: Arc::new(tokio::sync::Mutex::new(Doc::new().client_id())),
        }
    }

    /// Deletes the room (what `DELETE /rooms/{room}` does): its content is gone for
    /// good, its next epoch begins, its connections close with 4410. `None` when nothing
    /// of it is stored. The handle writes under a fresh client id afterwards: its old one
    /// wrote deleted content, which the room refuses to take back.
    pub async fn delete(&self) -> Result<Option<crate::protocol::json::Deleted>, ApiError> {
        let mut writer = self.writer.lock().await;
        let deleted = crate::http::admin::delete_room(&self.state, &self.name).await;
        *writer = Doc::new().client_id();
        deleted
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole document, once the seq it covers is durable. A room that does not exist
    /// is empty at seq 0 (and is not created).
    pub async fn state(&self) -> Result<State, ApiError> {
        let doc = rooms::full_state(&self.state, &self.name).await?;
        Ok(State {
            seq: doc.seq,
            update: doc.state,
        })
    }

    /// A copy of the document (changes to it stay local: use [`RoomHandle::transact`]).
    pub async fn doc(&self) -> Result<Doc, ApiError> {
        let state = self.state().await?;
        let doc = Doc::new();
        let update =
            Update::decode_v1(&state.update).map_err(|e| ApiError::internal(e.to_string()))?;
        doc.transact_mut()
            .apply_update(update)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(doc)
    }

    /// The root types as JSON (texts as strings, maps as objects, arrays as arrays).
    pub async fn json(&self) -> Result<serde_json::Value, ApiError> {
        let found =
            ask_existing(&self.state.registry, &self.state.store, &self.name, GetJson).await?;
        Ok(found.map_or_else(absent::json, |(_, value)| value))
    }

    /// Applies one update (a Yjs update v1) as a writer of its own; answers its seq once
    /// it is durable (an update the room holds already answers the room's seq). Refused
    /// like a POST: `bad_update`, `missing_dependencies`, `document_too_large`.
    pub async fn apply_update(&self, update: impl Into<Bytes>) -> Result<u64, ApiError> {
        rooms::apply(&self.state, &self.name, update.into(), None).await
    }

    /// Changes the document in a transaction and answers the change's seq once durable,
    /// with what `change` returned; connected clients receive it like any update.
    ///
    /// `change` runs on a copy of the current document, under the handle's client id;
    /// what it changed is then applied to the room as one update, so it merges with
    /// whatever clients did meanwhile, and server code never runs on a room's thread.
    /// Transactions of one handle run one at a time. Nothing changed: the room's current
    /// seq. Meant for changes at human rates (bots, importers of small pieces): each
    /// copies the document; a bulk import builds one update and calls
    /// [`RoomHandle::apply_update`]. After the room was deleted by other means than
    /// this handle, one change fails (410 `room_deleted`: the handle's client id wrote
    /// deleted content) and the handle takes a fresh id; the next one works.
    pub async fn transact<F, R>(&self, change: F) -> Result<(u64, R), ApiError>
    where
        F: FnOnce(&mut TransactionMut<'_>) -> R,
    {
        let mut writer = self.writer.lock().await;
        let done = self.transact_as(*writer, change).await;
        if done.is_err() {
            *writer = Doc::new().client_id();
        }
        done
    }

    async fn transact_as<F, R>(
        &self,
        client: yrs::block::ClientID,
        change: F,
    ) -> Result<(u64, R), ApiError>
    where
        F: FnOnce(&mut TransactionMut<'_>) -> R,
    {
        let current = self.state().await?;
        let doc = Doc::with_client_id(client.get());
        {
            let update = Update::decode_v1(&current.update)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            doc.transact_mut()
                .apply_update(update)
                .map_err(|e| ApiError::internal(e.to_string()))?;
        }
        // What this transaction did, insertions and deletions alike (a deletion alone
        // leaves the state vector as it was).
        let (answer, diff) = {
            let mut txn = doc.transact_mut();
            let answer = change(&mut txn);
            (answer, txn.encode_update_v1())
        };
        if Update::decode_v1(&diff).is_ok_and(|u| u.is_empty()) {
            return Ok((current.seq, answer));
        }
        let seq = self.apply_update(diff).await?;
        Ok((seq, answer))
    }

    /// The room's durable updates as a stream, in seq order, each once: with `after =
    /// Some(seq)` everything after `seq` first (or a [`RoomEvent::Snapshot`] when those
    /// were compacted away), then every update as it becomes durable; with `None`, only
    /// what comes from now on. A stream that falls behind (more than `sse_queue_events`
    /// waiting) is not dropped: it catches up from the store where it stopped. It ends
    /// when the server shuts down. A live subscription keeps its room loaded.
    pub fn subscribe(&self, after: Option<u64>) -> impl Stream<Item = RoomEvent> + use<> {
        let follow = Follow {
            handle: self.clone(),
            last: after,
            ready: VecDeque::new(),
            live: None,
        };
        futures_util::stream::unfold(follow, |mut follow| async move {
            follow.next().await.map(|event| (event, follow))
        })
    }
}

/// A subscription's state: the highest seq delivered, what is ready to go, and the room's
/// live queue (none between a drop and the next catch-up).
struct Follow {
    handle: RoomHandle,
    last: Option<u64>,
    ready: VecDeque<RoomEvent>,
    live: Option<(mpsc::Receiver<LiveEvent>, Arc<AtomicUsize>)>,
}

impl Follow {
    async fn next(&mut self) -> Option<RoomEvent> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let Some((events, queued)) = &mut self.live else {
                self.catch_up().await.ok()?;
                continue;
            };
            let Some(live) = events.recv().await else {
                // Dropped for falling behind, or the room stopped: catch up from `last`.
                self.live = None;
                continue;
            };
            queued.fetch_sub(live.bytes().len(), Ordering::Relaxed);
            if let LiveEvent::Update { seq, update, .. } = live
                && self.last.is_none_or(|last| seq > last)
            {
                self.last = Some(seq);
                return Some(RoomEvent::Update { seq, update });
            }
        }
    }

    /// Subscribes to the room, then queues what lies between `last` and the durable seq
    /// the room answered (the live queue holds everything above it).
    async fn catch_up(&mut self) -> Result<(), ApiError> {
        let state = &self.handle.state;
        let name = &self.handle.name;
        let (tx, rx) = mpsc::channel(state.settings.sse_queue_events);
        let queued = Arc::new(AtomicUsize::new(0));
        let subscribe = Subscribe {
            events: tx,
            queued: queued.clone(),
        };
        let (_, subscribed) = ask(&state.registry, name, subscribe).await?;
        let durable = subscribed.durable_seq;
        self.live = Some((rx, queued));
        let Some(mut since) = self.last else {
            self.last = Some(durable);
            return Ok(());
        };
        let epoch = subscribed.epoch;
        if epoch.is_stale(Some(since)) {
            // Deleted since: what the subscriber holds is gone; the new epoch follows.
            self.ready.push_back(RoomEvent::Reset {
                epoch: epoch.number,
                seq: epoch.base,
            });
            since = epoch.base;
            self.last = Some(since);
        }
        while since < durable {
            match catch_up(
                state,
                name,
                Some(since),
                durable,
                state.settings.poll_batch_limit,
            )
            .await?
            {
                CatchUp::Updates(updates) if !updates.is_empty() => {
                    for u in updates {
                        since = u.seq;
                        self.ready.push_back(RoomEvent::Update {
                            seq: u.seq,
                            update: Bytes::from(u.update),
                        });
                    }
                }
                CatchUp::Updates(_) => break,
                CatchUp::Snapshot => {
                    let doc = rooms::full_state(state, name).await?;
                    since = doc.seq;
                    self.ready.push_back(RoomEvent::Snapshot {
                        seq: doc.seq,
                        state: doc.state,
                    });
                    break;
                }
            }
        }
        self.last = Some(since.max(self.last.unwrap_or(0)));
        Ok(())
    }
}
