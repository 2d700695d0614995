//! Fan-out: the room's members and how frames reach them. The room owns the [`Peer`]
//! trait — "something I push frames to and can close" — and sessions implement it, so the
//! room knows nothing of sockets or session types (edges run one way: session → room).
//!
//! The slow-consumer rule lives here: a peer that cannot take a frame (its bounded queue
//! is full) is closed with 4008 and dropped from the room rather than let server memory
//! grow or skip an update; its client reconnects and re-syncs by state vector.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use log::warn;
use yrs::sync::AwarenessUpdate;

use super::messages::SessionId;
use crate::metrics::metrics;
use crate::protocol::close;

/// Why a peer did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerError {
    /// Its queue is full (in frames or bytes): a slow consumer.
    Full,
    /// It has gone.
    Closed,
}

/// What a room delivers to: a session's outbound queue and its close order.
pub trait Peer: Send + Sync {
    /// Queues one encoded frame without waiting.
    fn push(&self, frame: Bytes) -> Result<(), PeerError>;
    /// Queues presence: `frame` is `update` encoded. A peer that cannot send it at once
    /// may merge it with presence still waiting (each client's latest state wins), so
    /// that presence alone never fills its queue.
    fn push_presence(&self, frame: Bytes, _update: &Arc<AwarenessUpdate>) -> Result<(), PeerError> {
        self.push(frame)
    }
    /// Tells the peer to close with a WebSocket close code.
    fn close(&self, code: u16, reason: String);
    /// Frames and bytes waiting, for the slow-consumer log line.
    fn depth(&self) -> (usize, usize);
}

/// One member of the room.
pub struct Member {
    peer: Arc<dyn Peer>,
    /// We sent a sync step 1 because this session's update had missing dependencies;
    /// cleared by a complete sync step 2. A second gap meanwhile closes the session.
    pub resync_requested: bool,
    /// Something this session sent since its last ack request was refused or dropped:
    /// the next ack says so instead of "stored".
    pub refused_since_ack: bool,
    /// The session's token `sub`: the author of its updates.
    pub subject: Option<Arc<str>>,
}

/// The room's members.
pub struct Fanout {
    members: HashMap<SessionId, Member>,
    /// The room's name, for log lines.
    room: Arc<str>,
}

impl Fanout {
    pub fn new(room: Arc<str>) -> Fanout {
        Fanout {
            members: HashMap::new(),
            room,
        }
    }

    pub fn join(&mut self, session: SessionId, peer: Arc<dyn Peer>, subject: Option<Arc<str>>) {
        let member = Member {
            peer,
            resync_requested: false,
            refused_since_ack: false,
            subject,
        };
        self.members.insert(session, member);
    }

    /// Forgets `session`; false if it was not a member.
    pub fn remove(&mut self, session: SessionId) -> bool {
        self.members.remove(&session).is_some()
    }

    /// Tells `session` to close and forgets it; false if it was not a member.
    pub fn close(&mut self, session: SessionId, code: u16, reason: String) -> bool {
        match self.members.remove(&session) {
            Some(member) => {
                member.peer.close(code, reason);
                true
            }
            None => false,
        }
    }

    /// Tells every member to close and forgets them all.
    pub fn close_all(&mut self, code: u16, reason: &str) {
        for (_, member) in self.members.drain() {
            member.peer.close(code, reason.to_string());
        }
    }

    pub fn get_mut(&mut self, session: SessionId) -> Option<&mut Member> {
        self.members.get_mut(&session)
    }

