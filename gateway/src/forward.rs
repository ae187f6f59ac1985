//! Forwarding a gRPC call to its upstream.
//!
//! By the time a call gets here the grpc-web layer has turned it into plain
//! gRPC, so forwarding is the same for browsers and native clients: cap the
//! deadline, buffer the (single) request message so it can be retried, send
//! it to a replica, and stream the response back. A server stream's deadline
//! is its own, longer ceiling, enforced here on the response body: the
//! unary ceiling would cut every watch after 30 seconds. Buffering is bounded as
//! `casebook::body` bounds it: one message per call, `MAX_BUFFERED_BYTES`
//! across calls, `BODY_TIMEOUT` per body. A replica that dies mid-response
//! ends the call `UNAVAILABLE`, as one that dies before answering does.
//! Metadata such as
//! `authorization` and `grpc-timeout` travels with the request untouched;
//! trailers (including `grpc-status-details-bin`) travel with the response.

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use casebook::rpc_error;
use http::header::HeaderName;
use http_body_util::Full;
use tonic::{Code, server::NamedService};

use crate::upstream::{Upstream, grpc_timeout, never_reached_handler, parse_grpc_timeout};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Names the gRPC service a [`Forward`] serves (tonic routes by a const name).
pub trait Route: Send + Sync + 'static {
    /// The fully qualified service name.
    const NAME: &'static str;
}

/// Route for `casebook.auth.v1.AuthService`.
pub struct AuthRoute;
impl Route for AuthRoute {
    const NAME: &'static str = casebook::pb::casebook::auth::v1::auth_service_server::SERVICE_NAME;
}

/// Route for `casebook.cases.v1.CaseService`.
pub struct CaseRoute;
impl Route for CaseRoute {
    const NAME: &'static str = casebook::pb::casebook::cases::v1::case_service_server::SERVICE_NAME;
}

/// Limits applied to every forwarded call.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Ceiling on a unary call's deadline; calls without one get it.
    pub max_call_timeout: Duration,
    /// Ceiling on a server stream's lifetime; streams without a deadline get it.
    pub max_stream_duration: Duration,
    /// How a request body is buffered (size, time, the shared budget).
    pub body: casebook::body::BodyLimits,
}

/// Forwards every call of service `R` to `upstream`.
pub struct Forward<R> {
    upstream: Arc<Upstream>,
    limits: Limits,
    /// The gRPC paths of `R`'s server-streaming methods.
    streams: Arc<HashSet<String>>,
    route: PhantomData<fn() -> R>,
}

impl<R> Clone for Forward<R> {
    fn clone(&self) -> Self {
        Self {
            upstream: Arc::clone(&self.upstream),
            limits: self.limits.clone(),
            streams: Arc::clone(&self.streams),
            route: PhantomData,
        }
    }
}

