//! Prometheus metrics through `prometheus-client`, the Prometheus project's
//! own Rust client: OpenMetrics text with `# HELP`/`# TYPE` on every family.
//!
//! A process owns one [`Metrics`] registry, passed in (never global), so
//! tests each read their own and the one-process stack serves all of its
//! servers from one endpoint. Each server records through a
//! [`ServerMetrics`] handle, which adds its `server` label.
//!
//! Cardinality is bounded by construction: per-call series are labelled only
//! by methods the server registered at start (see [`crate::methods`]), every
//! other path shares `other`; codes are the 17 gRPC codes; reasons are
//! `&'static str`s. State owned elsewhere (pool sizes, JWKS age, caches) is
//! read by [`StateSource`]s only when scraped. A scrape never takes a lock a
//! call needs: calls touch only the per-call families' atomics.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
    registry::Registry,
};
use tonic::Code;

/// Latency bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gRPC code as a label value (`Ok`, `NotFound`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeLabel(pub Code);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_fmt(encoder, format_args!("{:?}", self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    server: &'static str,
    method: Arc<str>,
    code: CodeLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    server: &'static str,
    method: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    server: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    server: &'static str,
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The per-call families: the only metrics a call touches.
struct CallFamilies {
    calls: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<KindLabels, Gauge>,
    rejected: Family<RejectionLabels, Counter>,
}

struct Shared {
    registry: Registry,
    calls: CallFamilies,
    state: Arc<StateCollector>,
}

/// A process's metrics registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Shared>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// An empty registry with every per-call family declared.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let calls = CallFamilies {
            calls: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
            rejected: Family::default(),
        };
        registry.register(
            "casebook_calls",
            "Finished calls by server, gRPC method (\"other\" for paths nobody registered) and code",
            calls.calls.clone(),
        );
        registry.register(
            "casebook_call_duration_seconds",
            "Call latency from the first byte in to the trailers out",
            calls.durations.clone(),
        );
        registry.register(
            "casebook_calls_in_flight",
            "Calls being served now: kind=unary (MAX_CONCURRENT_CALLS) or stream (MAX_CONCURRENT_STREAMS)",
            calls.in_flight.clone(),
        );
        registry.register(
            "casebook_calls_rejected",
            "Calls refused at a limit, by reason (OVERLOADED, TOO_MANY_STREAMS)",
            calls.rejected.clone(),
        );
        let state = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(Arc::clone(&state)));
        Self(Arc::new(Shared {
            registry,
            calls,
            state,
        }))
    }

    /// The handle one server records through, labelled `server`.
    pub fn for_server(&self, server: &'static str) -> ServerMetrics {
        ServerMetrics {
            shared: Arc::clone(&self.0),
            server,
        }
    }

    /// The OpenMetrics text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and our label values always encode.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.0.registry);
        out
    }
}

/// One server's view of its process's [`Metrics`].
#[derive(Clone)]
pub struct ServerMetrics {
    shared: Arc<Shared>,
    server: &'static str,
}

impl fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerMetrics({})", self.server)
    }
}

/// Whether a call holds a unary slot or a stream slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// A unary call (`MAX_CONCURRENT_CALLS`).
    Unary,
    /// A streaming call (`MAX_CONCURRENT_STREAMS`).
    Stream,
}

impl SlotKind {
    fn label(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::Stream => "stream",
        }
    }
}

impl ServerMetrics {
    /// A handle on a registry of its own that nobody serves: for components
    /// built outside a server (benchmarks, unit tests).
    pub fn detached(server: &'static str) -> Self {
        Metrics::new().for_server(server)
    }

    /// A call took a slot of `kind`.
    pub fn slot_taken(&self, kind: SlotKind) {
        self.in_flight(kind).inc();
    }

    /// A call gave its slot of `kind` back.
    pub fn slot_released(&self, kind: SlotKind) {
        self.in_flight(kind).dec();
    }

    fn in_flight(&self, kind: SlotKind) -> Gauge {
        self.shared
            .calls
            .in_flight
            .get_or_create_owned(&KindLabels {
                server: self.server,
                kind: kind.label(),
            })
    }

    /// A call was refused at a limit, for `reason`.
    pub fn rejected(&self, reason: &'static str) {
        self.shared
            .calls
            .rejected
            .get_or_create(&RejectionLabels {
                server: self.server,
                reason,
            })
            .inc();
    }

