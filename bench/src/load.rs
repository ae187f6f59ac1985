//! The scenarios and the closed-loop workers that drive them: `concurrency`
//! workers share `connections` HTTP/2 connections, each sending its next call
//! as soon as the previous one answers, until the deadline. The grpc-web,
//! REST and Connect scenarios go through the gateway as a browser on plain
//! HTTP does: one HTTP/1.1 request per call, on keep-alive connections from
//! a pool.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use casebook::pb::casebook::{
    auth::v1::{VerifyTokenRequest, WhoAmIRequest, auth_service_client::AuthServiceClient},
    cases::v1::{
        Case, CreateCaseRequest, GetCaseRequest, ListCasesRequest, UpdateCaseRequest, case::Type,
        case_service_client::CaseServiceClient,
    },
};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prost::Message;
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    closed_loop::{self, Worker},
    stats::Recorder,
};

/// What a worker does on each call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// AuthService/VerifyToken with the token in the body.
    VerifyToken,
    /// AuthService/WhoAmI (token check + one user row).
    WhoAmI,
    /// CaseService/GetCase of a seeded case.
    GetCase,
    /// CaseService/ListCases, a page of 20.
    ListCases,
    /// CaseService/CreateCase.
    CreateCase,
    /// CaseService/UpdateCase of a seeded case's title.
    UpdateCase,
    /// 80% reads (60 GetCase, 20 ListCases), 20% writes (10 Create, 10 Update).
    Mixed,
    /// grpc.health.v1.Health/Check on auth-svc: the transport ceiling (a no-op call through tonic).
    Noop,
    /// CaseService/GetCase as a browser sends it: grpc-web over HTTP/1.1 through the gateway.
    GrpcWebGetCase,
    /// CaseService/GetCase over native gRPC through the gateway (what REST is compared with).
    GatewayGetCase,
    /// `GET /v1/cases/{id}`: REST over HTTP/1.1 keep-alive through the gateway.
    RestGetCase,
    /// `GET /v1/cases?pageSize=20`: REST through the gateway.
    RestListCases,
    /// `POST /v1/cases`: REST through the gateway.
    RestCreateCase,
    /// GetCase over Connect (JSON) through the gateway.
    ConnectGetCase,
}

/// Per-user data the scenarios use.
pub struct Fixture {
    /// (token, case names owned by that user)
    pub users: Vec<(String, Vec<String>)>,
}

/// Clients over one connection (grpc-web: over a shared pool).
#[derive(Clone)]
struct Clients {
    auth: AuthServiceClient<Channel>,
    cases: CaseServiceClient<Channel>,
    via_gateway: CaseServiceClient<Channel>,
    health: HealthClient<Channel>,
    web: WebClient,
}

/// An HTTP/1.1 client for grpc-web calls to the gateway.
#[derive(Clone)]
pub struct WebClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl WebClient {
    /// A client for the gateway at `addr`.
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{addr}"),
        }
    }

    /// One HTTP/JSON call (REST, or Connect with `path` a method path); the
    /// outcome is read from the HTTP status.
    async fn json(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
        token: &str,
    ) -> Result<(), Code> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| Code::Internal)?;
        let (parts, _) = self.send(request).await?;
        match parts.status.as_u16() {
            200..=299 => Ok(()),
            400 => Err(Code::InvalidArgument),
            401 => Err(Code::Unauthenticated),
            404 => Err(Code::NotFound),
            409 | 412 => Err(Code::Aborted),
            429 => Err(Code::ResourceExhausted),
            503 => Err(Code::Unavailable),
            504 => Err(Code::DeadlineExceeded),
            _ => Err(Code::Unknown),
        }
    }

    /// One unary binary grpc-web call; its gRPC status as the outcome.
    async fn call(&self, path: &str, message: &impl Message, token: &str) -> Result<(), Code> {
        let payload = message.encode_to_vec();
        let mut frame = Vec::with_capacity(5 + payload.len());
        frame.push(0);
        frame.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        frame.extend_from_slice(&payload);
        let request = http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(frame)))
            .map_err(|_| Code::Internal)?;
        let (parts, body) = self.send(request).await?;
        grpc_web_outcome(&parts.headers, &body)
    }

    /// Sends `request` and reads the whole answer; a transport failure is
    /// `Unavailable`, as a client would see it.
    async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), Code> {
        let response = self
            .http
            .request(request)
            .await
            .map_err(|_| Code::Unavailable)?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|_| Code::Unavailable)?
            .to_bytes();
        Ok((parts, body))
    }
}

