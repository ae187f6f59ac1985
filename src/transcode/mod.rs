//! HTTP/JSON for every method, generated from the contracts: REST routes from
//! their `google.api.http` annotations (server streams as Server-Sent
//! Events), the Connect protocol (unary and server streaming, JSON or
//! binary), and the OpenAPI document at `/openapi.json`.
//!
//! [`TranscodeLayer`] sits just inside CORS, in front of grpc-web. gRPC and
//! grpc-web requests pass through untouched; any other request is turned
//! into a unary gRPC call and sent through the rest of the stack, so it gets
//! the same request id, metrics, log line, admission and authentication as a
//! native call, and handlers never see HTTP. The message mapping is
//! prost-reflect's canonical proto3 JSON, driven by the descriptor set
//! `build.rs` compiles in: there is no hand-written JSON per message.

pub mod error;
pub mod grpc;
pub mod openapi;
pub mod request;
pub mod routes;
pub mod stream;

use std::{collections::HashMap, convert::Infallible, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::{
    body::{self, BodyError, BodyLimits},
    listener::ConnectionStreams,
    observe::REQUEST_ID,
    rpc_error,
};
use routes::{Found, Route, Routes};

/// The rest of a server's stack, which a transcoded call is sent through.
pub trait GrpcStack:
    Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
    >
{
}

impl<S> GrpcStack for S where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >
{
}

/// `application/json`, the REST and Connect JSON content type.
const JSON: &str = "application/json";
/// Connect's binary content type.
const PROTO: &str = "application/proto";

/// Everything the HTTP front door of one server needs, built at start.
#[derive(Debug)]
pub struct HttpApi {
    routes: Routes,
    pool: DescriptorPool,
    connect: HashMap<String, MethodDescriptor>,
    connect_streams: HashMap<String, MethodDescriptor>,
    body: BodyLimits,
    openapi: Bytes,
}

/// The HTTP front door could not be built (a contract or build bug).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An annotation cannot be served.
    #[error(transparent)]
    Route(#[from] routes::RouteError),
    /// The descriptor set does not decode.
    #[error("the compiled-in descriptors do not decode: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
}

impl HttpApi {
    /// The routes and Connect methods of `services`, reading bodies under `body`.
    pub fn new(services: &[&str], body: BodyLimits) -> Result<Self, ApiError> {
        let pool = crate::pb::descriptor_pool()?;
        let routes = Routes::new(&pool, services)?;
        let methods = |server_streaming: bool| {
            pool.services()
                .filter(|service| services.contains(&service.full_name()))
                .flat_map(|service| service.methods().collect::<Vec<_>>())
                .filter(|method| !method.is_client_streaming())
                .filter(|method| method.is_server_streaming() == server_streaming)
                .map(|method| (routes::grpc_path(&method), method))
                .collect()
        };
        let openapi = Bytes::from(openapi_text(&pool, &routes));
        Ok(Self {
            connect: methods(false),
            connect_streams: methods(true),
            routes,
            pool,
            body,
            openapi,
        })
    }
}

/// The layer.
#[derive(Clone, Debug)]
pub struct TranscodeLayer(Arc<HttpApi>);

impl TranscodeLayer {
    /// Serves `api` in front of the layers it wraps.
    pub fn new(api: HttpApi) -> Self {
        Self(Arc::new(api))
    }
}

impl<S> Layer<S> for TranscodeLayer {
    type Service = Transcode<S>;

    fn layer(&self, inner: S) -> Transcode<S> {
        Transcode {
            inner,
            api: Arc::clone(&self.0),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone, Debug)]
pub struct Transcode<S> {
    inner: S,
    api: Arc<HttpApi>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// Whether `headers` say gRPC or grpc-web (`application/grpc…`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S, B> Service<http::Request<B>> for Transcode<S>
where
    S: GrpcStack + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_grpc(request.headers()) {
            return Box::pin(self.inner.call(request.map(tonic::body::Body::new)));
        }
        // The clone that was driven to readiness serves this call (tower's rule).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        let api = Arc::clone(&self.api);
        Box::pin(async move { Ok(api.answer(inner, request).await) })
    }
}

/// What a REST exchange needs to shape its answer and make its call.
struct Exchange<'a> {
    headers: &'a HeaderMap,
    token_sent: bool,
    /// The connection's stream slots: a transcoded stream counts against them
    /// as a native one would.
    connection: Option<&'a ConnectionStreams>,
}

