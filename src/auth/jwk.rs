//! Turns a JWKS document into keys ready to verify signatures.
//!
//! Every key is parsed once, when the key set is fetched, so the request path
//! only looks a key up and runs the signature primitive. A key Casebook cannot
//! safely use is skipped (and reported), never fatal: one odd key in the
//! issuer's set must not take the others down with it.

use std::{collections::HashMap, sync::Arc};

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Deserialize;

use super::Algorithm;

/// The smallest RSA modulus accepted (RFC 8725 §3.5, NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// base64url as JWK publishers write it: padding tolerated, never required.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One JWK as published, before any validation. Fields Casebook never uses
/// (`jku`, `x5u`, `x5c`, private parts) are deliberately not read.
#[derive(Debug, Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    public_key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Why a published key was left out of the key set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, if it had one.
    pub kid: Option<String>,
    /// A human reason, safe to log (never key material).
    pub reason: String,
}

/// A JWKS document that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("JWKS document is not a JSON object with a \"keys\" array: {0}")]
pub struct InvalidJwks(#[from] serde_json::Error);

/// A public key, parsed and restricted to the algorithms it may verify.
pub struct VerifyingKey {
    kid: Option<String>,
    verifiers: Vec<(Algorithm, ParsedPublicKey)>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.verifiers.iter().map(|(a, _)| a.as_str()).collect();
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &algorithms)
            .finish()
    }
}

impl VerifyingKey {
    /// The key's id, as published.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether the key may verify `algorithm`: its type and curve fit, and the
    /// JWK's own `alg`, when present, is that algorithm.
    pub fn supports(&self, algorithm: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == algorithm)
    }

    /// Checks `signature` over `message` with this key under `algorithm`.
    /// `false` for a bad signature and for an algorithm the key does not support.
    pub fn verify(&self, algorithm: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == algorithm)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }

    /// Parses one JWK (as JSON) on its own, e.g. a key published out of band.
    pub fn from_jwk_json(jwk: &serde_json::Value) -> Result<Self, SkippedKey> {
        let raw = RawJwk::deserialize(jwk).map_err(|e| SkippedKey {
            kid: jwk.get("kid").and_then(|k| k.as_str()).map(str::to_owned),
            reason: format!("not a valid JWK: {e}"),
        })?;
        let kid = raw.kid.clone();
        Self::from_raw(raw).map_err(|reason| SkippedKey { kid, reason })
    }

    fn from_raw(raw: RawJwk) -> Result<Self, String> {
        if let Some(u) = raw.public_key_use.as_deref().filter(|u| *u != "sig") {
            return Err(format!("\"use\" is {u:?}, not \"sig\""));
        }
        if let Some(ops) = &raw.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
        let declared = match raw.alg.as_deref() {
            None => None,
            Some(name) => Some(Algorithm::from_jose(name).ok_or_else(|| {
                format!("declares \"alg\" {name:?}, which Casebook does not accept")
            })?),
        };
        let candidates: Vec<(Algorithm, ParsedPublicKey)> = match raw.kty.as_str() {
            "OKP" => vec![okp_key(&raw)?],
            "EC" => vec![ec_key(&raw)?],
            "RSA" => rsa_keys(&raw)?,
            "oct" => return Err("symmetric (\"oct\") keys are never accepted".into()),
            other => return Err(format!("unsupported key type {other:?}")),
        };
        let verifiers: Vec<_> = candidates
            .into_iter()
            .filter(|(a, _)| declared.is_none_or(|d| d == *a))
            .collect();
        if verifiers.is_empty() {
            return Err(format!(
                "declares \"alg\" {:?}, which does not fit its key type",
                raw.alg.unwrap_or_default()
            ));
        }
        Ok(Self {
            kid: raw.kid,
            verifiers,
        })
    }
}

fn field<'a>(raw: &'a RawJwk, value: &'a Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let encoded = value
        .as_deref()
        .ok_or_else(|| format!("{} key without \"{name}\"", raw.kty))?;
    JWK_BASE64
        .decode(encoded)
        .map_err(|_| format!("\"{name}\" is not base64url"))
}

