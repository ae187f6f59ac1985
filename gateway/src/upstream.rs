//! One upstream service (auth-svc or case-svc) behind the gateway: its
//! replicas, and how a call picks one.
//!
//! gRPC keeps one long-lived HTTP/2 connection per client, so an L4 load
//! balancer would pin all the gateway's traffic to one replica. Instead the
//! gateway keeps a connection to every replica and balances per call, round
//! robin over the replicas that are up. Each configured URL is re-resolved
//! periodically, so a DNS name with several addresses (a Kubernetes headless
//! Service) tracks the replicas as they come and go.
//!
//! Upstreams named `https://` are called over TLS: the certificate must be
//! valid for the URL's host (kept as the TLS server name even though the
//! connection goes to a resolved address) and signed by
//! `UPSTREAM_TLS_CA_FILE`'s CAs, or by the system's roots when that is unset.
//!
//! A call whose connection is refused (the replica is gone) or whose stream
//! is refused (it is draining) never reached a handler, so it is retried on
//! another replica; every other failure is returned as is, because retrying it
//! could repeat a write.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{HeaderValue, Uri, uri::Scheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// How often DNS names are re-resolved and replicas health-checked.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// An invalid upstream URL.
#[derive(Debug, thiserror::Error)]
#[error("{setting} has an invalid URL {url:?}: {reason}")]
pub struct InvalidUpstream {
    setting: &'static str,
    url: String,
    reason: String,
}

/// One replica: an address with its own (lazily connected) HTTP/2 channel.
pub struct Replica {
    addr: SocketAddr,
    channel: Channel,
    serving: AtomicBool,
    calls: AtomicU64,
}

