//! The browser path: grpc-web (binary and text) and CORS through the gateway to
//! both services, error trailers, deadlines, upstream outages and replicas.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use casebook::pb::casebook::{
    auth::v1::{User, WhoAmIRequest},
    cases::v1::{Case, CreateCaseRequest, ListCasesRequest, ListCasesResponse, case::Type},
};
use common::{GatewayStack, bearer, eventually, grows_by, grpc_web, http1};
use http_body_util::Full;
use hyper::body::Bytes;
use tonic::transport::Channel;

const WHO_AM_I: &str = "/casebook.auth.v1.AuthService/WhoAmI";
const CREATE: &str = "/casebook.cases.v1.CaseService/CreateCase";
const LIST: &str = "/casebook.cases.v1.CaseService/ListCases";

fn create(title: &str) -> CreateCaseRequest {
    CreateCaseRequest {
        case: Some(Case {
            title: title.into(),
            r#type: Type::Question as i32,
            ..Case::default()
        }),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn grpc_web_binary_and_text_reach_both_services() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let auth = format!("Bearer {token}");
    for text in [false, true] {
        let reply = grpc_web(
            stack.addr(),
            WHO_AM_I,
            &WhoAmIRequest {},
            &[("authorization", &auth)],
            text,
        )
        .await;
        assert_eq!(reply.grpc_status(), Some(0), "{reply:?}");
        assert_eq!(reply.message::<User>().id, "alice");

        let reply = grpc_web(
            stack.addr(),
            CREATE,
            &create("from the browser"),
            &[("authorization", &auth)],
            text,
        )
        .await;
        assert_eq!(reply.grpc_status(), Some(0), "{reply:?}");
        assert_eq!(reply.message::<Case>().owner, "users/alice");
    }
    let reply = grpc_web(
        stack.addr(),
        LIST,
        &ListCasesRequest::default(),
        &[("authorization", &auth)],
        false,
    )
    .await;
    assert_eq!(reply.message::<ListCasesResponse>().cases.len(), 2);
}

#[tokio::test]
async fn native_grpc_works_through_the_gateway_too() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let channel = Channel::from_shared(format!("http://{}", stack.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient::new(channel);
    let case = client
        .create_case(bearer(create("native"), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(case.title, "native");
}

#[tokio::test]
async fn errors_arrive_as_trailers_with_their_details() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let reply = grpc_web(stack.addr(), WHO_AM_I, &WhoAmIRequest {}, &[], false).await;
    assert_eq!(reply.http_status, 200);
    assert_eq!(reply.grpc_status(), Some(16), "UNAUTHENTICATED: {reply:?}");
    let details = reply
        .trailers
        .get("grpc-status-details-bin")
        .expect("details travel through");
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details.trim_end_matches('='))
        .unwrap();
    let status = tonic::Status::with_details(tonic::Code::Unauthenticated, "", Bytes::from(bytes));
    common::assert_reason(&status, tonic::Code::Unauthenticated, "MISSING_CREDENTIALS");

    let reply = grpc_web(
        stack.addr(),
        "/casebook.nope.v1.Nothing/Here",
        &WhoAmIRequest {},
        &[],
        false,
    )
    .await;
    assert_eq!(
        reply.grpc_status(),
        Some(12),
        "unknown service is UNIMPLEMENTED: {reply:?}"
    );
}

#[tokio::test]
async fn cors_preflights_are_answered_only_for_allowed_origins() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let preflight = |origin: &str| {
        http::Request::builder()
            .method("OPTIONS")
            .uri(format!("http://{}{CREATE}", stack.addr()))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,grpc-timeout",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (allowed, _) = http1(preflight("http://app.test")).await;
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "http://app.test"
    );
    let allow_headers = allowed.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for header in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(
            allow_headers.contains(header),
            "{header} not allowed: {allow_headers}"
        );
    }
    assert!(
        allowed
            .headers
            .get("access-control-allow-credentials")
            .is_none()
    );

    let (refused, _) = http1(preflight("http://evil.test")).await;
    assert!(refused.headers.get("access-control-allow-origin").is_none());

    let token = stack.env.user("alice").await;
    let reply = grpc_web(
        stack.addr(),
        WHO_AM_I,
        &WhoAmIRequest {},
        &[
            ("authorization", &format!("Bearer {token}")),
            ("origin", "http://app.test"),
        ],
        false,
    )
    .await;
    let exposed = reply.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} not exposed: {exposed}");
    }
}

