//! Casebook's shared library: everything the services have in common.
//!
//! - [`pb`]: the generated gRPC contracts (never edited by hand), with
//!   [`codec`], the protobuf codec they use;
//! - [`auth`]: Better Auth token verification (JWKS cache, verifier, tower layer);
//! - [`server`]: the bootstrap every service starts through (reflection, health,
//!   grpc-web + CORS, limits, graceful shutdown);
//! - [`db`]: database connections and Better Auth's user read model;
//! - [`observe`], [`metrics`], [`methods`]: request ids, admission limits,
//!   per-call logs and Prometheus metrics, by registered method;
//! - [`listener`], [`tls`]: bounded connections on every listener, optional TLS;
//! - [`transcode`], [`body`]: REST, Connect and OpenAPI from the contracts, and
//!   bounded reading of buffered request bodies;
//! - [`config`], [`telemetry`], [`rpc_error`], [`wkt`]: settings, logs, error
//!   details and protobuf well-known type conversions.

pub mod auth;
pub mod body;
pub mod codec;
pub mod config;
pub mod db;
pub mod listener;
pub mod methods;
pub mod metrics;
pub mod observe;
pub mod pb;
pub mod rpc_error;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod transcode;
pub mod wkt;
