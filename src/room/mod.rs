//! Rooms: the room actor (one Yjs document), the registry that finds and spawns rooms,
//! and the messages they exchange with sessions and HTTP handlers.

pub mod actor;
pub mod core;
pub mod cursor;
pub mod doc_json;
pub mod messages;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Addr, Handler, MailboxError, Message};

pub use actor::Room;
pub use registry::{GetRoom, Registry};

/// How often [`ask`] retries a room that stopped under it, and how long it waits between.
const ASK_ATTEMPTS: usize = 5;
const ASK_BACKOFF: Duration = Duration::from_millis(20);

/// The room could not be reached (it keeps failing to load, or the server is stopping).
#[derive(Debug, thiserror::Error)]
#[error("room {0:?} is unavailable")]
pub struct RoomUnavailable(pub Arc<str>);

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
        let room = registry
            .send(GetRoom { name: name.clone() })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| RoomUnavailable(name.clone()))?;
        match room.send(msg.clone()).await {
            Ok(answer) => return Ok((room, answer)),
            Err(MailboxError::Closed) | Err(MailboxError::Timeout) => continue,
        }
    }
    Err(RoomUnavailable(name.clone()))
}
