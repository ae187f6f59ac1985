//! Nobody, with or without a token, can exhaust what others need: metrics
//! series, call and stream slots, the gateway's buffers, connections and
//! header memory. Each test sends what an attacker would and then checks
//! that the state stayed bounded and that everyone else is still answered.

mod common;

use std::{sync::Arc, time::Duration};

use casebook::pb::casebook::{
    auth::v1::{VerifyTokenRequest, WhoAmIRequest},
    cases::v1::ListCasesRequest,
};
use common::{AuthSvc, CaseSvc, GatewayStack, assert_reason, bearer, http1};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Calls `path` (which nobody implements) with an empty message.
async fn call_unknown(channel: Channel, path: String, token: Option<String>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    if let Some(token) = token {
        *request.metadata_mut() = bearer((), &token).metadata().clone();
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    match grpc.unary(request, path, codec).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Sends `count` calls to distinct made-up paths, half with a token.
async fn flood_unknown_paths(channel: &Channel, token: &str, count: usize) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..count {
        let path = format!("/made.up.Service{i}/Method{i}");
        let token = (i % 2 == 0).then(|| token.to_owned());
        calls.spawn(call_unknown(channel.clone(), path, token));
        if calls.len() >= 64 {
            let code = calls.join_next().await.unwrap().unwrap();
            assert_ne!(code, Code::Ok);
        }
    }
    while let Some(code) = calls.join_next().await {
        assert_ne!(code.unwrap(), Code::Ok);
    }
}

/// The lines of `text` with their values removed: the series it holds.
fn series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(name, _)| name)
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_made_up_paths_add_no_series_to_a_service_or_the_gateway() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("mallory").await;
    let service = stack.cases[0].channel().await;
    let gateway = Channel::from_shared(format!("http://{}", stack.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // One of each kind first, so every series that can exist does.
    flood_unknown_paths(&service, &token, 2).await;
    flood_unknown_paths(&gateway, &token, 2).await;
    let before = (
        series(&stack.cases[0].metrics.render()),
        series(&stack.metrics.render()),
    );

    flood_unknown_paths(&service, &token, 10_000).await;
    flood_unknown_paths(&gateway, &token, 10_000).await;

    let after = (
        series(&stack.cases[0].metrics.render()),
        series(&stack.metrics.render()),
    );
    assert_eq!(after.0, before.0, "case-svc grew series");
    assert_eq!(after.1, before.1, "the gateway grew series");
    let text = stack.cases[0].metrics.render();
    assert!(
        text.contains(
            r#"casebook_calls_total{server="case-svc",method="other",code="Unauthenticated"}"#
        ),
        "made-up paths are counted under `other`:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_past_the_limit_are_refused_while_checks_and_calls_are_answered() {
    const STREAMS: usize = 20;
    let app = CaseSvc::start(|c| c.service.server.max_concurrent_streams = STREAMS).await;
    let token = app.env.user("alice").await;
    let mut held = Vec::new();
    let mut refused = 0;
    // Spread over connections, so only the process-wide limit applies.
    for _ in 0..4 {
        let mut health = HealthClient::new(app.channel().await);
        for _ in 0..(STREAMS + 100) / 4 {
            match health.watch(HealthCheckRequest::default()).await {
                Ok(stream) => held.push(stream.into_inner()),
                Err(status) => {
                    assert_reason(&status, Code::ResourceExhausted, "TOO_MANY_STREAMS");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(held.len(), STREAMS, "exactly the stream limit is open");
    assert_eq!(refused, 100);
    for stream in &mut held {
        assert!(
            stream.message().await.unwrap().is_some(),
            "open streams are served"
        );
    }

    let mut health = HealthClient::new(app.channel().await);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    casebook::server::check_health(app.addr(), false)
        .await
        .expect("the healthcheck probe is answered");
    app.client()
        .await
        .list_cases(bearer(ListCasesRequest::default(), &token))
        .await
        .expect("unary calls have their own slots");

    // Closing streams gives their slots back.
    held.clear();
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            health.watch(HealthCheckRequest::default()).await.is_ok()
        })
        .await
    );
}

#[tokio::test]
async fn one_connection_cannot_take_the_whole_stream_limit() {
    let app = CaseSvc::start(|c| c.service.server.max_streams_per_connection = 3).await;
    let mut greedy = HealthClient::new(app.channel().await);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greedy.watch(HealthCheckRequest::default()).await.unwrap());
    }
    let status = greedy
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_reason(&status, Code::ResourceExhausted, "TOO_MANY_STREAMS");
    let mut other = HealthClient::new(app.channel().await);
    other
        .watch(HealthCheckRequest::default())
        .await
        .expect("another connection has its own share");
}

#[tokio::test]
async fn an_empty_request_body_is_invalid_argument_not_internal() {
    let app = AuthSvc::start(|_| {}).await;
    let token = app.user("eve").await;
    for path in [
        "/casebook.auth.v1.AuthService/VerifyToken",
        "/casebook.auth.v1.AuthService/WhoAmI",
    ] {
        for body in [&b""[..], &[0, 0, 0, 0, 9, 1][..]] {
            let request = http::Request::post(format!("http://{}{path}", app.addr()))
                .header("content-type", "application/grpc-web+proto")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            let (parts, _) = http1(request).await;
            assert_eq!(
                parts.headers["grpc-status"], "3",
                "{path} with {body:?}: {parts:?}"
            );
        }
    }
    // An empty message (no fields) names the missing field.
    let status = app
        .client()
        .await
        .verify_token(VerifyTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("token"), "{status:?}");
}

/// Opens a connection to `addr` and sends `head` without ever ending it.
async fn half_sent(addr: std::net::SocketAddr, head: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may refuse (431) and close before everything is written.
    let _ = stream.write_all(head).await;
    stream
}

/// What the server sent before closing: empty when it just closed.
async fn answer(mut stream: TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer));
    match read.await {
        Ok(_) => answer,
        Err(_) => panic!("the server kept a half-sent request open"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_oversized_headers_are_cut_off_and_the_gateway_keeps_serving() {
    let stack = GatewayStack::start(1, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = stack.addr();
    let mut oversized =
        b"POST /casebook.auth.v1.AuthService/WhoAmI HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    oversized.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(
            half_sent(
                addr,
                b"POST /casebook.auth.v1.AuthService/WhoAmI HTTP/1.1\r\nhost: x\r\n",
            )
            .await,
        );
    }
    let big = half_sent(addr, &oversized).await;

    let refused = answer(big).await;
    assert!(
        refused.is_empty() || refused.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    for stream in slow {
        let cut = answer(stream).await;
        assert!(
            cut.is_empty() || cut.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&cut)
        );
    }
    casebook::server::check_health(addr, false)
        .await
        .expect("the gateway still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_the_ones_inside_keep_working() {
    const LIMIT: usize = 8;
    let app = AuthSvc::start(|c| c.service.server.max_connections = LIMIT).await;
    let mut inside = Vec::new();
    for _ in 0..LIMIT {
        let channel = app.channel().await;
        let mut health = HealthClient::new(channel.clone());
        health.check(HealthCheckRequest::default()).await.unwrap();
        inside.push(health);
    }
    let extra = half_sent(app.addr(), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer(extra).await.is_empty(), "closed without an answer");
    for health in &mut inside {
        health.check(HealthCheckRequest::default()).await.unwrap();
    }
    drop(inside);
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            casebook::server::check_health(app.addr(), false)
                .await
                .is_ok()
        })
        .await,
        "closed connections give their places back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_uploads_through_the_gateway_end_within_the_body_timeout_and_the_budget_holds() {
    const BUDGET: usize = 256 * 1024;
    let stack = GatewayStack::start(1, |c| {
        c.server.body_timeout = Duration::from_millis(500);
        c.server.max_buffered_bytes = BUDGET;
    })
    .await;
    let budget = Arc::new(stack.gateway.buffered().clone());
    let token = stack.env.user("uploader").await;
    // Each announces a 1 KiB message, sends 1,000 bytes of it, and stalls.
    let mut head = format!(
        "POST /casebook.auth.v1.AuthService/WhoAmI HTTP/1.1\r\nhost: x\r\n\
         content-type: application/grpc-web+proto\r\nauthorization: Bearer {token}\r\n\
         content-length: 1029\r\n\r\n"
    )
    .into_bytes();
    head.extend([0, 0, 0, 4, 0]);
    head.extend(std::iter::repeat_n(0u8, 1000));
    let mut uploads = Vec::new();
    for _ in 0..300 {
        uploads.push(half_sent(stack.addr(), &head).await);
    }
    for upload in uploads {
        let reply = String::from_utf8_lossy(&answer_head(upload).await).into_owned();
        assert!(
            reply.contains("grpc-status: 4") || reply.contains("grpc-status: 8"),
            "cut off by the body timeout (DEADLINE_EXCEEDED) or the budget (RESOURCE_EXHAUSTED): {reply}"
        );
    }
    assert_eq!(
        budget.available(),
        BUDGET,
        "every buffered byte was given back"
    );
    // Everyone else is served.
    let reply = common::grpc_web(
        stack.addr(),
        "/casebook.auth.v1.AuthService/WhoAmI",
        &WhoAmIRequest {},
        &[("authorization", &format!("Bearer {token}"))],
        false,
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_overflow_the_buffer_budget_is_refused_at_once() {
    let stack = GatewayStack::start(1, |c| {
        c.server.body_timeout = Duration::from_secs(60);
        c.server.max_buffered_bytes = 2000;
    })
    .await;
    let budget = stack.gateway.buffered().clone();
    let upload = |sent: usize| {
        let mut head = format!(
            "POST /casebook.auth.v1.AuthService/WhoAmI HTTP/1.1\r\nhost: x\r\n\
             content-type: application/grpc-web+proto\r\ncontent-length: {}\r\n\r\n",
            sent + 100
        )
        .into_bytes();
        head.extend(std::iter::repeat_n(0u8, sent));
        head
    };
    let first = half_sent(stack.addr(), &upload(1500)).await;
    assert!(
        common::eventually(Duration::from_secs(10), async || budget.available() == 500).await,
        "the stalled upload holds what it sent"
    );
    let second = half_sent(stack.addr(), &upload(1000)).await;
    let reply = String::from_utf8_lossy(&answer_head(second).await).into_owned();
    assert!(reply.contains("grpc-status: 8"), "{reply}");
    assert_eq!(budget.available(), 500, "the refused upload holds nothing");
    drop(first);
    assert!(
        common::eventually(Duration::from_secs(10), async || budget.available() == 2000).await,
        "a client that goes away gives its bytes back"
    );
}

/// The response head the server sends on `stream` (the connection stays
/// open for keep-alive, so read until the blank line).
async fn answer_head(mut stream: TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the gateway kept a stalled upload open");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshakes_beyond_the_limit_are_closed_at_once() {
    let ca = common::TestCa::new();
    let app = AuthSvc::start(|c| {
        ca.serve_tls(&mut c.service.server);
        c.service.server.max_tls_handshakes = 2;
    })
    .await;
    // Two clients connect and never say hello: they hold both handshake slots.
    let stalled = [
        half_sent(app.addr(), b"").await,
        half_sent(app.addr(), b"").await,
    ];
    let third = half_sent(app.addr(), b"").await;
    assert!(answer(third).await.is_empty(), "closed without a handshake");
    drop(stalled);
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            casebook::server::check_health(app.addr(), true)
                .await
                .is_ok()
        })
        .await,
        "handshakes are admitted again once the stalled ones are gone"
    );
}
