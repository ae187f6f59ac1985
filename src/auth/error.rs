//! Why a request's credentials were refused, and how that reaches the client.
//!
//! Each variant has a stable `reason` (the `ErrorInfo.reason` clients branch
//! on) and a message for humans. Messages never quote the token or any key.

use tonic::{Code, Status};

use crate::rpc_error;

/// A refused credential, or keys that could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata (or an empty token).
    #[error("missing credentials: send \"authorization: Bearer <token>\"")]
    MissingCredentials,
    /// The `authorization` metadata is not exactly one `Bearer <token>`.
    #[error("invalid authorization metadata: {0}")]
    InvalidAuthorizationHeader(&'static str),
    /// The token is longer than the configured maximum; it was not decoded.
    #[error("token is larger than {limit} bytes")]
    TokenTooLarge {
        /// The configured maximum, in bytes.
        limit: usize,
    },
    /// The token is not a compact JWS with a JSON header and payload.
    #[error("malformed token: {0}")]
    MalformedToken(&'static str),
    /// `typ` is present and is not `JWT`.
    #[error("token type must be JWT")]
    UnsupportedTokenType,
    /// The header lists `crit` extensions, none of which Casebook implements.
    #[error("token requires critical header extensions this server does not support")]
    UnsupportedCriticalHeader,
    /// `alg` is not in the configured allow-list.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No key in the issuer's JWKS matches the token's `kid`.
    #[error("token is signed with a key the issuer does not publish")]
    UnknownKey,
    /// No key matches the token's `kid`, and the JWKS was last fetched for
    /// an unknown key too recently to fetch it again: the key may have been
    /// published since (a rotation), so the caller should retry.
    #[error("token is signed with a key not fetched yet; retry after {retry_after:?}")]
    KeyNotFetchedYet {
        /// When the next fetch for an unknown key may happen.
        retry_after: std::time::Duration,
    },
    /// The key named by `kid` cannot verify the token's `alg`.
    #[error("token algorithm does not match its key")]
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    TokenExpired,
    /// `nbf` or `iat` is in the future (beyond the leeway).
    #[error("token is not valid yet")]
    TokenNotYetValid,
    /// A required claim is absent.
    #[error("token lacks the required \"{0}\" claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type.
    #[error("token claim \"{0}\" has an invalid value")]
    InvalidClaim(&'static str),
    /// `iss` is not the configured issuer.
    #[error("token was issued by another issuer")]
    InvalidIssuer,
    /// `aud` does not name this service.
    #[error("token is not meant for this audience")]
    InvalidAudience,
    /// No usable key set: the JWKS could not be fetched and no recent copy exists.
    #[error("signing keys are unavailable; try again shortly")]
    JwksUnavailable,
}

impl AuthError {
    /// The stable `ErrorInfo.reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingCredentials => "MISSING_CREDENTIALS",
            Self::InvalidAuthorizationHeader(_) => "INVALID_AUTHORIZATION_HEADER",
            Self::TokenTooLarge { .. } => "TOKEN_TOO_LARGE",
            Self::MalformedToken(_) => "MALFORMED_TOKEN",
            Self::UnsupportedTokenType => "UNSUPPORTED_TOKEN_TYPE",
            Self::UnsupportedCriticalHeader => "UNSUPPORTED_CRITICAL_HEADER",
            Self::AlgorithmNotAllowed => "ALGORITHM_NOT_ALLOWED",
            Self::UnknownKey => "UNKNOWN_KEY",
            Self::KeyNotFetchedYet { .. } => "KEY_NOT_FETCHED_YET",
            Self::KeyAlgorithmMismatch => "KEY_ALGORITHM_MISMATCH",
            Self::InvalidSignature => "INVALID_SIGNATURE",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::TokenNotYetValid => "TOKEN_NOT_YET_VALID",
            Self::MissingClaim(_) => "MISSING_CLAIM",
            Self::InvalidClaim(_) => "INVALID_CLAIM",
            Self::InvalidIssuer => "INVALID_ISSUER",
            Self::InvalidAudience => "INVALID_AUDIENCE",
            Self::JwksUnavailable => "JWKS_UNAVAILABLE",
        }
    }

    /// The gRPC code: `UNAVAILABLE` when keys cannot be had or not yet
    /// (retrying may help), `UNAUTHENTICATED` for every problem with the
    /// credential itself.
    pub fn code(&self) -> Code {
        match self {
            Self::JwksUnavailable | Self::KeyNotFetchedYet { .. } => Code::Unavailable,
            _ => Code::Unauthenticated,
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let metadata = match &error {
            AuthError::MissingClaim(claim) | AuthError::InvalidClaim(claim) => {
                [("claim".to_owned(), (*claim).to_owned())].into()
            }
            _ => Default::default(),
        };
        let status = rpc_error::with_reason_and_metadata(
            error.code(),
            error.reason(),
            error.to_string(),
            metadata,
        );
        match error {
            AuthError::KeyNotFetchedYet { retry_after } => {
                rpc_error::with_retry_after(status, retry_after)
            }
            _ => status,
        }
    }
}
