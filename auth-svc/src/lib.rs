//! auth-svc: Casebook's `AuthService`.
//!
//! `VerifyToken` checks a token given in the request body (for callers that
//! cannot verify tokens themselves); `WhoAmI` returns the caller's Better Auth
//! user. Everything about tokens lives in the shared `casebook::auth`; this
//! crate only wires it to the contract and to Better Auth's `"user"` table.

mod convert;
mod service;

use std::net::SocketAddr;

use casebook::{
    auth::AuthLayer,
    config::ServiceArgs,
    db::{Database, users::UserDirectory},
    metrics::Metrics,
    pb::casebook::auth::v1::auth_service_server::AuthServiceServer,
    server::{self, GrpcServer, RunningServer, StartError},
};
use clap::Parser;

pub use service::AuthApi;

/// The one method callable without a bearer token: it takes the token in its body.
pub const VERIFY_TOKEN_PATH: &str = "/casebook.auth.v1.AuthService/VerifyToken";

/// auth-svc's settings.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "auth-svc",
    version,
    about = "Casebook AuthService: verifies Better Auth tokens",
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on for gRPC and grpc-web [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:50051].
    #[arg(long, env = "AUTH_SVC_ADDR")]
    pub listen_addr: Option<SocketAddr>,
    /// Auth, database, listener and logging settings.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// `healthcheck` probes a running instance instead of starting one.
    #[command(subcommand)]
    pub probe: Option<server::Probe>,
}

/// The name auth-svc goes by in metrics.
pub const SERVER_NAME: &str = "auth-svc";

impl Config {
    /// Where to listen: `AUTH_SVC_ADDR`, else `0.0.0.0:$PORT`, else `127.0.0.1:50051`.
    pub fn listen(&self) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], 50051));
        self.service.server.listen_addr(self.listen_addr, default)
    }
}

/// Starts auth-svc, recording in `metrics`: connects to the database, starts
/// the JWKS cache and serves. Health turns SERVING once the first key set is
/// loaded.
pub async fn build(config: Config, metrics: &Metrics) -> Result<RunningServer, StartError> {
    let metrics = metrics.for_server(SERVER_NAME);
    let verifier = config.service.auth.verifier()?;
    verifier.report_to(&metrics);
    let users =
        UserDirectory::open(Database::connect(&config.service.database, &metrics).await?).await?;
    let listener = server::bind(config.listen()).await?;
    verifier.keys().start();
    let keys = verifier.keys().clone();
    let service = AuthServiceServer::new(AuthApi::new(verifier.clone(), users))
        .max_decoding_message_size(config.service.server.grpc_max_message_bytes);
    let server = GrpcServer::new(
        &config.service.server,
        metrics,
        AuthLayer::new(verifier, &[VERIFY_TOKEN_PATH]),
    )?
    .add_service(service)
    .serve(listener, async move { keys.wait_until_loaded().await })
    .await?;
    Ok(server)
}
