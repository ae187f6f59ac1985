//! The whole token check: parse, find the key, verify, validate claims.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::metrics::{SampleKind, ServerMetrics};

use super::{
    Algorithm, AuthError, JwksCache, Principal,
    claims::{self, ClaimRules},
    jwk::VerifyingKey,
    token::UnverifiedToken,
    token_cache::{CacheStats, VerifiedTokens},
};

/// Default number of verified tokens remembered.
pub const DEFAULT_CACHED_TOKENS: usize = 10_000;

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
    policy: Arc<VerificationPolicy>,
    verified: Arc<VerifiedTokens>,
    /// Rejections by reason: a bounded map (reasons are a fixed set).
    rejections: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl TokenVerifier {
    /// A verifier for tokens from `keys`' issuer under `policy`, remembering
    /// up to [`DEFAULT_CACHED_TOKENS`] verified tokens.
    pub fn new(keys: JwksCache, policy: VerificationPolicy) -> Self {
        Self::with_cache(keys, policy, DEFAULT_CACHED_TOKENS)
    }

    /// Like [`Self::new`], remembering up to `cached_tokens` (0: none).
    pub fn with_cache(keys: JwksCache, policy: VerificationPolicy, cached_tokens: usize) -> Self {
        Self {
            keys,
            policy: Arc::new(policy),
            verified: Arc::new(VerifiedTokens::new(cached_tokens)),
            rejections: Arc::default(),
        }
    }

    /// Reports rejections, the verified-token cache and the key cache in
    /// `metrics`, for as long as the verifier lives.
    pub fn report_to(&self, metrics: &ServerMetrics) {
        self.keys.report_to(metrics);
        let cache = Arc::downgrade(&self.verified);
        let rejections = Arc::downgrade(&self.rejections);
        metrics.report(move |samples| {
            let (Some(cache), Some(rejections)) = (cache.upgrade(), rejections.upgrade()) else {
                return false;
            };
            let stats = cache.stats();
            samples.counters([
                (
                    "casebook_token_cache_hits",
                    "Bearer tokens found in the verified-token cache",
                    stats.hits,
                ),
                (
                    "casebook_token_cache_misses",
                    "Bearer tokens verified in full",
                    stats.misses,
                ),
            ]);
            let rejections = rejections.lock().unwrap_or_else(PoisonError::into_inner);
            for (reason, count) in rejections.iter() {
                samples.push(
                    "casebook_token_rejections",
                    "Bearer tokens refused, by ErrorInfo reason",
                    SampleKind::Counter,
                    vec![("reason", (*reason).to_owned())],
                    *count as f64,
                );
            }
            true
        });
    }

    /// Verified-token cache hits and misses.
    pub fn cache_stats(&self) -> CacheStats {
        self.verified.stats()
    }

    /// The key cache this verifier reads.
    pub fn keys(&self) -> &JwksCache {
        &self.keys
    }

    /// Verifies `token` now, from the cache when it was verified before.
    /// Rejections are logged with the reason and, when known, the `kid`,
    /// never the token.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let now = unix_now();
        // The size limit comes first even for cache lookups: hashing is work too.
        if token.len() <= self.policy.max_token_bytes
            && let Some(principal) = self.verified.get(token, now, &self.keys)
        {
            return Ok(principal);
        }
        let mut kid = None;
        match self.verify_at(token, now, &mut kid).await {
            Ok((principal, key)) => {
                let principal = Arc::new(principal);
                let leeway = i64::try_from(self.policy.claims.leeway.as_secs()).unwrap_or(0);
                let valid_until = principal.expires_at.saturating_add(leeway);
                self.verified
                    .insert(token, Arc::clone(&principal), key, valid_until, now);
                Ok(principal)
            }
            Err(error) => {
                *self
                    .rejections
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(error.reason())
                    .or_default() += 1;
                tracing::info!(
                    reason = error.reason(),
                    kid = kid.as_deref().map(|k| truncate(k, 64)),
                    "token rejected"
                );
                Err(error)
            }
        }
    }

    async fn verify_at(
        &self,
        token: &str,
        now: i64,
        seen_kid: &mut Option<String>,
    ) -> Result<(Principal, Arc<VerifyingKey>), AuthError> {
        let policy = &self.policy;
        let token = UnverifiedToken::parse(token, policy.max_token_bytes, &policy.algorithms)?;
        seen_kid.clone_from(&token.kid().map(str::to_owned));
        let key = self.keys.key_for(token.kid()).await?;
        let payload = token.verify_signature(&key)?;
        let principal = claims::validate(&payload, &token, &key, &policy.claims, now)?;
        Ok((principal, key))
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
