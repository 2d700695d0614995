//! A room member for in-process tests (a room driven directly through its actor, no
//! socket): it takes every frame and drops it, and passes close orders to `outbox`.

use actix::Recipient;
use bytes::Bytes;
use collabd::room::fanout::{Peer, PeerError};
use collabd::room::messages::CloseSession;

pub struct DiscardingPeer {
    pub outbox: Recipient<CloseSession>,
}

impl Peer for DiscardingPeer {
    fn push(&self, _frame: Bytes) -> Result<(), PeerError> {
        Ok(())
    }

    fn close(&self, code: u16, reason: String) {
        self.outbox.do_send(CloseSession { code, reason });
    }

    fn depth(&self) -> (usize, usize) {
        (0, 0)
    }
}
