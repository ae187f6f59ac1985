//! Logs carry what an operator needs (method, code, user id, request id) and
//! never a token or an email. Its own test binary: it installs the process's
//! log subscriber and captures every line.

mod common;

use std::sync::{Arc, Mutex};

use casebook::pb::casebook::{
    auth::v1::{VerifyTokenRequest, WhoAmIRequest},
    cases::v1::ListCasesRequest,
};
use common::{GatewayStack, bearer};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_the_call_and_the_user_but_never_a_token_or_email() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .init();

    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("log-user").await;
    let mut auth = stack.auth.client().await;
    let mut cases = stack.cases[0].client().await;
    auth.who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap();
    auth.verify_token(VerifyTokenRequest {
        token: token.clone(),
    })
    .await
    .unwrap();
    cases
        .list_cases(bearer(ListCasesRequest::default(), &token))
        .await
        .unwrap();
    let forged = format!("{token}x");
    let _ = auth
        .who_am_i(bearer(WhoAmIRequest {}, &forged))
        .await
        .unwrap_err();
    let _ = common::grpc_web(
        stack.addr(),
        "/casebook.auth.v1.AuthService/WhoAmI",
        &WhoAmIRequest {},
        &[("authorization", &format!("Bearer {token}"))],
        false,
    )
    .await;
    drop(stack);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(r#""method":"casebook.auth.v1.AuthService/WhoAmI""#),
        "{logs}"
    );
    assert!(
        logs.contains(r#""user":"log-user""#),
        "the user id is logged"
    );
    assert!(logs.contains(r#""request_id":""#));
    assert!(
        logs.contains(r#""reason":"MALFORMED_TOKEN""#),
        "rejections say why"
    );
    // Probes (here the gateway's checks of its upstreams) are quiet at INFO.
    let line_of = |method: &str| {
        let needle = format!(r#""method":"{method}""#);
        logs.lines()
            .filter(|line| line.contains(&needle))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let probes = line_of("grpc.health.v1.Health/Check");
    assert!(!probes.is_empty(), "health checks were made and logged");
    assert!(
        probes
            .iter()
            .all(|line| line.contains(r#""level":"DEBUG""#)),
        "{probes:?}"
    );
    assert!(
        line_of("casebook.auth.v1.AuthService/WhoAmI")
            .iter()
            .all(|line| line.contains(r#""level":"INFO""#)),
        "what users did is logged at INFO"
    );
    for secret in [token.as_str(), forged.as_str(), "log-user@example.com"] {
        assert!(!logs.contains(secret), "a log line contains {secret:.20}…");
    }
    // Not even a token's signature or payload part on its own.
    for part in token.split('.') {
        assert!(
            !logs.contains(part),
            "a log line contains part of the token"
        );
    }
}
