//! The untrusted front door: splitting a compact JWS and reading its header.
//!
//! Everything here runs on attacker-controlled bytes before any signature is
//! checked, so it is strict and bounded: the size limit comes before any
//! decoding, base64url must be canonical (no padding, no stray bits), and
//! header fields that would let the token choose its own key (`jku`, `x5u`,
//! `x5c`, `jwk`) are never read.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::{Algorithm, AuthError, jwk::VerifyingKey};

/// The parts of a JWS header Casebook acts on.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<serde_json::Value>,
}

/// A structurally valid token whose signature has not been checked yet.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    signing_input: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl<'a> UnverifiedToken<'a> {
    /// Parses `token` and checks its header against the allow-list.
    pub fn parse(
        token: &'a str,
        max_bytes: usize,
        allowed: &[Algorithm],
    ) -> Result<Self, AuthError> {
        if token.len() > max_bytes {
            return Err(AuthError::TokenTooLarge { limit: max_bytes });
        }
        let malformed = || AuthError::MalformedToken("expected three dot-separated parts");
        let (signing_input, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or_else(malformed)?;
        if payload.contains('.') {
            return Err(malformed());
        }
        let header_json = decode(header, "header is not base64url")?;
        let header: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|_| AuthError::MalformedToken("header is not a valid JWS header"))?;
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCriticalHeader);
        }
        if let Some(typ) = &header.typ
            && !(typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case("application/jwt"))
        {
            return Err(AuthError::UnsupportedTokenType);
        }
        let algorithm = Algorithm::from_jose(&header.alg)
            .filter(|a| allowed.contains(a))
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let signature = decode(signature, "signature is not base64url")?;
        Ok(Self {
            signing_input,
            payload,
            signature,
            algorithm,
            kid: header.kid,
        })
    }

    /// The `kid` the header names, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The header's algorithm (already checked against the allow-list).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks the signature with `key`; on success returns the decoded payload.
    pub fn verify_signature(&self, key: &VerifyingKey) -> Result<Vec<u8>, AuthError> {
        if !key.supports(self.algorithm) {
            return Err(AuthError::KeyAlgorithmMismatch);
        }
        if !key.verify(
            self.algorithm,
            self.signing_input.as_bytes(),
            &self.signature,
        ) {
            return Err(AuthError::InvalidSignature);
        }
        decode(self.payload, "payload is not base64url")
    }
}

fn decode(part: &str, problem: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::MalformedToken(problem))
}
