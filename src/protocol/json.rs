//! The JSON shapes of the HTTP surface.

use serde::{Deserialize, Serialize};

/// `GET /rooms/{room}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomInfo {
    /// The room's name.
    pub room: String,
    /// Highest durable seq (0: nothing logged yet).
    pub seq: u64,
    /// The room's epoch: 0, and one more each time the room is deleted. Seqs go on
    /// across epochs (a deleted room's next epoch begins above every seq it used).
    #[serde(default)]
    pub epoch: u64,
    /// WebSocket sessions in the room now.
    pub connections: usize,
    /// Clients with a live awareness state (presence).
    pub awareness: usize,
    /// Size of the full state encoded as a Yjs update v1, in bytes.
    pub size: usize,
    /// Seq covered by the latest snapshot (0: none yet).
    pub snapshot_seq: u64,
    /// Oldest seq still in the op log (null: none); replay can start after `first_seq - 1`.
    pub first_seq: Option<u64>,
}

/// A room in the listing of `GET /rooms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomSummary {
    /// The room's name.
    pub room: String,
    /// The newest stored seq.
    pub seq: u64,
    /// The stored size in bytes: the snapshot plus the records after it.
    pub size: u64,
    /// When the newest record was written (ms since the Unix epoch; 0: not known).
    pub changed_ms: u64,
    /// The room's epoch: 0, and one more each time it is deleted.
    pub epoch: u64,
}

/// The answer to `DELETE /rooms/{room}`: the room's new epoch and the seq it begins at
/// (its first update gets `seq + 1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// The room's name.
    pub room: String,
    /// The new epoch's number.
    pub epoch: u64,
    /// The seq the new epoch begins at: every cursor below it is from a deleted epoch.
    pub seq: u64,
}

/// Every error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `bad_room_name`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
}
