//! What operators see: request ids, per-call metrics, the metrics endpoint,
//! database pool gauges, and refusal beyond the concurrency limit that never
//! waits for the calls it protects.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use casebook::auth::{Algorithm, issuer::SigningKey};
use casebook::pb::casebook::{
    auth::v1::{VerifyTokenRequest, WhoAmIRequest},
    cases::v1::{Case, CreateCaseRequest, ListCasesRequest, case::Type},
};
use common::{
    AuthSvc, Behaviour, CaseSvc, GatewayStack, assert_reason, bearer, claims, eventually, http1,
};
use http_body_util::Full;
use hyper::body::Bytes;
use tonic::Code;

#[tokio::test]
async fn request_ids_are_returned_generated_and_carried_through_the_gateway() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let mut client = stack.auth.client().await;

    let mut request = bearer(WhoAmIRequest {}, &token);
    request
        .metadata_mut()
        .insert("x-request-id", "req-123".parse().unwrap());
    let response = client.who_am_i(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-123");

    let response = client
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 32, "a generated id: {generated}");

    let reply = common::grpc_web(
        stack.addr(),
        "/casebook.auth.v1.AuthService/WhoAmI",
        &WhoAmIRequest {},
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", "from-the-browser"),
        ],
        false,
    )
    .await;
    assert_eq!(
        reply.headers["x-request-id"], "from-the-browser",
        "the gateway forwards the caller's id"
    );

    let status = client.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert!(
        status.metadata().get("x-request-id").is_some(),
        "errors carry it too"
    );
}

