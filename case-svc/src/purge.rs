//! The purge: soft-deleted cases past their `purge_time` are removed for good.
//!
//! It runs inside every replica; the DELETE is idempotent, so replicas racing
//! each other only delete each row once.

use std::{sync::Arc, time::Duration};

use crate::store::CaseStore;

/// Sweeps every `interval` for as long as the runtime lives.
pub fn start(store: Arc<CaseStore>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.purge_expired().await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged expired deleted cases"),
                Err(error) => tracing::warn!(%error, "purge failed; will retry"),
            }
        }
    });
}
