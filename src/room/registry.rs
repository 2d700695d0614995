//! The registry actor: room name → room actor. Spawns rooms on first use (loading them
//! from the store) on a pool of room threads, up to `max_rooms` at once, forgets them
//! when they stop, and shuts them all down on request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Addr, Arbiter, ArbiterHandle, AsyncContext, Context, Handler,
    MessageResult, ResponseActFuture, WrapFuture,
};
use log::{debug, error, info};

use super::actor::{Room, RoomDeps};
use super::messages::{Delete, DeleteRoom, Shutdown};
use crate::config::Settings;
use crate::hooks::{ChangeFeed, Hooks};
use crate::metrics::metrics;
use crate::store::commit::Flusher;
use crate::store::{Epoch, Store, StoreError};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

pub use super::messages::{CountRooms, FindRoom, GetRoom, NoRoom, RoomStopped, ShutdownAll};

struct Entry {
    id: u64,
    addr: Addr<Room>,
}

pub struct Registry {
    rooms: HashMap<Arc<str>, Entry>,
    /// Room actors run here, round-robin, so rooms use every core while HTTP workers
    /// run sessions on theirs.
    arbiters: Vec<Arbiter>,
    next_arbiter: usize,
    next_room_id: u64,
    /// Set by [`ShutdownAll`]: no room is spawned after it.
    stopping: bool,
    /// Rooms being deleted: none of them is spawned meanwhile.
    deleting: HashSet<Arc<str>>,
    store: Arc<dyn Store>,
    flusher: Flusher,
    settings: Arc<Settings>,
    hooks: Arc<Hooks>,
    changes: Option<ChangeFeed>,
    cluster: Option<crate::cluster::Cluster>,
    webhooks: Option<crate::webhooks::WebhookFeed>,
}

impl Registry {
    pub fn new(
        store: Arc<dyn Store>,
        flusher: Flusher,
        settings: Arc<Settings>,
        hooks: Arc<Hooks>,
    ) -> Registry {
        let threads = match settings.room_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Registry {
            rooms: HashMap::new(),
            arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
            next_arbiter: 0,
            next_room_id: 1,
            stopping: false,
            deleting: HashSet::new(),
            changes: ChangeFeed::start(&hooks, store.clone()),
            store,
            flusher,
            settings,
            hooks,
            cluster: None,
            webhooks: None,
        }
    }

    /// Rooms report durable changes for webhook deliveries.
    pub fn with_webhooks(mut self, webhooks: Option<crate::webhooks::WebhookFeed>) -> Registry {
        self.webhooks = webhooks;
        self
    }

    /// Rooms in cluster mode: Redis gives their seqs and carries other nodes' updates.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::Cluster>) -> Registry {
        self.cluster = cluster;
        self
    }

    /// A registry without an embedding application's hooks (tests and benchmarks that
    /// run rooms over a store of their own).
    pub fn without_hooks(
        store: Arc<dyn Store>,
        flusher: Flusher,
        settings: Arc<Settings>,
    ) -> Registry {
        Registry::new(store, flusher, settings, Default::default())
    }

    fn next_arbiter(&mut self) -> ArbiterHandle {
        let handle = self.arbiters[self.next_arbiter % self.arbiters.len()].handle();
        self.next_arbiter += 1;
        handle
    }

    fn spawn(&mut self, name: Arc<str>, ctx: &mut Context<Self>) -> Addr<Room> {
        let id = self.next_room_id;
        self.next_room_id += 1;
        let deps = RoomDeps {
            store: self.store.clone(),
            flusher: self.flusher.clone(),
            settings: self.settings.clone(),
            registry: ctx.address().recipient(),
            hooks: self.hooks.clone(),
            changes: self.changes.clone(),
            cluster: self.cluster.clone(),
            webhooks: self.webhooks.clone(),
        };
        let room_name = name.clone();
        let arbiter = self.next_arbiter();
        let addr = Room::start_in_arbiter(&arbiter, move |_| Room::loading(id, room_name, deps));
        self.rooms.insert(
            name,
            Entry {
                id,
                addr: addr.clone(),
            },
        );
        addr
    }
}

impl Actor for Registry {
    type Context = Context<Self>;
}

impl Handler<GetRoom> for Registry {
    type Result = MessageResult<GetRoom>;

    fn handle(&mut self, msg: GetRoom, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping {
            return MessageResult(Err(NoRoom::Stopping));
        }
        if self.deleting.contains(&msg.name) {
            return MessageResult(Err(NoRoom::Deleting));
        }
        let crashed = match self.rooms.get(&msg.name) {
            Some(entry) if entry.addr.connected() => {
                return MessageResult(Ok(entry.addr.clone()));
            }
            // Still listed but gone: it stopped without saying so (a panic). Its last
            // appends may not be flushed yet; loading flushes before showing them.
            Some(_) => true,
            None => false,
        };
        if crashed {
            error!("room {:?} died; reloading it from the store", msg.name);
        } else if self.rooms.len() >= self.settings.max_rooms {
            // Counted here, once for every transport; the edge logs and answers 503.
            metrics()
                .connections_refused
                .with_label_values(&["max_rooms"])
                .inc();
            debug!(
                "room {:?} not loaded: {} rooms are loaded (max_rooms)",
                msg.name,
                self.rooms.len()
            );
            return MessageResult(Err(NoRoom::Full(self.settings.max_rooms)));
        }
        MessageResult(Ok(self.spawn(msg.name, ctx)))
    }
}