#[tokio::test]
async fn calls_and_rejections_are_counted_and_served_on_the_metrics_endpoint() {
    let app = AuthSvc::start(|_| {}).await;
    let token = app.user("metrics-user").await;
    let mut client = app.client().await;
    client
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap();
    let _ = client
        .verify_token(VerifyTokenRequest {
            token: "a.b.c".into(),
        })
        .await;

    let limits = casebook::config::ServerArgs::defaults().unwrap();
    let addr = casebook::server::serve_metrics(([127, 0, 0, 1], 0).into(), &app.metrics, &limits)
        .await
        .unwrap();
    let request = http::Request::get(format!("http://{addr}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = http1(request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(
        parts.headers["content-type"],
        casebook::metrics::CONTENT_TYPE
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    for expected in [
        "# TYPE casebook_calls counter",
        "# HELP casebook_calls ",
        r#"casebook_calls_total{server="auth-svc",method="casebook.auth.v1.AuthService/WhoAmI",code="Ok"}"#,
        r#"casebook_call_duration_seconds_bucket{le="+Inf",server="auth-svc",method="casebook.auth.v1.AuthService/WhoAmI"}"#,
        r#"casebook_token_rejections_total{server="auth-svc",reason="MALFORMED_TOKEN"}"#,
        r#"casebook_jwks_fetches_total{server="auth-svc",result="ok"}"#,
        "casebook_jwks_age_seconds{",
        "casebook_token_cache_misses_total",
        "# TYPE casebook_calls_in_flight gauge",
        "# TYPE casebook_db_pool_connections gauge",
        "# EOF",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

/// The value of the pool gauge `name{labels}` of case-svc's database.
fn pool_gauge(app: &CaseSvc, name: &str, state: Option<&str>) -> Option<f64> {
    let database = casebook::db::redact(app.env.db.url());
    let state = state.map_or(String::new(), |s| format!(r#",state="{s}""#));
    app.sample(&format!(
        r#"{name}{{server="case-svc",database="{database}"{state}}} "#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_gauges_show_connections_in_use_and_calls_waiting_for_one() {
    let app = CaseSvc::start(|c| {
        c.service.database.database_max_connections = 1;
        c.service.database.database_acquire_timeout = Duration::from_secs(30);
    })
    .await;
    let token = app.env.user("pat").await;
    let gauge = |name: &'static str, state: Option<&'static str>| pool_gauge(&app, name, state);
    assert_eq!(gauge("casebook_db_pool_max_connections", None), Some(1.0));
    assert_eq!(gauge("casebook_db_pool_waiting", None), Some(0.0));

    let lock = app.env.db.block_case_writes().await;
    // The write takes the only connection and waits on the lock...
    let mut writer = app.client().await;
    let write = tokio::spawn(async move {
        let case = Case {
            title: "queued".into(),
            r#type: Type::Incident as i32,
            ..Case::default()
        };
        let request = bearer(
            CreateCaseRequest {
                case: Some(case),
                ..Default::default()
            },
            &token,
        );
        writer.create_case(request).await
    });
    assert!(
        eventually(Duration::from_secs(10), async || {
            gauge("casebook_db_pool_connections", Some("in_use")) == Some(1.0)
        })
        .await,
        "the blocked write holds the connection"
    );
    // ...so a read has to wait for it, and is counted while it does.
    let token = app.env.issuer.token("pat");
    let mut reader = app.client().await;
    let read = tokio::spawn(async move {
        reader
            .list_cases(bearer(ListCasesRequest::default(), &token))
            .await
    });
    assert!(
        eventually(Duration::from_secs(10), async || {
            gauge("casebook_db_pool_waiting", None) == Some(1.0)
        })
        .await,
        "the read waits for a connection"
    );

    lock.release().await;
    write
        .await
        .unwrap()
        .expect("the write completes once the lock is gone");
    let listed = read
        .await
        .unwrap()
        .expect("the read gets the connection")
        .into_inner();
    assert_eq!(listed.cases.len(), 1);
    assert_eq!(gauge("casebook_db_pool_waiting", None), Some(0.0));
    // sqlx hands a connection back to the pool in the background, so the
    // reply can arrive a moment before the gauge drops.
    assert!(
        eventually(Duration::from_secs(10), async || {
            gauge("casebook_db_pool_connections", Some("in_use")) == Some(0.0)
        })
        .await,
        "the connection goes back to the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_four_times_the_limit_the_excess_is_refused_while_admitted_calls_complete() {
    const LIMIT: usize = 4;
    let app = AuthSvc::start(|c| {
        c.service.server.max_concurrent_calls = LIMIT;
        c.service.auth.jwks_refetch_cooldown = Duration::ZERO;
    })
    .await;
    // The first key set must be in before the JWKS changes, or a call could
    // join that first fetch and miss the key published below.
    let addr = app.addr();
    assert!(
        eventually(Duration::from_secs(10), async || {
            casebook::server::check_health(addr, false).await.is_ok()
        })
        .await
    );
    // A key the service has not seen yet: calls signed with it wait on a slow
    // refetch (holding their slots), which then finds it published.
    let late = SigningKey::generate(Algorithm::EdDsa, "late").unwrap();
    let mut jwks = app.issuer.jwks();
    jwks["keys"].as_array_mut().unwrap().push(late.public_jwk());
    app.jwks.publish(jwks);
    app.jwks
        .behave(Behaviour::Slow(Duration::from_millis(1500)));
    let token = late.sign(&claims("u"));

    let client = app.client().await;
    let answered = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..4 * LIMIT)
        .map(|_| {
            let (mut client, answered, token) =
                (client.clone(), Arc::clone(&answered), token.clone());
            tokio::spawn(async move {
                let result = client.verify_token(VerifyTokenRequest { token }).await;
                (answered.fetch_add(1, Ordering::SeqCst), result)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            (order, Ok(response)) => {
                assert_eq!(response.into_inner().principal.unwrap().key_id, "late");
                admitted.push(order);
            }
            (order, Err(status)) => {
                assert_reason(&status, Code::ResourceExhausted, "OVERLOADED");
                refused.push(order);
            }
        }
    }
    assert_eq!(admitted.len(), LIMIT, "exactly the limit is admitted");
    assert_eq!(refused.len(), 3 * LIMIT);
    // Every refusal was answered while the admitted calls were still waiting
    // on the slow fetch: refusing never queues behind the work it protects.
    assert!(
        refused.iter().max() < admitted.iter().min(),
        "refused {refused:?} before admitted {admitted:?}"
    );
}
