//! Errors at the HTTP edge: one type, mapped once to a status and a JSON body.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use log::warn;

use crate::protocol::json::ErrorBody;
use crate::room::RoomUnavailable;

/// An answer that is not a success: status, stable code, message for people.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
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
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "room_unavailable",
            e.to_string(),
        )
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
        HttpResponse::build(self.status).json(ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
        })
    }
}
