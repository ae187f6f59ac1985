//! The whole token check: parse, find the key, verify, validate claims.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    Algorithm, AuthError, JwksCache, Principal,
    claims::{self, ClaimRules},
    token::UnverifiedToken,
};

/// Default ceiling on a token's size, checked before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Everything a token must satisfy besides a good signature.
#[derive(Clone, Debug)]
pub struct VerificationPolicy {
    /// Allowed signature algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Claim rules: issuer, audiences, clock leeway.
    pub claims: ClaimRules,
    /// Tokens longer than this are refused unread.
    pub max_token_bytes: usize,
}

impl VerificationPolicy {
    /// Better Auth's defaults for an app at `issuer` (its base URL): issuer and
    /// audience both equal it, every supported algorithm, 30 s leeway.
    pub fn for_issuer(issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        Self {
            algorithms: Algorithm::ALL.to_vec(),
            claims: ClaimRules {
                audiences: vec![issuer.clone()],
                issuer,
                leeway: Duration::from_secs(30),
            },
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// Verifies bearer tokens against one issuer's JWKS. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: JwksCache,
    policy: std::sync::Arc<VerificationPolicy>,
}

impl TokenVerifier {
    /// A verifier for tokens from `keys`' issuer under `policy`.
    pub fn new(keys: JwksCache, policy: VerificationPolicy) -> Self {
        Self {
            keys,
            policy: std::sync::Arc::new(policy),
        }
    }

    /// The key cache this verifier reads.
    pub fn keys(&self) -> &JwksCache {
        &self.keys
    }

    /// Verifies `token` now. Rejections are logged with the reason and, when
    /// known, the `kid` and `sub`, never the token.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut kid = None;
        let result = self.verify_at(token, unix_now(), &mut kid).await;
        if let Err(error) = &result {
            tracing::info!(
                reason = error.reason(),
                kid = kid.as_deref().map(|k| truncate(k, 64)),
                "token rejected"
            );
        }
        result
    }

    async fn verify_at(
        &self,
        token: &str,
        now: i64,
        seen_kid: &mut Option<String>,
    ) -> Result<Principal, AuthError> {
        let policy = &self.policy;
        let token = UnverifiedToken::parse(token, policy.max_token_bytes, &policy.algorithms)?;
        seen_kid.clone_from(&token.kid().map(str::to_owned));
        let key = self.keys.key_for(token.kid()).await?;
        let payload = token.verify_signature(&key)?;
        claims::validate(&payload, &token, &key, &policy.claims, now)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn truncate(text: &str, max_chars: usize) -> &str {
    text.char_indices()
        .nth(max_chars)
        .map_or(text, |(end, _)| &text[..end])
}
