//! Settings shared by every service: flags with environment fallbacks.
//!
//! Each service's `Config` flattens the groups it needs, so a setting has one
//! name everywhere (flag, environment variable, docker-compose, Kubernetes,
//! tests). Values that depend on each other are resolved here once, at start,
//! and a bad combination fails with one line naming the setting.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use http::HeaderValue;

use crate::auth::{
    Algorithm, JwksCache, JwksCacheConfig, TokenVerifier, VerificationPolicy,
    claims::ClaimRules,
    verifier::{DEFAULT_CACHED_TOKENS, DEFAULT_MAX_TOKEN_BYTES},
};

/// A configuration error, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Parses a humane duration (`30s`, `10m`, `30d`): the value parser of every
/// duration setting.
pub fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A configuration with every setting at its declared default, read from
/// neither the command line nor the environment: tests and embedders start
/// from this value and set fields, so an exported variable cannot change them.
pub fn defaults<C: clap::Parser>() -> Result<C, clap::Error> {
    let command = C::command().mut_args(|arg| arg.env(None));
    let matches = command.try_get_matches_from([C::command().get_name().to_owned()])?;
    C::from_arg_matches(&matches)
}

/// Where tokens come from and what they must satisfy.
#[derive(Args, Clone, Debug)]
pub struct AuthArgs {
    /// Base URL of the Better Auth app; JWKS URL, issuer and audience default from it.
    #[arg(long, env = "BETTER_AUTH_URL")]
    pub better_auth_url: Option<String>,
    /// JWKS URL [default: {BETTER_AUTH_URL}/api/auth/jwks].
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required `iss` claim [default: BETTER_AUTH_URL].
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Accepted `aud` values, comma-separated [default: BETTER_AUTH_URL].
    #[arg(long, env = "JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Allowed signature algorithms, comma-separated.
    #[arg(
        long,
        env = "JWT_ALGORITHMS",
        value_delimiter = ',',
        default_value = "EdDSA,ES256,ES512,RS256,PS256"
    )]
    pub jwt_algorithms: Vec<Algorithm>,
    /// Tolerated clock skew for exp/nbf/iat.
    #[arg(long, env = "JWT_LEEWAY", value_parser = duration, default_value = "30s")]
    pub jwt_leeway: Duration,
    /// Largest accepted token, in bytes (checked before decoding).
    #[arg(long, env = "JWT_MAX_TOKEN_BYTES", default_value_t = DEFAULT_MAX_TOKEN_BYTES)]
    pub jwt_max_token_bytes: usize,
    /// Verified tokens remembered, so repeat calls skip the signature (0: off).
    #[arg(long, env = "JWT_CACHE_ENTRIES", default_value_t = DEFAULT_CACHED_TOKENS)]
    pub jwt_cache_entries: usize,
    /// How long fetched keys are fresh (a Cache-Control max-age overrides).
    #[arg(long, env = "JWKS_CACHE_TTL", value_parser = duration, default_value = "10m")]
    pub jwks_cache_ttl: Duration,
    /// Minimum time between refetches caused by unknown key ids.
    #[arg(long, env = "JWKS_REFETCH_COOLDOWN", value_parser = duration, default_value = "30s")]
    pub jwks_refetch_cooldown: Duration,
    /// Timeout of one JWKS fetch.
    #[arg(long, env = "JWKS_FETCH_TIMEOUT", value_parser = duration, default_value = "5s")]
    pub jwks_fetch_timeout: Duration,
    /// How long the last good keys keep working while the JWKS is unreachable.
    #[arg(long, env = "JWKS_MAX_STALE", value_parser = duration, default_value = "1h")]
    pub jwks_max_stale: Duration,
    /// Trust http:// JWKS and issuer URLs on hosts other than loopback (a private network only).
    #[arg(long, env = "JWKS_ALLOW_INSECURE_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub jwks_allow_insecure_http: bool,
}