fn okp_key(raw: &RawJwk) -> Result<(Algorithm, ParsedPublicKey), String> {
    match raw.crv.as_deref() {
        Some("Ed25519") => {}
        other => return Err(format!("unsupported OKP curve {other:?}")),
    }
    let x = field(raw, &raw.x, "x")?;
    if x.len() != 32 {
        return Err("Ed25519 \"x\" must be 32 bytes".into());
    }
    parse(Algorithm::EdDsa, &x)
}

fn ec_key(raw: &RawJwk) -> Result<(Algorithm, ParsedPublicKey), String> {
    let (algorithm, coordinate_len) = match raw.crv.as_deref() {
        Some("P-256") => (Algorithm::Es256, 32),
        Some("P-521") => (Algorithm::Es512, 66),
        other => return Err(format!("unsupported EC curve {other:?}")),
    };
    let x = field(raw, &raw.x, "x")?;
    let y = field(raw, &raw.y, "y")?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(format!("EC coordinates must be {coordinate_len} bytes"));
    }
    // SEC 1 uncompressed point; aws-lc rejects points that are not on the curve.
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    parse(algorithm, &point)
}

fn rsa_keys(raw: &RawJwk) -> Result<Vec<(Algorithm, ParsedPublicKey)>, String> {
    let n = field(raw, &raw.n, "n")?;
    let e = field(raw, &raw.e, "e")?;
    let components = RsaPublicKeyComponents {
        n: strip_leading_zeros(&n),
        e: strip_leading_zeros(&e),
    };
    let bits = bit_length(components.n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus is {bits} bits; at least {MIN_RSA_BITS} required"
        ));
    }
    let pkcs1 = components
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
        .map_err(|e| format!("invalid RSA key: {e}"))?;
    let pss = components
        .to_parsed_public_key(&RSA_PSS_2048_8192_SHA256)
        .map_err(|e| format!("invalid RSA key: {e}"))?;
    Ok(vec![(Algorithm::Rs256, pkcs1), (Algorithm::Ps256, pss)])
}

fn parse(algorithm: Algorithm, bytes: &[u8]) -> Result<(Algorithm, ParsedPublicKey), String> {
    ParsedPublicKey::new(algorithm.primitive(), bytes)
        .map(|key| (algorithm, key))
        .map_err(|e| format!("invalid {algorithm} public key: {e}"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

fn bit_length(magnitude: &[u8]) -> usize {
    match magnitude.first() {
        None => 0,
        Some(top) => magnitude.len() * 8 - top.leading_zeros() as usize,
    }
}

/// The usable keys of one JWKS document, indexed by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, Arc<VerifyingKey>>,
}

impl KeySet {
    /// Parses a JWKS document, keeping every usable key and reporting the rest.
    /// Keys sharing a `kid` are all skipped: the id no longer names one key.
    pub fn from_json(document: &[u8]) -> Result<(Self, Vec<SkippedKey>), InvalidJwks> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(document)?;
        let mut skipped = Vec::new();
        let mut kid_counts: HashMap<String, usize> = HashMap::new();
        for kid in document
            .keys
            .iter()
            .filter_map(|k| k.get("kid").and_then(|k| k.as_str()))
        {
            *kid_counts.entry(kid.to_owned()).or_default() += 1;
        }
        let mut set = KeySet::default();
        for jwk in &document.keys {
            let key = match VerifyingKey::from_jwk_json(jwk) {
                Ok(key) => key,
                Err(skip) => {
                    skipped.push(skip);
                    continue;
                }
            };
            if let Some(kid) = key.kid()
                && kid_counts.get(kid).copied().unwrap_or(0) > 1
            {
                skipped.push(SkippedKey {
                    kid: Some(kid.to_owned()),
                    reason: "another key in the set has the same kid".into(),
                });
                continue;
            }
            set.insert(key);
        }
        Ok((set, skipped))
    }

    /// A set holding exactly the given keys (e.g. for tests and benchmarks).
    pub fn from_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let mut set = KeySet::default();
        for key in keys {
            set.insert(key);
        }
        set
    }

    fn insert(&mut self, key: VerifyingKey) {
        let key = Arc::new(key);
        if let Some(kid) = key.kid() {
            self.by_kid.insert(kid.to_owned(), Arc::clone(&key));
        }
        self.keys.push(key);
    }

    /// The key a token names by `kid`. A token without `kid` gets the only key
    /// of a one-key set, and nothing otherwise: guessing among several keys
    /// would let the weakest one decide.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyingKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
