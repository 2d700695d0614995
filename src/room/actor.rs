//! The room actor: one Yjs document, its awareness, its seq counter and its sessions.
//!
//! Every write to a room passes through this actor's mailbox, so the document needs no
//! lock. One update travels: session decodes the frame → [`FromClient`] → the room
//! applies it in one transaction → if it changed anything, the room gives it the next
//! seq, appends it to the store, asks the flusher to make it durable, and sends the
//! encoded frame (one `Bytes`, shared) to every other session. [`Flushed`] later moves
//! `durable_seq`, which is the only seq the outside world is shown.
//!
//! This file holds the room's state, its constructors and its message handlers; the
//! handlers drive the room's halves in the child modules: `updates` (the update path),
//! `members` (delivery, closing, presence), `durable` (showing a seq once durable) and
//! `lifecycle` (snapshots, compaction, eviction, failure). The rules themselves live in
//! the sans-IO parts of `room` (`core`, `presence`, `durability`, `fanout`, `live`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, Recipient,
    WrapFuture,
};
use bytes::Bytes;
use log::{debug, error, warn};
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact};

use tokio::sync::oneshot;

pub use super::core::Refused;
use super::durability::{Durability, Waiter};
use super::fanout::Fanout;
use super::live::Streams;
use super::load;
use super::messages::RoomStopped;
use super::messages::{
    ApplyUpdate, Delete, DocState, Durable, EpochAt, Flushed, FromClient, GetAwareness,
    GetDurableSeq, GetInfo, GetJson, GetState, Join, Leave, PostAwareness, Shutdown, Subscribe,
    Subscribed, WaitDurable,
};
use super::presence::{self, Presence};

mod cluster;
mod durable;
mod lifecycle;
mod members;
mod updates;
use super::sequencer::Sequencer;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::metrics::metrics;
use crate::protocol::json::RoomInfo;
use crate::protocol::{self, ClientMessage, close};
use crate::store::commit::{FlushNotify, FlushReport, Flusher};
use crate::store::{Store, StoreError};

/// What every room shares with its registry: where to store, how to flush, the settings.
#[derive(Clone)]
pub struct RoomDeps {
    pub store: Arc<dyn Store>,
    pub flusher: Flusher,
    pub settings: Arc<Settings>,
    pub registry: Recipient<RoomStopped>,
    /// The embedding application's hooks (the load hook runs here).
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Where durable updates go for the change hook, when there is one.
    pub(crate) changes: Option<crate::hooks::ChangeFeed>,
    /// Cluster mode: Redis gives seqs and carries other nodes' updates.
    pub cluster: Option<Cluster>,
    /// Where durable changes go for webhook deliveries, when `webhook_url` is set.
    pub webhooks: Option<crate::webhooks::WebhookFeed>,
}

/// Runs a blocking store call the room must make itself (its last flush, a reload) on a
/// thread of its own and waits: a database store's client may not run on the room's
/// async thread. Everything else the room asks of the store is in memory or runs on the
/// blocking pool.
fn off_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

impl RoomDeps {
    /// Deps without hooks (tests and benchmarks that run rooms by hand).
    pub fn new(
        store: Arc<dyn Store>,
        flusher: Flusher,
        settings: Arc<Settings>,
        registry: Recipient<RoomStopped>,
    ) -> RoomDeps {
        RoomDeps {
            store,
            flusher,
            settings,
            registry,
            hooks: Default::default(),
            changes: None,
            cluster: None,
            webhooks: None,
        }
    }
}

