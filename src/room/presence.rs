//! Presence (Yjs awareness): who is here and their cursors, with the rules that keep one
//! client from spoiling it for the others. Sans-IO: the room actor calls it and sends
//! what it returns.
//!
//! yrs' `Awareness` stores whatever clients send, forever: one state that is not JSON
//! breaks every stock client (their `JSON.parse` throws), any session can overwrite or
//! remove anyone's state, and a removal keeps a tombstone per client id for the room's
//! life. Here:
//!
//! - a state must be JSON, at most `awareness_max_state_bytes`; a frame carries at most
//!   `awareness_max_entries` entries (else the whole frame is refused);
//! - a client id belongs to the session that announced it first; other sessions' entries
//!   for it are ignored, and the owner's leaving removes it;
//! - a removal (`null`) deletes the state and forgets the id: no tombstones; removals of
//!   unknown ids change nothing;
//! - a session announces at most `awareness_max_clients` ids, and a room's states add up
//!   to at most `awareness_max_room_bytes` (capped at half of `outbound_queue_bytes`), so
//!   the full presence a joiner receives always fits its outbound queue.
//!
//! Refused entries are dropped, not punished: the session stays, the rest of its frame
//! applies.
//!
//! Merging: with `coalesce` on (`awareness_tick_ms` > 0), a renewal of a state everyone
//! already knows (a moving cursor) is not sent at once: its client is marked dirty, and
//! once per tick the room sends the latest states of every dirty client as one
//! multi-entry update ([`Presence::take_dirty`]), encoded once for all receivers. A
//! client's first state and every removal go out at once. A room of N moving cursors thus
//! costs each receiver one frame per tick instead of N per cursor move. The wire format is y-protocols' awareness update, so stock clients see
//! ordinary awareness: removals go out as `null` with the next clock, as `y-protocols`'
//! `removeAwarenessStates` sends them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use yrs::ClientID;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;

use super::messages::SessionId;
use crate::config::Settings;

/// Bytes a state costs beyond its JSON (id, clock, map entry), so that many tiny states
/// count too.
const ENTRY_OVERHEAD: usize = 32;

/// The limits, from the settings of the same names.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_state_bytes: usize,
    pub max_entries: usize,
    pub max_clients_per_session: usize,
    pub max_room_bytes: usize,
}

impl Limits {
    pub fn from_settings(settings: &Settings) -> Limits {
        Limits {
            max_state_bytes: settings.awareness_max_state_bytes,
            max_entries: settings.awareness_max_entries,
            max_clients_per_session: settings.awareness_max_clients,
            max_room_bytes: settings.presence_room_bytes(),
        }
    }
}

/// Why an entry (or a frame) was not taken; the label of
/// `collabd_awareness_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The frame has more than `awareness_max_entries` entries (all of them refused).
    TooManyEntries,
    /// The state is not JSON.
    NotJson,
    /// The state is over `awareness_max_state_bytes`.
    TooLarge,
    /// Another session announced this client id first.
    NotOwner,
    /// The session announces `awareness_max_clients` ids already.
    SessionFull,
    /// The room's states would pass `awareness_max_room_bytes`.
    RoomFull,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyEntries => "too_many_entries",
            Refusal::NotJson => "not_json",
            Refusal::TooLarge => "too_large",
            Refusal::NotOwner => "not_owner",
            Refusal::SessionFull => "session_full",
            Refusal::RoomFull => "room_full",
        }
    }
}

/// What one client update did: the changes to send everyone at once (`None` if nothing
/// must go out now), whether renewals now wait for the next tick, and what was refused.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Option<AwarenessUpdate>,
    /// Renewals were marked dirty: the room must send [`Presence::take_dirty`] within a
    /// tick.
    pub deferred: bool,
    pub refused: Vec<(u64, Refusal)>,
}

struct State {
    clock: u32,
    json: Arc<str>,
    owner: SessionId,
    updated: Instant,
}

impl State {
    fn cost(&self) -> usize {
        self.json.len() + ENTRY_OVERHEAD
    }
}

/// The room's presence states.
pub struct Presence {
    states: HashMap<u64, State>,
    /// Ids each session owns (for the per-session cap and its leaving).
    owned: HashMap<SessionId, Vec<u64>>,
    /// Sum of the states' costs.
    bytes: usize,
    /// Clients whose renewed state waits for the next tick.
    dirty: HashSet<u64>,
    limits: Limits,
}

