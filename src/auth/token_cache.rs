//! Verified-token cache: a token already verified is not verified again.
//!
//! Clients send the same bearer token with every call for its whole (short)
//! life, so after the first check the signature is pure overhead. Entries are
//! keyed by the SHA-256 of the exact token bytes, live no longer than the
//! token's `exp` (plus the leeway the claims check allows), stop counting as
//! soon as the key that verified them leaves the JWKS, and the cache is
//! bounded: sharded maps, each evicting expired entries first and an
//! arbitrary one when still full. Only successful checks are cached, so a
//! flood of bad tokens cannot fill it with anything but misses.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aws_lc_rs::digest::{SHA256, digest};

use super::{JwksCache, Principal, jwk::VerifyingKey};

const SHARDS: usize = 16;

/// SHA-256 of a token's bytes.
type TokenHash = [u8; 32];
/// One shard of the cache.
type Shard = Mutex<HashMap<TokenHash, Entry>>;

struct Entry {
    principal: Arc<Principal>,
    key: Arc<VerifyingKey>,
    /// Unix seconds after which the entry is dead (`exp` + leeway).
    valid_until: i64,
}

/// Hits and misses, for operators and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Tokens answered from the cache.
    pub hits: u64,
    /// Tokens that had to be verified.
    pub misses: u64,
}

/// The cache. `capacity` 0 disables it.
pub struct VerifiedTokens {
    shards: Vec<Shard>,
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VerifiedTokens {
    /// A cache holding at most about `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn locate(&self, token: &str) -> Option<(TokenHash, &Shard)> {
        if self.per_shard == 0 {
            return None;
        }
        let hash: TokenHash = digest(&SHA256, token.as_bytes()).as_ref().try_into().ok()?;
        let shard = self.shards.get(usize::from(hash[0]) % SHARDS)?;
        Some((hash, shard))
    }

    /// The principal of `token` if it was verified before, is still within its
    /// lifetime at `now`, and its key is still published.
    pub fn get(&self, token: &str, now: i64, keys: &JwksCache) -> Option<Arc<Principal>> {
        let (hash, shard) = self.locate(token)?;
        let mut map = lock(shard);
        let hit = match map.get(&hash) {
            Some(entry) if now < entry.valid_until && keys.is_current(&entry.key) => {
                Some(Arc::clone(&entry.principal))
            }
            Some(_) => {
                map.remove(&hash);
                None
            }
            None => None,
        };
        let counter = if hit.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Remembers a successful verification.
    pub fn insert(
        &self,
        token: &str,
        principal: Arc<Principal>,
        key: Arc<VerifyingKey>,
        valid_until: i64,
        now: i64,
    ) {
        let Some((hash, shard)) = self.locate(token) else {
            return;
        };
        let mut map = lock(shard);
        if map.len() >= self.per_shard {
            map.retain(|_, entry| now < entry.valid_until);
        }
        if map.len() >= self.per_shard
            && let Some(victim) = map.keys().next().copied()
        {
            map.remove(&victim);
        }
        map.insert(
            hash,
            Entry {
                principal,
                key,
                valid_until,
            },
        );
    }
}

/// A poisoned shard only means another thread panicked mid-update of a plain
/// map; its contents are still entries we can use or drop.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
