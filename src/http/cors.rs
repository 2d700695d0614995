//! Browsers on other origins: CORS on every route, and the `Origin` allow-list enforced
//! on every route (not only on WebSocket upgrades and SSE), writes included.
//!
//! A request without `Origin` (curl, servers, native clients) passes untouched. One with
//! an `Origin`:
//! - refused with 403 `origin_not_allowed` when `allowed_origins` is set and does not list
//!   it — before any handler runs, so a `no-cors` POST from a foreign page changes nothing;
//! - otherwise answered with `Access-Control-Allow-Origin` (the origin itself with
//!   `Vary: Origin` under an allow-list; `*` without one: collabd authenticates with
//!   bearer tokens or `?token=`, never cookies) and `Access-Control-Expose-Headers` for
//!   what clients read (`X-Seq`, `Retry-After`), on errors too;
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here: GET
//!   and POST, the headers browsers send (`Authorization`, `Content-Type`,
//!   `Last-Event-ID`), cached for [`MAX_AGE_SECS`].

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use log::warn;

use super::error::ApiError;
use crate::metrics::metrics;

/// How long browsers may cache a preflight answer.
pub const MAX_AGE_SECS: u32 = 600;
const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID";
const EXPOSE_HEADERS: &str = "X-Seq, Retry-After";

/// What to do with a request, from its method and headers.
pub enum Decision {
    /// Serve it, then add these CORS headers to the answer (none without `Origin`).
    Serve(HeaderMap),
    /// Answer now (a preflight, or a refused origin).
    Answer(HttpResponse),
}

/// Decides for a request with `method` and `headers` under the allow-list `allowed`
/// (empty: every origin).
pub fn decide(method: &Method, headers: &HeaderMap, allowed: &[String]) -> Decision {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Decision::Serve(HeaderMap::new());
    };
    let listed = allowed.iter().any(|a| a.as_bytes() == origin.as_bytes());
    if !allowed.is_empty() && !listed {
        metrics()
            .connections_refused
            .with_label_values(&["origin"])
            .inc();
        let origin = String::from_utf8_lossy(origin.as_bytes());
        warn!("HTTP 403: origin_not_allowed: {origin:?} ({method})");
        let error = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin {origin:?} is not allowed"),
        );
        return Decision::Answer(error.error_response());
    }
    let mut cors = HeaderMap::new();
    if allowed.is_empty() {
        cors.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        cors.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        cors.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    let preflight =
        method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !preflight {
        cors.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        return Decision::Serve(cors);
    }
    let mut answer = HttpResponse::NoContent();
    for (name, value) in &cors {
        answer.insert_header((name.clone(), value.clone()));
    }
    answer
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS.to_string()));
    Decision::Answer(answer.finish())
}

/// Adds the decided CORS headers to an answer.
pub fn add_headers(response: &mut HeaderMap, cors: HeaderMap) {
    for (name, value) in cors {
        response.insert(name, value);
    }
}
