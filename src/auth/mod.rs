//! Better Auth token verification, done in-process on every request.
//!
//! The pieces, in the order a request meets them:
//! [`AuthLayer`] takes the bearer token off the request, [`TokenVerifier`]
//! answers from its [`token_cache`] when it verified the same token before, or
//! parses it ([`token`]), finds its key in the [`JwksCache`], checks the
//! signature ([`jwk`], [`Algorithm`]) and the claims ([`claims`]), and leaves a
//! [`Principal`] in the request's extensions for the handler.

pub mod algorithm;
pub mod claims;
pub mod error;
pub mod issuer;
pub mod jwk;
pub mod jwks_cache;
pub mod layer;
pub mod principal;
pub mod token;
pub mod token_cache;
pub mod verifier;

pub use algorithm::Algorithm;
pub use error::AuthError;
pub use jwks_cache::{JwksCache, JwksCacheConfig};
pub use layer::AuthLayer;
pub use principal::{Principal, UserId};
pub use verifier::{TokenVerifier, VerificationPolicy};
