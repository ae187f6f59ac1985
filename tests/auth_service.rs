//! auth-svc end to end: real gRPC over a socket, a real JWKS over HTTP and a
//! real database (SQLite, or PostgreSQL with `CASEBOOK_TEST_POSTGRES`).

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use casebook::{
    auth::{Algorithm, issuer::SigningKey},
    pb::casebook::auth::v1::{VerifyTokenRequest, WhoAmIRequest},
};
use common::{
    AuthSvc, Behaviour, ISSUER, Issuer, JwksServer, assert_reason, bearer, claims, eventually, now,
};
use serde_json::{Value, json};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn verify(
    app: &AuthSvc,
    token: &str,
) -> Result<casebook::pb::casebook::auth::v1::Principal, tonic::Status> {
    let response = app
        .client()
        .await
        .verify_token(VerifyTokenRequest {
            token: token.to_owned(),
        })
        .await?;
    Ok(response.into_inner().principal.unwrap())
}

/// Verifies `token` and asserts the rejection's code and reason.
async fn assert_rejected(app: &AuthSvc, token: &str, reason: &str) {
    let status = verify(app, token).await.unwrap_err();
    assert_reason(&status, Code::Unauthenticated, reason);
    assert!(!status.message().contains(token), "message leaks the token");
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn tokens_of_every_better_auth_algorithm_are_accepted() {
    let app = AuthSvc::start(|_| {}).await;
    for key in &app.issuer.keys {
        let principal = verify(&app, &key.sign(&claims("user-1"))).await.unwrap();
        assert_eq!(principal.user_id, "user-1");
        assert_eq!(principal.algorithm, key.algorithm().as_str());
        assert_eq!(principal.key_id, key.kid());
        assert_eq!(principal.issuer, ISSUER);
        assert_eq!(principal.audiences, vec![ISSUER.to_owned()]);
        let claims = principal.claims.unwrap().fields;
        assert!(
            claims.contains_key("email"),
            "Better Auth's user claims are kept"
        );
        assert!(
            !claims.contains_key("sub"),
            "registered claims are not repeated"
        );
    }
}

#[tokio::test]
async fn ed25519_alg_name_is_accepted_like_eddsa() {
    let app = AuthSvc::start(|_| {}).await;
    let key = app.issuer.key(Algorithm::EdDsa);
    let header = json!({"alg": "Ed25519", "kid": key.kid()});
    let token = key.sign_parts(
        header.to_string().as_bytes(),
        claims("u").to_string().as_bytes(),
    );
    assert_eq!(verify(&app, &token).await.unwrap().algorithm, "EdDSA");
}

#[tokio::test]
async fn who_am_i_returns_the_callers_better_auth_user() {
    let app = AuthSvc::start(|_| {}).await;
    app.db
        .insert_user(
            "Mr0yzW2pZKQ0tw5FzS2lLAhPHAboB8qO",
            "Carol",
            "carol@example.com",
        )
        .await;
    let token = app.issuer.token("Mr0yzW2pZKQ0tw5FzS2lLAhPHAboB8qO");
    let user = app
        .client()
        .await
        .who_am_i(bearer(WhoAmIRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.name, "users/Mr0yzW2pZKQ0tw5FzS2lLAhPHAboB8qO");
    assert_eq!(user.id, "Mr0yzW2pZKQ0tw5FzS2lLAhPHAboB8qO");
    assert_eq!(user.display_name, "Carol");
    assert_eq!(user.email, "carol@example.com");
    assert!(user.email_verified);
    assert_eq!(user.image, "");
    let created = user.create_time.unwrap();
    assert_eq!(
        (created.seconds, created.nanos),
        (1_795_649_876, 395_000_000)
    );
}

#[tokio::test]
async fn who_am_i_for_a_deleted_user_is_not_found() {
    let app = AuthSvc::start(|_| {}).await;
    app.db.insert_user("gone", "Gone", "gone@example.com").await;
    app.db.delete_user("gone").await;
    let status = app
        .client()
        .await
        .who_am_i(bearer(WhoAmIRequest {}, &app.issuer.token("gone")))
        .await
        .unwrap_err();
    assert_reason(&status, Code::NotFound, "USER_NOT_FOUND");
}

#[tokio::test]
async fn who_am_i_requires_exactly_one_bearer_token() {
    let app = AuthSvc::start(|_| {}).await;
    let mut client = app.client().await;
    let status = client.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_reason(&status, Code::Unauthenticated, "MISSING_CREDENTIALS");

    let mut basic = tonic::Request::new(WhoAmIRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = client.who_am_i(basic).await.unwrap_err();
    assert_reason(
        &status,
        Code::Unauthenticated,
        "INVALID_AUTHORIZATION_HEADER",
    );

    let token = app.issuer.token("u");
    let mut twice = bearer(WhoAmIRequest {}, &token);
    twice
        .metadata_mut()
        .append("authorization", format!("Bearer {token}").parse().unwrap());
    let status = client.who_am_i(twice).await.unwrap_err();
    assert_reason(
        &status,
        Code::Unauthenticated,
        "INVALID_AUTHORIZATION_HEADER",
    );
}

#[tokio::test]
async fn verify_token_without_a_token_is_invalid_argument() {
    let app = AuthSvc::start(|_| {}).await;
    let status = verify(&app, "  ").await.unwrap_err();
    assert_reason(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let violations = tonic_types::StatusExt::get_details_bad_request(&status).unwrap();
    assert_eq!(violations.field_violations[0].field, "token");
}

#[tokio::test]
async fn every_rejection_class_has_its_reason() {
    let app = AuthSvc::start(|_| {}).await;
    let ed = app.issuer.key(Algorithm::EdDsa);
    let sign = |header: Value, claims: Value| {
        ed.sign_parts(header.to_string().as_bytes(), claims.to_string().as_bytes())
    };
    let header = json!({"alg": "EdDSA", "kid": ed.kid()});
    let with = |patch: Value| {
        let mut c = claims("u");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };

    // Size is checked before anything is decoded.
    assert_rejected(&app, &"a".repeat(9000), "TOKEN_TOO_LARGE").await;
    // Structure.
    assert_rejected(&app, "abc.def", "MALFORMED_TOKEN").await;
    assert_rejected(&app, "a.b.c.d.e", "MALFORMED_TOKEN").await;
    assert_rejected(&app, "!!!.e30.AAAA", "MALFORMED_TOKEN").await;
    let padded = format!("{}=", app.issuer.token("u"));
    assert_rejected(&app, &padded, "MALFORMED_TOKEN").await;
    // Header rules.
    assert_rejected(
        &app,
        &sign(
            json!({"alg": "EdDSA", "kid": ed.kid(), "typ": "at+jwt"}),
            claims("u"),
        ),
        "UNSUPPORTED_TOKEN_TYPE",
    )
    .await;
    assert_rejected(
        &app,
        &sign(
            json!({"alg": "EdDSA", "kid": ed.kid(), "crit": ["exp"]}),
            claims("u"),
        ),
        "UNSUPPORTED_CRITICAL_HEADER",
    )
    .await;
    let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims("u")));
    assert_rejected(&app, &none, "ALGORITHM_NOT_ALLOWED").await;
    assert_rejected(
        &app,
        &sign(json!({"alg": "HS256", "kid": ed.kid()}), claims("u")),
        "ALGORITHM_NOT_ALLOWED",
    )
    .await;
    assert_rejected(
        &app,
        &sign(
            json!({"alg": "EdDSA", "kid": "nobody-publishes-this"}),
            claims("u"),
        ),
        "UNKNOWN_KEY",
    )
    .await;
    // A token naming the ES256 key while claiming EdDSA.
    assert_rejected(
        &app,
        &sign(json!({"alg": "EdDSA", "kid": "kid-ES256"}), claims("u")),
        "KEY_ALGORITHM_MISMATCH",
    )
    .await;
    // An embedded attacker key is never used.
    let attacker = SigningKey::generate(Algorithm::EdDsa, "kid-EdDSA").unwrap();
    let embedded = attacker.sign_parts(
        json!({"alg": "EdDSA", "kid": "kid-EdDSA", "jwk": attacker.public_jwk(), "jku": "http://evil.test/jwks"}).to_string().as_bytes(),
        claims("u").to_string().as_bytes(),
    );
    assert_rejected(&app, &embedded, "INVALID_SIGNATURE").await;
    // A valid signature over different claims.
    let good = app.issuer.token("u");
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered = format!("{head}.{}.{signature}", b64(&claims("admin")));
    assert_rejected(&app, &tampered, "INVALID_SIGNATURE").await;
    // Claims.
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"exp": now() - 120}))),
        "TOKEN_EXPIRED",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"nbf": now() + 300}))),
        "TOKEN_NOT_YET_VALID",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"iat": now() + 300}))),
        "TOKEN_NOT_YET_VALID",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"exp": null}))),
        "MISSING_CLAIM",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"sub": null}))),
        "MISSING_CLAIM",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"exp": "tomorrow"}))),
        "INVALID_CLAIM",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"iss": "http://other.test"}))),
        "INVALID_ISSUER",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"aud": "http://other.test"}))),
        "INVALID_AUDIENCE",
    )
    .await;
    assert_rejected(
        &app,
        &sign(header.clone(), with(json!({"aud": ["a", "b"]}))),
        "INVALID_AUDIENCE",
    )
    .await;
}

