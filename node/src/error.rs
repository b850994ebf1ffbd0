//! API errors: one kind per failure, one HTTP status and one stable `code` each.
//!
//! The same [`ApiError`] travels between nodes when a request is forwarded to the
//! leader, so the caller of any node sees exactly the leader's answer.

use serde::{Deserialize, Serialize};

use crate::state::{DomainError, ErrorKind};

/// An error as the API reports it: `{"error": {"code": ..., "message": ...}}` with
/// `status` as the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    /// 400: the request itself is wrong.
    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    /// 404: something named does not exist.
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }
    /// 409: the state forbids it.
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }
    /// 503: no leader, no quorum, or the node is shutting down. Safe to retry (with the
    /// same idempotency key for writes).
    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }
    /// 500: a bug or a broken node.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The gRPC status carrying this error (`"code: message"`).
    pub fn to_status(&self) -> tonic::Status {
        let msg = format!("{}: {}", self.code, self.message);
        match self.status {
            400 | 413 => tonic::Status::invalid_argument(msg),
            401 => tonic::Status::unauthenticated(msg),
            403 => tonic::Status::permission_denied(msg),
            429 => tonic::Status::resource_exhausted(msg),
            404 => tonic::Status::not_found(msg),
            409 if self.code.ends_with("exhausted") => tonic::Status::resource_exhausted(msg),
            409 => tonic::Status::failed_precondition(msg),
            503 => tonic::Status::unavailable(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let status = match e.kind {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
        };
        ApiError { status, code: e.code, message: e.message }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}
