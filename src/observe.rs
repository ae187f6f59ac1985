//! What every call goes through first (inside grpc-web translation, outside
//! authentication): a request id, the concurrency limit, metrics and one
//! structured log line.
//!
//! - `x-request-id` is taken from the request when it is a sane value or
//!   generated, put back on the request (so the gateway forwards it) and
//!   returned in the response headers.
//! - Beyond `MAX_CONCURRENT_CALLS` calls in flight, a call is refused at once
//!   with `RESOURCE_EXHAUSTED` (reason `OVERLOADED`) instead of queueing: the
//!   admitted calls keep their latency and the client can back off. The
//!   refusal is built once, and sent only after the (small, unary) request
//!   has been read to its end: answering a stream the client is still
//!   writing makes HTTP/2 reset it, which clients report as a transport
//!   error instead of the status.
//! - A request tonic could not decode is the caller's error, not ours: its
//!   status is restated as `INVALID_ARGUMENT` (`MALFORMED_MESSAGE`), and an
//!   over-size message as `RESOURCE_EXHAUSTED` (`MESSAGE_TOO_LARGE`, as the
//!   gRPC status-code table asks), each with an `ErrorInfo`, so neither pages
//!   the operator as an `INTERNAL` or reads as a range error.
//! - When the response ends (trailers seen, or the client went away) one line
//!   is logged: method, gRPC code, latency, user id, request id. Never the
//!   token, never personal fields beyond the id.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, HeaderValue, header::HeaderName};
use http_body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{metrics, rpc_error};

/// The request id header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-call facts later layers fill in (the auth layer sets the user).
#[derive(Default, Debug)]
pub struct CallContext {
    user: OnceLock<String>,
}

impl CallContext {
    /// Records the authenticated user's id.
    pub fn set_user(&self, user: &str) {
        let _ = self.user.set(user.to_owned());
    }
}

/// The most of a refused request read before answering anyway.
const DRAIN_LIMIT: usize = 64 * 1024;

/// The layer.
#[derive(Clone)]
pub struct ObserveLayer {
    slots: Arc<Semaphore>,
    overloaded: Arc<HeaderMap>,
}

impl ObserveLayer {
    /// At most `max_concurrent_calls` calls in flight.
    pub fn new(max_concurrent_calls: usize) -> Self {
        let status = rpc_error::with_reason(
            Code::ResourceExhausted,
            "OVERLOADED",
            "the server is at its concurrency limit; retry with backoff",
        );
        let (refusal, _) = status.into_http::<tonic::body::Body>().into_parts();
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent_calls.max(1))),
            overloaded: Arc::new(refusal.headers),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            slots: Arc::clone(&self.slots),
            overloaded: Arc::clone(&self.overloaded),
        }
    }
}

/// The service the layer wraps around the rest of the stack.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    slots: Arc<Semaphore>,
    overloaded: Arc<HeaderMap>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let uri = request.uri().clone();
        let request_id = request_id(request.headers());
        request.headers_mut().insert(REQUEST_ID, request_id.clone());
        let context = Arc::new(CallContext::default());
        request.extensions_mut().insert(Arc::clone(&context));
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            metrics::global().count(
                "casebook_calls_rejected_total",
                vec![("reason", "OVERLOADED".into())],
                1,
            );
            let call = Call {
                uri,
                started: Instant::now(),
                request_id: request_id.clone(),
                context,
                permit: None,
            };
            call.finish(Code::ResourceExhausted);
            let mut response = http::Response::new(tonic::body::Body::empty());
            *response.headers_mut() = HeaderMap::clone(&self.overloaded);
            response.headers_mut().insert(REQUEST_ID, request_id);
            let body = request.into_body();
            return Box::pin(async move {
                drain(body).await;
                Ok(response)
            });
        };
        metrics::global().call_started();
        let call = Call {
            uri,
            started: Instant::now(),
            request_id: request_id.clone(),
            context,
            permit: Some(permit),
        };
        Box::pin(async move {
            let response = inner.call(request).await?;
            let (mut parts, body) = response.into_parts();
            parts.headers.insert(REQUEST_ID, request_id);
            restate_decode_errors(&mut parts.headers);
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

/// Rewrites the trailers-only status tonic produces when it cannot decode the
/// request (see the module comment); any other response is left alone.
fn restate_decode_errors(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let restated = match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            rpc_error::with_reason(
                Code::InvalidArgument,
                "MALFORMED_MESSAGE",
                format!(
                    "the request is not a valid protobuf message of this method's type ({message})"
                ),
            )
        }
        Code::OutOfRange if message.contains("decoded message length too large") => {
            rpc_error::with_reason(
                Code::ResourceExhausted,
                "MESSAGE_TOO_LARGE",
                format!("the request message is too large: {message}"),
            )
        }
        _ => return,
    };
    // Only fails on an unencodable message, which ours never are; then the
    // original status stands.
    let mut fields = HeaderMap::new();
    if restated.add_header(&mut fields).is_ok() {
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            headers.remove(name);
        }
        headers.extend(fields);
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

/// `pkg.Service/Method` for a call the server routed; `other` for anything
/// else, including methods nobody implements (so made-up paths cannot grow
/// the metrics without bound).
fn method_label(path: &str, code: Code) -> &str {
    match path.strip_prefix('/') {
        Some(method)
            if code != Code::Unimplemented
                && method
                    .split_once('/')
                    .is_some_and(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/')) =>
        {
            method
        }
        _ => "other",
    }
}

/// The caller's `x-request-id` if it is short visible ASCII, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    let given = headers.get(REQUEST_ID).filter(|v| {
        let bytes = v.as_bytes();
        !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
    });
    if let Some(value) = given {
        return value.clone();
    }
    new_request_id()
}

/// 32 hex digits: a random 64-bit prefix drawn once per process, then a
/// counter. Unique across replicas without a random draw per call (the id
/// names a call in logs; it is not a secret).
fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut random = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut random);
        u64::from_le_bytes(random)
    });
    let id = (u128::from(prefix) << 64) | u128::from(NEXT.fetch_add(1, Ordering::Relaxed));
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        let nibble = (id >> (4 * (31 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("unknown"))
}

fn code_of(value: &HeaderValue) -> Code {
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}

struct Call {
    uri: http::Uri,
    started: Instant,
    request_id: HeaderValue,
    context: Arc<CallContext>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        let method = method_label(self.uri.path(), code);
        metrics::global().call_finished(method, code, elapsed, self.permit.is_some());
        tracing::info!(
            method,
            code = ?code,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            user = self.context.user.get().map(String::as_str).unwrap_or("-"),
            request_id = self.request_id.to_str().unwrap_or("-"),
            "call"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routed_methods_are_labelled_and_made_up_ones_share_one_label() {
        let path = "/casebook.cases.v1.CaseService/GetCase";
        assert_eq!(
            method_label(path, Code::NotFound),
            "casebook.cases.v1.CaseService/GetCase"
        );
        assert_eq!(method_label(path, Code::Unimplemented), "other");
        assert_eq!(method_label("/x/y/z", Code::Ok), "other");
        assert_eq!(method_label("/", Code::Ok), "other");
    }

    #[test]
    fn generated_request_ids_are_distinct_hex_of_fixed_length() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.as_bytes().iter().all(u8::is_ascii_hexdigit))
        );
    }
}
