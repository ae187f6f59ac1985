//! Every way a case call can fail, and how each reaches the client.
//!
//! Each variant has a stable `reason` (the `ErrorInfo.reason` clients branch
//! on) and a gRPC code; this is the only place either is written, as
//! `casebook::auth::AuthError` does for tokens.

use std::time::Duration;

use casebook::rpc_error;
use tonic::{Code, Status};
use tonic_types::FieldViolation;

use crate::resource::CaseId;

/// A case call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// One or more request fields are invalid.
    #[error("invalid request")]
    Invalid(Vec<FieldViolation>),
    /// No such case for this caller (or it belongs to someone else).
    #[error("{} does not exist", .0.name())]
    NotFound(CaseId),
    /// The caller's etag, or a concurrent write, disagrees with the case.
    #[error("{} changed since it was read; read it again and retry", .0.name())]
    EtagMismatch(CaseId),
    /// Updating a soft-deleted case.
    #[error("{} is deleted; undelete it before updating", .0.name())]
    Deleted(CaseId),
    /// Undeleting a case that is not deleted.
    #[error("{} is not deleted", .0.name())]
    NotDeleted(CaseId),
    /// The token's user has no Better Auth row any more.
    #[error("your user no longer exists; sign in again")]
    UnknownOwner,
    /// A watch resumed from a point whose later events are no longer kept.
    #[error(
        "events after this resume token are no longer kept; list the cases again and watch without a resume token"
    )]
    ResumePointExpired,
    /// A resume token this service did not issue to this caller.
    #[error("resume_token is not a token this service issued")]
    InvalidResumeToken,
    /// The caller already has as many open watch streams as allowed.
    #[error("you already have {limit} open watch streams; close one first")]
    TooManyWatches {
        /// `MAX_WATCHES_PER_USER`.
        limit: usize,
    },
    /// The client stopped reading: it took nothing for a heartbeat period
    /// while more than `WATCH_BUFFER` events were waiting.
    #[error(
        "this stream's client took nothing for a whole heartbeat period while more than {behind} events waited; reconnect with the last resume token"
    )]
    SlowConsumer {
        /// `WATCH_BUFFER`: how far behind a stream may fall.
        behind: usize,
    },
    /// The server is shutting down; another replica (or this one, restarted) continues.
    #[error("the server is shutting down; reconnect with the last resume token")]
    ShuttingDown,
    /// A stored row holds a value this version cannot read.
    #[error("stored case data is unreadable: {0}")]
    CorruptRow(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl CaseError {
    /// A single invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// The `ErrorInfo.reason` clients branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "CASE_NOT_FOUND",
            Self::EtagMismatch(_) => "ETAG_MISMATCH",
            Self::Deleted(_) => "CASE_DELETED",
            Self::NotDeleted(_) => "CASE_NOT_DELETED",
            Self::UnknownOwner => "USER_NOT_FOUND",
            Self::ResumePointExpired => "RESUME_POINT_EXPIRED",
            Self::InvalidResumeToken => "INVALID_RESUME_TOKEN",
            Self::TooManyWatches { .. } => "TOO_MANY_WATCHES",
            Self::SlowConsumer { .. } => "SLOW_CONSUMER",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::CorruptRow(_) => "DATA_CORRUPTED",
            Self::Database(_) => "DATABASE_ERROR",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::InvalidResumeToken => Code::InvalidArgument,
            Self::NotFound(_) | Self::UnknownOwner => Code::NotFound,
            Self::EtagMismatch(_) => Code::Aborted,
            Self::Deleted(_) => Code::FailedPrecondition,
            Self::NotDeleted(_) => Code::AlreadyExists,
            Self::ResumePointExpired => Code::OutOfRange,
            Self::TooManyWatches { .. } | Self::SlowConsumer { .. } => Code::ResourceExhausted,
            Self::ShuttingDown => Code::Unavailable,
            Self::CorruptRow(_) => Code::DataLoss,
            Self::Database(_) => Code::Internal,
        }
    }
}

/// How long a client told to come back should wait.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

impl From<CaseError> for Status {
    fn from(error: CaseError) -> Self {
        match error {
            CaseError::Invalid(violations) => rpc_error::invalid_argument(violations),
            CaseError::InvalidResumeToken => {
                rpc_error::invalid_field("resume_token", error.to_string())
            }
            CaseError::Database(error) => {
                tracing::error!(%error, "case store failed");
                rpc_error::database(&error, "the case store")
            }
            CaseError::CorruptRow(ref detail) => {
                tracing::error!(%detail, "unreadable case row");
                rpc_error::with_reason(error.code(), error.reason(), error.to_string())
            }
            CaseError::ShuttingDown | CaseError::SlowConsumer { .. } => {
                rpc_error::with_retry_after(
                    rpc_error::with_reason(error.code(), error.reason(), error.to_string()),
                    RECONNECT_AFTER,
                )
            }
            other => rpc_error::with_reason(other.code(), other.reason(), other.to_string()),
        }
    }
}

impl From<Vec<FieldViolation>> for CaseError {
    fn from(violations: Vec<FieldViolation>) -> Self {
        Self::Invalid(violations)
    }
}
