//! The one-command stack: it starts from nothing, answers the calls its banner
//! prints, keeps its data across restarts, and mints tokens for other users.

use casebook::pb::casebook::{
    auth::v1::{WhoAmIRequest, auth_service_client::AuthServiceClient},
    cases::v1::{
        Case, CreateCaseRequest, ListCasesRequest, case::Type,
        case_service_client::CaseServiceClient,
    },
};
use casebook_stack::{Cli, DEMO_EMAIL, Stack, mint_token};
use common::{bearer, eventually};
use tonic::transport::Channel;

mod common;

/// The stack's defaults, on ephemeral ports, keeping its data in `data`.
fn args(data: &std::path::Path) -> Cli {
    let mut cli: Cli = casebook::config::defaults().unwrap();
    let any_port: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    let stack = &mut cli.stack;
    stack.data_dir = data.to_owned();
    stack.issuer_addr = any_port;
    stack.auth_svc_addr = any_port;
    stack.case_svc_addr = any_port;
    stack.gateway_addr = any_port;
    stack.metrics_addr = Some(any_port);
    cli
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Waits for health to turn SERVING (the services wait for the issuer's JWKS).
async fn until_serving(addr: std::net::SocketAddr) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(channel(addr).await);
    let serving = eventually(std::time::Duration::from_secs(10), async || {
        let request = HealthCheckRequest {
            service: String::new(),
        };
        health
            .check(request)
            .await
            .is_ok_and(|s| s.into_inner().status == 1)
    })
    .await;
    assert!(serving, "{addr} never became SERVING");
}

#[tokio::test]
async fn the_stack_starts_from_nothing_and_keeps_its_data() {
    let data = tempfile::tempdir().unwrap();
    let cli = args(data.path());

    let stack = Stack::start(&cli.stack).await.unwrap();
    until_serving(stack.auth.local_addr()).await;
    until_serving(stack.cases.local_addr()).await;
    let banner = stack.banner();
    assert!(
        banner.contains(&stack.token) && banner.contains("grpcurl"),
        "{banner}"
    );
    assert!(banner.contains(&stack.cases.local_addr().to_string()));
    // The curl lines come first and work as printed.
    assert!(banner.find("curl ") < banner.find("grpcurl "), "{banner}");
    let mut answers: Vec<serde_json::Value> = Vec::new();
    for line in stack.curl_lines() {
        assert!(banner.contains(line.as_str()));
        let token = stack.token.clone();
        // curl blocks: off the runtime the stack serves on.
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .args(["-c", &format!("{line} --silent --max-time 10")])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("JWT", token)
                .output()
                .map(|output| (line, output))
        })
        .await
        .unwrap()
        .expect("curl runs");
        let (line, output) = output;
        assert!(output.status.success(), "{line}: {output:?}");
        answers.push(
            serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("{line}: {e}: {output:?}")),
        );
    }
    assert_eq!(answers[0]["email"], DEMO_EMAIL);
    assert!(answers[1]["name"].as_str().unwrap().starts_with("cases/"));
    assert_eq!(answers[2]["cases"][0]["name"], answers[1]["name"]);
    assert_eq!(answers[3]["email"], DEMO_EMAIL, "Connect: {}", answers[3]);

    let me = AuthServiceClient::new(channel(stack.auth.local_addr()).await)
        .who_am_i(bearer(WhoAmIRequest {}, &stack.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.email, DEMO_EMAIL);
    assert_eq!(me.id.len(), 32, "ids look like Better Auth's");

    let mut cases = CaseServiceClient::new(channel(stack.cases.local_addr()).await);
    let case = Case {
        title: "Printer on fire".into(),
        r#type: Type::Incident as i32,
        ..Case::default()
    };
    let created = cases
        .create_case(bearer(
            CreateCaseRequest {
                case: Some(case),
                request_id: String::new(),
            },
            &stack.token,
        ))
        .await
        .unwrap()
        .into_inner();
    let demo_id = stack.demo.id.clone();
    stack.shutdown().await.unwrap();

    // A second start reuses the key, the user and the cases.
    let stack = Stack::start(&cli.stack).await.unwrap();
    until_serving(stack.cases.local_addr()).await;
    assert_eq!(stack.demo.id, demo_id);
    let mut cases = CaseServiceClient::new(channel(stack.cases.local_addr()).await);
    let listed = cases
        .list_cases(bearer(ListCasesRequest::default(), &stack.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.cases.len(), 2, "the banner's curl case and this one");
    assert_eq!(listed.cases[0], created, "newest first");

    // `casebook token` mints for another user, who sees none of the demo's cases.
    let mut other = args(data.path());
    other.stack.issuer_addr = stack_issuer_addr(&stack).parse().unwrap();
    let token = mint_token(&other.stack, "you@example.com", None)
        .await
        .unwrap();
    let listed = cases
        .list_cases(bearer(ListCasesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.cases.is_empty());
    stack.shutdown().await.unwrap();
}

fn stack_issuer_addr(stack: &Stack) -> String {
    stack.issuer_url().trim_start_matches("http://").to_owned()
}
