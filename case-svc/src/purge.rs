//! The purge: soft-deleted cases past their `purge_time` are removed for
//! good, with their history (one `PURGED` event says they went).
//!
//! It runs inside every replica; the DELETE is idempotent, so replicas racing
//! each other only delete each row once.

use std::{sync::Arc, time::Duration};

use crate::store::CaseStore;

/// Sweeps every `interval`, forever: the server that owns the returned
/// future stops it at shutdown. The first sweep comes one interval after
/// start, not at once: a replica starting (or restarting in a crash loop)
/// should not compete with its first calls for a connection, and nothing
/// expires faster than the retention anyway.
pub async fn run(store: Arc<CaseStore>, interval: Duration) {
    let first = tokio::time::Instant::now() + interval;
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.purge_expired().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired deleted cases"),
            Err(error) => tracing::warn!(%error, "purge failed; will retry"),
        }
    }
}