/// A whole answer as a response body.
fn full(response: http::Response<Bytes>) -> http::Response<tonic::body::Body> {
    response.map(|bytes| tonic::body::Body::new(Full::new(bytes)))
}

impl HttpApi {
    async fn answer<S, B>(
        &self,
        inner: S,
        request: http::Request<B>,
    ) -> http::Response<tonic::body::Body>
    where
        S: GrpcStack,
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let exchange = Exchange {
            headers: &parts.headers,
            token_sent: parts.headers.contains_key(header::AUTHORIZATION),
            connection: parts.extensions.get::<ConnectionStreams>(),
        };
        if parts.method == Method::GET && path == "/openapi.json" {
            return full(json_response(StatusCode::OK, self.openapi.clone()));
        }
        if parts.method == Method::POST {
            if let Some(method) = self.connect.get(path)
                && let Some(binary) = connect_content_type(&parts.headers)
            {
                return full(self.connect(inner, method, binary, &exchange, body).await);
            }
            if let Some(method) = self.connect_streams.get(path)
                && let Some(encoding) = stream::connect_encoding(&parts.headers)
            {
                return self
                    .connect_stream(inner, method, encoding, &exchange, body)
                    .await;
            }
        }
        self.route(inner, &parts, &exchange, body).await
    }

    /// A REST request: its route's call, or why there is none.
    async fn route<S, B>(
        &self,
        inner: S,
        parts: &http::request::Parts,
        exchange: &Exchange<'_>,
        body: B,
    ) -> http::Response<tonic::body::Body>
    where
        S: GrpcStack,
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let path = parts.uri.path();
        let query = parts.uri.query();
        full(match self.routes.find(&parts.method, path) {
            Found::Route(route, bindings) if route.method.is_server_streaming() => {
                return self.events(inner, route, bindings, query, exchange).await;
            }
            Found::Route(route, bindings) => {
                self.rest(inner, route, bindings, query, exchange, body)
                    .await
            }
            Found::OtherVerbs(verbs) => {
                let allow = verbs
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let status = rpc_error::with_reason(
                    Code::Unimplemented,
                    "METHOD_NOT_ALLOWED",
                    format!("{} is not allowed on {path}; use {allow}", parts.method),
                );
                let mut response =
                    self.rest_error(&status, StatusCode::METHOD_NOT_ALLOWED, exchange);
                if let Ok(allow) = HeaderValue::from_str(&allow) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
                response
            }
            Found::Nothing => {
                let status = rpc_error::with_reason(
                    Code::NotFound,
                    "NO_ROUTE",
                    format!("no route for {} {path} (see /openapi.json)", parts.method),
                );
                self.rest_error(&status, StatusCode::NOT_FOUND, exchange)
            }
        })
    }

    /// A server stream on a REST route, as Server-Sent Events. The request
    /// comes from the path and query (a stream's route has no body); a
    /// reconnecting `EventSource`'s `Last-Event-ID` fills `resume_token`.
    async fn events<S: GrpcStack>(
        &self,
        inner: S,
        route: &Route,
        bindings: Vec<(String, String)>,
        query: Option<&str>,
        exchange: &Exchange<'_>,
    ) -> http::Response<tonic::body::Body> {
        let headers = exchange.headers;
        let parts = request::Parts {
            bindings,
            query,
            body: None,
            headers,
        };
        let mut message = match request::build(route, parts) {
            Ok(message) => message,
            Err(violations) => {
                let status = rpc_error::invalid_argument(violations);
                return full(self.rest_error(&status, StatusCode::BAD_REQUEST, exchange));
            }
        };
        if let Some(id) = stream::last_event_id(headers)
            && let Some(field) = route.method.input().get_field_by_name("resume_token")
            && !message.has_field(&field)
        {
            message.set_field(&field, prost_reflect::Value::String(id.to_owned()));
        }
        let path = route.grpc_path();
        let message = message.encode_to_vec().into();
        match grpc::open(inner, &path, headers, exchange.connection, message).await {
            Ok((call_headers, frames)) => stream::relay(
                stream::Encoding::ServerSentEvents,
                &call_headers,
                frames,
                route.method.output(),
                self.pool.clone(),
            ),
            Err((call_headers, status)) => {
                let http = error::http_status(status.code());
                full(with_request_id(
                    self.rest_error(&status, http, exchange),
                    &call_headers,
                ))
            }
        }
    }

    /// A Connect server stream: one enveloped request message in, enveloped
    /// messages and the end-of-stream envelope out.
    async fn connect_stream<S, B>(
        &self,
        inner: S,
        method: &MethodDescriptor,
        encoding: stream::Encoding,
        exchange: &Exchange<'_>,
        body: B,
    ) -> http::Response<tonic::body::Body>
    where
        S: GrpcStack,
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let fail = |status: Status| stream::connect_failure(encoding, &status);
        let metadata = match connect_metadata(exchange.headers) {
            Ok(metadata) => metadata,
            Err(status) => return fail(status),
        };
        let (bytes, held) = match body::read(body, &self.body).await {
            Ok(read) => read,
            Err(error) => return fail(Status::from(error)),
        };
        let payload = match stream::unenvelope(&bytes) {
            Ok(payload) => payload,
            Err(status) => return fail(status),
        };
        let message = if encoding == stream::Encoding::ConnectProto {
            Bytes::copy_from_slice(payload)
        } else {
            match self.message_from_json(method, payload) {
                Ok(message) => message,
                Err(status) => return fail(status),
            }
        };
        let path = routes::grpc_path(method);
        let opened = grpc::open(inner, &path, &metadata, exchange.connection, message).await;
        drop(held);
        match opened {
            Ok((call_headers, frames)) => stream::relay(
                encoding,
                &call_headers,
                frames,
                method.output(),
                self.pool.clone(),
            ),
            Err((_, status)) => fail(status),
        }
    }

    /// `json` as the encoded input message of `method`; unknown fields are refused.
    fn message_from_json(&self, method: &MethodDescriptor, json: &[u8]) -> Result<Bytes, Status> {
        let json = parse_json(json)?;
        let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(true);
        let json = json.unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        DynamicMessage::deserialize_with_options(method.input(), json, &options)
            .map(|message| message.encode_to_vec().into())
            .map_err(|error| {
                rpc_error::with_reason(
                    Code::InvalidArgument,
                    "MALFORMED_MESSAGE",
                    format!("the body is not a {}: {error}", method.input().full_name()),
                )
            })
    }

    fn rest_error(
        &self,
        status: &Status,
        http: StatusCode,
        exchange: &Exchange<'_>,
    ) -> http::Response<Bytes> {
        error::rest(status, http, exchange.token_sent, &self.pool)
    }

    async fn rest<S, B>(
        &self,
        inner: S,
        route: &Route,
        bindings: Vec<(String, String)>,
        query: Option<&str>,
        exchange: &Exchange<'_>,
        body: B,
    ) -> http::Response<Bytes>
    where
        S: GrpcStack,
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let headers = exchange.headers;
        let mut held = None;
        let json = if route.body == routes::BodyTarget::None {
            None
        } else {
            if !content_type_is(headers, JSON, true) {
                let status = rpc_error::with_reason(
                    Code::InvalidArgument,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "send the body as application/json",
                );
                return self.rest_error(&status, StatusCode::UNSUPPORTED_MEDIA_TYPE, exchange);
            }
            let (bytes, permit) = match body::read(body, &self.body).await {
                Ok(read) => read,
                Err(error) => return self.body_error(&error, exchange),
            };
            held = Some(permit);
            match parse_json(&bytes) {
                Ok(json) => json,
                Err(status) => return self.rest_error(&status, StatusCode::BAD_REQUEST, exchange),
            }
        };
        let parts = request::Parts {
            bindings,
            query,
            body: json,
            headers,
        };
        let message = match request::build(route, parts) {
            Ok(message) => message,
            Err(violations) => {
                let status = rpc_error::invalid_argument(violations);
                return self.rest_error(&status, StatusCode::BAD_REQUEST, exchange);
            }
        };
        let reply = grpc::call(
            inner,
            &route.grpc_path(),
            headers,
            exchange.connection,
            message.encode_to_vec().into(),
        )
        .await;
        drop(held);
        let response = match reply.result {
            Ok(bytes) => self.rest_success(route, &bytes, headers),
            Err(status) => {
                let precondition_failed = headers.contains_key(header::IF_MATCH)
                    && error::reason(&status).as_deref() == Some("ETAG_MISMATCH");
                let http = if precondition_failed {
                    StatusCode::PRECONDITION_FAILED
                } else {
                    error::http_status(status.code())
                };
                self.rest_error(&status, http, exchange)
            }
        };
        with_request_id(response, &reply.headers)
    }

    /// The response message as JSON, with its `ETag` (`304` when the
    /// request's `If-None-Match` lists it).
    fn rest_success(
        &self,
        route: &Route,
        bytes: &Bytes,
        headers: &HeaderMap,
    ) -> http::Response<Bytes> {
        let message = match DynamicMessage::decode(route.method.output(), bytes.as_ref()) {
            Ok(message) => message,
            Err(error) => {
                let status = Status::internal(format!("undecodable response: {error}"));
                return error::rest(
                    &status,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    false,
                    &self.pool,
                );
            }
        };
        let etag = message
            .get_field_by_name("etag")
            .and_then(|value| value.as_str().map(str::to_owned))
            .filter(|etag| !etag.is_empty());
        let unchanged = etag.as_ref().is_some_and(|etag| {
            headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|listed| {
                    request::entity_tags(listed).any(|tag| tag.is_none_or(|tag| &tag == etag))
                })
        });
        let mut response = if unchanged {
            http::Response::builder()
                .status(StatusCode::NOT_MODIFIED)
                .body(Bytes::new())
                .unwrap_or_default()
        } else {
            match serde_json::to_vec(&message) {
                Ok(json) => json_response(StatusCode::OK, json.into()),
                Err(error) => {
                    let status = Status::internal(format!("unserializable response: {error}"));
                    return error::rest(
                        &status,
                        StatusCode::INTERNAL_SERVER_ERROR,
                        false,
                        &self.pool,
                    );
                }
            }
        };
        if let Some(etag) = etag
            && let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\""))
        {
            response.headers_mut().insert(header::ETAG, value);
        }
        response
    }

    fn body_error(&self, error: &BodyError, exchange: &Exchange<'_>) -> http::Response<Bytes> {
        self.rest_error(&Status::from(error.clone()), error.http_status(), exchange)
    }

    async fn connect<S, B>(
        &self,
        inner: S,
        method: &MethodDescriptor,
        binary: bool,
        exchange: &Exchange<'_>,
        body: B,
    ) -> http::Response<Bytes>
    where
        S: GrpcStack,
        B: http_body::Body<Data = Bytes, Error: std::fmt::Display>,
    {
        let headers = exchange.headers;
        let fail = |status: Status| error::connect(&status, exchange.token_sent);
        let metadata = match connect_metadata(headers) {
            Ok(metadata) => metadata,
            Err(status) => return fail(status),
        };
        let (bytes, held) = match body::read(body, &self.body).await {
            Ok(read) => read,
            Err(error) => return fail(Status::from(error)),
        };
        let message = if binary {
            bytes
        } else {
            match self.message_from_json(method, &bytes) {
                Ok(message) => message,
                Err(status) => return fail(status),
            }
        };
        let path = routes::grpc_path(method);
        let reply = grpc::call(inner, &path, &metadata, exchange.connection, message).await;
        drop(held);
        let response = match reply.result {
            Ok(bytes) if binary => http::Response::builder()
                .header(header::CONTENT_TYPE, PROTO)
                .body(bytes)
                .unwrap_or_default(),
            Ok(bytes) => match DynamicMessage::decode(method.output(), bytes.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|message| serde_json::to_vec(&message).map_err(|e| e.to_string()))
            {
                Ok(json) => json_response(StatusCode::OK, json.into()),
                Err(error) => fail(Status::internal(format!(
                    "unserializable response: {error}"
                ))),
            },
            Err(status) => fail(status),
        };
        with_request_id(response, &reply.headers)
    }
}