impl AuthArgs {
    /// Resolves defaults and builds the verifier (its cache not started yet).
    pub fn verifier(&self) -> Result<TokenVerifier, ConfigError> {
        let base = self
            .better_auth_url
            .as_deref()
            .map(|url| url.trim_end_matches('/').to_owned());
        let need = |value: Option<String>, name: &str| {
            value.or_else(|| base.clone()).ok_or_else(|| {
                ConfigError(format!(
                    "{name} is required when BETTER_AUTH_URL is not set"
                ))
            })
        };
        let jwks_url = match (&self.jwks_url, &base) {
            (Some(url), _) => url.clone(),
            (None, Some(base)) => format!("{base}/api/auth/jwks"),
            (None, None) => need(None, "JWKS_URL")?,
        };
        let issuer = need(self.jwt_issuer.clone(), "JWT_ISSUER")?;
        let audiences = match self.jwt_audience.as_slice() {
            [] => vec![need(None, "JWT_AUDIENCE")?],
            given => given.iter().map(|a| a.trim().to_owned()).collect(),
        };
        for (name, url) in [("JWKS_URL", &jwks_url), ("BETTER_AUTH_URL", &issuer)] {
            check_key_source(name, url, self.jwks_allow_insecure_http)?;
        }
        if self.jwt_algorithms.is_empty() {
            return Err(ConfigError(
                "JWT_ALGORITHMS must name at least one algorithm".into(),
            ));
        }
        let cache = JwksCache::new(JwksCacheConfig {
            ttl: self.jwks_cache_ttl,
            refetch_cooldown: self.jwks_refetch_cooldown,
            fetch_timeout: self.jwks_fetch_timeout,
            max_stale: self.jwks_max_stale,
            ..JwksCacheConfig::new(jwks_url)
        })
        .map_err(|e| ConfigError(format!("cannot build the JWKS HTTP client: {e}")))?;
        let policy = VerificationPolicy {
            algorithms: self.jwt_algorithms.clone(),
            claims: ClaimRules {
                issuer,
                audiences,
                leeway: self.jwt_leeway,
            },
            max_token_bytes: self.jwt_max_token_bytes,
        };
        Ok(TokenVerifier::with_cache(
            cache,
            policy,
            self.jwt_cache_entries,
        ))
    }
}

/// Keys decide who is who, so they come over https://, or over http:// only
/// from this machine (the development issuer) unless the operator says the
/// network in between is private (`JWKS_ALLOW_INSECURE_HTTP`).
fn check_key_source(name: &str, url: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigError(format!("{name} is not a URL ({e}): {url:?}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err(ConfigError(format!(
                    "{name} {url:?} is plain http:// to another host, so anyone on the path could \
                     substitute signing keys; use https://, or set JWKS_ALLOW_INSECURE_HTTP=true \
                     on a private network"
                )))
            }
        }
        _ => Err(ConfigError(format!(
            "{name} must be an http:// or https:// URL, got {url:?}"
        ))),
    }
}

/// The settings every service that authenticates calls and reads Better
/// Auth's tables shares (auth-svc, case-svc): flattened into each one's
/// `Config`, so the names and help are written once.
#[derive(Args, Clone, Debug)]
pub struct ServiceArgs {
    /// Token verification.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// The database holding Better Auth's tables.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Listener behaviour.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// The database when none is configured: a SQLite file, created on start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/casebook.db";

/// Which database to use.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// postgres://… for production (a Unix socket: postgres://user@/db?host=/cloudsql/PROJECT:REGION:INSTANCE); sqlite://path for the embedded default [default: sqlite://data/casebook.db].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// A file whose contents are DATABASE_URL (a mounted secret); setting both is an error.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<std::path::PathBuf>,
    /// Connection pool size.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// How long a call waits for a pooled connection before UNAVAILABLE.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", value_parser = duration, default_value = "3s")]
    pub database_acquire_timeout: Duration,
}

/// `DatabaseArgs` alone, to read its defaults.
#[derive(clap::Parser)]
struct DatabaseOnly {
    #[command(flatten)]
    database: DatabaseArgs,
}

impl DatabaseArgs {
    /// The default pool settings, for `url`: how tools and the stack open a
    /// database exactly as the services do.
    pub fn for_url(url: &str) -> Result<Self, clap::Error> {
        let mut args = defaults::<DatabaseOnly>()?.database;
        args.database_url = Some(url.to_owned());
        Ok(args)
    }

