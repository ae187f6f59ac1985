//! Builds `google.rpc.Status` errors with the details clients rely on.
//!
//! Every Casebook error carries an `ErrorInfo` whose `reason` is a stable
//! UPPER_SNAKE identifier a program can branch on; the message is for humans.
//! Keeping the construction here means every service spells the domain and
//! shape the same way.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error Casebook raises.
pub const ERROR_DOMAIN: &str = "casebook.dev";

/// A status with an `ErrorInfo` detail naming `reason`.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    with_reason_and_metadata(code, reason, message, HashMap::new())
}

/// A status with an `ErrorInfo` detail naming `reason`, plus metadata such as
/// the offending claim or setting.
pub fn with_reason_and_metadata(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// `status` with a `RetryInfo` detail added: when a retry may succeed.
pub fn with_retry_after(status: Status, retry_after: std::time::Duration) -> Status {
    let mut details = status.get_error_details();
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(status.code(), status.message(), details)
}

/// The status for a failed database call: `UNAVAILABLE` (reason
/// `DATABASE_UNAVAILABLE`) when the database is down or too busy and a retry
/// may succeed ([`crate::db::is_transient`]), else `INTERNAL`. `what` names
/// the store for the caller ("the case store").
pub fn database(error: &sqlx::Error, what: &str) -> Status {
    if crate::db::is_transient(error) {
        with_reason(
            Code::Unavailable,
            "DATABASE_UNAVAILABLE",
            format!("{what} is unavailable; try again shortly"),
        )
    } else {
        with_reason(Code::Internal, "INTERNAL", "internal error")
    }
}

/// `INVALID_ARGUMENT` with a `BadRequest` naming each bad field, and an
/// `ErrorInfo` with reason `INVALID_ARGUMENT`.
pub fn invalid_argument(violations: Vec<FieldViolation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::with_bad_request(violations);
    details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A single-field [`invalid_argument`].
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    invalid_argument(vec![FieldViolation::new(field, description)])
}