/// The gRPC status of a grpc-web response: from the headers of a
/// trailers-only reply, else from the trailer frame (flag 0x80) that ends the
/// body. A reply with neither is `Unknown`: never counted as a success.
pub fn grpc_web_outcome(headers: &http::HeaderMap, mut body: &[u8]) -> Result<(), Code> {
    let parse = |value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<i32>().ok())
            .map(Code::from_i32)
    };
    let mut status = headers.get("grpc-status").and_then(|v| parse(v.as_bytes()));
    while let [flag, a, b, c, d, rest @ ..] = body {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let Some(data) = rest.get(..len) else { break };
        if flag & 0x80 != 0 {
            status = String::from_utf8_lossy(data)
                .split("\r\n")
                .find_map(|line| line.strip_prefix("grpc-status:"))
                .and_then(|v| parse(v.as_bytes()));
        }
        body = &rest[len..];
    }
    match status {
        Some(Code::Ok) => Ok(()),
        Some(code) => Err(code),
        None => Err(Code::Unknown),
    }
}

pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// xorshift64*: enough randomness to spread calls, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1) as u64) as usize
    }
}

fn case(title: String) -> Case {
    Case {
        title,
        r#type: Type::Request as i32,
        ..Case::default()
    }
}

async fn call(
    scenario: Scenario,
    clients: &mut Clients,
    fixture: &Fixture,
    rng: &mut Rng,
) -> Result<(), tonic::Code> {
    let (token, names) = &fixture.users[rng.below(fixture.users.len())];
    let name = names
        .get(rng.below(names.len()))
        .cloned()
        .unwrap_or_default();
    let scenario = match scenario {
        Scenario::Mixed => match rng.below(10) {
            0..=5 => Scenario::GetCase,
            6 | 7 => Scenario::ListCases,
            8 => Scenario::CreateCase,
            _ => Scenario::UpdateCase,
        },
        other => other,
    };
    let result = match scenario {
        Scenario::VerifyToken => clients
            .auth
            .verify_token(VerifyTokenRequest {
                token: token.clone(),
            })
            .await
            .map(drop),
        Scenario::WhoAmI => clients
            .auth
            .who_am_i(bearer(WhoAmIRequest {}, token))
            .await
            .map(drop),
        Scenario::GetCase => clients
            .cases
            .get_case(bearer(GetCaseRequest { name }, token))
            .await
            .map(drop),
        Scenario::ListCases => {
            let request = ListCasesRequest {
                page_size: 20,
                ..ListCasesRequest::default()
            };
            clients
                .cases
                .list_cases(bearer(request, token))
                .await
                .map(drop)
        }
        Scenario::CreateCase => {
            let request = CreateCaseRequest {
                case: Some(case("load".into())),
                request_id: String::new(),
            };
            clients
                .cases
                .create_case(bearer(request, token))
                .await
                .map(drop)
        }
        Scenario::UpdateCase => {
            let request = UpdateCaseRequest {
                case: Some(Case {
                    name,
                    title: format!("updated {}", rng.below(1000)),
                    ..Case::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
            };
            clients
                .cases
                .update_case(bearer(request, token))
                .await
                .map(drop)
        }
        Scenario::Noop => clients
            .health
            .check(HealthCheckRequest::default())
            .await
            .map(drop),
        Scenario::GrpcWebGetCase => {
            return clients
                .web
                .call(
                    "/casebook.cases.v1.CaseService/GetCase",
                    &GetCaseRequest { name },
                    token,
                )
                .await;
        }
        Scenario::GatewayGetCase => clients
            .via_gateway
            .get_case(bearer(GetCaseRequest { name }, token))
            .await
            .map(drop),
        Scenario::RestGetCase => {
            let path = format!("/v1/{name}");
            return clients
                .web
                .json(http::Method::GET, &path, None, token)
                .await;
        }
        Scenario::RestListCases => {
            let path = "/v1/cases?pageSize=20";
            return clients.web.json(http::Method::GET, path, None, token).await;
        }
        Scenario::RestCreateCase => {
            let body = r#"{"title":"load","type":"REQUEST"}"#.to_owned();
            return clients
                .web
                .json(http::Method::POST, "/v1/cases", Some(body), token)
                .await;
        }
        Scenario::ConnectGetCase => {
            let body = format!(r#"{{"name":"{name}"}}"#);
            let path = "/casebook.cases.v1.CaseService/GetCase";
            return clients
                .web
                .json(http::Method::POST, path, Some(body), token)
                .await;
        }
        Scenario::Mixed => Ok(()),
    };
    result.map_err(|status| status.code())
}

/// Creates `per_user` cases for every token, through the API.
pub async fn seed(
    case_addr: std::net::SocketAddr,
    tokens: &[String],
    per_user: usize,
) -> anyhow::Result<Fixture> {
    let mut cases = CaseServiceClient::new(connect(case_addr).await?);
    let mut users = Vec::new();
    for token in tokens {
        let mut names = Vec::new();
        for i in 0..per_user {
            let request = CreateCaseRequest {
                case: Some(case(format!("seed {i}"))),
                request_id: String::new(),
            };
            names.push(
                cases
                    .create_case(bearer(request, token))
                    .await?
                    .into_inner()
                    .name,
            );
        }
        users.push((token.clone(), names));
    }
    Ok(Fixture { users })
}

/// Where the scenarios send their calls.
pub struct Targets {
    /// auth-svc.
    pub auth: std::net::SocketAddr,
    /// case-svc.
    pub cases: std::net::SocketAddr,
    /// The gateway, over HTTP/1.1 (grpc-web, REST, Connect).
    pub web: WebClient,
    /// The gateway, over native gRPC.
    pub gateway: std::net::SocketAddr,
}

/// Runs `scenario` for `duration` and returns every worker's samples.
pub async fn run(
    scenario: Scenario,
    targets: &Targets,
    fixture: Arc<Fixture>,
    connections: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut pool = Vec::new();
    for _ in 0..connections.max(1) {
        let (auth, cases) = (connect(targets.auth).await?, connect(targets.cases).await?);
        pool.push(Clients {
            auth: AuthServiceClient::new(auth.clone()),
            cases: CaseServiceClient::new(cases),
            via_gateway: CaseServiceClient::new(connect(targets.gateway).await?),
            health: HealthClient::new(auth),
            web: targets.web.clone(),
        });
    }
    let workers = (0..concurrency.max(1)).map(|worker| ScenarioWorker {
        scenario,
        clients: pool[worker % pool.len()].clone(),
        fixture: Arc::clone(&fixture),
        rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1)),
    });
    closed_loop::run(workers, duration).await
}

/// A worker of one scenario, with its own clients and random sequence.
struct ScenarioWorker {
    scenario: Scenario,
    clients: Clients,
    fixture: Arc<Fixture>,
    rng: Rng,
}

impl Worker for ScenarioWorker {
    async fn call(&mut self) -> Result<(), Code> {
        call(
            self.scenario,
            &mut self.clients,
            &self.fixture,
            &mut self.rng,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, data: &[u8]) -> Vec<u8> {
        let mut frame = vec![flag];
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        frame
    }

    #[test]
    fn grpc_web_status_comes_from_the_trailer_frame_or_the_headers() {
        let none = http::HeaderMap::new();
        let mut ok = frame(0, b"message");
        ok.extend(frame(0x80, b"grpc-status:0\r\ngrpc-message:\r\n"));
        assert_eq!(grpc_web_outcome(&none, &ok), Ok(()));

        let not_found = frame(0x80, b"grpc-status: 5\r\n");
        assert_eq!(grpc_web_outcome(&none, &not_found), Err(Code::NotFound));

        let mut trailers_only = http::HeaderMap::new();
        trailers_only.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(
            grpc_web_outcome(&trailers_only, b""),
            Err(Code::Unauthenticated)
        );
    }

    #[test]
    fn a_reply_without_a_status_is_never_a_success() {
        let none = http::HeaderMap::new();
        assert_eq!(
            grpc_web_outcome(&none, &frame(0, b"message")),
            Err(Code::Unknown)
        );
        assert_eq!(
            grpc_web_outcome(&none, &[0, 0, 0, 9, 1]),
            Err(Code::Unknown),
            "truncated"
        );
    }
}
