//! HTTP/JSON over real sockets: every REST route, the `/api/auth/me`
//! compatibility route, Connect (JSON and binary), HTTP errors with Google's
//! JSON error shape, ETag preconditions, idempotency keys, CORS preflights
//! and the OpenAPI document, through the gateway and on a service directly.

mod common;

use casebook::pb::casebook::cases::v1::{Case, GetCaseRequest, case::Type};
use common::{CaseSvc, GatewayStack};
use prost::Message;
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

/// A client of `base` (`http://addr`) speaking as `token`.
struct Http {
    client: Client,
    base: String,
    token: String,
}

impl Http {
    fn new(addr: std::net::SocketAddr, token: &str) -> Self {
        Self {
            client: Client::builder().http1_only().build().unwrap(),
            base: format!("http://{addr}"),
            token: token.to_owned(),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn create(&self, title: &str) -> Value {
        let response = self
            .request(Method::POST, "/v1/cases")
            .json(&json!({"title": title, "type": "INCIDENT"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

/// The body of an error response, checked to be Google's JSON error shape
/// with `status` and the ErrorInfo `reason`.
async fn error(response: Response, http: u16, status: &str, reason: &str) -> Value {
    assert_eq!(response.status().as_u16(), http, "{response:?}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], http, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
    let details = body["error"]["details"].as_array().unwrap();
    assert!(
        details
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
                && d["reason"] == reason),
        "no ErrorInfo {reason} in {body}"
    );
    body
}

#[tokio::test]
async fn every_case_route_works_through_the_gateway() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let http = Http::new(stack.addr(), &token);

    // Create, with an idempotency key: the retry returns the same case.
    let create = || {
        http.request(Method::POST, "/v1/cases")
            .header("idempotency-key", "7f1c1f9e-1")
            .json(&json!({"title": "Printer on fire", "type": "INCIDENT"}))
    };
    let first = create().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let created: Value = first.json().await.unwrap();
    let again: Value = create().send().await.unwrap().json().await.unwrap();
    assert_eq!(
        again["name"], created["name"],
        "one case per idempotency key"
    );
    let name = created["name"].as_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", created["etag"].as_str().unwrap()));
    assert_eq!(created["status"], "OPEN");
    assert!(created["createTime"].as_str().unwrap().ends_with('Z'));

    // Get, and a conditional get.
    let path = format!("/v1/{name}");
    let got: Value = http
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, created);
    let unchanged = http
        .request(Method::GET, &path)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());

    // List with a page size and a filter (enum values by name).
    http.create("a question").await;
    let listed: Value = http
        .request(
            Method::GET,
            "/v1/cases?pageSize=1&filter=status%20%3D%20OPEN",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["cases"].as_array().unwrap().len(), 1);
    let next = listed["nextPageToken"].as_str().unwrap();
    let rest: Value = http
        .request(
            Method::GET,
            &format!("/v1/cases?page_size=1&filter=status%20%3D%20OPEN&pageToken={next}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["cases"].as_array().unwrap().len(), 1);
    assert_ne!(rest["cases"][0]["name"], listed["cases"][0]["name"]);

    // Patch one field under If-Match; the etag moves on.
    let patched = http
        .request(Method::PATCH, &format!("{path}?updateMask=status"))
        .header("if-match", &etag)
        .json(&json!({"status": "IN_PROGRESS", "title": "ignored: not in the mask"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let new_etag = patched.headers()["etag"].to_str().unwrap().to_owned();
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["status"], "IN_PROGRESS");
    assert_eq!(patched["title"], "Printer on fire");
    assert_ne!(new_etag, etag);

    // The old etag is now a failed precondition.
    let stale = http
        .request(Method::DELETE, &path)
        .header("if-match", &etag)
        .send()
        .await
        .unwrap();
    error(stale, 412, "ABORTED", "ETAG_MISMATCH").await;

    // Delete, then undelete (a custom method).
    let deleted: Value = http
        .request(Method::DELETE, &path)
        .header("if-match", &new_etag)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(deleted["deleteTime"].is_string());
    let restored = http
        .request(Method::POST, &format!("{path}:undelete"))
        .send()
        .await
        .unwrap();
    assert_eq!(restored.status(), StatusCode::OK);
    let restored: Value = restored.json().await.unwrap();
    assert!(restored.get("deleteTime").is_none(), "{restored}");
    let twice = http
        .request(Method::POST, &format!("{path}:undelete"))
        .send()
        .await
        .unwrap();
    error(twice, 409, "ALREADY_EXISTS", "CASE_NOT_DELETED").await;
}

#[tokio::test]
async fn two_patches_with_one_if_match_let_exactly_one_win() {
    let app = CaseSvc::start(|_| {}).await;
    let token = app.env.user("bob").await;
    let http = Http::new(app.addr(), &token);
    let created = http.create("contended").await;
    let path = format!("/v1/{}", created["name"].as_str().unwrap());
    let etag = format!("\"{}\"", created["etag"].as_str().unwrap());
    let patch = |title: &'static str| {
        http.request(Method::PATCH, &format!("{path}?updateMask=title"))
            .header("if-match", etag.clone())
            .json(&json!({ "title": title }))
            .send()
    };
    let (one, two) = tokio::join!(patch("one"), patch("two"));
    let mut statuses = [one.unwrap().status(), two.unwrap().status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
        "exactly one writer wins"
    );
}

#[tokio::test]
async fn the_fastapi_route_and_the_user_route_answer_who_am_i() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("carol").await;
    for addr in [stack.addr(), stack.auth.addr()] {
        let http = Http::new(addr, &token);
        for path in ["/api/auth/me", "/v1/users/me"] {
            let response = http.request(Method::GET, path).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert!(response.headers().contains_key("x-request-id"));
            let user: Value = response.json().await.unwrap();
            assert_eq!(user["id"], "carol", "{path}: {user}");
            assert_eq!(user["email"], "carol@example.com");
        }
    }
    // VerifyToken takes the token in its body, with no credentials.
    let verified: Value = Client::new()
        .post(format!("http://{}/v1/tokens:verify", stack.addr()))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["principal"]["userId"], "carol");
}

#[tokio::test]
async fn http_errors_have_their_status_headers_and_json_details() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("dave").await;
    let http = Http::new(stack.addr(), &token);
    let anonymous = Client::new();
    let base = format!("http://{}", stack.addr());

    // 401 without a token, and with a bad one (RFC 6750).
    let none = anonymous
        .get(format!("{base}/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    error(none, 401, "UNAUTHENTICATED", "MISSING_CREDENTIALS").await;
    let bad = anonymous
        .get(format!("{base}/v1/cases"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    error(bad, 401, "UNAUTHENTICATED", "MALFORMED_TOKEN").await;

    // Unknown routes, wrong verbs, media types and bodies.
    let missing = http
        .request(Method::GET, "/v2/nothing")
        .send()
        .await
        .unwrap();
    error(missing, 404, "NOT_FOUND", "NO_ROUTE").await;
    let verb = http.request(Method::PUT, "/v1/cases").send().await.unwrap();
    let allow = verb.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    error(verb, 405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED").await;
    let text = http
        .request(Method::POST, "/v1/cases")
        .header("content-type", "text/plain")
        .body("title=x")
        .send()
        .await
        .unwrap();
    error(text, 415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE").await;
    let malformed = http
        .request(Method::POST, "/v1/cases")
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    let body = error(malformed, 400, "INVALID_ARGUMENT", "MALFORMED_JSON").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = http
        .request(Method::POST, "/v1/cases")
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    error(nested, 400, "INVALID_ARGUMENT", "MALFORMED_JSON").await;
    let huge = http
        .request(Method::POST, "/v1/cases")
        .json(&json!({"title": "x", "description": "d".repeat(2 * 1024 * 1024)}))
        .send()
        .await
        .unwrap();
    error(huge, 413, "RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE").await;

    // Bad fields: BadRequest names them.
    let invalid = http
        .request(Method::POST, "/v1/cases")
        .json(&json!({"title": "   "}))
        .send()
        .await
        .unwrap();
    let body = error(invalid, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT").await;
    let violations = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .unwrap()["fieldViolations"]
        .to_string();
    assert!(violations.contains("case.title"), "{violations}");
    for query in [
        "/v1/cases?nope=1",
        "/v1/cases?showDeleted=maybe",
        "/v1/cases?pageSize=many",
    ] {
        let response = http.request(Method::GET, query).send().await.unwrap();
        error(response, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT").await;
    }
    let unknown_field = http
        .request(Method::POST, "/v1/cases")
        .json(&json!({"title": "x", "type": "INCIDENT", "colour": "red"}))
        .send()
        .await
        .unwrap();
    error(unknown_field, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT").await;

    // Names that try to walk out of the collection are just bad names.
    for path in [
        "/v1/cases/..%2F..%2Fusers%2Fx",
        "/v1/cases/%2e%2e",
        "/v1/cases/not-a-uuid",
    ] {
        let response = http.request(Method::GET, path).send().await.unwrap();
        let status = response.status();
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
        assert!(!status.is_server_error());
    }

    // Another user's case is 404, exactly like a missing one.
    let theirs = Http::new(stack.addr(), &stack.env.user("erin").await)
        .create("private")
        .await;
    let peek = http
        .request(
            Method::GET,
            &format!("/v1/{}", theirs["name"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    error(peek, 404, "NOT_FOUND", "CASE_NOT_FOUND").await;
}

#[tokio::test]
async fn connect_unary_speaks_json_and_binary_with_connect_errors() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("frank").await;
    let http = Http::new(stack.addr(), &token);
    let created = http.create("via connect").await;
    let name = created["name"].as_str().unwrap().to_owned();
    let url = "/casebook.cases.v1.CaseService/GetCase";

    let json_reply = http
        .request(Method::POST, url)
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .header("connect-timeout-ms", "5000")
        .body(json!({ "name": name }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_reply.status(), StatusCode::OK);
    let got: Value = json_reply.json().await.unwrap();
    assert_eq!(got["title"], "via connect");

    let binary = http
        .request(Method::POST, url)
        .header("content-type", "application/proto")
        .body(GetCaseRequest { name: name.clone() }.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(binary.headers()["content-type"], "application/proto");
    let case = Case::decode(binary.bytes().await.unwrap()).unwrap();
    assert_eq!(case.r#type, Type::Incident as i32);

    let missing = http
        .request(Method::POST, url)
        .header("content-type", "application/json")
        .body(json!({ "name": "cases/00000000-0000-4000-8000-000000000000" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["details"][0]["type"], "google.rpc.ErrorInfo");
    assert!(body["details"][0]["value"].is_string());

    let version = http
        .request(Method::POST, url)
        .header("content-type", "application/json")
        .header("connect-protocol-version", "2")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(version.status(), StatusCode::BAD_REQUEST);
    let anonymous = Client::new()
        .post(format!("http://{}{url}", stack.addr()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "unauthenticated");
}

#[tokio::test]
async fn browsers_may_preflight_rest_writes_with_preconditions() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let preflight = Client::new()
        .request(
            Method::OPTIONS,
            format!("http://{}/v1/cases/x", stack.addr()),
        )
        .header("origin", "http://app.test")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "authorization,content-type,if-match,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let headers = preflight.headers();
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PATCH") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("if-match") && allowed.contains("idempotency-key"));
    let token = stack.env.user("gina").await;
    let created = Http::new(stack.addr(), &token)
        .request(Method::POST, "/v1/cases")
        .header("origin", "http://app.test")
        .json(&json!({"title": "from a browser", "type": "REQUEST"}))
        .send()
        .await
        .unwrap();
    let exposed = created.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("etag"), "{exposed}");
}

#[tokio::test]
async fn the_openapi_document_is_served_everywhere_and_committed() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let committed: Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    let served: Value = Client::new()
        .get(format!("http://{}/openapi.json", stack.addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served, committed,
        "docs/openapi.json is stale: regenerate it with `cargo run -p casebook-stack -- openapi > docs/openapi.json`"
    );
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/v1/cases",
        "/v1/cases/{name}",
        "/v1/cases/{name}:undelete",
        "/api/auth/me",
    ] {
        assert!(served["paths"].get(path).is_some(), "{path} missing");
    }
    // Each service documents its own routes.
    let cases: Value = Client::new()
        .get(format!("http://{}/openapi.json", stack.cases[0].addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(cases["paths"].get("/v1/cases").is_some());
    assert!(cases["paths"].get("/api/auth/me").is_none());
}