impl Presence {
    pub fn new(limits: Limits) -> Presence {
        Presence {
            states: HashMap::new(),
            owned: HashMap::new(),
            bytes: 0,
            dirty: HashSet::new(),
            limits,
        }
    }

    /// How many clients are present.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Applies a client's awareness update from session `owner` under the rules above.
    /// With `coalesce`, renewals of known states are deferred to the next tick.
    pub fn apply(
        &mut self,
        owner: SessionId,
        update: AwarenessUpdate,
        now: Instant,
        coalesce: bool,
    ) -> Applied {
        let mut applied = Applied::default();
        if update.clients.len() > self.limits.max_entries {
            applied.refused = update
                .clients
                .keys()
                .map(|id| (id.get(), Refusal::TooManyEntries))
                .collect();
            return applied;
        }
        let mut changes = HashMap::new();
        for (id, entry) in update.clients {
            let known = self.states.contains_key(&id.get());
            match self.apply_entry(owner, id.get(), entry, now) {
                Ok(Some(change)) if coalesce && known && &*change.json != "null" => {
                    self.dirty.insert(id.get());
                    applied.deferred = true;
                }
                Ok(Some(change)) => {
                    changes.insert(id, change);
                }
                Ok(None) => {}
                Err(refusal) => applied.refused.push((id.get(), refusal)),
            }
        }
        applied.changes = (!changes.is_empty()).then_some(AwarenessUpdate { clients: changes });
        applied
    }

