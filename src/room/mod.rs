//! Rooms: the room actor (one Yjs document), the registry that finds and spawns rooms,
//! and the messages they exchange with sessions and HTTP handlers.

pub mod absent;
pub mod actor;
pub mod core;
pub mod cursor;
pub mod doc_json;
pub mod durability;
pub mod fanout;
pub mod history;
pub mod json_patch;
pub mod live;
pub mod load;
pub mod messages;
pub mod presence;
pub mod registry;
pub mod sequencer;

use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Addr, Handler, MailboxError, Message};

pub use actor::Room;
pub use messages::GetRoom;
pub use registry::Registry;

use crate::store::Store;
use messages::{FindRoom, NoRoom};

/// How often [`ask`] retries a room that stopped under it, and how long it waits between.
const ASK_ATTEMPTS: usize = 5;
const ASK_BACKOFF: Duration = Duration::from_millis(20);

/// The room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RoomUnavailable {
    /// It keeps failing to load, or the server is stopping.
    #[error("room {0:?} is unavailable")]
    Down(Arc<str>),
    /// It is not loaded, and loading it would exceed `max_rooms`.
    #[error("the server holds its maximum of {0} loaded rooms")]
    MaxRooms(usize),
    /// It is being deleted.
    #[error("room {0:?} is being deleted; retry shortly")]
    Deleting(Arc<str>),
}

/// Sends `msg` to the room named `name`, spawning the room if needed, and returns the
/// room actor with the answer. An idle room may stop between the registry's answer and
/// the message's arrival; then the message is sent again to the room's next instance.
pub async fn ask<M>(
    registry: &Addr<Registry>,
    name: &Arc<str>,
    msg: M,
) -> Result<(Addr<Room>, M::Result), RoomUnavailable>
where
    M: Message + Clone + Send + 'static,
    M::Result: Send,
    Room: Handler<M>,
    <Room as actix::Actor>::Context: ToEnvelope<Room, M>,
{
    for attempt in 0..ASK_ATTEMPTS {
        if attempt > 0 {
            actix_rt::time::sleep(ASK_BACKOFF).await;
        }
        let room = match load(registry, name).await {
            Err(RoomUnavailable::Deleting(_)) if attempt + 1 < ASK_ATTEMPTS => continue,
            room => room?,
        };
        match room.send(msg.clone()).await {
            Ok(answer) => return Ok((room, answer)),
            Err(MailboxError::Closed) | Err(MailboxError::Timeout) => continue,
        }
    }
    Err(RoomUnavailable::Down(name.clone()))
}

/// The room named `name`, spawned (and loaded from the store) if it is not running.
pub async fn load(
    registry: &Addr<Registry>,
    name: &Arc<str>,
) -> Result<Addr<Room>, RoomUnavailable> {
    match registry.send(GetRoom { name: name.clone() }).await {
        Ok(Ok(room)) => Ok(room),
        Ok(Err(NoRoom::Full(max))) => Err(RoomUnavailable::MaxRooms(max)),
        Ok(Err(NoRoom::Deleting)) => Err(RoomUnavailable::Deleting(name.clone())),
        Ok(Err(NoRoom::Stopping)) | Err(_) => Err(RoomUnavailable::Down(name.clone())),
    }
}

/// The room named `name`, loaded: spawned if needed, and answering (its load, the
/// embedding application's load hook included, is done). Unlike [`ask`], a room that
/// fails to load is not tried again here: the caller's request fails.
pub async fn ready(
    registry: &Addr<Registry>,
    name: &Arc<str>,
) -> Result<Addr<Room>, RoomUnavailable> {
    let room = load(registry, name).await?;
    match room.send(messages::GetDurableSeq).await {
        Ok(_) => Ok(room),
        Err(_) => Err(RoomUnavailable::Down(name.clone())),
    }
}

/// [`ask`] for reads, which never create a room: a room that is neither loaded nor in the
/// store answers `None` (the caller answers what an empty room would), and nothing is
/// spawned. A stored room that is not loaded is loaded, as by [`ask`].
pub async fn ask_existing<M>(
    registry: &Addr<Registry>,
    store: &Arc<dyn Store>,
    name: &Arc<str>,
    msg: M,
) -> Result<Option<(Addr<Room>, M::Result)>, RoomUnavailable>
where
    M: Message + Clone + Send + 'static,
    M::Result: Send,
    Room: Handler<M>,
    <Room as actix::Actor>::Context: ToEnvelope<Room, M>,
{
    let running = registry
        .send(FindRoom { name: name.clone() })
        .await
        .map_err(|_| RoomUnavailable::Down(name.clone()))?;
    if let Some(room) = running
        && let Ok(answer) = room.send(msg.clone()).await
    {
        return Ok(Some((room, answer)));
    }
    // Not running (or it stopped just now): load it only if it has anything stored.
    let (store, room) = (store.clone(), name.clone());
    let stored = actix_rt::task::spawn_blocking(move || is_stored(&*store, &room))
        .await
        .map_err(|_| RoomUnavailable::Down(name.clone()))?;
    match stored {
        Ok(false) => Ok(None),
        Ok(true) => ask(registry, name, msg).await.map(Some),
        Err(e) => {
            log::error!("room {name:?}: store lookup failed: {e}");
            Err(RoomUnavailable::Down(name.clone()))
        }
    }
}

/// Whether the store holds anything of `room`: a record, else a snapshot (compaction
/// with `replay_window = 0` can leave a snapshot alone), else an epoch (a deleted room:
/// its seqs go on above its base). A few key lookups; none reads a record or a state.
fn is_stored(store: &dyn Store, room: &str) -> Result<bool, crate::store::StoreError> {
    Ok(store.first_seq(room)?.is_some()
        || store.has_snapshot(room)?
        || store.epoch(room)?.number > 0)
}
