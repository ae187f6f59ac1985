//! The tower layer every Casebook service stacks: no token, no call.
//!
//! It runs before routing into a handler, awaits the verifier (which may need
//! to refetch keys — why this is a layer and not tonic's synchronous
//! interceptor), and either attaches the [`Principal`] to the request's
//! extensions or answers with the error itself. Health checks, reflection and
//! the methods a service declares public pass through untouched.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderMap, header::AUTHORIZATION};
use tonic::Status;
use tower::{Layer, Service};

use super::{AuthError, TokenVerifier};
use crate::observe::CallContext;

/// Path prefixes that never require a token: probes and API discovery.
const ALWAYS_PUBLIC: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Authenticates every request with a bearer token.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: TokenVerifier,
    public_methods: Arc<[&'static str]>,
}

impl AuthLayer {
    /// A layer verifying with `verifier`. `public_methods` are full gRPC paths
    /// (`/package.Service/Method`) callable without a token.
    pub fn new(verifier: TokenVerifier, public_methods: &[&'static str]) -> Self {
        Self {
            verifier,
            public_methods: public_methods.into(),
        }
    }

    fn is_public(&self, path: &str) -> bool {
        ALWAYS_PUBLIC.iter().any(|prefix| path.starts_with(prefix))
            || self.public_methods.contains(&path)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call (tower's rule).
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        if self.layer.is_public(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let verifier = self.layer.verifier.clone();
        Box::pin(async move {
            let principal = match bearer_token(request.headers()) {
                Ok(token) => verifier.verify(token).await,
                Err(error) => Err(error),
            };
            match principal {
                Ok(principal) => {
                    if let Some(call) = request.extensions().get::<Arc<CallContext>>() {
                        call.set_user(principal.user_id.as_str());
                    }
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}

/// The token of the request's single `authorization: Bearer <token>` value.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingCredentials)?;
    if values.next().is_some() {
        return Err(AuthError::InvalidAuthorizationHeader(
            "more than one authorization value",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::InvalidAuthorizationHeader("value is not visible ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthError::InvalidAuthorizationHeader(
            "expected \"Bearer <token>\"",
        ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidAuthorizationHeader(
            "only the Bearer scheme is supported",
        ));
    }
    match token.trim() {
        "" => Err(AuthError::MissingCredentials),
        token => Ok(token),
    }
}
