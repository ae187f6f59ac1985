//! Who a verified token speaks for: what handlers read instead of tokens.

use std::{fmt, sync::Arc};

use serde_json::{Map, Value};
use tonic::{Code, Status};

use super::Algorithm;
use crate::rpc_error;

/// A Better Auth user id (the token's `sub`, Better Auth's `user.id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// Wraps an id already known to be a user id (a verified `sub`, a database row).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a verified token proves. The auth layer puts one (in an
/// `Arc`) into every authenticated request's extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    /// The user the token speaks for (`sub`).
    pub user_id: UserId,
    /// The token's issuer (`iss`), equal to the configured one.
    pub issuer: String,
    /// The token's audiences (`aud`), at least one of them ours.
    pub audiences: Vec<String>,
    /// Issue time (`iat`), seconds since the Unix epoch, when present.
    pub issued_at: Option<i64>,
    /// Expiry (`exp`), seconds since the Unix epoch.
    pub expires_at: i64,
    /// The `kid` of the key that verified the signature.
    pub key_id: Option<String>,
    /// The signature algorithm.
    pub algorithm: Algorithm,
    /// Every claim other than the registered ones above.
    pub claims: Map<String, Value>,
}

impl Principal {
    /// The principal the auth layer attached to `request`.
    ///
    /// Fails with `UNAUTHENTICATED` only if a method was wired without the
    /// auth layer, which is a server bug the client cannot fix; the error says so.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
        request
            .extensions()
            .get::<Arc<Principal>>()
            .cloned()
            .ok_or_else(|| {
                rpc_error::with_reason(
                    Code::Unauthenticated,
                    "MISSING_CREDENTIALS",
                    "this method requires a bearer token",
                )
            })
    }
}
