//! Latency the gateway adds per call: GetCase straight to case-svc versus the
//! same call through the gateway (native gRPC, and grpc-web over HTTP/1.1 as a
//! browser sends it), measured in the same run on SQLite. `cargo bench --bench
//! gateway` prints a markdown table for docs/benchmarks.md. Nothing asserts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use casebook::pb::casebook::cases::v1::{
    Case, CreateCaseRequest, GetCaseRequest, case::Type, case_service_client::CaseServiceClient,
};
use common::{GatewayStack, bearer, grpc_web};
use tonic::transport::Channel;

const ROUNDS: usize = 10;
const CALLS_PER_ROUND: usize = 300;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn client(addr: std::net::SocketAddr) -> CaseServiceClient<Channel> {
    CaseServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

async fn run() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("bench").await;
    let mut direct = client(stack.cases[0].addr()).await;
    let mut via_gateway = client(stack.addr()).await;
    let case = Case {
        title: "bench".into(),
        r#type: Type::Question as i32,
        ..Case::default()
    };
    let name = direct
        .create_case(bearer(
            CreateCaseRequest {
                case: Some(case),
                request_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .name;
    let get = GetCaseRequest { name };
    let auth = format!("Bearer {token}");

    let (mut direct_times, mut gateway_times, mut web_times) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        for _ in 0..CALLS_PER_ROUND {
            let started = Instant::now();
            direct.get_case(bearer(get.clone(), &token)).await.unwrap();
            let a = started.elapsed();
            let started = Instant::now();
            via_gateway
                .get_case(bearer(get.clone(), &token))
                .await
                .unwrap();
            let b = started.elapsed();
            let started = Instant::now();
            let reply = grpc_web(
                stack.addr(),
                "/casebook.cases.v1.CaseService/GetCase",
                &get,
                &[("authorization", &auth)],
                false,
            )
            .await;
            let c = started.elapsed();
            assert_eq!(reply.grpc_status(), Some(0));
            if round > 0 {
                // Round 0 warms connections and caches.
                direct_times.push(a);
                gateway_times.push(b);
                web_times.push(c);
            }
        }
    }
    println!("| path | p50 (µs) | p99 (µs) | added p50 (µs) | added p99 (µs) |");
    println!("|---|---|---|---|---|");
    direct_times.sort();
    let (base50, base99) = (
        percentile(&direct_times, 0.5),
        percentile(&direct_times, 0.99),
    );
    for (label, times) in [
        ("case-svc directly (gRPC)", &mut direct_times),
        ("through the gateway (gRPC)", &mut gateway_times),
        (
            "through the gateway (grpc-web, new HTTP/1.1 request each)",
            &mut web_times,
        ),
    ] {
        times.sort();
        let (p50, p99) = (percentile(times, 0.5), percentile(times, 0.99));
        println!(
            "| {label} | {p50:.0} | {p99:.0} | {:.0} | {:.0} |",
            p50 - base50,
            p99 - base99
        );
    }
    println!(
        "\n{} calls per path, GetCase of one case, SQLite, one client, sequential.",
        ROUNDS * CALLS_PER_ROUND
    );
}
