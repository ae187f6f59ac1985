//! The development token issuer: a stand-in for Better Auth on a laptop.
//!
//! It keeps one Ed25519 key in the data directory (created on first start),
//! publishes it as a JWKS over HTTP on loopback, exactly where Better Auth
//! would (`/api/auth/jwks`), and mints tokens shaped like Better Auth's. It
//! refuses to bind anything but a loopback address: tokens it mints must never
//! be trusted beyond this machine.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use casebook::auth::issuer::{self, SigningKey};
use http_body_util::Full;
use hyper::{Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::better_auth::UserRow;

/// File (in the data directory) holding the issuer's private key.
const KEY_FILE: &str = "dev-issuer-ed25519.pk8";

/// Why the issuer could not start.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Refused: only loopback addresses may serve development keys.
    #[error(
        "DEV_ISSUER_ADDR must be a loopback address, got {0} (set DEV_ISSUER_ALLOW_NON_LOOPBACK=true only inside a private development network)"
    )]
    NotLoopback(SocketAddr),
    /// The key file could not be read or written.
    #[error("cannot use the development key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds something else.
    #[error("{path} is not a development issuer key ({reason}); delete it to start over")]
    BadKey {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Loads the key from `data_dir`, creating it on first use.
pub fn load_or_create_key(data_dir: &Path) -> Result<SigningKey, IssuerError> {
    let path = data_dir.join(KEY_FILE);
    let shown = path.display().to_string();
    let io = |source| IssuerError::KeyFile {
        path: shown.clone(),
        source,
    };
    let pkcs8 = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let bytes = SigningKey::generate_ed25519_pkcs8().map_err(|e| IssuerError::BadKey {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            write_private(&path, &bytes).map_err(io)?;
            bytes
        }
        Err(e) => return Err(io(e)),
    };
    SigningKey::ed25519_from_pkcs8(&pkcs8).map_err(|e| IssuerError::BadKey {
        path: shown,
        reason: e.to_string(),
    })
}

/// Writes the key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Whether the issuer may listen beyond loopback: only when asked explicitly
/// (a container network in docker-compose), never by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// 127.0.0.1 / ::1 only.
    LoopbackOnly,
    /// Any address; the operator asked for it.
    BeyondLoopback,
}

/// The running issuer.
pub struct DevIssuer {
    key: Arc<SigningKey>,
    url: String,
    task: JoinHandle<()>,
}

impl DevIssuer {
    /// Serves `key`'s JWKS on `addr` (loopback only, unless `exposure` says
    /// otherwise) under the issuer URL `public_url` (default: `http://{addr}`).
    pub async fn start(
        key: SigningKey,
        addr: SocketAddr,
        public_url: Option<&str>,
        exposure: Exposure,
    ) -> Result<Self, IssuerError> {
        if !addr.ip().is_loopback() && exposure != Exposure::BeyondLoopback {
            return Err(IssuerError::NotLoopback(addr));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| IssuerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| IssuerError::Bind { addr, source })?;
        let document = Bytes::from(issuer::jwks([&key]).to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let document = document.clone();
                let service = service_fn(move |request| answer(document.clone(), request));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Ok(Self {
            key: Arc::new(key),
            url: public_url.map_or_else(
                || format!("http://{local}"),
                |url| url.trim_end_matches('/').to_owned(),
            ),
            task,
        })
    }

    /// The issuer's base URL: `BETTER_AUTH_URL` for the services.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A token for `user`, shaped like Better Auth's, valid for `lifetime`.
    pub fn mint(&self, user: &UserRow, lifetime: Duration) -> String {
        mint(&self.key, &self.url, user, lifetime)
    }

    /// Stops serving the JWKS.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Serves the JWKS where Better Auth does; everything else is 404.
async fn answer(
    document: Bytes,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::http::Error> {
    if request.uri().path() == "/api/auth/jwks" {
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(document))
    } else {
        Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
    }
}

/// A Better Auth-shaped token for `user` from `issuer_url`, signed with `key`.
pub fn mint(key: &SigningKey, issuer_url: &str, user: &UserRow, lifetime: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    key.sign(&json!({
        "iat": now,
        "name": user.name, "email": user.email, "emailVerified": true, "image": null,
        "id": user.id, "sub": user.id,
        "exp": now + lifetime.as_secs(),
        "iss": issuer_url, "aud": issuer_url,
    }))
}
