//! The room's rules for accepting an update, free of actors, sockets and storage: an
//! update goes in, an [`Applied`] (what to log and broadcast) or a [`Rejected`] comes out.
//!
//! The invariant these rules keep: **the document holds nothing its log does not.** yrs
//! keeps an update whose dependencies it lacks as *pending* (invisible, not in the
//! transaction's diff, integrated later when the missing parts arrive), and integrates a
//! map entry with a gap in its client's clock without advancing the state vector. Either
//! way the document would hold something no record describes, and a POST or an ack would
//! claim a write that is not stored. So an update is refused outright when some client's
//! lowest clock in it lies past what the document has, and when it applies only in part,
//! the pending rest is pruned at once and reported as [`Refused::MissingDependencies`]:
//! what did apply gets a seq like any update; what did not is the sender's to send again,
//! with what it builds on.

use std::panic::{AssertUnwindSafe, catch_unwind};

use yrs::{Doc, ReadTxn, Transact, Update, WriteTxn};

/// Why a room refused an update (or part of one); the log holds nothing of what was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It does not decode or does not apply.
    #[error("update does not apply: {0}")]
    Invalid(String),
    /// Accepting it would grow the document past `max_doc_bytes`.
    #[error("the document would exceed its size limit of {0} bytes")]
    TooLarge(usize),
    /// It builds on updates this room does not have (items of a client whose earlier
    /// clocks it lacks, items whose neighbours it lacks, deletions of items it lacks).
    #[error("the update builds on updates this room does not have")]
    MissingDependencies,
    /// The store cannot be reached now; nothing was applied. Writes are taken again once
    /// it is back.
    #[error("the store is unavailable; retry shortly")]
    StoreUnavailable,
    /// It carries content of a deleted epoch of the room (its sender kept the deleted
    /// document): the sender must drop its document and start from the room's state.
    #[error("the update carries content of a deleted room; drop the document and sync again")]
    Deleted,
}

impl Refused {
    /// The label under which `collabd_updates_rejected_total` counts it.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Invalid(_) => "invalid",
            Refused::TooLarge(_) => "doc_too_large",
            Refused::MissingDependencies => "missing_dependencies",
            Refused::StoreUnavailable => "store_unavailable",
            Refused::Deleted => "deleted_content",
        }
    }
}

/// Whether `update` inserts an item a deleted epoch held: some client's lowest clock in
/// it lies below the `graveyard`'s clock for that client. A client id is random per
/// document, so a client that started afresh never collides with one.
pub fn resurrects(graveyard: &yrs::StateVector, update: &Update) -> bool {
    update
        .state_vector_lower()
        .iter()
        .any(|(client, clock)| *clock < graveyard.get(client))
}

/// An update the document took, wholly or in part.
#[derive(Debug, PartialEq)]
pub struct Applied {
    /// What changed, as a Yjs update v1, to log and broadcast; `None` if nothing did (the
    /// room had it all already).
    pub diff: Option<Vec<u8>>,
    /// Part of the update built on updates the room lacks and was pruned, not kept.
    pub missing_dependencies: bool,
}

/// An update refused as a whole.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub why: Refused,
    /// The document may hold part of it: the caller must reload the document from the log.
    pub document_dirty: bool,
}

/// Applies `update` to `doc` in one transaction under the rules above. `doc_bytes` is the
/// document's current (estimated) encoded size, `max_doc_bytes` its limit.
pub fn apply(
    doc: &Doc,
    update: Update,
    doc_bytes: usize,
    max_doc_bytes: usize,
) -> Result<Applied, Rejected> {
    if lacks_dependencies_of(doc, &update) {
        return Err(Rejected {
            why: Refused::MissingDependencies,
            document_dirty: false,
        });
    }
    // yrs may panic on a well-formed but inconsistent update; that must cost this one
    // update, not the thread every room on this arbiter runs on.
    let applied = catch_unwind(AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        let result = txn.apply_update(update);
        // Pending parts never stay: the document holds only what the diff (the log) holds.
        let missing = txn.has_missing_updates();
        if missing {
            txn.prune_pending();
        }
        let changed = !(txn.insert_set().is_empty() && txn.delete_set().is_empty());
        match result {
            Err(e) => Err((e.to_string(), changed)),
            Ok(()) => Ok(Applied {
                diff: changed.then(|| txn.encode_update_v1()),
                missing_dependencies: missing,
            }),
        }
    }));
    let applied = match applied {
        Ok(Ok(applied)) => applied,
        Ok(Err((e, changed))) => {
            return Err(Rejected {
                why: Refused::Invalid(e),
                document_dirty: changed,
            });
        }
        Err(_) => {
            return Err(Rejected {
                why: Refused::Invalid("update made the CRDT panic".into()),
                document_dirty: true,
            });
        }
    };
    if let Some(diff) = &applied.diff
        && doc_bytes + diff.len() > max_doc_bytes
    {
        return Err(Rejected {
            why: Refused::TooLarge(max_doc_bytes),
            document_dirty: true,
        });
    }
    Ok(applied)
}