impl Replica {
    /// The replica's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls sent to this replica so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Whether its last health check said SERVING.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// One configured URL: a host to resolve, and how to talk to what it resolves to.
struct Target {
    host: String,
    port: u16,
    /// Set for `https://` URLs: the CAs to trust, with the host as server name.
    tls: Option<ClientTlsConfig>,
}

/// The roots `https://` upstreams are checked against.
#[derive(Clone, Debug, Default)]
pub enum UpstreamRoots {
    /// The operating system's trust store.
    #[default]
    System,
    /// The CAs in a PEM bundle (`UPSTREAM_TLS_CA_FILE`), and only those.
    Bundle(Vec<u8>),
}

impl UpstreamRoots {
    fn client_config(&self, host: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().domain_name(host);
        match self {
            Self::System => config.with_native_roots(),
            Self::Bundle(pem) => config.ca_certificate(Certificate::from_pem(pem)),
        }
    }
}

/// The replicas of one upstream service.
pub struct Upstream {
    service: &'static str,
    targets: Vec<Target>,
    replicas: ArcSwap<Vec<Arc<Replica>>>,
    next: AtomicUsize,
    errors: AtomicU64,
}

impl Upstream {
    /// An upstream for `service` at `urls` (each `http://host:port` or
    /// `https://host:port`, the latter checked against `roots`); `setting`
    /// names the configuration variable in errors.
    pub fn new(
        service: &'static str,
        setting: &'static str,
        urls: &[String],
        roots: &UpstreamRoots,
    ) -> Result<Arc<Self>, InvalidUpstream> {
        let invalid = |url: &str, reason: &str| InvalidUpstream {
            setting,
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut targets = Vec::new();
        for url in urls.iter().map(|u| u.trim()).filter(|u| !u.is_empty()) {
            let uri: Uri = url.parse().map_err(|_| invalid(url, "not a URL"))?;
            let secure = match uri.scheme() {
                Some(scheme) if *scheme == Scheme::HTTP => false,
                Some(scheme) if *scheme == Scheme::HTTPS => true,
                _ => return Err(invalid(url, "needs http:// or https://")),
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid(url, "needs a host"))?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
            let tls = secure.then(|| roots.client_config(&host));
            if let Some(tls) = &tls {
                // Builds the connector once now, so unreadable CAs or a host
                // that is no TLS server name fail at start, not per call.
                Endpoint::from_shared(url.to_owned())
                    .map_err(|e| invalid(url, &e.to_string()))?
                    .tls_config(tls.clone())
                    .map_err(|e| invalid(url, &format!("TLS: {}", error_chain(&e))))?;
            }
            targets.push(Target { host, port, tls });
        }
        if targets.is_empty() {
            return Err(invalid("", "at least one upstream URL is required"));
        }
        Ok(Arc::new(Self {
            service,
            targets,
            replicas: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            errors: AtomicU64::new(0),
        }))
    }

    /// The gRPC service this upstream serves.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The current replicas.
    pub fn replicas(&self) -> Arc<Vec<Arc<Replica>>> {
        self.replicas.load_full()
    }

    /// Whether any replica is serving.
    pub fn is_serving(&self) -> bool {
        self.replicas.load().iter().any(|r| r.is_serving())
    }

    /// Replicas to try for one call, best first: round robin over serving
    /// replicas, then the others (a health check may simply be behind).
    pub fn candidates(&self) -> Vec<Arc<Replica>> {
        let replicas = self.replicas.load();
        let count = replicas.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated = (0..count).filter_map(|i| replicas.get((start + i) % count).cloned());
        let (mut serving, other): (Vec<_>, Vec<_>) = rotated.partition(|r| r.is_serving());
        serving.extend(other);
        serving
    }

    /// Resolves the targets and health-checks the replicas now; the
    /// returned future keeps doing so every [`WATCH_INTERVAL`], for as long
    /// as its owner (the gateway's server) runs it.
    pub async fn watch(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + use<> {
        self.refresh().await;
        let upstream = Arc::clone(self);
        async move {
            let mut ticks = tokio::time::interval(WATCH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                upstream.refresh().await;
            }
        }
    }

    /// Counts a call no replica could take, or that failed in transit.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports [`Self::record_error`]'s count in `metrics`.
    pub fn report_to(self: &Arc<Self>, metrics: &casebook::metrics::ServerMetrics) {
        let watched = Arc::downgrade(self);
        metrics.report(move |samples| {
            let Some(upstream) = watched.upgrade() else {
                return false;
            };
            samples.push(
                "casebook_gateway_upstream_errors",
                "Gateway calls no replica could take, or that failed in transit",
                casebook::metrics::SampleKind::Counter,
                vec![("service", upstream.service.to_owned())],
                upstream.errors.load(Ordering::Relaxed) as f64,
            );
            true
        });
    }

    async fn refresh(&self) {
        let mut resolved: Vec<(SocketAddr, &Target)> = Vec::new();
        for target in &self.targets {
            let host = target.host.as_str();
            match tokio::net::lookup_host((host, target.port)).await {
                Ok(found) => resolved.extend(found.map(|addr| (addr, target))),
                Err(error) => {
                    tracing::warn!(service = self.service, %host, %error, "cannot resolve upstream")
                }
            }
        }
        resolved.sort_by_key(|(addr, _)| *addr);
        resolved.dedup_by_key(|(addr, _)| *addr);
        let addrs: Vec<SocketAddr> = resolved.iter().map(|(addr, _)| *addr).collect();
        let current = self.replicas.load_full();
        let known: HashMap<SocketAddr, &Arc<Replica>> =
            current.iter().map(|r| (r.addr, r)).collect();
        let replicas: Vec<Arc<Replica>> = resolved
            .iter()
            .filter_map(|(addr, target)| match known.get(addr) {
                Some(existing) => Some(Arc::clone(existing)),
                None => connect(*addr, target.tls.as_ref()).map(Arc::new),
            })
            .collect();
        if replicas
            .iter()
            .map(|r| r.addr)
            .ne(current.iter().map(|r| r.addr))
        {
            tracing::info!(service = self.service, replicas = ?addrs, "upstream replicas changed");
            self.replicas.store(Arc::new(replicas.clone()));
        }
        for replica in replicas {
            let serving = check_health(&replica, self.service).await;
            replica.serving.store(serving, Ordering::Release);
        }
    }
}

/// A lazily connected replica at `addr`; `None` (logged) if its TLS settings,
/// already checked at start, are somehow refused.
fn connect(addr: SocketAddr, tls: Option<&ClientTlsConfig>) -> Option<Replica> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    // A socket address always forms a valid URI.
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap_or_else(|_| Endpoint::from_static("http://127.0.0.1:1"));
    if let Some(tls) = tls {
        endpoint = match endpoint.tls_config(tls.clone()) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::error!(%addr, error = %error_chain(&error), "cannot set up TLS to upstream");
                return None;
            }
        };
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Some(Replica {
        addr,
        channel: endpoint.connect_lazy(),
        serving: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    })
}

/// An error with its causes, for messages (tonic's own `Display` says only
/// "transport error").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn check_health(replica: &Replica, service: &str) -> bool {
    let mut client = HealthClient::new(replica.channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(Duration::from_millis(400));
    client
        .check(request)
        .await
        .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

impl Replica {
    /// Sends one call to this replica.
    pub async fn call(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, tonic::transport::Error> {
        use tower::ServiceExt;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.channel.clone().oneshot(request).await
    }
}

/// Whether a failed call certainly never reached a handler, so another
/// replica may take it: the connection was refused, the stream was refused
/// (the replica is draining), or the connection closed before the request
/// was dispatched on it (hyper's "canceled").
pub fn never_reached_handler(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// `grpc-timeout` for `limit`, in milliseconds (the unit every peer accepts).
pub fn grpc_timeout(limit: Duration) -> HeaderValue {
    let millis = limit.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m")).unwrap_or(HeaderValue::from_static("30000m"))
}

/// Parses a `grpc-timeout` value (`{digits}{H|M|S|m|u|n}`).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_render() {
        let parse = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("123456789S"), None, "more than 8 digits");
        assert_eq!(parse("S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000m");
    }
}
