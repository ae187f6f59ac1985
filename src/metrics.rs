//! Prometheus metrics: a small process-wide registry and its text exposition.
//!
//! Counters and latency histograms are recorded on the request path (one
//! short lock each); gauges that describe state owned elsewhere (JWKS age,
//! cache hits, pool sizes) are read by collectors only when scraped.
//! `serve` answers `GET /metrics` on `METRICS_ADDR`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

/// A gauge read at scrape time.
type Collector = Box<dyn Fn(&mut Vec<(String, Labels, f64)>) + Send + Sync>;

#[derive(Default)]
struct State {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
    collectors: Mutex<Vec<Collector>>,
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, labels: Labels, by: u64) {
        *self.state().counters.entry((name, labels)).or_default() += by;
    }

    /// Adds `by` (may be negative) to a gauge.
    pub fn gauge_add(&self, name: &'static str, labels: Labels, by: f64) {
        *self.state().gauges.entry((name, labels)).or_default() += by;
    }

    /// Records one observation in a latency histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, value: Duration) {
        let seconds = value.as_secs_f64();
        let mut state = self.state();
        let histogram = state.histograms.entry((name, labels)).or_default();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.total += 1;
        histogram.sum += seconds;
    }

    /// Adds a collector of gauges read at scrape time.
    pub fn register(
        &self,
        collector: impl Fn(&mut Vec<(String, Labels, f64)>) + Send + Sync + 'static,
    ) {
        self.collectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(collector));
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let state = self.state();
        for ((name, labels), value) in &state.counters {
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        for ((name, labels), value) in &state.gauges {
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        for ((name, labels), histogram) in &state.histograms {
            for (count, bound) in histogram.counts.iter().zip(BUCKETS) {
                let le = bound.to_string();
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    render_labels(labels, Some(&le))
                );
            }
            let total = histogram.total;
            let _ = writeln!(
                out,
                "{name}_bucket{} {total}",
                render_labels(labels, Some("+Inf"))
            );
            let _ = writeln!(
                out,
                "{name}_sum{} {}",
                render_labels(labels, None),
                histogram.sum
            );
            let _ = writeln!(out, "{name}_count{} {total}", render_labels(labels, None));
        }
        drop(state);
        let mut gauges = Vec::new();
        for collector in self
            .collectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            collector(&mut gauges);
        }
        for (name, labels, value) in gauges {
            let _ = writeln!(out, "{name}{} {value}", render_labels(&labels, None));
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Serves `GET /metrics` on `addr` (over TLS when `tls` is given) until the
/// runtime stops; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<crate::tls::ServerTls>,
) -> std::io::Result<SocketAddr> {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let tls_on = tls.is_some();
    async fn answer(
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, http::Error> {
        if request.uri().path() == "/metrics" {
            Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(global().render())))
        } else {
            Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
        }
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let http = http1::Builder::new();
                let served = match tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => {
                            http.serve_connection(TokioIo::new(stream), service_fn(answer))
                                .await
                        }
                        Err(error) => {
                            return tracing::debug!(%error, "metrics TLS handshake failed");
                        }
                    },
                    None => {
                        http.serve_connection(TokioIo::new(stream), service_fn(answer))
                            .await
                    }
                };
                if let Err(error) = served {
                    tracing::debug!(%error, "metrics connection failed");
                }
            });
        }
    });
    let scheme = if tls_on { "https" } else { "http" };
    tracing::info!(%local, "metrics on {scheme}://{local}/metrics");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count("calls_total", vec![("code", "OK".into())], 2);
        metrics.observe(
            "latency_seconds",
            vec![("method", "A/B".into())],
            Duration::from_millis(3),
        );
        let text = metrics.render();
        assert!(text.contains("calls_total{code=\"OK\"} 2"), "{text}");
        assert!(
            text.contains("latency_seconds_bucket{method=\"A/B\",le=\"0.002\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{method=\"A/B\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_count{method=\"A/B\"} 1"),
            "{text}"
        );
    }
}
