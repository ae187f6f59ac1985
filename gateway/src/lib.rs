//! The gateway: the browser's single origin for every Casebook service.
//!
//! It accepts grpc-web (binary and text, HTTP/1.1 or HTTP/2) and native gRPC,
//! answers CORS preflights from allowed origins, and forwards each call by its
//! service path to auth-svc or case-svc, balanced per call across replicas.
//! It does not authenticate: the services verify every token they receive,
//! so the gateway needs no keys and cannot be a way around them.

pub mod forward;
pub mod upstream;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use casebook::{
    config::{ServerArgs, TelemetryArgs, duration},
    metrics::Metrics,
    server::{self, GrpcServer, RunningServer, StartError},
};
use clap::Parser;
use forward::{AuthRoute, CaseRoute, Forward, Limits};
use tonic_health::ServingStatus;
use upstream::{Upstream, UpstreamRoots};

/// The gateway's settings.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "gateway",
    version,
    about = "Casebook gateway: grpc-web + CORS for the browser, routed to the services",
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on for grpc-web and gRPC [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:8080].
    #[arg(long, env = "GATEWAY_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// auth-svc replicas: comma-separated http:// or https:// URLs, or a DNS name resolving to several.
    #[arg(
        long,
        env = "AUTH_SVC_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub auth_svc_url: Vec<String>,
    /// case-svc replicas: comma-separated http:// or https:// URLs, or a DNS name resolving to several.
    #[arg(
        long,
        env = "CASE_SVC_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50052"
    )]
    pub case_svc_url: Vec<String>,
    /// PEM bundle of the CAs trusted for https:// upstreams [default: the system's roots].
    #[arg(long, env = "UPSTREAM_TLS_CA_FILE")]
    pub upstream_tls_ca_file: Option<std::path::PathBuf>,
    /// Ceiling on any unary call's deadline (calls without one get this).
    #[arg(long, env = "GATEWAY_MAX_CALL_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub max_call_timeout: Duration,
    /// Longest a server stream (WatchCases) lives through the gateway; it then
    /// ends with DEADLINE_EXCEEDED and the client resumes, possibly on another replica.
    #[arg(long, env = "GATEWAY_MAX_STREAM_DURATION", value_parser = duration, default_value = "1h")]
    pub max_stream_duration: Duration,
    /// Listener behaviour (CORS origins, shutdown grace, ...).
    #[command(flatten)]
    pub server: ServerArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// `healthcheck` probes a running instance instead of starting one.
    #[command(subcommand)]
    pub probe: Option<server::Probe>,
}

/// A running gateway.
pub struct Gateway {
    /// The server.
    pub server: RunningServer,
    /// auth-svc's replicas.
    pub auth: Arc<Upstream>,
    /// case-svc's replicas.
    pub cases: Arc<Upstream>,
    buffered: casebook::body::BufferBudget,
}

impl Config {
    /// Where to listen: `GATEWAY_ADDR`, else `0.0.0.0:$PORT`, else `127.0.0.1:8080`.
    pub fn listen(&self) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], 8080));
        self.server.listen_addr(self.listen_addr, default)
    }
}

/// The name the gateway goes by in metrics.
pub const SERVER_NAME: &str = "gateway";

/// Starts the gateway, recording in `metrics`. Its health reports each
/// upstream service SERVING while at least one replica is, and the whole
/// gateway ("") while all are.
pub async fn build(config: Config, metrics: &Metrics) -> Result<Gateway, StartError> {
    let metrics = metrics.for_server(SERVER_NAME);
    let invalid = |e: upstream::InvalidUpstream| {
        StartError::Config(casebook::config::ConfigError(e.to_string()))
    };
    let roots = match &config.upstream_tls_ca_file {
        None => UpstreamRoots::System,
        Some(path) => {
            UpstreamRoots::Bundle(casebook::tls::read_certificates("UPSTREAM_TLS_CA_FILE", path)?.0)
        }
    };
    let auth = Upstream::new(
        <AuthRoute as forward::Route>::NAME,
        "AUTH_SVC_URL",
        &config.auth_svc_url,
        &roots,
    )
    .map_err(invalid)?;
    let cases = Upstream::new(
        <CaseRoute as forward::Route>::NAME,
        "CASE_SVC_URL",
        &config.case_svc_url,
        &roots,
    )
    .map_err(invalid)?;
    let listener = server::bind(config.listen()).await?;
    let watch_auth = auth.watch().await;
    let watch_cases = cases.watch().await;
    auth.report_to(&metrics);
    cases.report_to(&metrics);
    let server = GrpcServer::without_auth(&config.server, metrics)?;
    let buffered = server.buffer_budget().clone();
    let limits = Limits {
        max_call_timeout: config.max_call_timeout,
        max_stream_duration: config.max_stream_duration,
        // One message, as the services accept it, within the server's budget.
        body: config.server.body_limits(&buffered),
    };
    let mut server = server
        .add_service(Forward::<AuthRoute>::new(Arc::clone(&auth), limits.clone()))
        .add_service(Forward::<CaseRoute>::new(Arc::clone(&cases), limits))
        // Readiness is the upstreams' business: `report_health` decides.
        .serve(listener, std::future::pending())
        .await?;
    server.own(watch_auth);
    server.own(watch_cases);
    let health = report_health(&server, [Arc::clone(&auth), Arc::clone(&cases)]);
    server.own(health);
    Ok(Gateway {
        server,
        auth,
        cases,
        buffered,
    })
}

/// Mirrors upstream reachability into the gateway's own health, for as long
/// as the returned future runs.
fn report_health(
    server: &RunningServer,
    upstreams: [Arc<Upstream>; 2],
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let health = server.health().clone();
    async move {
        let mut ticks = tokio::time::interval(upstream::WATCH_INTERVAL);
        loop {
            ticks.tick().await;
            let mut all = true;
            for upstream in &upstreams {
                let serving = upstream.is_serving();
                all &= serving;
                health
                    .set_service_status(upstream.service(), status(serving))
                    .await;
            }
            health.set_service_status("", status(all)).await;
        }
    }
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

impl Gateway {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The request bytes all calls may still buffer.
    pub fn buffered(&self) -> &casebook::body::BufferBudget {
        &self.buffered
    }
}
