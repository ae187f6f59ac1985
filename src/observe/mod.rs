//! What every call goes through before authentication, one concern per layer.
//! `server.rs` stacks them outermost first:
//!
//! 1. [`request_id`]: every call gets an `x-request-id` (the caller's when it
//!    is sane), on the request (so the gateway forwards it) and the response.
//!    Outermost, so even refusals carry one.
//! 2. [`record`]: names the call by its registered method, and when the
//!    response ends records it in the metrics and logs one line. It sits
//!    outside everything that can answer a call (restating, admission, auth),
//!    so each answer is counted with the code the client really saw.
//! 3. [`restate`]: tonic's decode failures become the caller's errors.
//! 4. [`admission`]: unary calls and long-lived streams each under their own
//!    limit, health checks never refused. Inside recording (refusals are
//!    counted) and outside authentication (an unauthenticated flood is shed
//!    before any token is checked).

pub mod admission;
pub mod record;
pub mod request_id;
pub mod restate;

use std::sync::{Arc, OnceLock};

pub use admission::{AdmissionLayer, AdmissionLimits};
pub use record::RecordLayer;
pub use request_id::{REQUEST_ID, RequestIdLayer};
pub use restate::restate_decode_errors;

/// Per-call facts later layers fill in (the auth layer sets the user), read
/// by [`record`] for the log line.
#[derive(Default, Debug)]
pub struct CallContext {
    user: OnceLock<String>,
}

impl CallContext {
    /// Records the authenticated user's id.
    pub fn set_user(&self, user: &str) {
        let _ = self.user.set(user.to_owned());
    }

    /// The authenticated user's id, once known.
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(String::as_str)
    }
}

/// A shared handle on a call's [`CallContext`], as stored in extensions.
pub type SharedCallContext = Arc<CallContext>;
