//! Revoked access: subjects whose tokens issued until a moment no longer count, and single
//! tokens revoked until they expire (`POST /admin/revoke`).
//!
//! The list lives in memory on every node, is checked by every token check
//! ([`crate::auth::Auth::check`]), and is kept in the store so that a restart forgets
//! nothing (sled's `revocations` tree; in cluster mode a Redis hash, with every change
//! published to every node). Each change wakes every live WebSocket session and SSE
//! stream ([`Revocations::watch`]); those whose grant it covers end, WebSocket sessions
//! with close code 4403.
//!
//! - **A subject** (`{"sub": "alice"}`): every token of that `sub` issued (its `iat`) at or
//!   before the second of the revocation is refused; a token without `iat` counts as
//!   issued at 0, so it is refused too. Tokens minted afterwards work: revoking a subject
//!   is "sign out everywhere", not a ban. A grant from the authenticate hook counts as
//!   issued when the hook gave it.
//! - **A token** (`{"token": "…"}`): that token (by its SHA-256) is refused until its
//!   `exp`; then the entry is dropped.
//!
//! Stored form, one entry each: key `sub:` + subject → the revocation's second; key `tok:`
//! + the token's SHA-256 in hex → its `exp`.

use std::collections::HashMap;
use std::sync::RwLock;

use tokio::sync::watch;

use crate::auth::Grant;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Tokens of `sub` issued at or before `at`.
    Subject {
        /// The subject (a token's `sub`).
        sub: String,
        /// Seconds since the epoch.
        at: u64,
    },
    /// One token, until it expires.
    Token {
        /// The token's SHA-256 ([`token_hash`]).
        hash: [u8; 32],
        /// Its `exp` (seconds since the epoch): the entry is dropped after it.
        until: u64,
    },
}

impl Revocation {
    /// The stored form: (key, value).
    pub fn encode(&self) -> (String, u64) {
        match self {
            Revocation::Subject { sub, at } => (format!("sub:{sub}"), *at),
            Revocation::Token { hash, until } => (format!("tok:{}", hex(hash)), *until),
        }
    }

    /// Reads the stored form back; `None` for a key it does not know.
    pub fn decode(key: &str, value: u64) -> Option<Revocation> {
        if let Some(sub) = key.strip_prefix("sub:") {
            return Some(Revocation::Subject {
                sub: sub.to_string(),
                at: value,
            });
        }
        let hex = key.strip_prefix("tok:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Revocation::Token { hash, until: value })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a token's text: how a revoked token is known.
pub fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes long")
}

#[derive(Default)]
struct Lists {
    subjects: HashMap<String, u64>,
    tokens: HashMap<[u8; 32], u64>,
}

/// The node's revocation list (see the module docs). Cheap to check: one read lock and
/// at most two hash lookups per token check.
pub struct Revocations {
    lists: RwLock<Lists>,
    /// Counts changes; live sessions and streams wait on it.
    changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Revocations {
        Revocations {
            lists: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl Revocations {
    /// Adds `revocation` (a later revocation of a subject replaces an earlier one) and
    /// wakes every live session and stream to check its grant.
    pub fn apply(&self, revocation: Revocation, now_secs: u64) {
        {
            let mut lists = self.lists.write().unwrap_or_else(|e| e.into_inner());
            match revocation {
                Revocation::Subject { sub, at } => {
                    let entry = lists.subjects.entry(sub).or_default();
                    *entry = (*entry).max(at);
                }
                Revocation::Token { hash, until } => {
                    lists.tokens.insert(hash, until);
                }
            }
            lists.tokens.retain(|_, until| *until > now_secs);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether `grant` is revoked.
    pub fn revokes(&self, grant: &Grant) -> bool {
        self.is_revoked(
            grant.subject.as_deref(),
            grant.issued_at,
            grant.token_hash.as_ref(),
        )
    }

    /// Whether a token of `subject`, issued at `issued_at` (none: 0), with SHA-256
    /// `hash`, is revoked.
    pub fn is_revoked(
        &self,
        subject: Option<&str>,
        issued_at: Option<u64>,
        hash: Option<&[u8; 32]>,
    ) -> bool {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        if lists.subjects.is_empty() && lists.tokens.is_empty() {
            return false;
        }
        let by_subject = subject
            .and_then(|s| lists.subjects.get(s))
            .is_some_and(|at| issued_at.unwrap_or(0) <= *at);
        by_subject || hash.is_some_and(|h| lists.tokens.contains_key(h))
    }

    /// Wakes on every change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How many entries the list holds (subjects, tokens).
    pub fn len(&self) -> (usize, usize) {
        let lists = self.lists.read().unwrap_or_else(|e| e.into_inner());
        (lists.subjects.len(), lists.tokens.len())
    }
}

/// A stream that yields once per change of the list (for a session actor's
/// `add_stream`); it never ends while the list lives.
pub fn changes(
    watch: watch::Receiver<u64>,
) -> impl futures_util::Stream<Item = RevocationsChanged> {
    futures_util::stream::unfold(watch, |mut watch| async move {
        watch.changed().await.ok()?;
        Some((RevocationsChanged, watch))
    })
}

/// The list changed: check the grant again.
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "()")]
pub struct RevocationsChanged;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_until_a_second_and_tokens_until_they_expire() {
        let list = Revocations::default();
        let watch = list.watch();
        assert!(!list.is_revoked(Some("alice"), Some(5), None));
        list.apply(
            Revocation::Subject {
                sub: "alice".into(),
                at: 100,
            },
            50,
        );
        assert!(watch.has_changed().unwrap());
        assert!(list.is_revoked(Some("alice"), Some(100), None));
        assert!(
            list.is_revoked(Some("alice"), None, None),
            "no iat: issued at 0"
        );
        assert!(
            !list.is_revoked(Some("alice"), Some(101), None),
            "minted afterwards"
        );
        assert!(!list.is_revoked(Some("bob"), Some(1), None));
        let hash = token_hash("a.b.c");
        list.apply(Revocation::Token { hash, until: 200 }, 50);
        assert!(list.is_revoked(None, None, Some(&hash)));
        assert!(!list.is_revoked(None, None, Some(&token_hash("other"))));
        // Expired token entries go with the next change.
        list.apply(
            Revocation::Subject {
                sub: "carol".into(),
                at: 1,
            },
            300,
        );
        assert!(!list.is_revoked(None, None, Some(&hash)));
        assert_eq!(list.len(), (2, 0));
    }

    #[test]
    fn the_stored_form_round_trips() {
        for revocation in [
            Revocation::Subject {
                sub: "a:b c".into(),
                at: 7,
            },
            Revocation::Token {
                hash: token_hash("t"),
                until: 9,
            },
        ] {
            let (key, value) = revocation.encode();
            assert_eq!(Revocation::decode(&key, value), Some(revocation));
        }
        assert_eq!(Revocation::decode("tok:zz", 1), None);
        assert_eq!(Revocation::decode("other", 1), None);
    }
}
