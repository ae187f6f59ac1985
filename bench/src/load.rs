//! The scenarios and the closed-loop workers that drive them: `concurrency`
//! workers share `connections` HTTP/2 connections, each sending its next call
//! as soon as the previous one answers, until the deadline.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use casebook::pb::casebook::{
    auth::v1::{VerifyTokenRequest, WhoAmIRequest, auth_service_client::AuthServiceClient},
    cases::v1::{
        Case, CreateCaseRequest, GetCaseRequest, ListCasesRequest, UpdateCaseRequest, case::Type,
        case_service_client::CaseServiceClient,
    },
};
use tonic::{Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::stats::Recorder;

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
}

/// Per-user data the scenarios use.
pub struct Fixture {
    /// (token, case names owned by that user)
    pub users: Vec<(String, Vec<String>)>,
}

/// Clients over one connection.
#[derive(Clone)]
struct Clients {
    auth: AuthServiceClient<Channel>,
    cases: CaseServiceClient<Channel>,
    health: HealthClient<Channel>,
}

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
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

/// Runs `scenario` for `duration` and returns every worker's samples.
pub async fn run(
    scenario: Scenario,
    auth_addr: std::net::SocketAddr,
    case_addr: std::net::SocketAddr,
    fixture: Arc<Fixture>,
    connections: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut pool = Vec::new();
    for _ in 0..connections.max(1) {
        let (auth, cases) = (connect(auth_addr).await?, connect(case_addr).await?);
        pool.push(Clients {
            auth: AuthServiceClient::new(auth.clone()),
            cases: CaseServiceClient::new(cases),
            health: HealthClient::new(auth),
        });
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency.max(1) {
        let mut clients = pool[worker % pool.len()].clone();
        let fixture = Arc::clone(&fixture);
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::default();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1));
            while Instant::now() < deadline {
                let begun = Instant::now();
                let outcome = call(scenario, &mut clients, &fixture, &mut rng).await;
                recorder.record(begun.elapsed(), outcome);
            }
            recorder
        }));
    }
    let mut total = Recorder::default();
    for worker in workers {
        total.merge(worker.await?);
    }
    Ok((total, started.elapsed()))
}