#[tokio::test]
async fn leeway_and_audience_arrays_are_honoured() {
    let app = AuthSvc::start(|_| {}).await;
    let ed = app.issuer.key(Algorithm::EdDsa);
    let mut c = claims("u");
    c["exp"] = json!(now() - 10); // expired, but within the 30 s leeway
    c["aud"] = json!(["http://other.test", ISSUER]);
    let principal = verify(&app, &ed.sign(&c)).await.unwrap();
    assert_eq!(principal.audiences.len(), 2);
}

#[tokio::test]
async fn algorithms_outside_the_configured_list_are_refused() {
    let app = AuthSvc::start(|c| c.service.auth.jwt_algorithms = vec![Algorithm::EdDsa]).await;
    let es = app.issuer.key(Algorithm::Es256).sign(&claims("u"));
    assert_rejected(&app, &es, "ALGORITHM_NOT_ALLOWED").await;
    let ed = app.issuer.key(Algorithm::EdDsa).sign(&claims("u"));
    assert!(verify(&app, &ed).await.is_ok());
}

#[tokio::test]
async fn a_token_without_kid_needs_a_single_key_set() {
    let single = AuthSvc::start_with(Issuer::single(Algorithm::Es256), |_| {}).await;
    let key = single.issuer.key(Algorithm::Es256);
    let no_kid = key.sign_parts(br#"{"alg":"ES256"}"#, claims("u").to_string().as_bytes());
    assert_eq!(verify(&single, &no_kid).await.unwrap().key_id, "kid-ES256");

    let many = AuthSvc::start(|_| {}).await;
    let key = many.issuer.key(Algorithm::Es256);
    let no_kid = key.sign_parts(br#"{"alg":"ES256"}"#, claims("u").to_string().as_bytes());
    assert_rejected(&many, &no_kid, "UNKNOWN_KEY").await;
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_are_unavailable_not_unauthenticated() {
    // Port 9 (discard) is closed on loopback: every fetch is refused.
    let app = AuthSvc::start(|c| {
        c.service.auth.jwks_url = Some("http://127.0.0.1:9/api/auth/jwks".into());
    })
    .await;
    let status = verify(&app, &app.issuer.token("u")).await.unwrap_err();
    assert_reason(&status, Code::Unavailable, "JWKS_UNAVAILABLE");
}

#[tokio::test]
async fn health_is_not_serving_until_keys_load_and_reflection_lists_the_service() {
    let issuer = Issuer::single(Algorithm::EdDsa);
    let jwks = JwksServer::start(issuer.jwks()).await;
    jwks.behave(Behaviour::Status(503));
    let app = AuthSvc::start_on(jwks, issuer, |_| {}).await;
    let mut health = HealthClient::new(app.channel().await);
    let status = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    let serving = health
        .check(status(""))
        .await
        .map(|r| r.into_inner().status);
    assert_ne!(
        serving.ok(),
        Some(ServingStatus::Serving as i32),
        "serving before keys loaded"
    );

    app.jwks.behave(Behaviour::Serve);
    let loaded = eventually(Duration::from_secs(10), async || {
        health
            .check(status("casebook.auth.v1.AuthService"))
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    })
    .await;
    assert!(
        loaded,
        "health never turned SERVING after the JWKS came back"
    );

    for list in [reflection_v1(&app).await, reflection_v1alpha(&app).await] {
        assert!(
            list.contains(&"casebook.auth.v1.AuthService".to_owned()),
            "{list:?}"
        );
        assert!(
            list.contains(&"grpc.health.v1.Health".to_owned()),
            "{list:?}"
        );
    }

    // Shutdown flips health before the listener closes.
    let addr = app.addr();
    app.server.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening after shutdown"
    );
}

/// Lists services through one reflection version (v1 and v1alpha have
/// identical shapes but distinct generated types).
macro_rules! list_services {
    ($version:ident, $app:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut client = ServerReflectionClient::new($app.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response
            .unwrap()
        {
            MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

async fn reflection_v1(app: &AuthSvc) -> Vec<String> {
    list_services!(v1, app)
}

async fn reflection_v1alpha(app: &AuthSvc) -> Vec<String> {
    list_services!(v1alpha, app)
}
