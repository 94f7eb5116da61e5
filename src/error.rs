//! The one error type. Every failure a request can meet ends up here and leaves as a Matrix
//! error body (`{"errcode", "error"}`) with the right HTTP status.

use std::time::Duration;

use http::StatusCode;
use ruma::api::{
    client::uiaa::UiaaInfo,
    error::{
        ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody, UnknownTokenErrorData,
    },
};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request the client got wrong, or was not allowed to make: a Matrix errcode.
    #[error("{message}")]
    Matrix {
        status: StatusCode,
        kind: ErrorKind,
        message: String,
    },
    /// A Matrix error with fields beside `errcode` and `error` (an unstable feature's own
    /// errcode and its parameters).
    #[error("{message}")]
    MatrixWithFields {
        status: StatusCode,
        kind: ErrorKind,
        message: String,
        fields: serde_json::Map<String, serde_json::Value>,
    },
    /// User-interactive authentication must continue (401 with the flows and the session).
    #[error("user-interactive authentication required")]
    Uiaa(Box<UiaaInfo>),
    /// The storage engine failed; the client sees M_UNKNOWN, the log gets the detail.
    #[error("database error: {0}")]
    Database(#[from] rocksdb::Error),
    /// Anything else that is our fault, not the client's.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix {
            status,
            kind,
            message: message.into(),
        }
    }
    pub fn with_fields<const N: usize>(
        status: StatusCode,
        kind: ErrorKind,
        message: impl Into<String>,
        fields: [(&str, serde_json::Value); N],
    ) -> Self {
        Self::MatrixWithFields {
            status,
            kind,
            message: message.into(),
            fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::BadJson, message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::NotJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidParam, message)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::MissingToken,
            "Missing access token.",
        )
    }
    pub fn unknown_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken(UnknownTokenErrorData::new()),
            "Unknown access token.",
        )
    }
    /// `M_UNKNOWN_TOKEN` with `soft_logout: true`: the session can come back (a refresh, or
    /// logging in again to the same device).
    pub fn soft_logout(message: impl Into<String>) -> Self {
        let mut data = UnknownTokenErrorData::new();
        data.soft_logout = true;
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken(data),
            message,
        )
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge, message)
    }
    pub fn unrecognized(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, ErrorKind::Unrecognized, message)
    }
    pub fn limit_exceeded(retry_after: Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded(data),
            "Too many requests; try again later.",
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into())
    }

    /// The HTTP status and JSON body this error is answered with.
    pub fn to_status_and_body(&self) -> (StatusCode, serde_json::Value) {
        match self {
            Error::Matrix {
                status,
                kind,
                message,
            } => {
                let body = StandardErrorBody::new(kind.clone(), message.clone());
                let mut body = serde_json::to_value(body).unwrap_or_default();
                // ruma leaves `soft_logout: false` out; clients (and Synapse) expect it spelt out.
                if matches!(kind, ErrorKind::UnknownToken(_)) && body.get("soft_logout").is_none() {
                    body["soft_logout"] = serde_json::Value::Bool(false);
                }
                (*status, body)
            }
            Error::MatrixWithFields {
                status,
                kind,
                message,
                fields,
            } => {
                let body = StandardErrorBody::new(kind.clone(), message.clone());
                let mut body = serde_json::to_value(body).unwrap_or_default();
                if let Some(object) = body.as_object_mut() {
                    object.extend(fields.clone());
                }
                (*status, body)
            }
            Error::Uiaa(info) => (
                StatusCode::UNAUTHORIZED,
                serde_json::to_value(info).unwrap_or_default(),
            ),
            Error::Database(_) | Error::Internal(_) => {
                let body = StandardErrorBody::new(
                    ErrorKind::Unknown,
                    "Internal server error; the server's log has the details.".to_owned(),
                );
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::to_value(body).unwrap_or_default(),
                )
            }
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("serialisation: {e}"))
    }
}
