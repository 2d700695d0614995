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
//! optional: it is logged, recorded as the author of the holder's updates, and can be
//! revoked (see [`crate::revocation`]; `iat`, when present, tells tokens minted after a
//! revocation from those before). `perm` is `read`, `write` or `admin` (listing and
//! deleting the rooms the token names; revoking, with a token for `*`). `aud` and `iss` are checked only when `token_audience` /
//! `token_issuer` are configured; otherwise they are ignored (jsonwebtoken on its own
//! refuses any token with an `aud` unless an audience is configured). With no secret
//! configured, every request is granted `write`.
//!
//! Everything after the signature is checked here rather than by jsonwebtoken, so that a
//! refusal of a genuine token can name its subject ([`Denied::subject`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Settings;

/// What a token allows in a room. `Write` includes reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Reading: sync, awareness, SSE, polling, state.
    Read,
    /// Reading and writing updates.
    Write,
    /// Everything, and administration: listing and deleting rooms (for the rooms the
    /// token names), revoking tokens (a token for every room, `*`).
    Admin,
}

/// The claims collabd reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The room granted: a name, or a prefix ending in `*`.
    pub room: String,
    /// What the token allows there.
    pub perm: Access,
    /// Expiry, in seconds since the Unix epoch (required).
    pub exp: u64,
    /// Who holds it (logged, and passed to hooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// When it was issued (seconds since the epoch): a revocation of `sub` covers the
    /// tokens issued at or before it; one without `iat` counts as issued at 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The audience, checked when `token_audience` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The issuer, checked when `token_issuer` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A token's `aud` claim: one audience or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// What a request may do in the room it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Read, or read and write.
    pub access: Access,
    /// When the token stops being valid; `None` when auth is off (or `exp` is beyond
    /// what the clock can represent). A WebSocket or SSE connection ends then (close
    /// code 4401; the stream ends).
    pub expires: Option<SystemTime>,
    /// Who it is (the token's `sub`), for log lines and hooks.
    pub subject: Option<String>,
    /// When it was issued (the token's `iat`; a hook's grant: when the hook gave it),
    /// for revocations of its subject.
    pub issued_at: Option<u64>,
    /// The token's SHA-256, for revocations of the token itself.
    pub token_hash: Option<[u8; 32]>,
}

impl Grant {
    /// Read access, without expiry or subject.
    pub fn read() -> Grant {
        Grant {
            access: Access::Read,
            expires: None,
            subject: None,
            issued_at: None,
            token_hash: None,
        }
    }

    /// Read and write access, without expiry or subject.
    pub fn write() -> Grant {
        Grant {
            access: Access::Write,
            ..Grant::read()
        }
    }

    /// The same grant for `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Grant {
        self.subject = Some(subject.into());
        self
    }

    /// The same grant, ending at `at`.
    pub fn until(mut self, at: SystemTime) -> Grant {
        self.expires = Some(at);
        self
    }
}

/// Why a request was not granted; `Unauthorized` ones are 401, `Forbidden` ones 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was sent.
    #[error("a token is required (Authorization: Bearer TOKEN, or ?token=TOKEN)")]
    Missing,
    /// The token is past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// The token is malformed or its signature is wrong.
    #[error("the token is invalid: {0}")]
    Invalid(String),
    /// The token is for other rooms.
    #[error("the token does not grant room {0:?}")]
    WrongRoom(String),
    /// The token allows reading only.
    #[error("the token grants read access only")]
    ReadOnly,
    /// `aud` does not contain `token_audience`.
    #[error("the token's aud claim does not name this server's audience")]
    WrongAudience,
    /// `iss` is not `token_issuer`.
    #[error("the token's iss claim is not this server's issuer")]
    WrongIssuer,
    /// The token, or its subject, was revoked.
    #[error("the token has been revoked")]
    Revoked,
}

/// A refused token: why, and whose it was when the signature held (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Why.
    pub error: AuthError,
    /// The `sub` claim of a token whose signature was verified; `None` for a token that
    /// is missing, forged or malformed (its claims mean nothing), or that names no one.
    pub subject: Option<String>,
}

impl From<AuthError> for Denied {
    fn from(error: AuthError) -> Denied {
        Denied {
            error,
            subject: None,
        }
    }
}

/// Formats a token's subject for a log line: ` (sub "alice")`, or nothing.
pub struct Sub<'a>(pub Option<&'a str>);

impl fmt::Display for Sub<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(sub) => write!(f, " (sub {sub:?})"),
            None => Ok(()),
        }
    }
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
            AuthError::WrongAudience => "token_wrong_audience",
            AuthError::WrongIssuer => "token_wrong_issuer",
            AuthError::Revoked => "token_revoked",
        }
    }
}

/// Checks tokens against the configured secret; open when there is none.
#[derive(Clone)]
pub struct Auth {
    key: Option<DecodingKey>,
    validation: Validation,
    /// `token_audience`: when set, `aud` must contain it.
    audience: Option<String>,
    /// `token_issuer`: when set, `iss` must be it.
    issuer: Option<String>,
    /// Revoked subjects and tokens (shared by every clone).
    revocations: std::sync::Arc<crate::revocation::Revocations>,
}

