//! Hostile input at the edges: deeply nested claims, giant metadata, giant
//! and undecodable messages. Each is refused with a clear status and the
//! server goes on serving.

mod common;

use casebook::pb::casebook::{
    auth::v1::VerifyTokenRequest,
    cases::v1::{Case, CreateCaseRequest, case::Type},
};
use common::{AuthSvc, CaseSvc, assert_reason, bearer, claims, grpc_web};
use serde_json::{Value, json};
use tonic::Code;

/// A message whose field 1 is raw bytes, to put anything where `case` goes.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
}

const CREATE: &str = "/casebook.cases.v1.CaseService/CreateCase";

/// `[[[ … "bottom" … ]]]`, `levels` arrays deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("bottom"), |inner, _| Value::Array(vec![inner]))
}

fn case(description: String) -> CreateCaseRequest {
    CreateCaseRequest {
        case: Some(Case {
            title: "hostile".into(),
            description,
            r#type: Type::Incident as i32,
            ..Case::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn deeply_nested_claims_are_refused_before_they_reach_a_response() {
    let app = AuthSvc::start(|_| {}).await;
    let key = app.issuer.key(casebook::auth::Algorithm::EdDsa);
    let token_with = |value: Value| {
        let mut body = claims("deep");
        body["nested"] = value;
        key.sign_parts(
            json!({"alg": "EdDSA", "kid": key.kid()})
                .to_string()
                .as_bytes(),
            body.to_string().as_bytes(),
        )
    };
    let mut client = app.client().await;
    let verify = |token: String| VerifyTokenRequest { token };

    // Within the limit the claim is handed on intact, and decodes.
    let principal = client
        .verify_token(verify(token_with(nested(
            casebook::auth::claims::MAX_CLAIM_DEPTH,
        ))))
        .await
        .expect("claims within the depth limit are accepted")
        .into_inner()
        .principal
        .unwrap();
    assert!(principal.claims.unwrap().fields.contains_key("nested"));

    // Past it (and past serde_json's own limit of 128) the token is malformed.
    for levels in [casebook::auth::claims::MAX_CLAIM_DEPTH + 1, 500] {
        let status = client
            .verify_token(verify(token_with(nested(levels))))
            .await
            .unwrap_err();
        assert_reason(&status, Code::Unauthenticated, "MALFORMED_TOKEN");
    }
}

#[tokio::test]
async fn giant_metadata_is_refused_and_the_server_keeps_serving() {
    let app = CaseSvc::start(|_| {}).await;
    let token = app.env.user("meta").await;

    let mut request = bearer(case(String::new()), &token);
    let huge = "x".repeat(100 * 1024);
    request
        .metadata_mut()
        .insert("x-padding", huge.parse().unwrap());
    let refused = app.client().await.create_case(request).await;
    // HTTP/2 refuses the header block before gRPC sees it: 431 Request
    // Header Fields Too Large, which the client reports as such.
    let status = refused.expect_err("a 100 KiB header is beyond the 64 KiB limit");
    assert!(status.message().contains("431"), "{status:?}");

    let created = app
        .client()
        .await
        .create_case(bearer(case("after".into()), &token))
        .await
        .expect("the next call is served");
    assert_eq!(created.into_inner().description, "after");
}

#[tokio::test]
async fn a_giant_message_is_resource_exhausted_naming_the_limit() {
    let app = CaseSvc::start(|c| c.service.server.grpc_max_message_bytes = 65536).await;
    let token = app.env.user("big").await;
    let status = app
        .client()
        .await
        .create_case(bearer(case("d".repeat(100_000)), &token))
        .await
        .unwrap_err();
    assert_reason(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    assert!(status.message().contains("65536"), "{}", status.message());
}

#[tokio::test]
async fn an_undecodable_message_is_the_callers_error() {
    let app = CaseSvc::start(|_| {}).await;
    let token = app.env.user("garbage").await;
    // Field 1 (`case`) holding bytes that are not a Case: a truncated varint.
    let garbage = Garbage {
        value: vec![0xff; 12],
    };
    let auth = format!("Bearer {token}");
    let reply = grpc_web(
        app.addr(),
        CREATE,
        &garbage,
        &[("authorization", &auth)],
        false,
    )
    .await;
    assert_eq!(
        reply.grpc_status(),
        Some(Code::InvalidArgument as i32),
        "{reply:?}"
    );
    let message = &reply.trailers["grpc-message"];
    assert!(message.contains("protobuf"), "{message}");
}