    /// A call of `method` (a label from [`crate::methods::Methods`]) ended
    /// with `code` after `elapsed`.
    pub fn call_finished(&self, method: &Arc<str>, code: Code, elapsed: Duration) {
        let calls = &self.shared.calls;
        calls
            .calls
            .get_or_create(&CallLabels {
                server: self.server,
                method: Arc::clone(method),
                code: CodeLabel(code),
            })
            .inc();
        calls
            .durations
            .get_or_create(&MethodLabels {
                server: self.server,
                method: Arc::clone(method),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Adds a source of samples read at scrape time, for as long as it
    /// returns `true` (a source whose owner is gone returns `false`).
    pub fn report(&self, source: impl Fn(&mut Samples) -> bool + Send + Sync + 'static) {
        self.shared.state.add(self.server, Box::new(source));
    }
}

/// Whether a scrape-time sample is a gauge or a monotonic counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleKind {
    /// A value that goes up and down.
    Gauge,
    /// A running total (its name gets `_total`).
    Counter,
}

/// Labels of a scrape-time sample (the `server` label is added for you).
pub type Labels = Vec<(&'static str, String)>;

struct Sample {
    help: &'static str,
    kind: SampleKind,
    labels: Labels,
    value: f64,
}

/// What a [`StateSource`] reports at one scrape.
#[derive(Default)]
pub struct Samples {
    server: &'static str,
    by_name: BTreeMap<&'static str, Vec<Sample>>,
}

impl Samples {
    /// Adds one sample of family `name` (its `help` and `kind` must be the
    /// same wherever the family is reported).
    pub fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: SampleKind,
        labels: Labels,
        value: f64,
    ) {
        let mut all = vec![("server", self.server.to_owned())];
        all.extend(labels);
        self.by_name.entry(name).or_default().push(Sample {
            help,
            kind,
            labels: all,
            value,
        });
    }

    /// Adds unlabelled running totals, each `(name, help, value)`.
    pub fn counters(
        &mut self,
        counters: impl IntoIterator<Item = (&'static str, &'static str, u64)>,
    ) {
        for (name, help, value) in counters {
            self.push(name, help, SampleKind::Counter, vec![], value as f64);
        }
    }
}

/// A reader of state owned elsewhere; `false` once that state is gone.
pub type StateSource = Box<dyn Fn(&mut Samples) -> bool + Send + Sync>;

/// Every [`StateSource`], read and grouped into families at scrape time, so
/// several owners (two pools in one process) share one `# TYPE` line.
#[derive(Default)]
struct StateCollector {
    sources: Mutex<Vec<(&'static str, StateSource)>>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl StateCollector {
    fn add(&self, server: &'static str, source: StateSource) {
        lock(&self.sources).push((server, source));
    }
}

/// Locks `mutex`, recovering the data if a holder panicked (metrics must
/// never take a request down).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut families: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
        lock(&self.sources).retain(|(server, source)| {
            let mut samples = Samples {
                server,
                by_name: BTreeMap::new(),
            };
            let alive = source(&mut samples);
            for (name, mut list) in samples.by_name {
                families.entry(name).or_default().append(&mut list);
            }
            alive
        });
        for (name, samples) in &families {
            let Some(first) = samples.first() else {
                continue;
            };
            let kind = match first.kind {
                SampleKind::Gauge => MetricType::Gauge,
                SampleKind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(name, first.help, None, kind)?;
            for sample in samples {
                let metric = family.encode_family(&sample.labels)?;
                match sample.kind {
                    SampleKind::Gauge => ConstGauge::new(sample.value).encode(metric)?,
                    SampleKind::Counter => ConstCounter::new(sample.value).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` of `metrics` on `listener` (over TLS when `tls` is
/// given) under `limits`, until the runtime stops.
pub fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    tls: Option<crate::tls::ServerTls>,
    limits: crate::listener::ConnectionLimits,
) -> std::io::Result<std::net::SocketAddr> {
    use http_body_util::Full;
    use hyper::body::Bytes;

    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let answer = move |request: http::Request<hyper::body::Incoming>| {
        let metrics = metrics.clone();
        async move {
            let response = if request.uri().path() == "/metrics" {
                http::Response::builder()
                    .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(Full::new(Bytes::from(metrics.render())))
            } else {
                http::Response::builder()
                    .status(http::StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::new()))
            };
            response.map_err(|e| Box::new(e) as crate::listener::BoxError)
        }
    };
    let listening = crate::listener::Listener::new(listener, tls, limits, "metrics");
    tokio::spawn(listening.serve(tower::service_fn(answer), std::future::pending()));
    tracing::info!(%local, "metrics on {scheme}://{local}/metrics");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_histograms_and_state_with_help_and_type() {
        let metrics = Metrics::new();
        let server = metrics.for_server("case-svc");
        let method: Arc<str> = Arc::from("a.B/C");
        server.slot_taken(SlotKind::Unary);
        server.call_finished(&method, Code::NotFound, Duration::from_millis(3));
        server.rejected("OVERLOADED");
        server.report(|samples| {
            samples.push(
                "casebook_things",
                "Things",
                SampleKind::Gauge,
                vec![("state", "idle".into())],
                2.0,
            );
            true
        });
        let text = metrics.render();
        for expected in [
            "# TYPE casebook_calls counter",
            "# HELP casebook_calls Finished calls",
            r#"casebook_calls_total{server="case-svc",method="a.B/C",code="NotFound"} 1"#,
            r#"casebook_call_duration_seconds_bucket{le="0.002",server="case-svc",method="a.B/C"} 0"#,
            r#"casebook_call_duration_seconds_bucket{le="0.005",server="case-svc",method="a.B/C"} 1"#,
            r#"casebook_calls_in_flight{server="case-svc",kind="unary"} 1"#,
            r#"casebook_calls_rejected_total{server="case-svc",reason="OVERLOADED"} 1"#,
            "# TYPE casebook_things gauge",
            r#"casebook_things{server="case-svc",state="idle"} 2"#,
            "# EOF",
        ] {
            assert!(text.contains(expected), "missing {expected} in:\n{text}");
        }
        assert!(!text.contains("code=\"Ok\""), "codes never seen are absent");
    }

    #[test]
    fn two_owners_of_one_state_family_share_one_type_line_and_gone_owners_vanish() {
        let metrics = Metrics::new();
        for (server, alive) in [("auth-svc", true), ("case-svc", false)] {
            metrics.for_server(server).report(move |samples| {
                samples.push("casebook_pool", "Pool", SampleKind::Gauge, vec![], 1.0);
                alive
            });
        }
        let first = metrics.render();
        assert_eq!(first.matches("# TYPE casebook_pool gauge").count(), 1);
        assert!(first.contains(r#"casebook_pool{server="case-svc"} 1"#));
        let second = metrics.render();
        assert!(second.contains(r#"casebook_pool{server="auth-svc"} 1"#));
        assert!(
            !second.contains(r#"server="case-svc""#),
            "a source that reported its owner gone is dropped:\n{second}"
        );
    }
}