/// Whether `update` inserts, for some client, blocks past the clock this document has
/// for it (checked before applying: yrs would integrate map entries past such a gap).
fn lacks_dependencies_of(doc: &Doc, update: &Update) -> bool {
    let have = doc.transact().state_vector();
    update
        .state_vector_lower()
        .iter()
        .any(|(client, clock)| *clock > have.get(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, Map, StateVector, Text};

    const LIMIT: usize = 1 << 20;

    fn doc(client: u64) -> Doc {
        Doc::with_client_id(client)
    }

    /// Everything `from` has that `sv` lacks.
    fn diff(from: &Doc, sv: &StateVector) -> Update {
        Update::decode_v1(&from.transact().encode_state_as_update_v1(sv)).unwrap()
    }

    fn full(from: &Doc) -> Update {
        diff(from, &StateVector::default())
    }

    fn text(d: &Doc) -> String {
        let t = d.get_or_insert_text("t");
        t.get_string(&d.transact())
    }

    #[test]
    fn an_ordinary_update_is_applied_and_its_diff_returned() {
        let alice = doc(1);
        alice
            .get_or_insert_text("t")
            .insert(&mut alice.transact_mut(), 0, "hi");
        let room = doc(100);
        let applied = apply(&room, full(&alice), 0, LIMIT).unwrap();
        assert!(!applied.missing_dependencies);
        assert!(applied.diff.is_some());
        assert_eq!(text(&room), "hi");
        // The same again changes nothing.
        assert_eq!(
            apply(&room, full(&alice), 0, LIMIT).unwrap(),
            Applied {
                diff: None,
                missing_dependencies: false
            }
        );
    }

    #[test]
    fn a_gap_in_the_senders_own_clock_is_refused_untouched() {
        let alice = doc(1);
        let t = alice.get_or_insert_text("t");
        t.insert(&mut alice.transact_mut(), 0, "a");
        let after_first = alice.transact().state_vector();
        t.insert(&mut alice.transact_mut(), 1, "b");
        let room = doc(100);
        let rejected = apply(&room, diff(&alice, &after_first), 0, LIMIT).unwrap_err();
        assert_eq!(rejected.why, Refused::MissingDependencies);
        assert!(!rejected.document_dirty);
        assert_eq!(text(&room), "");
    }

    #[test]
    fn items_that_build_on_another_clients_missing_items_are_pruned_not_kept() {
        // Bob types after Alice's text; the room never got Alice's.
        let alice = doc(1);
        alice
            .get_or_insert_text("t")
            .insert(&mut alice.transact_mut(), 0, "alice");
        let bob = doc(2);
        apply(&bob, full(&alice), 0, LIMIT).unwrap();
        let before_bob = bob.transact().state_vector();
        bob.get_or_insert_text("t")
            .insert(&mut bob.transact_mut(), 5, " and bob");
        let bobs_own = diff(&bob, &before_bob);

        let room = doc(100);
        let applied = apply(&room, bobs_own, 0, LIMIT).unwrap();
        assert!(applied.missing_dependencies);
        assert_eq!(applied.diff, None, "nothing of it could apply");
        assert!(!room.transact().has_missing_updates(), "pending pruned");
        // Alice's text arriving later must not resurrect Bob's pruned part.
        apply(&room, full(&alice), 0, LIMIT).unwrap();
        assert_eq!(text(&room), "alice");
    }

    #[test]
    fn deleting_items_the_room_lacks_is_not_acknowledged() {
        let alice = doc(1);
        let t = alice.get_or_insert_text("t");
        t.insert(&mut alice.transact_mut(), 0, "abc");
        let before_delete = alice.transact().state_vector();
        t.remove_range(&mut alice.transact_mut(), 0, 3);
        // A delete-only update: no new items, only a delete set naming Alice's items.
        let delete_only = diff(&alice, &before_delete);
        let room = doc(100);
        let applied = apply(&room, delete_only, 0, LIMIT).unwrap();
        assert!(applied.missing_dependencies);
        assert!(!room.transact().has_missing_updates());
    }

    #[test]
    fn the_part_that_applies_is_kept_and_the_rest_reported() {
        let alice = doc(1);
        alice
            .get_or_insert_map("m")
            .insert(&mut alice.transact_mut(), "k", "v");
        let carol = doc(3);
        carol
            .get_or_insert_text("t")
            .insert(&mut carol.transact_mut(), 0, "carol");
        let bob = doc(2);
        apply(&bob, full(&carol), 0, LIMIT).unwrap();
        let before = bob.transact().state_vector();
        bob.get_or_insert_text("t")
            .insert(&mut bob.transact_mut(), 5, "+bob");
        // Alice's map entry (complete) and Bob's text (building on Carol's, missing here).
        let both = Update::merge_updates([full(&alice), diff(&bob, &before)]);
        let room = doc(100);
        let applied = apply(&room, both, 0, LIMIT).unwrap();
        assert!(applied.missing_dependencies);
        let diff = applied.diff.expect("alice's entry applied");
        let replayed = doc(200);
        apply(&replayed, Update::decode_v1(&diff).unwrap(), 0, LIMIT).unwrap();
        assert_eq!(
            replayed
                .get_or_insert_map("m")
                .get(&replayed.transact(), "k"),
            Some("v".into())
        );
        assert_eq!(text(&room), "");
    }

    #[test]
    fn an_update_past_the_size_limit_is_refused() {
        let alice = doc(1);
        alice
            .get_or_insert_text("t")
            .insert(&mut alice.transact_mut(), 0, &"x".repeat(1000));
        let room = doc(100);
        let rejected = apply(&room, full(&alice), 0, 500).unwrap_err();
        assert_eq!(rejected.why, Refused::TooLarge(500));
        assert!(rejected.document_dirty);
    }

    #[test]
    fn garbage_that_decodes_is_contained() {
        let update = Update::decode_v1(&[0, 0]).unwrap();
        let room = doc(100);
        assert!(apply(&room, update, 0, LIMIT).is_ok());
        let _ = Update::new().encode_v1();
    }
}