impl Auth {
    /// A checker for tokens signed with `secret`; `None`: no checks, everyone may write.
    pub fn new(secret: Option<&str>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp"]);
        // `exp` is checked in `check`, strictly and with the subject at hand; `aud` there
        // too, and only when an audience is configured.
        validation.validate_exp = false;
        validation.validate_aud = false;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            audience: None,
            issuer: None,
            revocations: Default::default(),
        }
    }

    /// The secret, audience and issuer from `settings`.
    pub fn from_settings(settings: &Settings) -> Auth {
        Auth {
            audience: settings.token_audience.clone(),
            issuer: settings.token_issuer.clone(),
            ..Auth::new(settings.auth_secret.as_deref())
        }
    }

    /// Whether tokens are checked at all (a secret is configured).
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// The revocation list every check consults.
    pub fn revocations(&self) -> &std::sync::Arc<crate::revocation::Revocations> {
        &self.revocations
    }

    /// Grants `token` what it allows in `room`, if at least `need`.
    pub fn check(&self, token: Option<&str>, room: &str, need: Access) -> Result<Grant, Denied> {
        let Some(key) = &self.key else {
            return Ok(Grant::write());
        };
        let token = token.ok_or(AuthError::Missing)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?
            .claims;
        let denied = |error| Denied {
            error,
            subject: claims.sub.clone(),
        };
        // Valid strictly before `exp`, so that a session closed at expiry cannot reconnect
        // with its token. An `exp` past what `SystemTime` holds means "never" (and must
        // not overflow).
        let expires = UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp));
        if expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(denied(AuthError::Expired));
        }
        if let Some(audience) = &self.audience
            && !claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains(audience))
        {
            return Err(denied(AuthError::WrongAudience));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(denied(AuthError::WrongIssuer));
        }
        if !grants_room(&claims.room, room) {
            return Err(denied(AuthError::WrongRoom(room.to_string())));
        }
        if claims.perm < need {
            return Err(denied(AuthError::ReadOnly));
        }
        let hash = crate::revocation::token_hash(token);
        if self
            .revocations
            .is_revoked(claims.sub.as_deref(), claims.iat, Some(&hash))
        {
            return Err(denied(AuthError::Revoked));
        }
        Ok(Grant {
            access: claims.perm,
            expires,
            subject: claims.sub,
            issued_at: claims.iat,
            token_hash: Some(hash),
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

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    expiry_in(Duration::ZERO)
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
            aud: None,
            iss: None,
            iat: None,
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
            auth.check(Some(&t), "docs/a", Access::Write)
                .map_err(|d| d.error),
            Err(AuthError::ReadOnly)
        );
        assert!(matches!(
            auth.check(Some(&t), "other", Access::Read)
                .map_err(|d| d.error),
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
        assert_eq!(
            auth.check(None, "a", Access::Read),
            Err(AuthError::Missing.into())
        );
        let expired = token("a", Access::Write, expiry_in(Duration::ZERO) - 2);
        assert_eq!(
            auth.check(Some(&expired), "a", Access::Read),
            Err(AuthError::Expired.into())
        );
        let claims = Claims {
            room: "a".into(),
            perm: Access::Write,
            exp: later,
            sub: None,
            aud: None,
            iss: None,
            iat: None,
        };
        let forged = mint("another-secret-of-16+", &claims).unwrap();
        assert!(matches!(
            auth.check(Some(&forged), "a", Access::Read)
                .map_err(|d| d.error),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(Some("garbage"), "a", Access::Read)
                .map_err(|d| d.error),
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

    fn token_for(aud: Option<Audience>, iss: Option<&str>) -> String {
        let claims = Claims {
            room: "a".into(),
            perm: Access::Write,
            exp: expiry_in(Duration::from_secs(60)),
            sub: Some("alice".into()),
            aud,
            iss: iss.map(Into::into),
            iat: None,
        };
        mint(SECRET, &claims).unwrap()
    }

    #[test]
    fn aud_and_iss_are_ignored_unless_configured() {
        let auth = Auth::new(Some(SECRET));
        let one = token_for(Some(Audience::One("elsewhere".into())), Some("someone"));
        assert!(auth.check(Some(&one), "a", Access::Write).is_ok());
        let many = token_for(Some(Audience::Many(vec!["x".into(), "y".into()])), None);
        assert!(auth.check(Some(&many), "a", Access::Write).is_ok());
    }

    #[test]
    fn a_configured_audience_and_issuer_must_match() {
        let settings = Settings {
            auth_secret: Some(SECRET.into()),
            token_audience: Some("collabd".into()),
            token_issuer: Some("https://login.example".into()),
            ..Settings::default()
        };
        let auth = Auth::from_settings(&settings);
        let right_aud = || Some(Audience::Many(vec!["other".into(), "collabd".into()]));
        let right_iss = Some("https://login.example");
        let check = |t: String| auth.check(Some(&t), "a", Access::Write);
        assert!(check(token_for(right_aud(), right_iss)).is_ok());
        assert!(check(token_for(Some(Audience::One("collabd".into())), right_iss)).is_ok());
        let wrong_aud = Denied {
            error: AuthError::WrongAudience,
            subject: Some("alice".into()),
        };
        assert_eq!(
            check(token_for(Some(Audience::One("other".into())), right_iss)),
            Err(wrong_aud.clone())
        );
        assert_eq!(check(token_for(None, right_iss)), Err(wrong_aud));
        let wrong_iss = Err(Denied {
            error: AuthError::WrongIssuer,
            subject: Some("alice".into()),
        });
        assert_eq!(
            check(token_for(right_aud(), Some("https://evil"))),
            wrong_iss
        );
        assert_eq!(check(token_for(right_aud(), None)), wrong_iss);
        assert!(!AuthError::WrongAudience.is_forbidden(), "401, not 403");
    }

    #[test]
    fn no_secret_means_open() {
        let grant = Auth::new(None).check(None, "a", Access::Write).unwrap();
        assert_eq!(grant.access, Access::Write);
        assert_eq!(grant.expires, None);
    }
}
