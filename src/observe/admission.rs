//! Admission: how many calls a server works on at once.
//!
//! Unary calls and long-lived streams (health watches, reflection, and the
//! streaming methods to come) are limited separately: a stream can stay open
//! for hours, so streams counted against the unary limit would let a few
//! thousand idle watchers refuse every call. Streams are also capped per
//! connection, so one client cannot take the whole process's share.
//! `Health/Check` is never refused: a probe that fails under load makes an
//! orchestrator restart a healthy process.
//!
//! Beyond a limit a call is refused at once with `RESOURCE_EXHAUSTED`
//! (reason `OVERLOADED` or `TOO_MANY_STREAMS`) instead of queueing: the
//! admitted calls keep their latency and the client can back off. The
//! refusal is built once, and sent only after the request has been read to
//! its end (at most 64 KiB, at most a second): answering a stream the client
//! is still writing makes HTTP/2 reset it, which clients report as a
//! transport error instead of the status. A slot is held until the response
//! body ends, so a stream holds its slot for as long as it is open.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::HeaderMap;
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tower::{Layer, Service};

use crate::{
    listener::ConnectionStreams,
    methods::{Method, MethodKind},
    metrics::{ServerMetrics, SlotKind},
    rpc_error,
};

/// The most of a refused request read before answering anyway.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest a refused request is read before answering anyway.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The process-wide limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Unary calls in flight (`MAX_CONCURRENT_CALLS`).
    pub max_concurrent_calls: usize,
    /// Streams open (`MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: usize,
}

/// The layer.
#[derive(Clone)]
pub struct AdmissionLayer {
    unary: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    overloaded: Arc<HeaderMap>,
    too_many_streams: Arc<HeaderMap>,
    metrics: ServerMetrics,
}

fn refusal(reason: &str, message: &str) -> Arc<HeaderMap> {
    let status = rpc_error::with_reason(Code::ResourceExhausted, reason, message);
    let (parts, _) = status.into_http::<tonic::body::Body>().into_parts();
    Arc::new(parts.headers)
}

impl AdmissionLayer {
    /// Admits calls under `limits`, counting them in `metrics`.
    pub fn new(limits: AdmissionLimits, metrics: ServerMetrics) -> Self {
        Self {
            unary: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1))),
            streams: Arc::new(Semaphore::new(limits.max_concurrent_streams.max(1))),
            overloaded: refusal(
                "OVERLOADED",
                "the server is at its concurrency limit; retry with backoff",
            ),
            too_many_streams: refusal(
                "TOO_MANY_STREAMS",
                "too many streams are open (on this server or this connection); close one or retry with backoff",
            ),
            metrics,
        }
    }

    /// The slot(s) a call of `method` needs, or the refusal it gets.
    fn admit(
        &self,
        method: Option<&Method>,
        connection: Option<&ConnectionStreams>,
    ) -> Result<Option<Slot>, (&'static str, &Arc<HeaderMap>)> {
        let kind = method.map_or(MethodKind::Unary, |m| m.kind);
        let (slot_kind, permits) = match kind {
            MethodKind::Probe => return Ok(None),
            MethodKind::Unary => {
                let permit = Arc::clone(&self.unary)
                    .try_acquire_owned()
                    .map_err(|_| ("OVERLOADED", &self.overloaded))?;
                (SlotKind::Unary, (permit, None))
            }
            MethodKind::Stream => {
                let refused = |_| ("TOO_MANY_STREAMS", &self.too_many_streams);
                let process = Arc::clone(&self.streams)
                    .try_acquire_owned()
                    .map_err(refused)?;
                let connection = match connection {
                    Some(ConnectionStreams(per_connection)) => Some(
                        Arc::clone(per_connection)
                            .try_acquire_owned()
                            .map_err(refused)?,
                    ),
                    None => None,
                };
                (SlotKind::Stream, (process, connection))
            }
        };
        self.metrics.slot_taken(slot_kind);
        Ok(Some(Slot {
            kind: slot_kind,
            _permits: permits,
            metrics: self.metrics.clone(),
        }))
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// A taken slot, given back (and uncounted) when dropped.
struct Slot {
    kind: SlotKind,
    /// The process-wide permit, and for a stream its connection's.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    metrics: ServerMetrics,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.slot_released(self.kind);
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let admitted = self.layer.admit(
            request.extensions().get::<Method>(),
            request.extensions().get::<ConnectionStreams>(),
        );
        match admitted {
            Ok(slot) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await?;
                    Ok(match slot {
                        None => response,
                        Some(slot) => response.map(|body| {
                            tonic::body::Body::new(Holding {
                                inner: body,
                                _slot: slot,
                            })
                        }),
                    })
                })
            }
            Err((reason, headers)) => {
                self.layer.metrics.rejected(reason);
                let mut response = http::Response::new(tonic::body::Body::empty());
                *response.headers_mut() = HeaderMap::clone(headers);
                let body = request.into_body();
                Box::pin(async move {
                    let _ = tokio::time::timeout(DRAIN_TIME, drain(body)).await;
                    Ok(response)
                })
            }
        }
    }
}

/// Reads `body` to its end, or until [`DRAIN_LIMIT`] bytes or an error.
async fn drain<B: http_body::Body>(body: B) {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    while read <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, bytes::Buf::remaining);
            }
            _ => return,
        }
    }
}

/// A response body that holds its call's slot until it ends or is dropped.
struct Holding {
    inner: tonic::body::Body,
    _slot: Slot,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
