//! Optional TLS: services, the gateway and the metrics endpoint serve it from
//! certificate files; the gateway calls https:// upstreams and checks their
//! certificates; bad settings stop the process at start with the setting named.

mod common;

use std::sync::Arc;

use casebook::metrics::Metrics;
use casebook::pb::casebook::auth::v1::{
    User, WhoAmIRequest, auth_service_client::AuthServiceClient,
};
use clap::CommandFactory as _;
use common::{AuthSvc, CaseSvc, TestCa, TestEnv, bearer, grpc_web_tls, https1, start_gateway};
use http_body_util::Full;
use hyper::body::Bytes;
use tonic::Code;

const WHO_AM_I: &str = "/casebook.auth.v1.AuthService/WhoAmI";

#[tokio::test]
async fn a_service_with_a_certificate_serves_grpc_over_tls_only() {
    let ca = TestCa::new();
    let app = AuthSvc::start(|c| ca.serve_tls(&mut c.service.server)).await;
    let token = app.env.user("alice").await;

    let mut client = AuthServiceClient::new(ca.channel(app.addr()).await);
    let user = client
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.id, "alice");

    let plaintext = AuthServiceClient::connect(format!("http://{}", app.addr()))
        .await
        .unwrap()
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await;
    assert!(
        plaintext.is_err(),
        "plaintext must not be served: {plaintext:?}"
    );

    casebook::server::check_health(app.addr(), true)
        .await
        .expect("the healthcheck probe speaks TLS to its own server");
    assert!(
        casebook::server::check_health(app.addr(), false)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_gateway_serves_browsers_over_tls_and_calls_upstreams_over_tls() {
    let ca = TestCa::new();
    let env =
        Arc::new(TestEnv::new(common::Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
    let auth = AuthSvc::start_in(Arc::clone(&env), |c| ca.serve_tls(&mut c.service.server)).await;
    let cases = CaseSvc::start_in(Arc::clone(&env), |c| ca.serve_tls(&mut c.service.server)).await;
    let auth_url = format!("https://localhost:{}", auth.addr().port());
    let case_url = format!("https://localhost:{}", cases.addr().port());
    let gateway = start_gateway(&auth_url, &case_url, |c| {
        c.upstream_tls_ca_file = Some(ca.path("ca.pem").into());
        ca.serve_tls(&mut c.server);
    })
    .await;
    let token = env.user("bob").await;

    // grpc-web over HTTP/1.1 and TLS, as a browser or an HTTP/1.1 proxy sends it.
    let url = format!(
        "https://localhost:{}{WHO_AM_I}",
        gateway.local_addr().port()
    );
    let auth_header = format!("Bearer {token}");
    let reply = grpc_web_tls(
        &url,
        &ca.ca_pem,
        &WhoAmIRequest {},
        &[("authorization", &auth_header)],
    )
    .await;
    assert_eq!(reply.grpc_status(), Some(0), "{reply:?}");
    assert_eq!(reply.message::<User>().id, "bob");

    // Native gRPC (HTTP/2 negotiated by ALPN) through the same listener.
    let user = AuthServiceClient::new(ca.channel(gateway.local_addr()).await)
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.id, "bob");
}

#[tokio::test]
async fn the_gateway_refuses_an_upstream_certificate_it_does_not_trust() {
    let ca = TestCa::new();
    let auth = AuthSvc::start(|c| ca.serve_tls(&mut c.service.server)).await;
    let token = auth.env.user("carol").await;
    let auth_url = format!("https://localhost:{}", auth.addr().port());
    // No UPSTREAM_TLS_CA_FILE: only the system's roots, which never signed
    // the test CA's certificate. The gateway must not fall back to plaintext.
    let gateway = start_gateway(&auth_url, "http://127.0.0.1:1", |_| {}).await;
    let status = AuthServiceClient::connect(format!("http://{}", gateway.local_addr()))
        .await
        .unwrap()
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !gateway.auth.is_serving(),
        "an untrusted replica is never healthy"
    );
}

#[tokio::test]
async fn metrics_are_served_over_tls_with_the_same_certificate() {
    let ca = TestCa::new();
    let mut settings = casebook::config::ServerArgs::defaults().unwrap();
    ca.serve_tls(&mut settings);
    let addr =
        casebook::server::serve_metrics(([127, 0, 0, 1], 0).into(), &Metrics::new(), &settings)
            .await
            .unwrap();
    let request = http::Request::get(format!("https://localhost:{}/metrics", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body) = https1(request, &ca.ca_pem).await;
    assert_eq!(parts.status, 200, "{body:?}");
    assert_eq!(
        parts.headers["content-type"],
        casebook::metrics::CONTENT_TYPE
    );
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
}

#[tokio::test]
async fn bad_tls_settings_stop_the_start_and_name_the_setting() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let missing = ca.path("missing.pem");
    let cert = ca.path("server.pem");
    let key = ca.path("server.key");
    let foreign_key = other.path("server.key");
    let not_pem = ca.path("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (cert, key, expected) in [
        (&missing, &key, "cannot read TLS_CERT_FILE"),
        (&not_pem, &key, "TLS_CERT_FILE"),
        (&cert, &not_pem, "TLS_KEY_FILE is not a PEM private key"),
        (&cert, &foreign_key, "do not form a usable identity"),
    ] {
        let env =
            Arc::new(TestEnv::new(common::Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
        let mut config = env.auth_config();
        config.service.server.tls.tls_cert_file = Some(cert.into());
        config.service.server.tls.tls_key_file = Some(key.into());
        let error = auth_svc::build(config, &Metrics::new())
            .await
            .err()
            .expect("start refused");
        assert!(error.to_string().contains(expected), "{error}");
    }
    let mut upstream = common::gateway_config("https://localhost:1", &[]);
    upstream.upstream_tls_ca_file = Some(not_pem.into());
    let error = gateway::build(upstream, &Metrics::new())
        .await
        .err()
        .expect("start refused");
    let message = error.to_string();
    assert!(
        message.contains("UPSTREAM_TLS_CA_FILE") && message.contains("holds no certificate"),
        "{message}"
    );
    // The parser alone, without the environment's fallbacks.
    let parser = auth_svc::Config::command().mut_args(|arg| arg.env(None));
    let alone = parser.try_get_matches_from(["auth-svc", "--tls-cert-file", &cert]);
    assert!(
        alone.is_err(),
        "a certificate without its key is refused by the parser"
    );
}