#[tokio::test]
async fn the_gateway_caps_deadlines() {
    // The JWKS answers after 3 s, so an authenticated call takes that long;
    // the gateway's 300 ms ceiling must end it first, whatever the client asked.
    let stack = GatewayStack::start(1, |c| c.max_call_timeout = Duration::from_millis(300)).await;
    stack
        .env
        .jwks
        .behave(common::Behaviour::Slow(Duration::from_secs(3)));
    let stranger = stack.env.issuer.keys[0].sign_parts(
        br#"{"alg":"EdDSA","kid":"not-published-yet"}"#,
        common::claims("u").to_string().as_bytes(),
    );
    let auth = format!("Bearer {stranger}");
    let started = tokio::time::Instant::now();
    let reply = grpc_web(
        stack.addr(),
        WHO_AM_I,
        &WhoAmIRequest {},
        &[("authorization", &auth), ("grpc-timeout", "60S")],
        false,
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(4), "DEADLINE_EXCEEDED: {reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_upstream_outage_is_unavailable_until_it_returns() {
    let mut stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let auth = format!("Bearer {token}");
    let replica = stack.cases.pop().unwrap();
    let addr = replica.addr();
    replica.0.server.shutdown().await.unwrap();

    let reply = grpc_web(
        stack.addr(),
        CREATE,
        &create("while down"),
        &[("authorization", &auth)],
        false,
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(14), "UNAVAILABLE: {reply:?}");
    // Other services are unaffected.
    let reply = grpc_web(
        stack.addr(),
        WHO_AM_I,
        &WhoAmIRequest {},
        &[("authorization", &auth)],
        false,
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(0));

    // The replica comes back on the same address; the gateway reconnects by itself.
    let back =
        common::CaseSvc::start_in(Arc::clone(&stack.env), |c| c.listen_addr = Some(addr)).await;
    let recovered = eventually(Duration::from_secs(10), async || {
        grpc_web(
            stack.addr(),
            CREATE,
            &create("after"),
            &[("authorization", &auth)],
            false,
        )
        .await
        .grpc_status()
            == Some(0)
    })
    .await;
    assert!(recovered, "the gateway never reached the restarted replica");
    drop(back);
}

#[tokio::test]
async fn calls_are_balanced_and_a_replica_leaving_fails_no_call() {
    let mut stack = GatewayStack::start(2, |_| {}).await;
    let token = stack.env.user("alice").await;
    let serving = eventually(Duration::from_secs(10), async || {
        stack
            .gateway
            .cases
            .replicas()
            .iter()
            .all(|r| r.is_serving())
    })
    .await;
    assert!(serving);

    let channel = Channel::from_shared(format!("http://{}", stack.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (channel, token) = (channel.clone(), token.clone());
        let (failures, successes, stop) = (
            Arc::clone(&failures),
            Arc::clone(&successes),
            Arc::clone(&stop),
        );
        load.push(tokio::spawn(async move {
            let mut client =
                casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient::new(
                    channel,
                );
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match client
                    .create_case(bearer(create(&format!("w{worker} #{i}")), &token))
                    .await
                {
                    Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("failed call: {status:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let done = || successes.load(Ordering::Relaxed);
    assert!(grows_by(20, done).await, "the load runs");
    let leaving = stack.cases.remove(0);
    leaving.0.server.shutdown().await.unwrap(); // graceful: in-flight calls finish
    assert!(
        grows_by(20, done).await,
        "the load runs on the other replica"
    );
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }
    let calls: Vec<u64> = stack
        .gateway
        .cases
        .replicas()
        .iter()
        .map(|r| r.calls())
        .collect();
    assert!(
        calls.iter().all(|c| *c > 0),
        "every replica served calls: {calls:?}"
    );
    assert!(successes.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a graceful stop must fail no call"
    );
}
