//! Errors at the HTTP edge: one type, mapped once to a status and a JSON body.

use actix_web::http::StatusCode;
use actix_web::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use log::warn;

use crate::auth::AuthError;
use crate::limits::{RETRY_WHEN_FULL_SECS, Refusal};
use crate::protocol::json::ErrorBody;
use crate::room::RoomUnavailable;

/// An answer that is not a success: status, stable code, message for people.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<RoomUnavailable> for ApiError {
    fn from(e: RoomUnavailable) -> ApiError {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        match e {
            RoomUnavailable::Down(_) => ApiError::new(status, "room_unavailable", e.to_string()),
            RoomUnavailable::MaxRooms(_) => {
                ApiError::new(status, "max_rooms", e.to_string()).retry_after(RETRY_WHEN_FULL_SECS)
            }
            RoomUnavailable::Deleting(_) => {
                ApiError::new(status, "room_deleting", e.to_string()).retry_after(1)
            }
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
            .retry_after(1),
            StoreError::Unsupported(what) => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_supported",
                format!("not supported by this store: {what}"),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = if e.is_forbidden() {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> ApiError {
        // The server is full (503), or this client asks too often (429).
        let status = match e {
            Refusal::HttpRate(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.reason(), e.to_string()).retry_after(e.retry_after_secs())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        warn!(
            "HTTP {}: {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        );
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header((RETRY_AFTER, secs.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
        })
    }
}
