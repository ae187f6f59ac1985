//! The bootstrap every Casebook service starts through.
//!
//! Reading [`GrpcServer::serve`] tells you what every request goes through:
//! the bounded accept loop (`listener`) → CORS (answers browser preflights)
//! → transcoding (REST and Connect become gRPC) → grpc-web translation →
//! request id → metrics and the log line → decode-error restating →
//! admission → authentication → the service. Around that, every server gets
//! health (`grpc.health.v1`,
//! NOT_SERVING until the service says it is ready and again from the moment
//! shutdown starts), reflection v1 and v1alpha (grpcurl 1.8 speaks only the
//! latter) and graceful shutdown bounded by a grace period.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tokio::{
    net::TcpListener,
    sync::oneshot,
    task::{JoinHandle, JoinSet},
};
use tonic::{server::NamedService, service::RoutesBuilder};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    auth::AuthLayer,
    config::ServerArgs,
    listener::Listener,
    methods::Methods,
    metrics::{Metrics, ServerMetrics},
    observe::{AdmissionLayer, RecordLayer, RequestIdLayer},
    tls::ServerTls,
    transcode::{HttpApi, TranscodeLayer},
};

/// The health service every server answers.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Every descriptor set compiled in: ours, health's and reflection's.
const DESCRIPTOR_SETS: [&[u8]; 4] = [
    crate::pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Request headers browsers may send: grpc-web's, Connect's, and the HTTP
/// semantics of the REST routes (preconditions, idempotency keys).
const CORS_ALLOWED_HEADERS: [&str; 12] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "connect-protocol-version",
    "connect-timeout-ms",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "x-request-id",
    // A reconnecting event stream's resume point (sent by fetch-based SSE clients).
    "last-event-id",
];
/// Response headers a browser client must be able to read.
const CORS_EXPOSED_HEADERS: [&str; 7] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "etag",
    "retry-after",
    "www-authenticate",
    "x-request-id",
];
/// The verbs of grpc-web, Connect and the REST routes.
const CORS_ALLOWED_METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Why a server failed to start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reflection could not be built from the descriptor sets (a build bug).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener failed.
    #[error("cannot read the listener's address: {0}")]
    Io(#[from] std::io::Error),
    /// A compiled-in descriptor set is broken (a build bug).
    #[error(transparent)]
    Descriptors(#[from] crate::methods::DescriptorError),
    /// The HTTP routes cannot be served (a contract bug).
    #[error(transparent)]
    Http(#[from] crate::transcode::ApiError),
    /// In-flight calls outlived the shutdown grace period.
    #[error("in-flight calls did not finish within {0:?}; stopped anyway")]
    GraceExceeded(Duration),
    /// The server task panicked or was cancelled.
    #[error("server task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a service could not start. Every variant's message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database is unreachable or `DATABASE_URL` is wrong.
    #[error(transparent)]
    Database(#[from] crate::db::ConnectError),
    /// Better Auth's tables are missing.
    #[error(transparent)]
    Schema(#[from] crate::db::users::SchemaError),
    /// The service's own storage could not be prepared (e.g. a migration).
    #[error("{0}")]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server could not be assembled.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Binds the listen address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// A service's gRPC server under construction.
pub struct GrpcServer {
    options: ServerArgs,
    cors_origins: Vec<HeaderValue>,
    auth: Option<AuthLayer>,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    health: HealthReporter,
    tls: Option<ServerTls>,
    metrics: ServerMetrics,
    buffered: crate::body::BufferBudget,
}

impl GrpcServer {
    /// A server whose services all sit behind `auth`, recording in `metrics`.
    pub fn new(
        options: &ServerArgs,
        metrics: ServerMetrics,
        auth: AuthLayer,
    ) -> Result<Self, crate::config::ConfigError> {
        Self::with_auth(options, metrics, Some(auth))
    }

    /// A server that authenticates nothing itself: only for a proxy whose
    /// upstreams authenticate every call they receive (the gateway).
    pub fn without_auth(
        options: &ServerArgs,
        metrics: ServerMetrics,
    ) -> Result<Self, crate::config::ConfigError> {
        Self::with_auth(options, metrics, None)
    }

    fn with_auth(
        options: &ServerArgs,
        metrics: ServerMetrics,
        auth: Option<AuthLayer>,
    ) -> Result<Self, crate::config::ConfigError> {
        options.validate()?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Ok(Self {
            cors_origins: options.cors_origins()?,
            tls: options.tls.server()?,
            options: options.clone(),
            auth,
            routes,
            service_names: Vec::new(),
            health,
            metrics,
            buffered: crate::body::BufferBudget::new(options.max_buffered_bytes),
        })
    }

    /// Adds a service; its health reports SERVING once the server is ready.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The request-body budget this server's bodies share (the gateway's
    /// forwarding takes from it too).
    pub fn buffer_budget(&self) -> &crate::body::BufferBudget {
        &self.buffered
    }

    /// Serves on `listener`. Health turns SERVING when `ready` resolves (for
    /// example once the first JWKS is loaded), so the process can start while
    /// a dependency is still down without receiving traffic it would fail.
    /// `ready` runs as a task the server owns: shutdown stops it.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        ready: impl Future<Output = ()> + Send + 'static,
    ) -> Result<RunningServer, ServeError> {
        let local_addr = listener.local_addr()?;
        let (v1, v1alpha) = reflection()?;
        self.routes.add_service(v1).add_service(v1alpha);
        let mut registered = self.service_names.clone();
        registered.extend([
            HEALTH_SERVICE,
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        let methods = Arc::new(Methods::new(&registered, &DESCRIPTOR_SETS)?);
        let api = HttpApi::new(
            &self.service_names,
            self.options.body_limits(&self.buffered),
        )?;

        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.cors_origins))
            .allow_methods(CORS_ALLOWED_METHODS)
            .allow_headers(CORS_ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(CORS_EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(600));
        // Outermost first; see `observe` for why each layer sits where it does.
        let service = tower::ServiceBuilder::new()
            // Answers browser preflights before anything else looks at them.
            .layer(cors)
            // REST, SSE and Connect become gRPC calls through everything below.
            .layer(TranscodeLayer::new(api))
            // grpc-web becomes plain gRPC, so everything inside sees one protocol.
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(RequestIdLayer)
            .layer(RecordLayer::new(Arc::clone(&methods), self.metrics.clone()))
            .layer(tower::util::MapResponseLayer::new(
                crate::observe::restate_decode_errors,
            ))
            .layer(AdmissionLayer::new(
                self.options.admission_limits(),
                self.metrics.clone(),
            ))
            .option_layer(self.auth)
            .service(self.routes.routes().prepare());

        set_status(&self.health, &self.service_names, ServingStatus::NotServing).await;
        let mut tasks = JoinSet::new();
        let health = self.health.clone();
        let names = self.service_names.clone();
        tasks.spawn(async move {
            ready.await;
            set_status(&health, &names, ServingStatus::Serving).await;
            tracing::info!(services = ?names, "serving");
        });

        let (stop, stopped) = oneshot::channel::<()>();
        // A dropped sender means the handle is gone: stop as well.
        let stopped = async {
            let _ = stopped.await;
        };
        let tls = self.tls.is_some();
        let listening = Listener::new(listener, self.tls, self.options.connection_limits(), "grpc");
        let task = tokio::spawn(listening.serve(service, stopped));
        tracing::info!(%local_addr, tls, "listening");
        Ok(RunningServer {
            local_addr,
            health: self.health,
            service_names: self.service_names,
            stop,
            task,
            tasks,
            on_shutdown: Vec::new(),
            grace: self.options.shutdown_grace,
        })
    }
}

fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        DESCRIPTOR_SETS.iter().fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

async fn set_status(health: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in names {
        health.set_service_status(*name, status).await;
    }
}

/// A server that is accepting calls.
pub struct RunningServer {
    local_addr: SocketAddr,
    health: HealthReporter,
    service_names: Vec<&'static str>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Background work the server owns (readiness, the service's own tasks):
    /// aborted when the server stops.
    tasks: JoinSet<()>,
    /// Run when shutdown starts, before the drain (ending long streams).
    on_shutdown: Vec<Box<dyn FnOnce() + Send>>,
    grace: Duration,
}

impl RunningServer {
    /// The bound address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's health reporter, for services that track more than readiness.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Runs `task` for as long as the server: it is stopped at shutdown (the
    /// purge, the gateway's health reporter).
    pub fn own(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs `hook` when shutdown starts, before in-flight calls are drained:
    /// streams that would otherwise outlive the grace period end there,
    /// with a status their clients retry.
    pub fn on_shutdown(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.on_shutdown.push(Box::new(hook));
    }

    /// Graceful stop: health flips to NOT_SERVING first, then the listener
    /// closes, the shutdown hooks run and in-flight calls get up to the
    /// grace period to finish.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        set_status(&self.health, &self.service_names, ServingStatus::NotServing).await;
        // The server may already have stopped; then there is nobody to tell.
        let _ = self.stop.send(());
        for hook in self.on_shutdown {
            hook();
        }
        let mut tasks = self.tasks;
        tasks.abort_all();
        let mut task = self.task;
        let drained = tokio::time::timeout(self.grace, &mut task).await;
        while tasks.join_next().await.is_some() {}
        match drained {
            Ok(result) => Ok(result?),
            Err(_) => {
                task.abort();
                Err(ServeError::GraceExceeded(self.grace))
            }
        }
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_stopped(mut self) -> Result<(), ServeError> {
        tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutdown signal received; draining");
                self.shutdown().await
            }
            result = &mut self.task => Ok(result?),
        }
    }
}

/// What a service binary can do besides serving.
#[derive(clap::Subcommand, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Check this service's health over gRPC and exit 0 when it is SERVING
    /// (for a container HEALTHCHECK or a Kubernetes exec probe).
    Healthcheck,
}

/// `<service> healthcheck`: [`check_health`], reported as an exit code with
/// the reason on stderr.
pub async fn healthcheck(listen: SocketAddr, tls: bool) -> std::process::ExitCode {
    match check_health(listen, tls).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Asks the service listening on `listen` (through loopback when it listens
/// on all interfaces, over TLS when `tls`) for its overall health; `Ok` when
/// SERVING.
pub async fn check_health(listen: SocketAddr, tls: bool) -> Result<(), String> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut target = listen;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let check = async {
        let scheme = if tls { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{target}"))
            .map_err(|e| e.to_string())?;
        if tls {
            endpoint = endpoint
                .tls_config_with_verifier(
                    tonic::transport::ClientTlsConfig::new(),
                    crate::tls::LoopbackProbeVerifier::new(),
                )
                .map_err(|e| format!("cannot set up TLS: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map_err(|status| format!("health check failed: {}", status.message()))?;
        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        match Wire::try_from(response.into_inner().status) {
            Ok(Wire::Serving) => Ok(()),
            Ok(other) => Err(format!("{target} is {}", other.as_str_name())),
            Err(_) => Err(format!("{target} answered an unknown status")),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {target} within 3s")))
}

/// The `main` of every service binary. With `healthcheck`, probes the
/// instance at `listen`. Otherwise sets up logs, serves metrics if
/// `METRICS_ADDR` is set, starts the server with `start` (given the
/// process's metrics registry) and serves until SIGINT/SIGTERM. A failure is
/// printed as one line and becomes a failing exit code.
pub async fn run_binary<F>(
    probe: Option<Probe>,
    listen: SocketAddr,
    telemetry: &crate::config::TelemetryArgs,
    server: &ServerArgs,
    start: impl FnOnce(Metrics) -> F,
) -> std::process::ExitCode
where
    F: Future<Output = Result<RunningServer, StartError>>,
{
    if probe == Some(Probe::Healthcheck) {
        return healthcheck(listen, server.tls.enabled()).await;
    }
    crate::telemetry::init(telemetry.log_format);
    let outcome = async {
        let metrics = Metrics::new();
        if let Some(addr) = server.metrics_addr {
            serve_metrics(addr, &metrics, server).await?;
        }
        start(metrics).await?.run_until_stopped().await?;
        Ok::<_, StartError>(())
    };
    match outcome.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "stopped");
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Serves `metrics` on `addr` under the listener limits of `server`;
/// returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: &Metrics,
    server: &ServerArgs,
) -> Result<SocketAddr, StartError> {
    let listener = bind(addr).await?;
    let local = crate::metrics::serve(
        listener,
        metrics.clone(),
        server.tls.server()?,
        server.connection_limits(),
    )
    .map_err(ServeError::from)?;
    Ok(local)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what orchestrators send).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
