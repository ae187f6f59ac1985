//! The closed loop every measurement runs in: a fixed set of workers, each
//! sending its next call as soon as the previous one answers, until the
//! deadline. The scenarios and the database baseline differ only in what one
//! call is, so they cannot differ in how they are timed.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tonic::Code;

use crate::stats::Recorder;

/// What one worker does per call.
pub trait Worker: Send + 'static {
    /// One call; its gRPC outcome.
    fn call(&mut self) -> impl Future<Output = Result<(), Code>> + Send;
}

/// Drives every worker concurrently for `duration`; returns all their
/// samples and the wall time they took.
pub async fn run<W: Worker>(
    workers: impl IntoIterator<Item = W>,
    duration: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                let mut recorder = Recorder::default();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    let outcome = worker.call().await;
                    recorder.record(begun.elapsed(), outcome);
                }
                recorder
            })
        })
        .collect();
    let mut total = Recorder::default();
    for task in tasks {
        total.merge(task.await?);
    }
    Ok((total, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;

    /// Succeeds and fails in turn, counting its calls.
    struct Alternating(Arc<AtomicU64>);

    impl Worker for Alternating {
        async fn call(&mut self) -> Result<(), Code> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if n.is_multiple_of(2) {
                Ok(())
            } else {
                Err(Code::Unavailable)
            }
        }
    }

    #[tokio::test]
    async fn every_call_of_every_worker_is_recorded_once() {
        let calls = Arc::new(AtomicU64::new(0));
        let workers = (0..3).map(|_| Alternating(Arc::clone(&calls)));
        let (recorder, _) = run(workers, Duration::from_millis(50)).await.unwrap();
        let summary = recorder.summarize("s", Duration::from_secs(1));
        let failed = summary.errors.get("Unavailable").copied().unwrap_or(0);
        assert!(summary.ok > 0 && failed > 0, "{summary:?}");
        assert_eq!(summary.ok + failed, calls.load(Ordering::SeqCst));
    }
}