    pub fn contains(&self, session: SessionId) -> bool {
        self.members.contains_key(&session)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sends `frame` to one member. Returns the sessions dropped (it, if it could not
    /// take the frame), whose presence the room must remove.
    #[must_use]
    pub fn send_to(&mut self, session: SessionId, frame: Bytes) -> Vec<SessionId> {
        let len = frame.len() as u64;
        match self.members.get(&session).map(|m| m.peer.push(frame)) {
            Some(Err(e)) => self.drop_unreachable(vec![(session, e)]),
            Some(Ok(())) => {
                metrics().ws_bytes_out.inc_by(len);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Sends `frame` (one shared buffer) to every member but `except`. Returns the
    /// sessions dropped: slow consumers (closed with 4008) and peers that had gone.
    #[must_use]
    pub fn broadcast(&mut self, frame: &Bytes, except: Option<SessionId>) -> Vec<SessionId> {
        let mut sent = 0;
        let mut unreachable = Vec::new();
        for (id, member) in &self.members {
            if Some(*id) != except {
                match member.peer.push(frame.clone()) {
                    Ok(()) => sent += 1,
                    Err(e) => unreachable.push((*id, e)),
                }
            }
        }
        let m = metrics();
        m.fanout_frames.inc_by(sent);
        m.ws_bytes_out.inc_by(sent * frame.len() as u64);
        self.drop_unreachable(unreachable)
    }

    /// Sends presence (`frame` is `update` encoded, one buffer for all) to every member.
    /// Returns the sessions dropped.
    #[must_use]
    pub fn broadcast_presence(
        &mut self,
        frame: &Bytes,
        update: &Arc<AwarenessUpdate>,
    ) -> Vec<SessionId> {
        let mut sent = 0;
        let mut unreachable = Vec::new();
        for (id, member) in &self.members {
            match member.peer.push_presence(frame.clone(), update) {
                Ok(()) => sent += 1,
                Err(e) => unreachable.push((*id, e)),
            }
        }
        let m = metrics();
        m.fanout_frames.inc_by(sent);
        m.ws_bytes_out.inc_by(sent * frame.len() as u64);
        self.drop_unreachable(unreachable)
    }

    fn drop_unreachable(&mut self, sessions: Vec<(SessionId, PeerError)>) -> Vec<SessionId> {
        let mut dropped = Vec::with_capacity(sessions.len());
        for (session, error) in sessions {
            let Some(member) = self.members.remove(&session) else {
                continue;
            };
            if error == PeerError::Full {
                let (frames, bytes) = member.peer.depth();
                warn!(
                    "room {:?}: session {session} has {frames} frames ({bytes} bytes) \
                     queued, closing slow consumer",
                    self.room
                );
                member
                    .peer
                    .close(close::SLOW_CONSUMER, "slow consumer".into());
            }
            dropped.push(session);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A peer with room for `capacity` frames that records what it gets.
    #[derive(Clone, Default)]
    struct Recorder {
        frames: Arc<Mutex<Vec<Bytes>>>,
        closed: Arc<Mutex<Option<u16>>>,
        capacity: usize,
    }

    impl Peer for Recorder {
        fn push(&self, frame: Bytes) -> Result<(), PeerError> {
            if self.closed.lock().unwrap().is_some() {
                return Err(PeerError::Closed);
            }
            let mut frames = self.frames.lock().unwrap();
            if frames.len() >= self.capacity {
                return Err(PeerError::Full);
            }
            frames.push(frame);
            Ok(())
        }
        fn close(&self, code: u16, _reason: String) {
            *self.closed.lock().unwrap() = Some(code);
        }
        fn depth(&self) -> (usize, usize) {
            (self.frames.lock().unwrap().len(), 0)
        }
    }

    #[test]
    fn a_slow_consumer_is_closed_and_dropped_while_the_others_get_everything() {
        let mut fanout = Fanout::new("r".into());
        let fast = Recorder {
            capacity: 100,
            ..Recorder::default()
        };
        let slow = Recorder {
            capacity: 2,
            ..Recorder::default()
        };
        fanout.join(1, Arc::new(fast.clone()), None);
        fanout.join(2, Arc::new(slow.clone()), None);
        fanout.join(3, Arc::new(fast.clone()), None);
        let mut dropped = Vec::new();
        for i in 0..5u8 {
            dropped.extend(fanout.broadcast(&Bytes::from(vec![i]), Some(3)));
        }
        assert_eq!(dropped, vec![2]);
        assert_eq!(*slow.closed.lock().unwrap(), Some(close::SLOW_CONSUMER));
        assert_eq!(
            fast.frames.lock().unwrap().len(),
            5,
            "session 1 got every frame"
        );
        assert!(!fanout.contains(2) && fanout.contains(3));
    }

    #[test]
    fn a_peer_that_has_gone_is_dropped_without_a_close() {
        let mut fanout = Fanout::new("r".into());
        let gone = Recorder {
            capacity: 10,
            ..Recorder::default()
        };
        *gone.closed.lock().unwrap() = Some(1000);
        fanout.join(1, Arc::new(gone.clone()), None);
        assert_eq!(fanout.send_to(1, Bytes::from_static(b"x")), vec![1]);
        assert_eq!(*gone.closed.lock().unwrap(), Some(1000));
        assert!(fanout.is_empty());
    }
}