pub struct Room {
    /// Unique per instance: a room reloaded after eviction is a new instance, and the
    /// flusher must not confuse the two.
    id: u64,
    name: Arc<str>,
    /// The room's document; only this actor touches it.
    doc: Doc,
    /// Who is here (awareness), under the rules of [`presence`].
    presence: Presence,
    /// A presence tick is scheduled (renewals wait for it).
    presence_tick_due: bool,
    /// Seq of the newest accepted update (appended, maybe not yet durable). In cluster
    /// mode: the newest seq applied in order (Redis gives seqs; see `sequencer`).
    seq: u64,
    /// Counts changes to the document: the caches below are keyed by it. (In cluster mode
    /// the document changes before its change has a seq.)
    version: u64,
    /// Cluster mode's ordering of this room's entries and its own updates.
    sequencer: Option<Sequencer>,
    /// Cluster mode: since when entries wait behind a missing seq, and whether a catch-up
    /// read is on its way.
    gap_since: Option<Instant>,
    catching_up: bool,
    /// A cluster check (gap, retries) is scheduled.
    cluster_check_due: bool,
    /// Cluster mode with an archive: the seq at which this room last asked for one.
    archive_asked_at: u64,
    /// The author of the HTTP write being applied (its token's `sub`).
    http_author: Option<Arc<str>>,
    /// The room's epoch (deleting a room starts the next one; see `store::Epoch`).
    epoch: EpochAt,
    /// What deleted epochs held: updates that would bring it back are refused.
    graveyard: Option<StateVector>,
    /// Who waits for the catch-up read in flight, and who waits for the next one (they
    /// asked after the one in flight began).
    caught_up_waiters: Vec<oneshot::Sender<()>>,
    /// Cluster mode: the authors of this room's updates Redis has not answered yet, by
    /// ticket, so that one sent again keeps its author.
    cluster_authors: std::collections::HashMap<u64, Arc<str>>,
    next_catch_up_waiters: Vec<oneshot::Sender<()>>,
    /// The durable seq — the only seq shown outside (ARCHITECTURE.md, contract 1) — with
    /// what waits for it: undurable updates, waiters, the compaction due.
    durability: Durability,
    /// Seq covered by the newest snapshot written.
    snapshot_seq: u64,
    /// The oldest record the store retains, as far as this room knows (loaded, then kept
    /// up by appends and compactions): metadata without a store read on the room thread.
    first_seq: Option<u64>,
    /// Size of the encoded document, estimated: the last snapshot (or the loaded log)
    /// plus every update accepted since. Checked against `max_doc_bytes`.
    doc_bytes: usize,
    /// The full state and its JSON form, each with the version it was encoded at: reads
    /// between writes (joins, `/state`, `/json`, snapshots for SSE and polls) share one
    /// encoding instead of each walking the whole document. The state is kept as the
    /// y-websocket sync step 2 that carries it (and the length of that message's header),
    /// so that a storm of joiners shares one buffer too.
    state_cache: Option<(u64, Bytes, usize)>,
    json_cache: Option<(u64, serde_json::Value)>,
    /// How the flusher reaches this room (set when the actor starts).
    flush_notify: Option<FlushNotify>,
    /// Set by [`Room::loading`]: the actor reads the store when it starts.
    load_pending: bool,
    /// A snapshot is being encoded and stored on the blocking pool.
    snapshot_running: bool,
    /// The store failed under this room: it appends nothing more and stops.
    failed: bool,
    /// Updates were refused while the store was unavailable: once it is back, every
    /// member is asked for what the room lacks (sync step 1).
    resync_when_stored: bool,
    /// The room's WebSocket members and how frames reach them.
    fanout: Fanout,
    /// SSE streams, each with a bounded queue.
    streams: Streams,
    /// Last message from anyone; with no sessions, streams or waiters, the room is
    /// evicted `room_idle_ms` after it.
    last_activity: Instant,
    deps: RoomDeps,
}

impl Room {
    /// Rebuilds the room from its snapshot and the records after it, here and now (see
    /// [`load::read`]; the registry uses [`Room::loading`] instead, which reads off the
    /// room thread).
    pub fn load(id: u64, name: Arc<str>, deps: RoomDeps) -> Result<Room, StoreError> {
        let loaded = load::read(&*deps.store, &name)?;
        let mut room = Room::empty(id, name, deps);
        room.install(loaded);
        Ok(room)
    }

    /// A room that loads itself when its actor starts: the store is read on the blocking
    /// pool while the room's mailbox waits, so the room thread keeps serving other rooms.
    pub fn loading(id: u64, name: Arc<str>, deps: RoomDeps) -> Room {
        let mut room = Room::empty(id, name, deps);
        room.load_pending = true;
        room
    }

    fn install(&mut self, loaded: load::Loaded) {
        self.doc = loaded.doc;
        self.seq = loaded.seq;
        self.version += 1;
        if let Some(cluster) = &self.deps.cluster {
            self.sequencer = Some(Sequencer::new(cluster.node(), loaded.seq));
            self.archive_asked_at = loaded.seq;
        }
        self.durability = Durability::at(loaded.seq);
        self.epoch = loaded.epoch;
        self.graveyard = loaded.graveyard;
        self.snapshot_seq = loaded.snapshot_seq;
        self.doc_bytes = loaded.doc_bytes;
        self.first_seq = loaded.first_seq;
        self.state_cache = None;
        self.json_cache = None;
    }

