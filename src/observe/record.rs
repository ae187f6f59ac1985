//! Names each call by its registered method and, when its response ends
//! (trailers seen, or the client went away), records it: one sample in the
//! per-call metrics and one log line (method, gRPC code, latency, user id,
//! request id; never the token, never personal fields beyond the id).
//! Health checks log at DEBUG: probes arrive every few seconds and would
//! bury what users did.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::HeaderValue;
use http_body::Frame;
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{CallContext, REQUEST_ID};
use crate::{
    methods::{Method, Methods},
    metrics::ServerMetrics,
};

/// The layer.
#[derive(Clone)]
pub struct RecordLayer {
    methods: Arc<Methods>,
    metrics: ServerMetrics,
}

impl RecordLayer {
    /// Records calls of `methods` in `metrics`.
    pub fn new(methods: Arc<Methods>, metrics: ServerMetrics) -> Self {
        Self { methods, metrics }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    layer: RecordLayer,
}

impl<S, B> Service<http::Request<B>> for Record<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = self.layer.methods.resolve(request.uri().path()).clone();
        let context = Arc::new(CallContext::default());
        let call = Call {
            method: method.clone(),
            started: Instant::now(),
            request_id: request.headers().get(REQUEST_ID).cloned(),
            context: Arc::clone(&context),
            metrics: self.layer.metrics.clone(),
        };
        request.extensions_mut().insert(context);
        request.extensions_mut().insert(method);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let (parts, body) = answer.await?.into_parts();
            // A trailers-only response carries its status in the headers.
            let code = parts.headers.get("grpc-status").map(code_of);
            let body = Observed {
                inner: body,
                call: Some(call),
                code,
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

fn code_of(value: &HeaderValue) -> Code {
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}

struct Call {
    method: Method,
    started: Instant,
    request_id: Option<HeaderValue>,
    context: Arc<CallContext>,
    metrics: ServerMetrics,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        self.metrics
            .call_finished(&self.method.label, code, elapsed);
        let method = &*self.method.label;
        let user = self.context.user().unwrap_or("-");
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|id| id.to_str().ok())
            .unwrap_or("-");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if self.method.is_health() {
            tracing::debug!(method, code = ?code, latency_ms, user, request_id, "call");
        } else {
            tracing::info!(method, code = ?code, latency_ms, user, request_id, "call");
        }
    }
}

/// The response body, watched for the trailers that carry the gRPC status.
struct Observed {
    inner: tonic::body::Body,
    call: Option<Call>,
    code: Option<Code>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    self.code = Some(code_of(status));
                }
            }
            Poll::Ready(Some(Err(status))) => self.code = Some(status.code()),
            Poll::Ready(None) => {
                let code = self.code.unwrap_or(Code::Ok);
                if let Some(call) = self.call.take() {
                    call.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // The client went away (or the body was dropped unread) before the end.
        if let Some(call) = self.call.take() {
            call.finish(self.code.unwrap_or(Code::Cancelled));
        }
    }
}
