//! One issuer's signing keys, fetched over HTTP and shared by every request.
//!
//! Reads are lock-free (`ArcSwap`): the hot path loads the current snapshot and
//! looks the `kid` up. Fetching happens in the background ahead of expiry, and
//! on demand only when a token names an unknown key — and then at most once per
//! cooldown, however many such tokens arrive, so a flood of forged `kid`s cannot
//! turn into a flood of fetches. Fetches are single-flight and time-bounded.
//! When the endpoint fails, the last good keys keep working for a bounded
//! stale window; after that, callers get `JWKS_UNAVAILABLE`.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::header::{ACCEPT, CACHE_CONTROL};
use tokio::{sync::watch, time::Instant};

use super::{
    AuthError,
    jwk::{InvalidJwks, KeySet, VerifyingKey},
};

/// How the cache fetches and how long it trusts what it fetched.
#[derive(Clone, Debug)]
pub struct JwksCacheConfig {
    /// The JWKS URL, e.g. `{BETTER_AUTH_URL}/api/auth/jwks`.
    pub url: String,
    /// How long a fetched set is fresh when the response has no
    /// `Cache-Control: max-age`.
    pub ttl: Duration,
    /// Minimum time between two fetches triggered by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// Ceiling on one fetch, connect to last byte.
    pub fetch_timeout: Duration,
    /// How long past freshness the last good set keeps verifying while
    /// fetches fail.
    pub max_stale: Duration,
    /// Largest JWKS document accepted.
    pub max_document_bytes: usize,
}

impl JwksCacheConfig {
    /// Defaults: 10 min TTL, 30 s cooldown, 5 s timeout, 1 h stale window, 256 KiB.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ttl: Duration::from_secs(600),
            refetch_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            max_stale: Duration::from_secs(3600),
            max_document_bytes: 256 * 1024,
        }
    }
}

/// Why a fetch produced no key set.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connect, timeout or transport failure.
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The endpoint answered with a non-success status.
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    /// The document exceeded `max_document_bytes`.
    #[error("JWKS document is larger than {0} bytes")]
    TooLarge(usize),
    /// The document is not a JWKS.
    #[error(transparent)]
    Invalid(#[from] InvalidJwks),
    /// The document parsed but no key in it is usable.
    #[error("JWKS holds no usable key")]
    NoUsableKeys,
}

/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchStats {
    /// Fetches that produced a key set.
    pub succeeded: u64,
    /// Fetches that failed.
    pub failed: u64,
}

struct Snapshot {
    keys: KeySet,
    fetched_at: Instant,
    ttl: Duration,
}

impl Snapshot {
    fn usable_at(&self, now: Instant, max_stale: Duration) -> bool {
        now < self.fetched_at + self.ttl + max_stale
    }

    /// Refresh when 80% of the freshness has passed, so a slow endpoint is
    /// noticed before the keys go stale.
    fn refresh_due(&self) -> Instant {
        self.fetched_at + self.ttl.mul_f32(0.8)
    }
}

struct Shared {
    config: JwksCacheConfig,
    client: reqwest::Client,
    current: ArcSwapOption<Snapshot>,
    fetch_lock: tokio::sync::Mutex<()>,
    attempts: AtomicU64,
    succeeded: AtomicU64,
    last_on_demand: Mutex<Option<Instant>>,
    loaded: watch::Sender<bool>,
}

/// The shared, self-refreshing key cache of one issuer. Cheap to clone.
#[derive(Clone)]
pub struct JwksCache {
    shared: Arc<Shared>,
}

