//! The registry actor: room name → room actor. Spawns rooms on first use (loading them
//! from the store) on a pool of room threads, up to `max_rooms` at once, forgets them
//! when they stop, and shuts them all down on request.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{
    Actor, ActorFutureExt, Addr, Arbiter, ArbiterHandle, AsyncContext, Context, Handler,
    MessageResult, ResponseActFuture, WrapFuture,
};
use log::{debug, error, info};

use super::actor::{Room, RoomDeps};
use super::messages::Shutdown;
use crate::config::Settings;
use crate::hooks::{ChangeFeed, Hooks};
use crate::metrics::metrics;
use crate::store::Store;
use crate::store::commit::Flusher;

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
