//! case-svc: Casebook's `CaseService` — the caller's cases, with soft
//! delete, their history, and live updates.
//!
//! Requests are authenticated by the shared auth layer; every handler takes
//! the owner from the verified `Principal` and every query is scoped to it.
//! case-svc owns the `cases` and `case_events` tables and their migrations,
//! and nothing else.
//!
//! - [`request`]: requests parsed into domain values; [`error`]: every failure;
//! - [`store`]: the cases table; [`events`]: the event log written with it,
//!   by [`logged_write`];
//! - [`feeds`]: live delivery of new events; [`watch`]: one watch stream;
//! - `service`: the handlers, parse → store → convert.

mod convert;
pub mod create_queue;
pub mod error;
pub mod events;
pub mod feeds;
pub mod list_query;
pub mod logged_write;
mod purge;
pub mod request;
pub mod resource;
mod service;
pub mod store;
pub mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use casebook::{
    auth::AuthLayer,
    config::{ServiceArgs, duration},
    db::Database,
    metrics::Metrics,
    pb::casebook::cases::v1::case_service_server::CaseServiceServer,
    server::{self, GrpcServer, RunningServer, StartError},
};
use clap::{Parser, builder::RangedU64ValueParser};

use create_queue::CreateBatching;
use feeds::{FeedSettings, Feeds};
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
    /// How often an idle WatchCases stream gets a heartbeat (keeps proxies from closing it).
    #[arg(long, env = "WATCH_HEARTBEAT", value_parser = duration, default_value = "15s")]
    pub watch_heartbeat: Duration,
    /// How often each watched user's events are read without a wake-up: the
    /// longest a lost notification can delay an event.
    #[arg(long, env = "WATCH_POLL_INTERVAL", value_parser = duration, default_value = "10s")]
    pub watch_poll_interval: Duration,
    /// Events a watch stream may fall behind its feed; a client that takes nothing
    /// for a heartbeat period while further behind is cut off with
    /// RESOURCE_EXHAUSTED (it resumes).
    #[arg(long, env = "WATCH_BUFFER", default_value_t = 64)]
    pub watch_buffer: usize,
    /// Open WatchCases streams per user (per process).
    #[arg(long, env = "MAX_WATCHES_PER_USER", default_value_t = 32)]
    pub max_watches_per_user: usize,
    /// PostgreSQL: statements writing creates at once, each on a pool
    /// connection. Creates that arrive while all are busy share the next.
    #[arg(long, env = "CREATE_WRITERS", default_value_t = 4,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub create_writers: usize,
    /// PostgreSQL: the most creates one statement writes.
    #[arg(long, env = "CREATE_BATCH", default_value_t = 64,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub create_batch: usize,
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
    /// The live-delivery settings.
    pub fn feed_settings(&self) -> FeedSettings {
        FeedSettings {
            buffer: self.watch_buffer,
            heartbeat: self.watch_heartbeat,
            poll_interval: self.watch_poll_interval,
            max_watches_per_user: self.max_watches_per_user,
        }
    }

    /// How creates share statements on PostgreSQL.
    pub fn create_batching(&self) -> CreateBatching {
        CreateBatching {
            writers: self.create_writers,
            max_batch: self.create_batch,
        }
    }

    /// Where to listen: `CASE_SVC_ADDR`, else `0.0.0.0:$PORT`, else `127.0.0.1:50052`.
    pub fn listen(&self) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], 50052));
        self.service.server.listen_addr(self.listen_addr, default)
    }
}

/// Starts case-svc, recording in `metrics`: migrates, starts the JWKS cache,
/// the purge and the event listener, serves. Refuses to start (one line
/// saying so) if Better Auth's tables are missing. At shutdown, watch
/// streams end first, with a status that tells clients to resume.
pub async fn build(config: Config, metrics: &Metrics) -> Result<RunningServer, StartError> {
    let metrics = metrics.for_server(SERVER_NAME);
    let verifier = config.service.auth.verifier()?;
    verifier.report_to(&metrics);
    let db = Database::connect(&config.service.database, &metrics).await?;
    let feeds = Feeds::new(db.clone(), config.feed_settings(), &metrics);
    let store = store::CaseStore::open(db.clone(), Arc::clone(&feeds), config.create_batching())
        .await
        .map_err(|e| match e {
            store::OpenError::Schema(schema) => StartError::Schema(schema),
            other => StartError::Storage(Box::new(other)),
        })?;
    let secret = store
        .page_token_secret()
        .await
        .map_err(|e| StartError::Storage(Box::new(e)))?;
    store.report_to(&metrics);
    let store = Arc::new(store);
    let listener = server::bind(config.listen()).await?;
    verifier.keys().start();
    let purge = purge::run(Arc::clone(&store), config.case_purge_interval);
    let keys = verifier.keys().clone();
    let api = CaseApi::new(
        store,
        Arc::clone(&feeds),
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
    server.own(feeds::listen(Arc::clone(&feeds), db.clone()));
    server.own(feeds::announce(Arc::clone(&feeds), db));
    server.on_shutdown(move || feeds.close());
    Ok(server)
}