    /// The database URL: `DATABASE_URL`, or the contents of
    /// `DATABASE_URL_FILE`, or the embedded default.
    pub fn url(&self) -> Result<String, ConfigError> {
        let given = secret(
            "DATABASE_URL",
            self.database_url.as_deref(),
            self.database_url_file.as_deref(),
        )?;
        Ok(given.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()))
    }
}

/// A setting that may hold a secret: given directly as `name`, or as
/// `{name}_FILE` naming a file whose contents are the value (how Docker,
/// Kubernetes and Cloud Run mount secrets). Both at once is an error naming
/// both; surrounding whitespace (a file's final newline) is dropped. The
/// file's contents never appear in an error.
pub fn secret(
    name: &str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "{name} and {name}_FILE are both set; keep one"
        ))),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(path)) => {
            let contents = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read {name}_FILE {}: {e}", path.display()))
            })?;
            let value = contents.trim();
            if value.is_empty() {
                return Err(ConfigError(format!(
                    "{name}_FILE {} is empty",
                    path.display()
                )));
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// `ServerArgs` alone, to read its defaults.
#[derive(clap::Parser)]
struct ServerOnly {
    #[command(flatten)]
    server: ServerArgs,
}

/// How the gRPC listener behaves.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// The port a platform assigns (Cloud Run, Knative, Heroku, Fly, Render): with it, a service whose own *_ADDR is unset listens on 0.0.0.0:$PORT.
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Browser origins allowed to call over grpc-web, comma-separated (none: no CORS).
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub grpc_max_message_bytes: usize,
    /// Unary calls in flight beyond which new ones are refused at once (RESOURCE_EXHAUSTED).
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 1024)]
    pub max_concurrent_calls: usize,
    /// Long-lived streams (watches, reflection) open at once, separate from unary calls.
    #[arg(long, env = "MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: usize,
    /// Long-lived streams one connection may hold open.
    #[arg(long, env = "MAX_STREAMS_PER_CONNECTION", default_value_t = 100)]
    pub max_streams_per_connection: usize,
    /// Concurrent HTTP/2 streams (calls of any kind) on one connection.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub http2_max_concurrent_streams: u32,
    /// Open connections per listener (gRPC and metrics each); more are closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// TLS handshakes in progress per listener; more are closed at once.
    #[arg(long, env = "MAX_TLS_HANDSHAKES", default_value_t = 64)]
    pub max_tls_handshakes: usize,
    /// Largest request header block, in bytes (HTTP/1.1 and HTTP/2; at least 8192).
    #[arg(long, env = "MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (HTTP/1.1).
    #[arg(long, env = "HEADER_READ_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub header_read_timeout: Duration,
    /// Request bytes buffered across all calls at once (REST and Connect bodies, the gateway's calls).
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_bytes: usize,
    /// Time a client has to send a whole buffered request body.
    #[arg(long, env = "BODY_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub body_timeout: Duration,
    /// Where to serve Prometheus metrics (GET /metrics); unset: not served.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How long in-flight calls may run after a shutdown signal.
    #[arg(long, env = "SHUTDOWN_GRACE", value_parser = duration, default_value = "10s")]
    pub shutdown_grace: Duration,
    /// TLS on the listeners (off unless a certificate is given).
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl ServerArgs {
    /// Where a service listens: its own `*_ADDR` when set (`explicit`), else
    /// `0.0.0.0:$PORT` when the platform gives a `PORT`, else `default`.
    pub fn listen_addr(&self, explicit: Option<SocketAddr>, default: SocketAddr) -> SocketAddr {
        explicit
            .or(self.port.map(|port| SocketAddr::from(([0, 0, 0, 0], port))))
            .unwrap_or(default)
    }

    /// Every listener setting at its default.
    pub fn defaults() -> Result<Self, clap::Error> {
        Ok(defaults::<ServerOnly>()?.server)
    }

    /// Refuses limits the listener cannot honour.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < crate::listener::MIN_HEADER_BYTES {
            return Err(ConfigError(format!(
                "MAX_HEADER_BYTES must be at least {}",
                crate::listener::MIN_HEADER_BYTES
            )));
        }
        Ok(())
    }

    /// The admission limits these settings give.
    pub fn admission_limits(&self) -> crate::observe::AdmissionLimits {
        crate::observe::AdmissionLimits {
            max_concurrent_calls: self.max_concurrent_calls,
            max_concurrent_streams: self.max_concurrent_streams,
        }
    }

    /// How buffered request bodies are read: one message of
    /// `GRPC_MAX_MESSAGE_BYTES` each (plus the 5-byte gRPC frame header),
    /// `MAX_BUFFERED_BYTES` together, within `BODY_TIMEOUT`; `budget` is the
    /// process's shared one.
    pub fn body_limits(&self, budget: &crate::body::BufferBudget) -> crate::body::BodyLimits {
        crate::body::BodyLimits {
            max_bytes: self.grpc_max_message_bytes.saturating_add(5),
            timeout: self.body_timeout,
            budget: budget.clone(),
        }
    }

    /// The per-listener limits these settings give.
    pub fn connection_limits(&self) -> crate::listener::ConnectionLimits {
        crate::listener::ConnectionLimits {
            max_connections: self.max_connections,
            max_tls_handshakes: self.max_tls_handshakes,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: self.header_read_timeout,
            max_streams_per_connection: self.http2_max_concurrent_streams,
            max_long_streams_per_connection: self.max_streams_per_connection,
        }
    }

    /// The CORS origins as header values, each validated.
    pub fn cors_origins(&self) -> Result<Vec<HeaderValue>, ConfigError> {
        self.cors_allowed_origins
            .iter()
            .map(|origin| origin.trim())
            .filter(|origin| !origin.is_empty())
            .map(|origin| {
                if origin == "*" {
                    return Err(ConfigError(
                        "CORS_ALLOWED_ORIGINS must list origins; \"*\" is not allowed".into(),
                    ));
                }
                HeaderValue::from_str(origin).map_err(|_| {
                    ConfigError(format!(
                        "CORS_ALLOWED_ORIGINS has an invalid origin {origin:?}"
                    ))
                })
            })
            .collect()
    }
}

