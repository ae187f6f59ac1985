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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALLOWED: [Algorithm; 2] = [Algorithm::EdDsa, Algorithm::Es256];

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest! {
        /// Any text at all is parsed or refused with a typed error: no panic,
        /// and nothing over the limit is even looked at.
        #[test]
        fn arbitrary_text_never_panics(token in ".{0,300}") {
            match UnverifiedToken::parse(&token, 200, &ALLOWED) {
                Ok(parsed) => prop_assert!(ALLOWED.contains(&parsed.algorithm())),
                Err(AuthError::TokenTooLarge { limit }) => prop_assert!(token.len() > limit),
                Err(_) => prop_assert!(token.len() <= 200),
            }
        }

        /// Well-formed base64url around arbitrary header bytes: only a JSON
        /// object naming an allowed algorithm gets through.
        #[test]
        fn arbitrary_headers_are_refused_unless_they_name_an_allowed_algorithm(
            header in proptest::collection::vec(any::<u8>(), 0..200),
            payload in proptest::collection::vec(any::<u8>(), 0..50),
        ) {
            let token = format!("{}.{}.{}", b64(&header), b64(&payload), b64(b"sig"));
            if let Ok(parsed) = UnverifiedToken::parse(&token, 8192, &ALLOWED) {
                let json: serde_json::Value = serde_json::from_slice(&header).unwrap();
                prop_assert_eq!(
                    Algorithm::from_jose(json["alg"].as_str().unwrap()),
                    Some(parsed.algorithm())
                );
            }
        }

        /// Headers that are JSON objects with arbitrary `alg`, `typ` and `crit`.
        #[test]
        fn header_fields_are_checked_whatever_their_values(
            alg in prop_oneof![Just("EdDSA".to_owned()), Just("none".to_owned()), Just("HS256".to_owned()), ".{0,12}"],
            typ in proptest::option::of(prop_oneof![Just("JWT".to_owned()), ".{0,12}"]),
            crit in any::<bool>(),
        ) {
            let mut header = serde_json::json!({ "alg": alg });
            if let Some(typ) = &typ {
                header["typ"] = typ.clone().into();
            }
            if crit {
                header["crit"] = serde_json::json!(["exp"]);
            }
            let token = format!("{}.e30.{}", b64(header.to_string().as_bytes()), b64(b"sig"));
            let outcome = UnverifiedToken::parse(&token, 8192, &ALLOWED);
            let typ_ok = typ.as_deref().is_none_or(|t| t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("application/jwt"));
            let alg_ok = Algorithm::from_jose(&alg).is_some_and(|a| ALLOWED.contains(&a));
            prop_assert_eq!(outcome.is_ok(), !crit && typ_ok && alg_ok);
        }
    }
}
