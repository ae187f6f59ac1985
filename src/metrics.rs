//! Prometheus metrics: a small process-wide registry and its text exposition.
//!
//! Every call is recorded in a family of its own ([`Metrics::call_started`],
//! [`Metrics::call_finished`]): one short lock, one hash of the method name,
//! no allocation once a method has been seen, because it runs on every
//! request. Rarer events (token rejections, JWKS fetches, upstream errors)
//! are labelled counters; gauges that describe state owned elsewhere (JWKS
//! age, cache hits, pool sizes) are read by collectors only when scraped.
//! `serve` answers `GET /metrics` on `METRICS_ADDR`.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use tonic::Code;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every gRPC code, in wire order (the index is the code).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    total: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (count, bound) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        self.total += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &Labels) {
        for (count, bound) in self.counts.iter().zip(BUCKETS) {
            let le = bound.to_string();
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                render_labels(labels, Some(&le))
            );
        }
        let total = self.total;
        let _ = writeln!(
            out,
            "{name}_bucket{} {total}",
            render_labels(labels, Some("+Inf"))
        );
        let _ = writeln!(
            out,
            "{name}_sum{} {}",
            render_labels(labels, None),
            self.sum
        );
        let _ = writeln!(out, "{name}_count{} {total}", render_labels(labels, None));
    }
}

/// What one gRPC method has seen.
#[derive(Default)]
struct MethodCalls {
    by_code: [u64; CODES.len()],
    latency: Histogram,
}

/// A gauge read at scrape time.
type Collector = Box<dyn Fn(&mut Vec<(String, Labels, f64)>) + Send + Sync>;

/// The registry.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    calls: Mutex<HashMap<String, MethodCalls>>,
    in_flight: AtomicI64,
    collectors: Mutex<Vec<Collector>>,
}

/// The process's registry.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Locks `mutex`, recovering the data if a holder panicked (metrics must
/// never take a request down).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Adds `by` to a counter.
    pub fn count(&self, name: &'static str, labels: Labels, by: u64) {
        *lock(&self.counters).entry((name, labels)).or_default() += by;
    }

    /// A call was admitted (`casebook_calls_in_flight` goes up).
    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call of `method` ended with `code` after `elapsed`; `admitted` says
    /// whether [`Self::call_started`] counted it in flight.
    pub fn call_finished(&self, method: &str, code: Code, elapsed: Duration, admitted: bool) {
        if admitted {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        let mut calls = lock(&self.calls);
        let stats = match calls.get_mut(method) {
            Some(stats) => stats,
            None => calls.entry(method.to_owned()).or_default(),
        };
        if let Some(count) = stats.by_code.get_mut(code as usize) {
            *count += 1;
        }
        stats.latency.observe(elapsed);
    }

    /// Adds a collector of gauges read at scrape time.
    pub fn register(
        &self,
        collector: impl Fn(&mut Vec<(String, Labels, f64)>) + Send + Sync + 'static,
    ) {
        lock(&self.collectors).push(Box::new(collector));
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ((name, labels), value) in lock(&self.counters).iter() {
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
        }
        let calls = lock(&self.calls);
        let mut methods: Vec<_> = calls.iter().collect();
        methods.sort_by_key(|(method, _)| method.as_str());
        for (method, stats) in &methods {
            for (code, count) in CODES.iter().zip(stats.by_code).filter(|(_, n)| *n > 0) {
                let labels = vec![("method", (*method).clone()), ("code", format!("{code:?}"))];
                let _ = writeln!(
                    out,
                    "casebook_calls_total{} {count}",
                    render_labels(&labels, None)
                );
            }
        }
        for (method, stats) in &methods {
            let labels = vec![("method", (*method).clone())];
            stats
                .latency
                .render(&mut out, "casebook_call_duration_seconds", &labels);
        }
        drop(calls);
        let _ = writeln!(
            out,
            "casebook_calls_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let mut gauges = Vec::new();
        for collector in lock(&self.collectors).iter() {
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
    fn renders_counters_calls_and_histograms_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count("rejections_total", vec![("reason", "EXPIRED".into())], 2);
        metrics.call_started();
        metrics.call_started();
        metrics.call_finished("a.B/C", Code::NotFound, Duration::from_millis(3), true);
        let text = metrics.render();
        for expected in [
            "rejections_total{reason=\"EXPIRED\"} 2",
            "casebook_calls_total{method=\"a.B/C\",code=\"NotFound\"} 1",
            "casebook_call_duration_seconds_bucket{method=\"a.B/C\",le=\"0.002\"} 0",
            "casebook_call_duration_seconds_bucket{method=\"a.B/C\",le=\"0.005\"} 1",
            "casebook_call_duration_seconds_count{method=\"a.B/C\"} 1",
            "casebook_calls_in_flight 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in:\n{text}");
        }
        assert!(
            !text.contains("code=\"Ok\""),
            "codes never seen are not rendered"
        );
    }
}