impl<R: Route> Forward<R> {
    /// Forwards to `upstream` under `limits`.
    pub fn new(upstream: Arc<Upstream>, limits: Limits) -> Self {
        let streams = casebook::pb::descriptor_pool()
            .ok()
            .and_then(|pool| pool.get_service_by_name(R::NAME))
            .map(|service| {
                service
                    .methods()
                    .filter(|method| method.is_server_streaming())
                    .map(|method| format!("/{}/{}", R::NAME, method.name()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            upstream,
            limits,
            streams: Arc::new(streams),
            route: PhantomData,
        }
    }
}

impl<R: Route> NamedService for Forward<R> {
    const NAME: &'static str = R::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<R: Route> tower::Service<http::Request<tonic::body::Body>> for Forward<R> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let upstream = Arc::clone(&self.upstream);
        let limits = self.limits.clone();
        let stream = self.streams.contains(request.uri().path());
        Box::pin(async move {
            Ok(forward(&upstream, limits, stream, request)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

async fn forward(
    upstream: &Arc<Upstream>,
    limits: Limits,
    stream: bool,
    request: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, tonic::Status> {
    let (mut parts, body) = request.into_parts();
    let ceiling = match stream {
        true => limits.max_stream_duration,
        false => limits.max_call_timeout,
    };
    let deadline = parts
        .headers
        .get(GRPC_TIMEOUT)
        .and_then(parse_grpc_timeout)
        .map_or(ceiling, |asked| asked.min(ceiling));
    let ends_at = tokio::time::Instant::now() + deadline;
    parts.headers.insert(GRPC_TIMEOUT, grpc_timeout(deadline));

    // Held until the upstream call is done: the bytes live until then.
    let (body, _held) = casebook::body::read(body, &limits.body).await?;

    let attempt = async {
        let mut last_error = None;
        for replica in upstream.candidates() {
            let mut request = http::Request::from_parts(
                parts.clone(),
                tonic::body::Body::new(Full::new(body.clone())),
            );
            *request.extensions_mut() = http::Extensions::new();
            match replica.call(request).await {
                Ok(response) => return Ok(response),
                Err(error) if timed_out(&error) => {
                    return Err(deadline_exceeded(upstream, deadline));
                }
                Err(error) if never_reached_handler(&error) => {
                    tracing::debug!(service = upstream.service(), replica = %replica.addr(), %error, "replica refused; trying the next");
                    last_error = Some(error);
                }
                Err(error) => {
                    tracing::warn!(service = upstream.service(), replica = %replica.addr(), %error, "upstream call failed");
                    return Err(unavailable(upstream, IN_TRANSIT));
                }
            }
        }
        if let Some(error) = last_error {
            tracing::warn!(service = upstream.service(), %error, "no replica accepted the call");
        }
        Err(unavailable(
            upstream,
            "no replica is reachable; try again shortly",
        ))
    };
    let response = tokio::time::timeout(deadline, attempt)
        .await
        .map_err(|_| deadline_exceeded(upstream, deadline))??;
    let upstream = Arc::clone(upstream);
    Ok(response.map(|body| {
        tonic::body::Body::new(Relayed {
            body,
            ends: stream.then(|| Box::pin(tokio::time::sleep_until(ends_at))),
            deadline,
            upstream,
            over: false,
        })
    }))
}

/// A response body on its way back from a replica.
///
/// Once the response has started, a failure can no longer be a response of
/// its own. If the replica dies mid-body, the call ends with trailers saying
/// `UNAVAILABLE`, which clients retry, instead of hyper's reset stream, which
/// clients read as `INTERNAL`. A server stream also ends with
/// `DEADLINE_EXCEEDED` once its lifetime passes (dropping the upstream
/// stream cancels it); a unary call's deadline is the channel's.
struct Relayed {
    body: tonic::body::Body,
    /// When a server stream's lifetime ends; `None` for a unary call.
    ends: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Duration,
    upstream: Arc<Upstream>,
    over: bool,
}

impl Relayed {
    /// Ends the body with `status` in its trailers.
    fn end(&mut self, status: &tonic::Status) -> http_body::Frame<bytes::Bytes> {
        self.over = true;
        self.body = tonic::body::Body::empty();
        let mut trailers = http::HeaderMap::new();
        // Only a status whose message cannot be a header fails; ours can.
        let _ = status.add_header(&mut trailers);
        http_body::Frame::trailers(trailers)
    }
}

impl http_body::Body for Relayed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        if self.over {
            return Poll::Ready(None);
        }
        if let Some(ends) = self.ends.as_mut()
            && ends.as_mut().poll(cx).is_ready()
        {
            let expired = deadline_exceeded(&self.upstream, self.deadline);
            return Poll::Ready(Some(Ok(self.end(&expired))));
        }
        match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Err(error)) => {
                tracing::warn!(service = self.upstream.service(), %error, "upstream response broke off");
                let failed = unavailable(&self.upstream, IN_TRANSIT);
                Poll::Ready(Some(Ok(self.end(&failed))))
            }
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.over || self.body.is_end_stream()
    }
}

fn deadline_exceeded(upstream: &Upstream, deadline: Duration) -> tonic::Status {
    rpc_error::with_reason(
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
        format!("no answer from {} within {deadline:?}", upstream.service()),
    )
}

/// The channel enforces `grpc-timeout` itself; its expiry is a deadline, not an outage.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Why a call that reached a replica failed: a write may have been applied.
const IN_TRANSIT: &str = "the call failed in transit; it may or may not have been applied";

fn unavailable(upstream: &Upstream, detail: &str) -> tonic::Status {
    upstream.record_error();
    rpc_error::with_reason(
        Code::Unavailable,
        "UPSTREAM_UNAVAILABLE",
        format!("{}: {detail}", upstream.service()),
    )
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body::{Body, Frame};
    use http_body_util::BodyExt;

    use super::*;
    use crate::upstream::UpstreamRoots;

    /// A replica's response body that sends one message and breaks off, as
    /// it does when the replica dies mid-response.
    struct BreaksOff(Option<Bytes>);

    impl Body for BreaksOff {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(message) => Ok(Frame::data(message)),
                None => Err(tonic::Status::unknown("connection reset")),
            }))
        }
    }

    #[tokio::test]
    async fn a_response_that_breaks_off_ends_unavailable_after_what_arrived() {
        let upstream = Upstream::new(
            "case-svc",
            "CASE_SVC_URL",
            &["http://127.0.0.1:1".to_owned()],
            &UpstreamRoots::System,
        )
        .unwrap();
        let relayed = Relayed {
            body: tonic::body::Body::new(BreaksOff(Some(Bytes::from_static(b"message")))),
            ends: None,
            deadline: Duration::from_secs(30),
            upstream: Arc::clone(&upstream),
            over: false,
        };

        let collected = relayed.collect().await.expect("the body ends cleanly");
        let trailers = collected
            .trailers()
            .cloned()
            .expect("trailers end the body");
        assert_eq!(collected.to_bytes(), "message", "what arrived is relayed");
        let status = tonic::Status::from_header_map(&trailers).expect("a status");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("may or may not"), "{status:?}");
    }
}
