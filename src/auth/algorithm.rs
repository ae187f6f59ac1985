//! The JWS algorithms Casebook accepts: exactly the five Better Auth can sign
//! with. Symmetric (`HS*`) and `none` are not representable, so no
//! configuration can enable them.

use std::{fmt, str::FromStr};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P521_SHA512_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA256, VerificationAlgorithm,
};

/// A JWS signature algorithm (RFC 7518 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (`EdDSA`, also spelled `Ed25519`): Better Auth's default.
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-521 with SHA-512.
    Es512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
}

impl Algorithm {
    /// Every supported algorithm; also the default allow-list.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::EdDsa,
        Algorithm::Es256,
        Algorithm::Es512,
        Algorithm::Rs256,
        Algorithm::Ps256,
    ];

    /// Parses a JOSE `alg` value. `Ed25519` (RFC 9864's fully specified name)
    /// and `EdDSA` are the same algorithm for the only curve we accept.
    pub fn from_jose(name: &str) -> Option<Self> {
        match name {
            "EdDSA" | "Ed25519" => Some(Self::EdDsa),
            "ES256" => Some(Self::Es256),
            "ES512" => Some(Self::Es512),
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            _ => None,
        }
    }

    /// The canonical JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Es512 => "ES512",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
        }
    }

    /// The aws-lc verification primitive (raw `r‖s` for ECDSA, as JWS uses).
    pub(crate) fn primitive(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Self::EdDsa => &ED25519,
            Self::Es256 => &ECDSA_P256_SHA256_FIXED,
            Self::Es512 => &ECDSA_P521_SHA512_FIXED,
            Self::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
            Self::Ps256 => &RSA_PSS_2048_8192_SHA256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for an `alg` name Casebook does not support.
#[derive(Debug, thiserror::Error)]
#[error("unsupported JWS algorithm {0:?}; supported: EdDSA, ES256, ES512, RS256, PS256")]
pub struct UnsupportedAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnsupportedAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_jose(s.trim()).ok_or_else(|| UnsupportedAlgorithm(s.to_owned()))
    }
}