/// The OpenAPI document of `services` (what their servers serve at
/// `/openapi.json`), pretty-printed.
pub fn openapi(services: &[&str]) -> Result<String, ApiError> {
    let pool = crate::pb::descriptor_pool()?;
    let routes = Routes::new(&pool, services)?;
    Ok(openapi_text(&pool, &routes))
}

fn openapi_text(pool: &DescriptorPool, routes: &Routes) -> String {
    let mut text =
        serde_json::to_string_pretty(&openapi::document(pool, routes)).unwrap_or_default();
    text.push('\n');
    text
}

/// `response` with the call's `x-request-id`, so an HTTP client can quote it
/// as a gRPC one would.
fn with_request_id(mut response: http::Response<Bytes>, call: &HeaderMap) -> http::Response<Bytes> {
    if let Some(id) = call.get(REQUEST_ID) {
        response.headers_mut().insert(REQUEST_ID, id.clone());
    }
    response
}

/// A Connect request's headers as the call's metadata: the protocol version
/// checked, `connect-timeout-ms` as `grpc-timeout` (unary and streaming alike).
fn connect_metadata(headers: &HeaderMap) -> Result<HeaderMap, Status> {
    if let Some(version) = headers.get("connect-protocol-version")
        && version != "1"
    {
        return Err(rpc_error::with_reason(
            Code::InvalidArgument,
            "UNSUPPORTED_PROTOCOL_VERSION",
            "connect-protocol-version must be 1",
        ));
    }
    let mut metadata = headers.clone();
    if let Some(timeout) = headers.get("connect-timeout-ms") {
        match timeout.to_str().ok().and_then(|ms| ms.parse::<u64>().ok()) {
            // gRPC allows at most 8 digits per unit.
            Some(ms) if ms < 100_000_000 => {
                if let Ok(value) = HeaderValue::from_str(&format!("{ms}m")) {
                    metadata.insert("grpc-timeout", value);
                }
            }
            _ => {
                return Err(rpc_error::invalid_field(
                    "connect-timeout-ms",
                    "a whole number of milliseconds below 10^8",
                ));
            }
        }
    }
    Ok(metadata)
}

/// `Some(binary)` when the request is Connect unary: `application/proto`
/// (binary) or `application/json`.
fn connect_content_type(headers: &HeaderMap) -> Option<bool> {
    if content_type_is(headers, PROTO, false) {
        Some(true)
    } else if content_type_is(headers, JSON, false) {
        Some(false)
    } else {
        None
    }
}

/// Whether the content type is `expected` (parameters such as `charset`
/// ignored); `absent_ok` accepts a request without one.
fn content_type_is(headers: &HeaderMap, expected: &str, absent_ok: bool) -> bool {
    match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        None => absent_ok,
        Some(Ok(value)) => value
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected)),
        Some(Err(_)) => false,
    }
}

/// The body as JSON; `None` when empty.
fn parse_json(bytes: &[u8]) -> Result<Option<serde_json::Value>, Status> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes).map(Some).map_err(|error| {
        rpc_error::with_reason(
            Code::InvalidArgument,
            "MALFORMED_JSON",
            format!("the body is not valid JSON: {error}"),
        )
    })
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<Bytes> {
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, JSON)
        .body(body)
        .unwrap_or_default()
}
