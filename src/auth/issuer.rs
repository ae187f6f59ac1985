//! Signs tokens the way Better Auth does: `{"alg","kid"}` header, no `typ`.
//!
//! Casebook never signs production tokens. This exists for the development
//! issuer and for tests, which must produce byte-for-byte realistic tokens for
//! every algorithm Better Auth supports, and deliberately broken ones.

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::KeySize,
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
    },
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::Algorithm;

/// A private key that signs JWTs under one algorithm and `kid`.
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    pair: Pair,
}

enum Pair {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// Key generation failed inside aws-lc (practically never).
#[derive(Debug, thiserror::Error)]
#[error("could not generate a {0} signing key")]
pub struct KeyGenerationFailed(Algorithm);

/// Stored key bytes that are not an Ed25519 PKCS#8 key.
#[derive(Debug, thiserror::Error)]
#[error("not an Ed25519 PKCS#8 key: {0}")]
pub struct InvalidKey(String);

impl SigningKey {
    /// Generates a fresh key (RSA keys are 2048-bit, as Better Auth's).
    pub fn generate(
        algorithm: Algorithm,
        kid: impl Into<String>,
    ) -> Result<Self, KeyGenerationFailed> {
        let failed = |_| KeyGenerationFailed(algorithm);
        let pair = match algorithm {
            Algorithm::EdDsa => Pair::Ed25519(Ed25519KeyPair::generate().map_err(failed)?),
            Algorithm::Es256 => Pair::Ecdsa(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?,
            ),
            Algorithm::Es512 => Pair::Ecdsa(
                EcdsaKeyPair::generate(&ECDSA_P521_SHA512_FIXED_SIGNING).map_err(failed)?,
            ),
            Algorithm::Rs256 | Algorithm::Ps256 => {
                Pair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).map_err(failed)?)
            }
        };
        Ok(Self {
            kid: kid.into(),
            algorithm,
            pair,
        })
    }

    /// A fresh Ed25519 key as PKCS#8 (what the development issuer keeps on disk).
    pub fn generate_ed25519_pkcs8() -> Result<Vec<u8>, KeyGenerationFailed> {
        Ed25519KeyPair::generate()
            .and_then(|pair| pair.to_pkcs8())
            .map(|der| der.as_ref().to_vec())
            .map_err(|_| KeyGenerationFailed(Algorithm::EdDsa))
    }

    /// An Ed25519 key from PKCS#8, its `kid` derived from the public key so it
    /// is stable across restarts.
    pub fn ed25519_from_pkcs8(pkcs8: &[u8]) -> Result<Self, InvalidKey> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| InvalidKey(e.to_string()))?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD
            .encode(digest.as_ref())
            .chars()
            .take(22)
            .collect();
        Ok(Self {
            kid,
            algorithm: Algorithm::EdDsa,
            pair: Pair::Ed25519(pair),
        })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The public half as a JWK, shaped like Better Auth's (`alg` and `kid`
    /// set, no `use`).
    pub fn public_jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.pair {
            Pair::Ed25519(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
            Pair::Ecdsa(pair) => {
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let crv = if self.algorithm == Algorithm::Es256 {
                    "P-256"
                } else {
                    "P-521"
                };
                json!({"kty": "EC", "crv": crv,
                       "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])})
            }
            Pair::Rsa(pair) => {
                let public = pair.public_key();
                json!({"kty": "RSA",
                       "n": b64(public.modulus().big_endian_without_leading_zero()),
                       "e": b64(public.exponent().big_endian_without_leading_zero())})
            }
        };
        jwk["alg"] = json!(self.algorithm.as_str());
        jwk["kid"] = json!(self.kid);
        jwk
    }

    /// Signs `claims` under Better Auth's header `{"alg","kid"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.algorithm.as_str(), "kid": self.kid});
        self.sign_parts(header.to_string().as_bytes(), claims.to_string().as_bytes())
    }

    /// Signs arbitrary header and payload bytes: tests use this to forge
    /// tokens that lie about their algorithm, type or key.
    pub fn sign_parts(&self, header: &[u8], payload: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.signature(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn signature(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        // Signing with a freshly generated, valid key cannot fail; an empty
        // signature (which never verifies) is the only conceivable outcome.
        match &self.pair {
            Pair::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Pair::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .unwrap_or_default(),
            Pair::Rsa(pair) => {
                let padding = if self.algorithm == Algorithm::Ps256 {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                match pair.sign(padding, &rng, message, &mut signature) {
                    Ok(()) => signature,
                    Err(_) => Vec::new(),
                }
            }
        }
    }
}

/// A JWKS document publishing `keys`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({"keys": keys.into_iter().map(SigningKey::public_jwk).collect::<Vec<_>>()})
}