    /// A room with an empty document and nothing logged.
    pub fn empty(id: u64, name: Arc<str>, deps: RoomDeps) -> Room {
        let room_name = name.clone();
        Room {
            id,
            name,
            doc: Doc::new(),
            presence: Presence::new(presence::Limits::from_settings(&deps.settings)),
            presence_tick_due: false,
            seq: 0,
            version: 0,
            sequencer: None,
            gap_since: None,
            catching_up: false,
            cluster_check_due: false,
            archive_asked_at: 0,
            http_author: None,
            epoch: EpochAt::default(),
            graveyard: None,
            caught_up_waiters: Vec::new(),
            cluster_authors: Default::default(),
            next_catch_up_waiters: Vec::new(),
            durability: Durability::default(),
            snapshot_seq: 0,
            first_seq: None,
            doc_bytes: 0,
            state_cache: None,
            json_cache: None,
            flush_notify: None,
            load_pending: false,
            snapshot_running: false,
            failed: false,
            resync_when_stored: false,
            fanout: Fanout::new(room_name),
            streams: Streams::default(),
            last_activity: Instant::now(),
            deps,
        }
    }

    fn doc(&self) -> &Doc {
        &self.doc
    }

    /// The whole document as a Yjs update v1, encoded once per seq.
    fn full_state(&mut self) -> Bytes {
        let (message, header) = self.full_state_message();
        message.slice(header..)
    }

    /// The whole document as a sync step 2 message, and its header's length.
    fn full_state_message(&mut self) -> (Bytes, usize) {
        match &self.state_cache {
            Some((version, message, header)) if *version == self.version => {
                (message.clone(), *header)
            }
            _ => {
                metrics().state_encodes.inc();
                let state = self
                    .doc()
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default());
                let message = protocol::encode_sync_step2(&state);
                let header = message.len() - state.len();
                self.state_cache = Some((self.version, message.clone(), header));
                (message, header)
            }
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let room = ctx.address();
        self.flush_notify = Some(Arc::new(move |report| room.do_send(Flushed(report))));
        if std::mem::take(&mut self.load_pending) {
            let (store, name) = (self.deps.store.clone(), self.name.clone());
            // Cluster mode: the room's channel is subscribed before the log is read, so
            // that nothing appended after the read is missed.
            let join = self.deps.cluster.clone().map(|cluster| {
                let (id, to) = (self.id, ctx.address().recipient());
                move |name: &Arc<str>| cluster.join(name, id, to)
            });
            // `wait`: no message is handled before the room holds what the store has.
            ctx.wait(
                actix_rt::task::spawn_blocking(move || {
                    if let Some(join) = join {
                        join(&name).map_err(crate::store::StoreError::Unavailable)?;
                    }
                    load::read(&*store, &name)
                })
                .into_actor(self)
                .map(|loaded, room, ctx| match loaded {
                    Ok(Ok(loaded)) => {
                        // Nothing in its current epoch (a deleted room starts afresh).
                        let fresh = loaded.seq == loaded.epoch.base && loaded.snapshot_seq == 0;
                        room.install(loaded);
                        if fresh {
                            room.seed(ctx);
                        }
                    }
                    Ok(Err(e)) => {
                        // The next use tries the store again.
                        error!("room {:?} failed to load: {e}", room.name);
                        ctx.stop();
                    }
                    Err(e) => {
                        error!("room {:?}: loading panicked: {e}", room.name);
                        ctx.stop();
                    }
                }),
            );
        }
        let settings = &self.deps.settings;
        let period = settings.room_idle().min(settings.awareness_timeout()) / 4;
        ctx.run_interval(period.max(Duration::from_millis(10)), Room::tick);
        metrics().rooms_loaded.inc();
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        metrics().rooms_loaded.dec();
        if let Some(cluster) = &self.deps.cluster {
            cluster.leave(&self.name, self.id);
        }
        self.deps.registry.do_send(RoomStopped {
            name: self.name.clone(),
            id: self.id,
        });
    }
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, msg: Join, _ctx: &mut Context<Self>) {
        self.touch();
        let step1 = protocol::encode_sync_step1(&self.doc().transact().state_vector());
        let mut hello = vec![step1];
        if let Some(states) = self.presence.full() {
            hello.push(protocol::encode_awareness(&states));
        }
        self.fanout.join(msg.session, msg.peer, msg.subject);
        for frame in hello {
            self.send_to(msg.session, frame);
        }
        debug!(
            "room {:?}: session {} joined, {} present",
            self.name,
            msg.session,
            self.fanout.len()
        );
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, _ctx: &mut Context<Self>) {
        self.remove_session(msg.session);
        debug!(
            "room {:?}: session {} left, {} present",
            self.name,
            msg.session,
            self.fanout.len()
        );
    }
}