impl Handler<FindRoom> for Registry {
    type Result = Option<Addr<Room>>;

    fn handle(&mut self, msg: FindRoom, _ctx: &mut Context<Self>) -> Self::Result {
        let entry = self.rooms.get(&msg.name)?;
        entry.addr.connected().then(|| entry.addr.clone())
    }
}

impl Handler<RoomStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: RoomStopped, _ctx: &mut Context<Self>) {
        if self.rooms.get(&msg.name).is_some_and(|e| e.id == msg.id) {
            self.rooms.remove(&msg.name);
        }
    }
}

impl Handler<DeleteRoom> for Registry {
    type Result = ResponseActFuture<Self, Result<Option<Epoch>, StoreError>>;

    /// Stops the room if it runs (it answers once nothing of it can write any more),
    /// then deletes it from the store and makes that durable; no instance of the room
    /// is spawned meanwhile.
    fn handle(&mut self, msg: DeleteRoom, _ctx: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        if self.stopping || !self.deleting.insert(name.clone()) {
            let busy =
                StoreError::Unavailable("the room is being deleted or the server stops".into());
            return Box::pin(actix::fut::ready(Err(busy)));
        }
        let running = self.rooms.remove(&name).map(|entry| entry.addr);
        let store = self.store.clone();
        let room = name.clone();
        let webhooks = self.webhooks.clone();
        let work = async move {
            let ended = match running {
                Some(addr) => match addr.send(Delete).await {
                    Ok(answer) => answer.await.ok(),
                    Err(_) => None, // it stopped meanwhile: the store has what it wrote
                },
                None => None,
            };
            actix_rt::task::spawn_blocking(move || {
                let deleted = delete_stored(&*store, &room, ended)?;
                // Webhooks: the deletion is delivered like a change (at least once).
                if let (Some(epoch), Some(webhooks)) = (&deleted, webhooks) {
                    crate::webhooks::deletion_pending(&*store, &room, epoch.base)?;
                    webhooks.deleted(&room, epoch.base);
                }
                Ok(deleted)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
        };
        Box::pin(work.into_actor(self).map(move |deleted, registry, _| {
            registry.deleting.remove(&name);
            deleted
        }))
    }
}

/// Deletes `room` from `store`: the next epoch begins above the last seq, and its
/// graveyard adds the deleted document's state vector (what the store holds, and what
/// the stopped room held). `Ok(None)`: nothing of the room's current epoch is stored, and
/// no room ran. In cluster mode other nodes may write meanwhile: the store then refuses
/// ([`StoreError::Changed`]) and the room is read again.
fn delete_stored(
    store: &dyn Store,
    room: &str,
    ended: Option<(u64, StateVector)>,
) -> Result<Option<Epoch>, StoreError> {
    let mut attempt = 0;
    loop {
        match delete_once(store, room, ended.as_ref()) {
            Err(StoreError::Changed(_)) if attempt < 10 => attempt += 1,
            done => return done,
        }
    }
}

fn delete_once(
    store: &dyn Store,
    room: &str,
    ended: Option<&(u64, StateVector)>,
) -> Result<Option<Epoch>, StoreError> {
    let epoch = store.epoch(room)?;
    let loaded = super::load::read(store, room)?;
    if ended.is_none() && loaded.seq == epoch.base && loaded.snapshot_seq == 0 {
        return Ok(None);
    }
    let mut vector = loaded.doc.transact().state_vector();
    let mut seq = loaded.seq;
    if let Some((room_seq, room_vector)) = ended {
        seq = seq.max(*room_seq);
        for (client, clock) in room_vector.iter() {
            vector.set_max(*client, *clock);
        }
    }
    let mut graveyard = match epoch.graveyard.as_slice() {
        [] => StateVector::default(),
        bytes => StateVector::decode_v1(bytes).map_err(|e| StoreError::Corrupt {
            room: room.to_string(),
            seq: epoch.base,
            reason: format!("the epoch's graveyard does not decode: {e}"),
        })?,
    };
    for (client, clock) in vector.iter() {
        graveyard.set_max(*client, *clock);
    }
    let next = Epoch {
        number: epoch.number + 1,
        base: seq.max(epoch.base) + 1,
        graveyard: graveyard.encode_v1(),
        deleting: false,
    };
    store.delete_room(room, &next)?;
    store.flush()?;
    info!(
        "room {room:?} deleted: epoch {} begins at seq {}",
        next.number, next.base
    );
    Ok(Some(next))
}

impl Handler<CountRooms> for Registry {
    type Result = usize;

    fn handle(&mut self, _msg: CountRooms, _ctx: &mut Context<Self>) -> usize {
        self.rooms.len()
    }
}

impl Handler<ShutdownAll> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: ShutdownAll, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let rooms: Vec<Addr<Room>> = self.rooms.drain().map(|(_, e)| e.addr).collect();
        info!("shutting down {} rooms", rooms.len());
        let all = futures_util::future::join_all(rooms.into_iter().map(|r| r.send(Shutdown)));
        Box::pin(all.into_actor(self).map(|_, act, _| {
            for arbiter in &act.arbiters {
                arbiter.stop();
            }
        }))
    }
}
