//! case-svc: Casebook's `CaseService` — the caller's cases, with soft delete.
//!
//! Requests are authenticated by the shared auth layer; every handler takes
//! the owner from the verified `Principal` and every query is scoped to it.
//! case-svc owns the `cases` table and its migrations, and nothing else.

mod convert;
pub mod list_query;
mod purge;
pub mod resource;
mod service;
pub mod store;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use casebook::{
    auth::AuthLayer,
    config::{ServiceArgs, duration},
    db::Database,
    metrics::Metrics,
    pb::casebook::cases::v1::case_service_server::CaseServiceServer,
    server::{self, GrpcServer, RunningServer, StartError},
};
use clap::Parser;

pub use service::CaseApi;

/// case-svc's settings.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "case-svc",
    version,
    about = "Casebook CaseService: the caller's cases, with soft delete",
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on for gRPC and grpc-web [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:50052].
    #[arg(long, env = "CASE_SVC_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// How long a deleted case can be undeleted before it is purged.
    #[arg(long, env = "CASE_RETENTION", value_parser = duration, default_value = "30d")]
    pub case_retention: Duration,
    /// How often expired deleted cases are purged.
    #[arg(long, env = "CASE_PURGE_INTERVAL", value_parser = duration, default_value = "1h")]
    pub case_purge_interval: Duration,
    /// Auth, database, listener and logging settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// `healthcheck` probes a running instance instead of starting one.
    #[command(subcommand)]
    pub probe: Option<server::Probe>,
}

/// The name case-svc goes by in metrics.
pub const SERVER_NAME: &str = "case-svc";

impl Config {
    /// Where to listen: `CASE_SVC_ADDR`, else `0.0.0.0:$PORT`, else `127.0.0.1:50052`.
    pub fn listen(&self) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], 50052));
        self.service.server.listen_addr(self.listen_addr, default)
    }
}

/// Starts case-svc, recording in `metrics`: migrates, starts the JWKS cache
/// and the purge, serves. Refuses to start (one line saying so) if Better
/// Auth's tables are missing.
pub async fn build(config: Config, metrics: &Metrics) -> Result<RunningServer, StartError> {
    let metrics = metrics.for_server(SERVER_NAME);
    let verifier = config.service.auth.verifier()?;
    verifier.report_to(&metrics);
    let db = Database::connect(&config.service.database, &metrics).await?;
    let store = store::CaseStore::open(db).await.map_err(|e| match e {
        store::OpenError::Schema(schema) => StartError::Schema(schema),
        other => StartError::Storage(Box::new(other)),
    })?;
    let secret = store
        .page_token_secret()
        .await
        .map_err(|e| StartError::Storage(Box::new(e)))?;
    let store = Arc::new(store);
    let listener = server::bind(config.listen()).await?;
    verifier.keys().start();
    let purge = purge::run(Arc::clone(&store), config.case_purge_interval);
    let keys = verifier.keys().clone();
    let api = CaseApi::new(
        store,
        list_query::PageTokens::new(&secret),
        config.case_retention,
    );
    let service = CaseServiceServer::new(api)
        .max_decoding_message_size(config.service.server.grpc_max_message_bytes);
    let mut server = GrpcServer::new(
        &config.service.server,
        metrics,
        AuthLayer::new(verifier, &[]),
    )?
    .add_service(service)
    .serve(listener, async move { keys.wait_until_loaded().await })
    .await?;
    server.own(purge);
    Ok(server)
}