impl Handler<FromClient> for Room {
    type Result = ();

    fn handle(&mut self, msg: FromClient, ctx: &mut Context<Self>) {
        let session = msg.session;
        let Some(member) = self.fanout.get_mut(session) else {
            return; // closed by the room already; late frames are dropped
        };
        if msg.dropped > 0 {
            member.refused_since_ack = true;
        }
        for message in msg.messages {
            let is_step2 = matches!(message, ClientMessage::SyncStep2(_));
            match message {
                ClientMessage::SyncStep1(sv) => {
                    // A new client (empty state vector) gets the shared full state.
                    let step2 = if sv.is_empty() {
                        self.full_state_message().0
                    } else {
                        let diff = self.doc().transact().encode_state_as_update_v1(&sv);
                        protocol::encode_sync_step2(&diff)
                    };
                    self.send_to(session, step2);
                }
                ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                    let applied = self.apply_update(Some(session), update, msg.bytes, ctx);
                    if applied.is_err()
                        && let Some(m) = self.fanout.get_mut(session)
                    {
                        m.refused_since_ack = true;
                    }
                    match applied {
                        Ok(()) => {
                            if is_step2 && let Some(m) = self.fanout.get_mut(session) {
                                m.resync_requested = false;
                            }
                        }
                        Err(Refused::MissingDependencies) => {
                            if !self.request_resync(session) {
                                let reason = Refused::MissingDependencies.to_string();
                                self.close_session(session, close::INVALID_DATA, reason);
                                return;
                            }
                        }
                        Err(Refused::StoreUnavailable) => {
                            // Not acked (`refused_since_ack`); re-synced once stored.
                        }
                        Err(Refused::Deleted) => {
                            warn!(
                                "room {:?}: session {session} sent content of the deleted room",
                                self.name
                            );
                            let reason = Refused::Deleted.to_string();
                            self.close_session(session, close::ROOM_DELETED, reason);
                            return;
                        }
                        Err(refused @ Refused::TooLarge(_)) => {
                            warn!(
                                "room {:?}: session {session}: update refused: {refused}",
                                self.name
                            );
                            let denied = protocol::encode_permission_denied(&refused.to_string());
                            self.send_to(session, denied);
                        }
                        Err(refused) => {
                            warn!(
                                "room {:?}: session {session} sent a bad update: {refused}",
                                self.name
                            );
                            self.close_session(session, close::INVALID_DATA, refused.to_string());
                            return;
                        }
                    }
                }
                ClientMessage::Awareness(update) => {
                    self.apply_awareness(session, update, ctx);
                }
                ClientMessage::QueryAwareness => {
                    let states = self.presence.full().unwrap_or(AwarenessUpdate {
                        clients: Default::default(),
                    });
                    self.send_to(session, protocol::encode_awareness(&states));
                }
                ClientMessage::Auth => {}
                ClientMessage::AckRequest { token } => {
                    // Everything this session sent before is accepted already.
                    let ok = self
                        .fanout
                        .get_mut(session)
                        .is_some_and(|m| !std::mem::take(&mut m.refused_since_ack));
                    self.wait_for_accepted(Waiter::Ack { session, token, ok });
                }
                // The session handles tokens; none reach the room.
                ClientMessage::Token(_) => {}
                ClientMessage::Custom { tag, .. } => {
                    debug!(
                        "room {:?}: session {session} sent unknown message type {tag}",
                        self.name
                    );
                }
            }
        }
    }
}

impl Handler<Flushed> for Room {
    type Result = ();

    fn handle(&mut self, msg: Flushed, ctx: &mut Context<Self>) {
        match msg.0 {
            FlushReport::Durable { seq, flush } => self.advance_durable(seq, flush),
            FlushReport::Failed(e) => self.fail(ctx, &e),
        }
    }
}

impl Handler<GetInfo> for Room {
    type Result = MessageResult<GetInfo>;