    fn apply_entry(
        &mut self,
        owner: SessionId,
        id: u64,
        entry: AwarenessUpdateEntry,
        now: Instant,
    ) -> Result<Option<AwarenessUpdateEntry>, Refusal> {
        if let Some(state) = self.states.get(&id)
            && state.owner != owner
        {
            return Err(Refusal::NotOwner);
        }
        if entry.json.len() > self.limits.max_state_bytes {
            return Err(Refusal::TooLarge);
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(&entry.json).is_err() {
            return Err(Refusal::NotJson);
        }
        let removal = entry.json.trim() == "null";
        let Some(current) = self.states.get(&id) else {
            if removal {
                return Ok(None); // nothing to remove, and no tombstone kept
            }
            if self.owned.get(&owner).map_or(0, Vec::len) >= self.limits.max_clients_per_session {
                return Err(Refusal::SessionFull);
            }
            let state = State {
                clock: entry.clock,
                json: entry.json.clone(),
                owner,
                updated: now,
            };
            if self.bytes + state.cost() > self.limits.max_room_bytes {
                return Err(Refusal::RoomFull);
            }
            self.bytes += state.cost();
            self.states.insert(id, state);
            self.owned.entry(owner).or_default().push(id);
            return Ok(Some(entry));
        };
        // y-protocols: a newer clock wins; at the same clock only a removal does.
        if entry.clock < current.clock || (entry.clock == current.clock && !removal) {
            return Ok(None);
        }
        if removal {
            self.forget(id);
            return Ok(Some(entry));
        }
        let grown = (entry.json.len() + ENTRY_OVERHEAD).saturating_sub(current.cost());
        if self.bytes + grown > self.limits.max_room_bytes {
            return Err(Refusal::RoomFull);
        }
        let current = self.states.get_mut(&id).expect("checked above");
        self.bytes = self.bytes + entry.json.len() - current.json.len();
        current.clock = entry.clock;
        current.json = entry.json.clone();
        current.updated = now;
        Ok(Some(entry))
    }

    /// The latest states of the clients renewed since the last call, as one update; and
    /// `None` when there are none (removed clients' removals went out already).
    pub fn take_dirty(&mut self) -> Option<AwarenessUpdate> {
        let clients: HashMap<_, _> = self
            .dirty
            .drain()
            .filter_map(|id| {
                let state = self.states.get(&id)?;
                let entry = AwarenessUpdateEntry {
                    clock: state.clock,
                    json: state.json.clone(),
                };
                Some((ClientID::new(id), entry))
            })
            .collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Deletes `id`'s state; returns the removal to announce (`null` at the next clock).
    fn forget(&mut self, id: u64) -> Option<(ClientID, AwarenessUpdateEntry)> {
        self.dirty.remove(&id);
        let state = self.states.remove(&id)?;
        self.bytes -= state.cost();
        if let Some(ids) = self.owned.get_mut(&state.owner) {
            ids.retain(|owned| *owned != id);
            if ids.is_empty() {
                self.owned.remove(&state.owner);
            }
        }
        let entry = AwarenessUpdateEntry {
            clock: state.clock.wrapping_add(1),
            json: Arc::from("null"),
        };
        Some((ClientID::new(id), entry))
    }

    /// Removes every state `owner` announced (it left); the removals to announce.
    pub fn remove_session(&mut self, owner: SessionId) -> Option<AwarenessUpdate> {
        let ids = self.owned.remove(&owner)?;
        let clients: HashMap<_, _> = ids.into_iter().filter_map(|id| self.forget(id)).collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Removes states not renewed within `timeout`; the removals to announce.
    pub fn expire(&mut self, timeout: Duration, now: Instant) -> Option<AwarenessUpdate> {
        let stale: Vec<u64> = self
            .states
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.updated) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        let clients: HashMap<_, _> = stale.into_iter().filter_map(|id| self.forget(id)).collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Every present state, for a joiner or a query; `None` when nobody is present.
    pub fn full(&self) -> Option<AwarenessUpdate> {
        if self.states.is_empty() {
            return None;
        }
        let clients = self
            .states
            .iter()
            .map(|(id, s)| {
                let entry = AwarenessUpdateEntry {
                    clock: s.clock,
                    json: s.json.clone(),
                };
                (ClientID::new(*id), entry)
            })
            .collect();
        Some(AwarenessUpdate { clients })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_state_bytes: 100,
        max_entries: 3,
        max_clients_per_session: 2,
        max_room_bytes: 1000,
    };

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        let clients = entries
            .iter()
            .map(|(id, clock, json)| {
                let entry = AwarenessUpdateEntry {
                    clock: *clock,
                    json: Arc::from(*json),
                };
                (ClientID::new(*id), entry)
            })
            .collect();
        AwarenessUpdate { clients }
    }

    fn refusals(applied: &Applied) -> Vec<Refusal> {
        applied.refused.iter().map(|(_, r)| *r).collect()
    }

    #[test]
    fn valid_states_are_kept_and_relayed() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        let applied = p.apply(1, update(&[(10, 1, r#"{"name":"a"}"#)]), now, false);
        assert!(applied.refused.is_empty());
        assert_eq!(applied.changes.unwrap().clients.len(), 1);
        assert_eq!(p.len(), 1);
        // An older or equal clock changes nothing.
        let applied = p.apply(1, update(&[(10, 1, r#"{"name":"b"}"#)]), now, false);
        assert!(applied.changes.is_none());
    }

    #[test]
    fn states_that_are_not_json_or_too_large_are_refused() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        let big = format!("\"{}\"", "x".repeat(200));
        let applied = p.apply(
            1,
            update(&[(10, 1, "{not json"), (11, 1, &big)]),
            now,
            false,
        );
        let mut got = refusals(&applied);
        got.sort_by_key(|r| r.label());
        assert_eq!(got, vec![Refusal::NotJson, Refusal::TooLarge]);
        assert!(applied.changes.is_none());
        assert!(p.is_empty());
    }

    #[test]
    fn a_client_id_belongs_to_the_session_that_announced_it() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        p.apply(1, update(&[(10, 1, "{}")]), now, false);
        let applied = p.apply(2, update(&[(10, 5, r#"{"evil":1}"#)]), now, false);
        assert_eq!(refusals(&applied), vec![Refusal::NotOwner]);
        let applied = p.apply(2, update(&[(10, 6, "null")]), now, false);
        assert_eq!(refusals(&applied), vec![Refusal::NotOwner]);
        assert_eq!(p.len(), 1);
        // The owner leaving removes it, announced as null at the next clock.
        let removed = p.remove_session(1).unwrap();
        assert_eq!(&*removed.clients[&ClientID::new(10)].json, "null");
        assert_eq!(removed.clients[&ClientID::new(10)].clock, 2);
        assert!(p.is_empty());
    }

    #[test]
    fn removals_leave_no_tombstones() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        for id in 0..10_000u64 {
            let applied = p.apply(1, update(&[(id, 3, "null")]), now, false);
            assert!(applied.changes.is_none());
        }
        assert!(p.is_empty());
        assert!(p.states.capacity() < 100, "no tombstones kept");
        p.apply(1, update(&[(7, 1, "{}")]), now, false);
        p.apply(1, update(&[(7, 2, "null")]), now, false);
        assert!(p.is_empty() && p.owned.is_empty() && p.bytes == 0);
    }

    #[test]
    fn sessions_and_rooms_are_capped() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        let applied = p.apply(
            1,
            update(&[(1, 1, "{}"), (2, 1, "{}"), (3, 1, "{}")]),
            now,
            false,
        );
        assert_eq!(refusals(&applied), vec![Refusal::SessionFull]);
        let too_many = update(&[(4, 1, "{}"), (5, 1, "{}"), (6, 1, "{}"), (7, 1, "{}")]);
        assert_eq!(
            refusals(&p.apply(2, too_many, now, false)),
            vec![Refusal::TooManyEntries; 4]
        );
        // 1000 bytes: 2 states of ~80 + 32 each per session; sessions fill the room.
        let state = format!("\"{}\"", "y".repeat(78));
        let mut refused_room = 0;
        for session in 10..20 {
            let applied = p.apply(session, update(&[(session * 100, 1, &state)]), now, false);
            refused_room += refusals(&applied)
                .iter()
                .filter(|r| **r == Refusal::RoomFull)
                .count();
        }
        assert!(refused_room > 0);
        assert!(p.bytes <= LIMITS.max_room_bytes);
        let full = p.full().unwrap();
        let total: usize = full
            .clients
            .values()
            .map(|e| e.json.len() + ENTRY_OVERHEAD)
            .sum();
        assert_eq!(total, p.bytes);
    }

    #[test]
    fn stale_states_expire() {
        let mut p = Presence::new(LIMITS);
        let start = Instant::now();
        p.apply(1, update(&[(10, 1, "{}")]), start, false);
        p.apply(
            2,
            update(&[(20, 1, "{}")]),
            start + Duration::from_secs(20),
            false,
        );
        let expired = p
            .expire(Duration::from_secs(30), start + Duration::from_secs(31))
            .unwrap();
        assert_eq!(expired.clients.len(), 1);
        assert!(expired.clients.contains_key(&ClientID::new(10)));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn renewals_wait_for_the_tick_and_go_out_merged_with_the_latest_state() {
        let mut p = Presence::new(LIMITS);
        let now = Instant::now();
        // A first state goes out at once, even when coalescing.
        let applied = p.apply(1, update(&[(10, 1, r#"{"x":0}"#)]), now, true);
        assert!(applied.changes.is_some() && !applied.deferred);
        p.apply(2, update(&[(20, 1, r#"{"x":0}"#)]), now, true);
        // Renewals are deferred; the latest of each client wins.
        for x in 1..=5 {
            let json = format!(r#"{{"x":{x}}}"#);
            let applied = p.apply(1, update(&[(10, 1 + x, &json)]), now, true);
            assert!(applied.changes.is_none() && applied.deferred);
        }
        p.apply(2, update(&[(20, 2, r#"{"x":9}"#)]), now, true);
        let merged = p.take_dirty().unwrap();
        assert_eq!(merged.clients.len(), 2);
        assert_eq!(&*merged.clients[&ClientID::new(10)].json, r#"{"x":5}"#);
        assert_eq!(merged.clients[&ClientID::new(10)].clock, 6);
        assert_eq!(&*merged.clients[&ClientID::new(20)].json, r#"{"x":9}"#);
        assert!(p.take_dirty().is_none(), "nothing twice");
        // A removal goes out at once, and a pending renewal of that client is dropped.
        p.apply(1, update(&[(10, 7, r#"{"x":6}"#)]), now, true);
        let applied = p.apply(1, update(&[(10, 8, "null")]), now, true);
        assert_eq!(
            &*applied.changes.unwrap().clients[&ClientID::new(10)].json,
            "null"
        );
        assert!(p.take_dirty().is_none());
    }
}