impl JwksCache {
    /// A cache for `config.url`; nothing is fetched until [`Self::start`] or
    /// the first lookup.
    pub fn new(config: JwksCacheConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.fetch_timeout)
            .connect_timeout(config.fetch_timeout)
            .user_agent(concat!("casebook/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                client,
                current: ArcSwapOption::empty(),
                fetch_lock: tokio::sync::Mutex::new(()),
                attempts: AtomicU64::new(0),
                succeeded: AtomicU64::new(0),
                last_on_demand: Mutex::new(None),
                loaded: watch::Sender::new(false),
            }),
        })
    }

    /// Starts the background refresher: a first fetch now, then one ahead of
    /// each expiry, retrying failures with capped exponential backoff. The
    /// task ends by itself once every clone of the cache is dropped.
    pub fn start(&self) {
        tokio::spawn(refresh_loop(Arc::downgrade(&self.shared)));
    }

    /// Reports fetches and the age and size of the key set in `metrics`, for
    /// as long as the cache lives.
    pub fn report_to(&self, metrics: &crate::metrics::ServerMetrics) {
        use crate::metrics::SampleKind;
        let watched = Arc::downgrade(&self.shared);
        metrics.report(move |samples| {
            let Some(shared) = watched.upgrade() else {
                return false;
            };
            let cache = JwksCache { shared };
            let stats = cache.stats();
            for (result, count) in [("ok", stats.succeeded), ("failed", stats.failed)] {
                samples.push(
                    "casebook_jwks_fetches",
                    "JWKS fetches, by result",
                    SampleKind::Counter,
                    vec![("result", result.to_owned())],
                    count as f64,
                );
            }
            let url = || vec![("url", cache.shared.config.url.clone())];
            if let Some(snapshot) = cache.shared.current.load().as_ref() {
                samples.push(
                    "casebook_jwks_age_seconds",
                    "Age of the key set in use",
                    SampleKind::Gauge,
                    url(),
                    snapshot.fetched_at.elapsed().as_secs_f64(),
                );
                samples.push(
                    "casebook_jwks_keys",
                    "Usable keys in the key set in use",
                    SampleKind::Gauge,
                    url(),
                    snapshot.keys.len() as f64,
                );
            }
            true
        });
    }

    /// Resolves once a key set has been loaded.
    pub async fn wait_until_loaded(&self) {
        let mut loaded = self.shared.loaded.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// How many fetches succeeded and failed so far.
    pub fn stats(&self) -> FetchStats {
        let attempts = self.shared.attempts.load(Ordering::Acquire);
        let succeeded = self.shared.succeeded.load(Ordering::Acquire);
        FetchStats {
            succeeded,
            failed: attempts.saturating_sub(succeeded),
        }
    }

    /// How many usable keys the current set holds (0 before the first fetch).
    pub fn key_count(&self) -> usize {
        self.shared
            .current
            .load()
            .as_ref()
            .map_or(0, |s| s.keys.len())
    }

    /// The key a token names. An unknown `kid` (or no key set yet) triggers
    /// one refetch if the cooldown allows; otherwise the answer is immediate.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, AuthError> {
        let usable = self.usable_snapshot();
        if let Some(key) = usable.as_ref().and_then(|s| s.keys.find(kid)) {
            return Ok(Arc::clone(key));
        }
        let seen = self.shared.attempts.load(Ordering::Acquire);
        let wait = match self.claim_on_demand_fetch() {
            Ok(()) => None,
            // Within the cooldown a fetch already running still decides...
            Err(_) if self.shared.fetch_lock.try_lock().is_err() => None,
            // ...but with none running, nobody has looked for this key since
            // it may have been published: "retry later", not "bad token".
            Err(remaining) => Some(remaining),
        };
        match (wait, usable) {
            (None, _) => {
                // A failure is already logged and counted; the lookup decides.
                let _ = self.refresh_after(seen).await;
                match self.usable_snapshot() {
                    Some(snapshot) => snapshot
                        .keys
                        .find(kid)
                        .cloned()
                        .ok_or(AuthError::UnknownKey),
                    None => Err(AuthError::JwksUnavailable),
                }
            }
            (Some(retry_after), Some(_)) => Err(AuthError::KeyNotFetchedYet { retry_after }),
            (Some(_), None) => Err(AuthError::JwksUnavailable),
        }
    }

    /// Whether `key` is still the key the current, usable set publishes under
    /// its `kid` (a rotated-out or replaced key is not).
    pub fn is_current(&self, key: &Arc<VerifyingKey>) -> bool {
        self.usable_snapshot()
            .and_then(|snapshot| snapshot.keys.find(key.kid()).cloned())
            .is_some_and(|current| Arc::ptr_eq(&current, key))
    }

    /// Fetches now (single-flight with any fetch already running).
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let seen = self.shared.attempts.load(Ordering::Acquire);
        self.refresh_after(seen).await
    }

    fn usable_snapshot(&self) -> Option<Arc<Snapshot>> {
        let snapshot = self.shared.current.load_full()?;
        snapshot
            .usable_at(Instant::now(), self.shared.config.max_stale)
            .then_some(snapshot)
    }

    /// Takes the on-demand fetch slot if the cooldown has passed; otherwise
    /// says how much of it remains.
    fn claim_on_demand_fetch(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut last = match self.shared.last_on_demand.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match *last {
            Some(at) if now < at + self.shared.config.refetch_cooldown => {
                Err(at + self.shared.config.refetch_cooldown - now)
            }
            _ => {
                *last = Some(now);
                Ok(())
            }
        }
    }

    /// Fetches unless another fetch completed after attempt number `seen`:
    /// callers that queued behind a running fetch share its outcome.
    async fn refresh_after(&self, seen: u64) -> Result<(), FetchError> {
        let _flight = self.shared.fetch_lock.lock().await;
        if self.shared.attempts.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let result = self.fetch().await;
        match &result {
            Ok((keys, ttl)) => {
                tracing::debug!(
                    keys = keys.len(),
                    ttl_secs = ttl.as_secs(),
                    "JWKS refreshed"
                );
            }
            Err(error) => {
                tracing::warn!(url = %self.shared.config.url, %error, "JWKS fetch failed")
            }
        }
        let outcome = result.map(|(keys, ttl)| {
            self.shared.current.store(Some(Arc::new(Snapshot {
                keys,
                fetched_at: Instant::now(),
                ttl,
            })));
            self.shared.succeeded.fetch_add(1, Ordering::AcqRel);
            self.shared.loaded.send_replace(true);
        });
        self.shared.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn fetch(&self) -> Result<(KeySet, Duration), FetchError> {
        let config = &self.shared.config;
        let mut response = self
            .shared
            .client
            .get(&config.url)
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let ttl = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(config.ttl);
        let mut document = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if document.len() + chunk.len() > config.max_document_bytes {
                return Err(FetchError::TooLarge(config.max_document_bytes));
            }
            document.extend_from_slice(&chunk);
        }
        let (keys, skipped) = KeySet::from_json(&document)?;
        for skip in skipped {
            tracing::warn!(kid = skip.kid.as_deref(), reason = %skip.reason, "skipping unusable JWKS key");
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys);
        }
        Ok((keys, ttl))
    }
}

/// `max-age` from a `Cache-Control` value, clamped to [1 s, 1 day] so a
/// misconfigured header can neither hammer the endpoint nor pin keys forever.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(seconds.clamp(1, 86_400)))
    })
}

async fn refresh_loop(shared: Weak<Shared>) {
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const MAX_RETRY: Duration = Duration::from_secs(30);
    let mut retry = FIRST_RETRY;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let cache = JwksCache { shared };
        let due = cache
            .shared
            .current
            .load()
            .as_ref()
            .map(|s| s.refresh_due());
        let wake_at = match due {
            Some(due) if due > Instant::now() => due,
            _ => match cache.refresh().await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    continue;
                }
                Err(_) => {
                    let wake = Instant::now() + retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wake
                }
            },
        };
        drop(cache);
        tokio::time::sleep_until(wake_at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_clamped() {
        assert_eq!(
            max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(max_age("MAX-AGE=0"), Some(Duration::from_secs(1)));
        assert_eq!(
            max_age("max-age=99999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
