//! What a run measured: latencies of successful calls and failures by gRPC
//! code. A failed call is never a success's latency sample, so errors cannot
//! make a scenario look fast; failures have their own p99, which is how an
//! overload run shows that refusals are quick.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

/// Samples of one scenario, from every worker.
#[derive(Default)]
pub struct Recorder {
    micros: Vec<u32>,
    failed_micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

fn micros(elapsed: Duration) -> u32 {
    u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX)
}

/// The nearest-rank `q` quantile of sorted microseconds, in milliseconds.
fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

impl Recorder {
    /// Records one call's outcome.
    pub fn record(&mut self, elapsed: Duration, outcome: Result<(), tonic::Code>) {
        match outcome {
            Ok(()) => self.micros.push(micros(elapsed)),
            Err(code) => {
                self.failed_micros.push(micros(elapsed));
                *self.errors.entry(format!("{code:?}")).or_default() += 1;
            }
        }
    }

    /// Merges another worker's samples.
    pub fn merge(&mut self, other: Recorder) {
        self.micros.extend(other.micros);
        self.failed_micros.extend(other.failed_micros);
        for (code, count) in other.errors {
            *self.errors.entry(code).or_default() += count;
        }
    }

    /// The summary over `wall` time.
    pub fn summarize(mut self, name: &str, wall: Duration) -> Summary {
        self.micros.sort_unstable();
        self.failed_micros.sort_unstable();
        let ok = |q: f64| quantile(&self.micros, q);
        Summary {
            scenario: name.to_owned(),
            ok: self.micros.len() as u64,
            errors: self.errors,
            throughput: self.micros.len() as f64 / wall.as_secs_f64().max(f64::EPSILON),
            p50_ms: ok(0.50),
            p90_ms: ok(0.90),
            p99_ms: ok(0.99),
            max_ms: self.micros.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            failed_p99_ms: quantile(&self.failed_micros, 0.99),
            server_cpu_us_per_call: None,
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Scenario or baseline name.
    pub scenario: String,
    /// Successful calls.
    pub ok: u64,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub throughput: f64,
    /// Latency percentiles of successful calls, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest successful call.
    pub max_ms: f64,
    /// 99th percentile of failed calls (0 when none failed).
    pub failed_p99_ms: f64,
    /// CPU time both services spent per successful call, microseconds (user
    /// + kernel, from /proc): the cost that decides throughput per core.
    pub server_cpu_us_per_call: Option<f64>,
}

impl Summary {
    /// The markdown table header.
    pub const HEADER: &str = "| scenario | ok/s | p50 ms | p90 ms | p99 ms | max ms | errors | failed p99 ms | server CPU µs/call |\n|---|---|---|---|---|---|---|---|---|";

    /// One markdown row.
    pub fn row(&self) -> String {
        let errors = if self.errors.is_empty() {
            "0".to_owned()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            self.scenario,
            self.throughput,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            errors,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!("{:.2}", self.failed_p99_ms)
            },
            self.server_cpu_us_per_call
                .map_or(String::new(), |us| format!("{us:.0}"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_nearest_rank_definition() {
        let mut recorder = Recorder::default();
        for ms in 1..=100 {
            recorder.record(Duration::from_millis(ms), Ok(()));
        }
        let summary = recorder.summarize("s", Duration::from_secs(2));
        assert_eq!(summary.ok, 100);
        assert_eq!(summary.throughput, 50.0);
        assert_eq!(
            (
                summary.p50_ms,
                summary.p90_ms,
                summary.p99_ms,
                summary.max_ms
            ),
            (50.0, 90.0, 99.0, 100.0)
        );
    }

    #[test]
    fn errors_are_counted_by_code_and_never_as_latency() {
        let mut a = Recorder::default();
        a.record(Duration::from_millis(1), Ok(()));
        a.record(Duration::from_micros(1), Err(tonic::Code::Unavailable));
        let mut b = Recorder::default();
        b.record(Duration::from_micros(1), Err(tonic::Code::Unavailable));
        b.record(Duration::from_micros(1), Err(tonic::Code::Unauthenticated));
        a.merge(b);
        let summary = a.summarize("s", Duration::from_secs(1));
        assert_eq!(summary.ok, 1);
        assert_eq!(
            summary.p50_ms, 1.0,
            "the fast failures did not count as latency"
        );
        assert_eq!(summary.errors["Unavailable"], 2);
        assert_eq!(
            summary.failed_p99_ms, 0.001,
            "failures keep their own latency"
        );
        assert_eq!(summary.errors["Unauthenticated"], 1);
        assert!(summary.row().contains("Unavailable: 2"));
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let summary = Recorder::default().summarize("s", Duration::from_secs(1));
        assert_eq!((summary.ok, summary.p99_ms), (0, 0.0));
    }
}
