//! What a room that does not exist answers to reads: an empty document at seq 0, exactly
//! as a freshly loaded empty room would, built without spawning one (reads must not
//! create rooms; see `room::ask_existing`).

use bytes::Bytes;
use yrs::{Doc, ReadTxn, StateVector, Transact};

use super::messages::DocState;
use crate::protocol::json::RoomInfo;

/// The empty document as a Yjs update v1, at seq 0.
pub fn state() -> DocState {
    let state = Doc::new()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    DocState {
        state: Bytes::from(state),
        seq: 0,
    }
}

/// `GET /rooms/{room}` for a room with nothing stored and nobody in it.
pub fn info(name: &str) -> RoomInfo {
    RoomInfo {
        room: name.to_string(),
        seq: 0,
        epoch: 0,
        connections: 0,
        awareness: 0,
        size: state().state.len(),
        snapshot_seq: 0,
        first_seq: None,
    }
}

/// The empty document's root types as JSON.
pub fn json() -> serde_json::Value {
    super::doc_json::to_json(&Doc::new())
}
