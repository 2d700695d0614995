//! Access tokens: HS256 JWTs naming a room (or a `prefix/*` of rooms), a permission
//! (`read` or `write`) and an expiry.
//!
//! ```json
//! { "room": "docs/*", "perm": "write", "exp": 1767225600, "sub": "alice" }
//! ```
//!
//! `room` is an exact room name, or ends in `*` to grant every room starting with what
//! comes before it (`docs/*` grants `docs/a` and `docs/b/c`; `*` grants every room).
//! `exp` (seconds since the epoch) is required and checked without leeway. `sub` is
//! optional and only logged. With no secret configured, every request is granted `write`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// What a token allows in a room. `Write` includes reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
}

/// The claims collabd reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub room: String,
    pub perm: Access,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// What a request may do in the room it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    /// When the token stops being valid; `None` when auth is off (or `exp` is beyond
    /// what the clock can represent).
    pub expires: Option<SystemTime>,
    pub subject: Option<String>,
}

/// Why a request was not granted; `Unauthorized` ones are 401, `Forbidden` ones 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token does not grant room {0:?}")]
    WrongRoom(String),
    #[error("the token grants read access only")]
    ReadOnly,
}

impl AuthError {
    /// 401 (no usable token) versus 403 (a valid token that does not allow this).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::WrongRoom(_) | AuthError::ReadOnly)
    }

    /// Stable error code for JSON bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::WrongRoom(_) => "token_wrong_room",
            AuthError::ReadOnly => "read_only",
        }
    }
}

/// Checks tokens against the configured secret; open when there is none.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Grants `token` what it allows in `room`, if at least `need`.
    pub fn check(&self, token: Option<&str>, room: &str, need: Access) -> Result<Grant, AuthError> {
        let Some(key) = &self.key else {
            return Ok(Grant {
                access: Access::Write,
                expires: None,
                subject: None,
            });
        };
        let token = token.ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        // Valid strictly before `exp` (jsonwebtoken still accepts the second of `exp`
        // itself), so that a session closed at expiry cannot reconnect with its token.
        // An `exp` past what `SystemTime` holds means "never" (and must not overflow).
        let expires = UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp));
        if expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(AuthError::Expired);
        }
        if !grants_room(&claims.room, room) {
            return Err(AuthError::WrongRoom(room.to_string()));
        }
        if claims.perm < need {
            return Err(AuthError::ReadOnly);
        }
        Ok(Grant {
            access: claims.perm,
            expires,
            subject: claims.sub,
        })
    }
}

/// `pattern` is a room name, or a prefix followed by `*`.
fn grants_room(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Mints a token (for `collabd token`, and for apps and tests that share the secret).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Seconds since the epoch, `ttl` from now.
pub fn expiry_in(ttl: Duration) -> u64 {
    (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn token(room: &str, perm: Access, exp: u64) -> String {
        let claims = Claims {
            room: room.into(),
            perm,
            exp,
            sub: None,
        };
        mint(SECRET, &claims).unwrap()
    }

    #[test]
    fn grants_follow_room_patterns_and_permissions() {
        let auth = Auth::new(Some(SECRET));
        let later = expiry_in(Duration::from_secs(60));
        let t = token("docs/*", Access::Read, later);
        assert_eq!(
            auth.check(Some(&t), "docs/a/b", Access::Read)
                .unwrap()
                .access,
            Access::Read
        );
        assert_eq!(
            auth.check(Some(&t), "docs/a", Access::Write),
            Err(AuthError::ReadOnly)
        );
        assert!(matches!(
            auth.check(Some(&t), "other", Access::Read),
            Err(AuthError::WrongRoom(_))
        ));
        let exact = token("a", Access::Write, later);
        assert!(auth.check(Some(&exact), "a", Access::Write).is_ok());
        assert!(auth.check(Some(&exact), "ab", Access::Read).is_err());
        assert!(
            auth.check(Some(&token("*", Access::Read, later)), "x", Access::Read)
                .is_ok()
        );
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = Auth::new(Some(SECRET));
        let later = expiry_in(Duration::from_secs(60));
        assert_eq!(auth.check(None, "a", Access::Read), Err(AuthError::Missing));
        let expired = token("a", Access::Write, expiry_in(Duration::ZERO) - 2);
        assert_eq!(
            auth.check(Some(&expired), "a", Access::Read),
            Err(AuthError::Expired)
        );
        let claims = Claims {
            room: "a".into(),
            perm: Access::Write,
            exp: later,
            sub: None,
        };
        let forged = mint("another-secret-of-16+", &claims).unwrap();
        assert!(matches!(
            auth.check(Some(&forged), "a", Access::Read),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(Some("garbage"), "a", Access::Read),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn an_expiry_beyond_the_clock_means_never_and_does_not_panic() {
        let auth = Auth::new(Some(SECRET));
        let grant = auth
            .check(Some(&token("a", Access::Read, u64::MAX)), "a", Access::Read)
            .unwrap();
        assert_eq!(grant.expires, None);
    }

    #[test]
    fn no_secret_means_open() {
        let grant = Auth::new(None).check(None, "a", Access::Write).unwrap();
        assert_eq!(grant.access, Access::Write);
        assert_eq!(grant.expires, None);
    }
}
