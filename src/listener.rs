//! Accepting connections with every per-connection resource bounded.
//!
//! tonic's own server leaves hyper's HTTP/1.1 read buffer at ~400 KiB per
//! connection (grpc-web and the metrics endpoint speak HTTP/1.1) and caps
//! neither connections nor TLS handshakes, so every listener of ours is
//! served here instead, with hyper's own limits set:
//!
//! - at most `MAX_CONNECTIONS` connections per listener; one over that is
//!   closed at once (a quick error for the client, no memory for us);
//! - at most `MAX_TLS_HANDSHAKES` handshakes in progress, each within 10 s;
//! - headers capped at `MAX_HEADER_BYTES` on both HTTP versions (431 or a
//!   closed connection beyond it) and read within `HEADER_READ_TIMEOUT`;
//! - at most `MAX_STREAMS_PER_CONNECTION` concurrent HTTP/2 streams.
//!
//! Each connection carries a [`ConnectionStreams`] semaphore in its
//! requests' extensions, so admission can cap long-lived streams per
//! connection as well as per process.

use std::{future::Future, sync::Arc, time::Duration};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use crate::tls::ServerTls;

/// The error type services and bodies hand to hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper refuses an HTTP/1.1 buffer smaller than this.
pub const MIN_HEADER_BYTES: usize = 8192;

/// What one listener allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections (TLS handshakes included).
    pub max_connections: usize,
    /// TLS handshakes in progress at once.
    pub max_tls_handshakes: usize,
    /// Request header bytes: HTTP/1.1 read buffer, HTTP/2 header list.
    pub max_header_bytes: usize,
    /// Time to receive a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams on one connection.
    pub max_streams_per_connection: u32,
    /// Long-lived gRPC streams (watch, reflection) on one connection.
    pub max_long_streams_per_connection: usize,
}

/// The long-lived streams one connection may still open, in every request's
/// extensions.
#[derive(Clone, Debug)]
pub struct ConnectionStreams(pub Arc<Semaphore>);

/// A listener and the limits it serves under.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<ServerTls>,
    limits: ConnectionLimits,
    name: &'static str,
}

impl Listener {
    /// `name` says which listener in logs ("grpc", "metrics").
    pub fn new(
        tcp: TcpListener,
        tls: Option<ServerTls>,
        limits: ConnectionLimits,
        name: &'static str,
    ) -> Self {
        Self {
            tcp,
            tls,
            limits,
            name,
        }
    }

    /// Serves HTTP/1.1 and HTTP/2 until `shutdown` resolves, then stops
    /// accepting and lets open connections finish their calls (HTTP/2 gets a
    /// GOAWAY). Resolves when the last connection has closed.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>)
    where
        S: tower::Service<http::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let per_connection = self.limits.max_long_streams_per_connection;
        // Each connection's requests carry its own stream semaphore.
        let make = move || {
            let streams = ConnectionStreams(Arc::new(Semaphore::new(per_connection)));
            let tagged = tower::ServiceExt::map_request(
                service.clone(),
                move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(streams.clone());
                    request
                },
            );
            TowerToHyperService::new(tagged)
        };
        let limits = self.limits;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .header_read_timeout(limits.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_streams_per_connection);
        let builder = Arc::new(builder);
        let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let handshakes = Arc::new(Semaphore::new(limits.max_tls_handshakes.max(1)));
        let graceful = GracefulShutdown::new();
        let mut open = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.tcp.accept() => accepted,
                // Reap finished connections so the set stays as small as what is open.
                Some(_) = open.join_next(), if !open.is_empty() => continue,
            };
            let (socket, peer) = match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // Per-connection errors (reset before accept, out of
                    // descriptors) must not stop the listener.
                    tracing::debug!(listener = self.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                tracing::debug!(listener = self.name, %peer, "connection limit reached; closed");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let service = make();
            let (builder, watcher) = (Arc::clone(&builder), graceful.watcher());
            let name = self.name;
            match &self.tls {
                None => {
                    open.spawn(async move {
                        let connection = builder
                            .serve_connection(TokioIo::new(socket), service)
                            .into_owned();
                        finish(name, watcher.watch(connection).await);
                        drop(permit);
                    });
                }
                Some(tls) => {
                    // Taken here, in accept order, so a refused connection
                    // costs no task at all.
                    let Ok(slot) = Arc::clone(&handshakes).try_acquire_owned() else {
                        tracing::debug!(listener = name, %peer, "TLS handshake limit reached; closed");
                        continue;
                    };
                    let tls = tls.clone();
                    open.spawn(async move {
                        let handshake = tls.accept(socket).await;
                        drop(slot);
                        let stream = match handshake {
                            Ok(stream) => stream,
                            Err(error) => {
                                return tracing::debug!(listener = name, %error, "TLS handshake failed");
                            }
                        };
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        finish(name, watcher.watch(connection).await);
                        drop(permit);
                    });
                }
            }
        }
        drop(self.tcp);
        graceful.shutdown().await;
        while open.join_next().await.is_some() {}
    }
}

fn finish(name: &'static str, served: Result<(), BoxError>) {
    if let Err(error) = served {
        tracing::debug!(listener = name, %error, "connection ended with an error");
    }
}