    fn handle(&mut self, _msg: GetInfo, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        // From what is at hand, never by encoding the document for a metadata read.
        let size = match &self.state_cache {
            Some((version, message, header)) if *version == self.version => message.len() - header,
            _ => self.doc_bytes,
        };
        let awareness = self.presence.len();
        MessageResult(RoomInfo {
            room: self.name.to_string(),
            seq: self.durability.durable(),
            epoch: self.epoch.number,
            connections: self.fanout.len(),
            awareness,
            size,
            snapshot_seq: self.snapshot_seq,
            first_seq: self.first_seq,
        })
    }
}

impl Handler<GetState> for Room {
    type Result = MessageResult<GetState>;

    fn handle(&mut self, _msg: GetState, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let (reply, answer) = oneshot::channel();
        if self.sequencer.is_some() {
            // Cluster mode: the document may hold updates whose seqs Redis has not given
            // yet; the state is encoded once they are applied, with the seq it then holds.
            self.wait_for_accepted(Waiter::FreshState(reply));
        } else {
            // The state holds every update up to `self.seq`: it carries that seq, and is
            // shown only once that seq is durable.
            let state = DocState {
                state: self.full_state(),
                seq: self.seq,
            };
            self.wait_for(self.seq, Waiter::State { reply, state });
        }
        MessageResult(answer)
    }
}

impl Handler<Shutdown> for Room {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        self.fanout
            .close_all(close::GOING_AWAY, "server shutting down");
        self.snapshot_and_flush(ctx);
        self.streams.clear();
        ctx.stop();
    }
}

impl Handler<Subscribe> for Room {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        self.streams.add(msg.events, msg.queued);
        let awareness = self.presence.full().map(|u| Bytes::from(u.encode_v1()));
        MessageResult(Subscribed {
            durable_seq: self.durability.durable(),
            epoch: self.epoch,
            awareness,
        })
    }
}

impl Handler<GetDurableSeq> for Room {
    type Result = MessageResult<GetDurableSeq>;

    fn handle(&mut self, _msg: GetDurableSeq, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        MessageResult(Durable {
            seq: self.durability.durable(),
            epoch: self.epoch,
        })
    }
}

impl Handler<Delete> for Room {
    type Result = MessageResult<Delete>;

    fn handle(&mut self, _msg: Delete, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.delete(reply, ctx);
        MessageResult(answer)
    }
}

impl Handler<WaitDurable> for Room {
    type Result = MessageResult<WaitDurable>;

    fn handle(&mut self, msg: WaitDurable, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let (reply, answer) = oneshot::channel();
        self.wait_for(msg.seq, Waiter::Reply(reply));
        MessageResult(answer)
    }
}

impl Handler<ApplyUpdate> for Room {
    type Result = MessageResult<ApplyUpdate>;

    fn handle(&mut self, msg: ApplyUpdate, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        let applied = protocol::decode_update(&msg.update)
            .map_err(|e| {
                metrics()
                    .updates_rejected
                    .with_label_values(&["invalid"])
                    .inc();
                Refused::Invalid(e.to_string())
            })
            .and_then(|update| {
                self.http_author = msg.author.clone();
                let applied = self.apply_update(None, update, msg.update.len(), ctx);
                self.http_author = None;
                applied
            });
        MessageResult(applied.map(|()| {
            // The update's own seq (a no-op gets the seq the room is at: it holds it
            // already), answered once durable.
            let (reply, answer) = oneshot::channel();
            self.wait_for_accepted(Waiter::Seq {
                reply,
                seq: self.seq,
            });
            answer
        }))
    }
}

impl Handler<GetJson> for Room {
    type Result = MessageResult<GetJson>;

    fn handle(&mut self, _msg: GetJson, _ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        if let Some((version, json)) = &self.json_cache
            && *version == self.version
        {
            return MessageResult(json.clone());
        }
        let json = super::doc_json::to_json(self.doc());
        self.json_cache = Some((self.version, json.clone()));
        MessageResult(json)
    }
}

impl Handler<PostAwareness> for Room {
    type Result = MessageResult<PostAwareness>;

    fn handle(&mut self, msg: PostAwareness, ctx: &mut Context<Self>) -> Self::Result {
        self.touch();
        MessageResult(self.apply_awareness(msg.owner, msg.update, ctx))
    }
}

impl Handler<GetAwareness> for Room {
    type Result = Option<Bytes>;

    fn handle(&mut self, _msg: GetAwareness, _ctx: &mut Context<Self>) -> Option<Bytes> {
        self.touch();
        self.presence.full().map(|u| Bytes::from(u.encode_v1()))
    }
}
