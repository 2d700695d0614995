//! Who gets in, checked at the HTTP edge before any room is touched: the browser origin
//! (WebSocket and SSE), the access token (every room endpoint), the per-client request
//! rate (plain HTTP), and admission (connection limits and the admission buckets, for
//! long-lived connections; held long polls count against the limits). Every refusal is
//! a JSON error with a log line and counts in `collabd_connections_refused_total`.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, ORIGIN};

use super::AppState;
use super::error::ApiError;
use super::rooms::query_param;
use crate::auth::{Access, Grant, Sub};
use crate::hooks::{self, AuthRequest};
use crate::limits::{Permit, Refusal};
use crate::metrics::metrics;

fn refused(reason: &str) {
    metrics()
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

/// The token from `Authorization: Bearer …`, else from `?token=`.
fn token(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_invalid",
                    "Authorization must be \"Bearer TOKEN\"",
                )
            })?;
        return Ok(Some(token.trim().to_string()));
    }
    query_param(req, "token")
}

/// What the request may do in `room`, if at least `need`: the host's authenticate hook
/// decides when there is one (see [`crate::hooks`]), else the request's token.
pub async fn authorize(
    req: &HttpRequest,
    state: &AppState,
    room: &str,
    need: Access,
) -> Result<Grant, ApiError> {
    let token = token(req)?;
    if let Some(hook) = &state.hooks.authenticate {
        let asked = AuthRequest {
            request: req.clone(),
            room: room.into(),
            token,
            need,
            jwt: state.auth.clone(),
        };
        let answer = hooks::run("authenticate", state.hooks.timeout, hook(asked)).await;
        return match answer {
            Ok(Ok(mut grant)) if grant.access >= need => {
                // The hook vouches for the request now; revocations of its subject
                // count from here (see `revocation`).
                grant.issued_at.get_or_insert_with(crate::auth::now_secs);
                if state.auth.revocations().revokes(&grant) {
                    refused("auth");
                    return Err(ApiError::from(crate::auth::AuthError::Revoked));
                }
                Ok(grant)
            }
            Ok(Ok(_)) => {
                refused("auth");
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "read_only",
                    "read access only: this needs write access",
                ))
            }
            Ok(Err(refusal)) => {
                refused("auth");
                let status = match refusal.forbidden {
                    true => StatusCode::FORBIDDEN,
                    false => StatusCode::UNAUTHORIZED,
                };
                Err(ApiError::new(status, refusal.code, refusal.reason))
            }
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "hook_failed",
                e.to_string(),
            )),
        };
    }
    state
        .auth
        .check(token.as_deref(), room, need)
        .map_err(|denied| {
            refused("auth");
            let mut error = ApiError::from(denied.error);
            // The holder knows its own `sub`; it is there for the log line of the refusal.
            error.message += &Sub(denied.subject.as_deref()).to_string();
            error
        })
}

/// Refuses a browser whose `Origin` is not allowed (when an allow-list is configured).
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let allowed = &state.settings.allowed_origins;
    let Some(origin) = req.headers().get(ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        return Ok(());
    }
    refused("origin");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "origin {:?} is not allowed",
            String::from_utf8_lossy(origin.as_bytes())
        ),
    ))
}

/// The client's address, for the per-IP limits: the TCP peer, unless it is one of
/// `trusted_proxies`; then the rightmost address of `X-Forwarded-For` that is not a
/// trusted proxy itself (each proxy appends the address it got the request from, so
/// what lies left of an untrusted hop may be forged). An entry that does not parse ends
/// the walk at the last trusted hop.
fn peer_ip(req: &HttpRequest, state: &AppState) -> IpAddr {
    let peer = req
        .peer_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
    let nets = &state.admission.trusted_proxies;
    if nets.is_empty() {
        return peer;
    }
    let trusted = |ip: IpAddr| nets.iter().any(|net| crate::config::in_net(ip, *net));
    if !trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !trusted(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

fn refusal(e: Refusal) -> ApiError {
    refused(e.reason());
    ApiError::from(e)
}

/// Everything a long-lived connection (WebSocket, SSE) passes before it starts: origin,
/// token (read access at least), then connection limits and the admission buckets.
pub async fn admit_connection(
    req: &HttpRequest,
    state: &AppState,
    room: &std::sync::Arc<str>,
) -> Result<(Grant, Permit), ApiError> {
    check_origin(req, state)?;
    let grant = authorize(req, state, room, Access::Read).await?;
    let permit = state
        .admission
        .admit(peer_ip(req, state), room)
        .map_err(refusal)?;
    Ok((grant, permit))
}

/// A long poll about to be held counts as a connection (total, per room, per client);
/// the caller has checked the token already.
pub fn hold_long_poll(
    req: &HttpRequest,
    state: &AppState,
    room: &std::sync::Arc<str>,
) -> Result<Permit, ApiError> {
    state
        .admission
        .hold(peer_ip(req, state), room)
        .map_err(refusal)
}

/// The per-client rate limit on plain HTTP requests (429 beyond it), checked before
/// anything else so that floods of bad or unauthorized requests are limited too.
pub fn limit_request(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    state
        .admission
        .request(peer_ip(req, state))
        .map_err(refusal)
}
