//! The one set of error codes Chorus shows outside: WebSocket `error` frames carry the code,
//! HTTP responses carry it in `{"error":{"code","message"}}` with the matching status.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
    /// The recipient of a direct message has blocked its sender.
    Blocked,
    /// A business system's before-send hook refused the message (its reason is the message).
    Refused,
    /// An attachment's media type is not one this node accepts (`attachments.types`).
    UnsupportedType,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Refused => "refused",
            ErrorCode::UnsupportedType => "unsupported_type",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Blocked => 403,
            ErrorCode::Refused => 403,
            ErrorCode::UnsupportedType => 415,
        }
    }
}

/// An error with its outside code and a message for people. It travels typed between nodes
/// (an [`crate::protocol::outbound::EventOutcome`] on the node bus) and is rendered only at the
/// socket: [`ApiError::http_body`] or [`ApiError::ws_frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP body `{"error":{"code":…,"message":…}}`.
    pub fn http_body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }

    /// The WebSocket frame `{"type":"error","id":…,"code":…,"message":…}`.
    pub fn ws_frame(&self, client_msg_id: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "id": client_msg_id,
            "code": self.code.as_str(),
            "message": self.message,
        })
    }
}