/// Log output.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Log format: text or json. Levels come from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_loopback_unless_the_operator_says_otherwise() {
        for url in [
            "https://auth.example.com/api/auth/jwks",
            "http://127.0.0.1:3900/api/auth/jwks",
            "http://localhost:3900",
            "http://[::1]:3900",
        ] {
            assert!(check_key_source("JWKS_URL", url, false).is_ok(), "{url}");
        }
        let refused = check_key_source("JWKS_URL", "http://auth.example.com/jwks", false)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("JWKS_URL") && refused.contains("JWKS_ALLOW_INSECURE_HTTP"),
            "{refused}"
        );
        assert!(check_key_source("JWKS_URL", "http://dev-issuer:3900", true).is_ok());
        assert!(check_key_source("BETTER_AUTH_URL", "ftp://x", true).is_err());
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://app:s3cret@db/app\n").unwrap();
        assert_eq!(
            secret("DATABASE_URL", None, Some(&file))
                .unwrap()
                .as_deref(),
            Some("postgres://app:s3cret@db/app"),
            "the final newline of a mounted secret is dropped"
        );
        assert_eq!(
            secret("DATABASE_URL", Some("x"), None).unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(secret("DATABASE_URL", None, None).unwrap(), None);
        let both = secret("DATABASE_URL", Some("x"), Some(&file))
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("DATABASE_URL and DATABASE_URL_FILE"),
            "{both}"
        );
        std::fs::write(&file, "\n").unwrap();
        let empty = secret("DATABASE_URL", None, Some(&file))
            .unwrap_err()
            .to_string();
        assert!(empty.contains("empty"), "{empty}");
        let missing = secret("DATABASE_URL", None, Some(&dir.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read DATABASE_URL_FILE"),
            "{missing}"
        );
    }

    #[test]
    fn a_service_listens_on_its_address_else_on_port_else_on_its_default() {
        let mut server = ServerArgs::defaults().unwrap();
        let default = SocketAddr::from(([127, 0, 0, 1], 50052));
        let explicit = SocketAddr::from(([127, 0, 0, 1], 7000));
        assert_eq!(server.listen_addr(None, default), default);
        server.port = Some(8080);
        assert_eq!(
            server.listen_addr(None, default),
            SocketAddr::from(([0, 0, 0, 0], 8080))
        );
        assert_eq!(server.listen_addr(Some(explicit), default), explicit);
    }
}
