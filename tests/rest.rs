//! HTTP/JSON over real sockets: every REST route, the `/api/auth/me`
//! compatibility route, Connect (JSON and binary), HTTP errors with Google's
//! JSON error shape, ETag preconditions, idempotency keys, CORS preflights
//! and the OpenAPI document, through the gateway and on a service directly.

mod common;

use std::sync::{Arc, Mutex};

use casebook::pb::casebook::cases::v1::{Case, GetCaseRequest, case::Type};
use common::{CaseSvc, GatewayStack};
use prost::Message;
use reqwest::{Client, Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

/// What came back, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Every REST exchange of one test, written when it ends to
/// `target/tmp/rest-exchanges/{test}.json`, where CI's OpenAPI conformance
/// check (`tests/openapi/check_responses.py`) validates each response
/// against docs/openapi.json.
struct Exchanges {
    test: &'static str,
    seen: Mutex<Vec<Value>>,
}

impl Drop for Exchanges {
    fn drop(&mut self) {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rest-exchanges");
        let _ = std::fs::create_dir_all(&dir);
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let _ = std::fs::write(
            dir.join(format!("{}.json", self.test)),
            serde_json::to_vec_pretty(&seen).unwrap_or_default(),
        );
    }
}

/// A client of `base` (`http://addr`) speaking as `token` (none when empty).
struct Http {
    client: Client,
    base: String,
    token: String,
    exchanges: Arc<Exchanges>,
}

impl Http {
    fn new(addr: std::net::SocketAddr, token: &str, exchanges: &Arc<Exchanges>) -> Self {
        Self {
            client: Client::builder().http1_only().build().unwrap(),
            base: format!("http://{addr}"),
            token: token.to_owned(),
            exchanges: Arc::clone(exchanges),
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        if self.token.is_empty() {
            request
        } else {
            request.bearer_auth(&self.token)
        }
    }

    /// Sends `request`, reads the whole answer and records the exchange.
    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let request = request.build().unwrap();
        let (method, url) = (request.method().to_string(), request.url().clone());
        let response = self.client.execute(request).await.unwrap();
        let reply = Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await.unwrap(),
        };
        let content_type = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !url.path().contains(".CaseService/") && !url.path().contains(".AuthService/") {
            self.exchanges.seen.lock().unwrap().push(json!({
                "method": method.to_ascii_lowercase(),
                "path": url.path(),
                "query": url.query().unwrap_or(""),
                "status": reply.status.as_u16(),
                "content_type": content_type,
                "body": String::from_utf8_lossy(&reply.body),
            }));
        }
        reply
    }

    async fn create(&self, title: &str) -> Value {
        let reply = self
            .send(
                self.request(Method::POST, "/v1/cases")
                    .json(&json!({"title": title, "type": "INCIDENT"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json()
    }
}

fn exchanges(test: &'static str) -> Arc<Exchanges> {
    Arc::new(Exchanges {
        test,
        seen: Mutex::default(),
    })
}

/// The body of an error response, checked to be Google's JSON error shape
/// with `status` and the ErrorInfo `reason`.
fn error(reply: Reply, http: u16, status: &str, reason: &str) -> Value {
    assert_eq!(reply.status.as_u16(), http, "{:?}", reply.body);
    let body = reply.json();
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
    let log = exchanges("every_case_route_works_through_the_gateway");
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let http = Http::new(stack.addr(), &token, &log);

    // Create, with an idempotency key: the retry returns the same case.
    let create = || {
        http.request(Method::POST, "/v1/cases")
            .header("idempotency-key", "7f1c1f9e-1")
            .json(&json!({"title": "Printer on fire", "type": "INCIDENT"}))
    };
    let first = http.send(create()).await;
    assert_eq!(first.status, StatusCode::OK);
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    let created = first.json();
    let again = http.send(create()).await.json();
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
    let got = http.send(http.request(Method::GET, &path)).await.json();
    assert_eq!(got, created);
    let unchanged = http
        .send(
            http.request(Method::GET, &path)
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers["etag"], etag.as_str());
    assert!(unchanged.body.is_empty());

    // List with a page size and a filter (enum values by name).
    http.create("a question").await;
    let listed = http
        .send(http.request(
            Method::GET,
            "/v1/cases?pageSize=1&filter=status%20%3D%20OPEN",
        ))
        .await
        .json();
    assert_eq!(listed["cases"].as_array().unwrap().len(), 1);
    let next = listed["nextPageToken"].as_str().unwrap();
    let rest = http
        .send(http.request(
            Method::GET,
            &format!("/v1/cases?page_size=1&filter=status%20%3D%20OPEN&pageToken={next}"),
        ))
        .await
        .json();
    assert_eq!(rest["cases"].as_array().unwrap().len(), 1);
    assert_ne!(rest["cases"][0]["name"], listed["cases"][0]["name"]);

    // Patch one field under If-Match; the etag moves on.
    let patched = http
        .send(
            http.request(Method::PATCH, &format!("{path}?updateMask=status"))
                .header("if-match", &etag)
                .json(&json!({"status": "IN_PROGRESS", "title": "ignored: not in the mask"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let new_etag = patched.headers["etag"].to_str().unwrap().to_owned();
    let patched = patched.json();
    assert_eq!(patched["status"], "IN_PROGRESS");
    assert_eq!(patched["title"], "Printer on fire");
    assert_ne!(new_etag, etag);

    // The old etag is now a failed precondition.
    let stale = http
        .send(
            http.request(Method::DELETE, &path)
                .header("if-match", &etag),
        )
        .await;
    error(stale, 412, "ABORTED", "ETAG_MISMATCH");

    // Delete, then undelete (a custom method).
    let deleted = http
        .send(
            http.request(Method::DELETE, &path)
                .header("if-match", &new_etag),
        )
        .await
        .json();
    assert!(deleted["deleteTime"].is_string());
    let restored = http
        .send(http.request(Method::POST, &format!("{path}:undelete")))
        .await;
    assert_eq!(restored.status, StatusCode::OK);
    let restored = restored.json();
    assert!(restored.get("deleteTime").is_none(), "{restored}");
    let twice = http
        .send(http.request(Method::POST, &format!("{path}:undelete")))
        .await;
    error(twice, 409, "ALREADY_EXISTS", "CASE_NOT_DELETED");
}

#[tokio::test]
async fn two_patches_with_one_if_match_let_exactly_one_win() {
    let log = exchanges("two_patches_with_one_if_match_let_exactly_one_win");
    let app = CaseSvc::start(|_| {}).await;
    let token = app.env.user("bob").await;
    let http = Http::new(app.addr(), &token, &log);
    let created = http.create("contended").await;
    let path = format!("/v1/{}", created["name"].as_str().unwrap());
    let etag = format!("\"{}\"", created["etag"].as_str().unwrap());
    let patch = |title: &'static str| {
        http.send(
            http.request(Method::PATCH, &format!("{path}?updateMask=title"))
                .header("if-match", etag.clone())
                .json(&json!({ "title": title })),
        )
    };
    let (one, two) = tokio::join!(patch("one"), patch("two"));
    let mut statuses = [one.status, two.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::PRECONDITION_FAILED],
        "exactly one writer wins"
    );
}

#[tokio::test]
async fn the_fastapi_route_and_the_user_route_answer_who_am_i() {
    let log = exchanges("the_fastapi_route_and_the_user_route_answer_who_am_i");
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("carol").await;
    for addr in [stack.addr(), stack.auth.addr()] {
        let http = Http::new(addr, &token, &log);
        for path in ["/api/auth/me", "/v1/users/me"] {
            let reply = http.send(http.request(Method::GET, path)).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert!(reply.headers.contains_key("x-request-id"));
            let user = reply.json();
            assert_eq!(user["id"], "carol", "{path}: {user}");
            assert_eq!(user["email"], "carol@example.com");
        }
    }
    // VerifyToken takes the token in its body, with no credentials.
    let anonymous = Http::new(stack.addr(), "", &log);
    let verified = anonymous
        .send(
            anonymous
                .request(Method::POST, "/v1/tokens:verify")
                .json(&json!({ "token": token })),
        )
        .await
        .json();
    assert_eq!(verified["principal"]["userId"], "carol");
}

#[tokio::test]
async fn http_errors_have_their_status_headers_and_json_details() {
    let log = exchanges("http_errors_have_their_status_headers_and_json_details");
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("dave").await;
    let http = Http::new(stack.addr(), &token, &log);
    let anonymous = Http::new(stack.addr(), "", &log);

    // 401 without a token, and with a bad one (RFC 6750).
    let none = anonymous
        .send(anonymous.request(Method::GET, "/v1/cases"))
        .await;
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    error(none, 401, "UNAUTHENTICATED", "MISSING_CREDENTIALS");
    let bad = anonymous
        .send(
            anonymous
                .request(Method::GET, "/v1/cases")
                .bearer_auth("not.a.token"),
        )
        .await;
    assert_eq!(
        bad.headers["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    error(bad, 401, "UNAUTHENTICATED", "MALFORMED_TOKEN");

    // Unknown routes, wrong verbs, media types and bodies.
    let missing = http.send(http.request(Method::GET, "/v2/nothing")).await;
    error(missing, 404, "NOT_FOUND", "NO_ROUTE");
    let verb = http.send(http.request(Method::PUT, "/v1/cases")).await;
    let allow = verb.headers["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    error(verb, 405, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED");
    let text = http
        .send(
            http.request(Method::POST, "/v1/cases")
                .header("content-type", "text/plain")
                .body("title=x"),
        )
        .await;
    error(text, 415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE");
    let json_body = |body: String| {
        http.request(Method::POST, "/v1/cases")
            .header("content-type", "application/json")
            .body(body)
    };
    let malformed = http.send(json_body("{\"title\": ".into())).await;
    let body = error(malformed, 400, "INVALID_ARGUMENT", "MALFORMED_JSON");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1")
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let nested = http.send(json_body(deep)).await;
    error(nested, 400, "INVALID_ARGUMENT", "MALFORMED_JSON");
    let huge = http
        .send(
            http.request(Method::POST, "/v1/cases")
                .json(&json!({"title": "x", "description": "d".repeat(2 * 1024 * 1024)})),
        )
        .await;
    error(huge, 413, "RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE");

    // Bad fields: BadRequest names them.
    let invalid = http
        .send(
            http.request(Method::POST, "/v1/cases")
                .json(&json!({"title": "   "})),
        )
        .await;
    let body = error(invalid, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT");
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
        let reply = http.send(http.request(Method::GET, query)).await;
        error(reply, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT");
    }
    let unknown_field = http
        .send(
            http.request(Method::POST, "/v1/cases")
                .json(&json!({"title": "x", "type": "INCIDENT", "colour": "red"})),
        )
        .await;
    error(unknown_field, 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT");

    // Names that try to walk out of the collection are just bad names.
    for path in [
        "/v1/cases/..%2F..%2Fusers%2Fx",
        "/v1/cases/a%2Fb",
        "/v1/cases/not-a-uuid",
    ] {
        let status = http.send(http.request(Method::GET, path)).await.status;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
    }

    // Another user's case is 404, exactly like a missing one.
    let erin = Http::new(stack.addr(), &stack.env.user("erin").await, &log);
    let theirs = erin.create("private").await;
    let peek = http
        .send(http.request(
            Method::GET,
            &format!("/v1/{}", theirs["name"].as_str().unwrap()),
        ))
        .await;
    error(peek, 404, "NOT_FOUND", "CASE_NOT_FOUND");
}

#[tokio::test]
async fn connect_unary_speaks_json_and_binary_with_connect_errors() {
    let log = exchanges("connect_unary_speaks_json_and_binary_with_connect_errors");
    let stack = GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("frank").await;
    let http = Http::new(stack.addr(), &token, &log);
    let created = http.create("via connect").await;
    let name = created["name"].as_str().unwrap().to_owned();
    let url = "/casebook.cases.v1.CaseService/GetCase";
    let connect_json = |body: Value| {
        http.request(Method::POST, url)
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    let json_reply = http
        .send(
            connect_json(json!({ "name": name }))
                .header("connect-protocol-version", "1")
                .header("connect-timeout-ms", "5000"),
        )
        .await;
    assert_eq!(json_reply.status, StatusCode::OK);
    assert_eq!(json_reply.json()["title"], "via connect");

    let binary = http
        .send(
            http.request(Method::POST, url)
                .header("content-type", "application/proto")
                .body(GetCaseRequest { name: name.clone() }.encode_to_vec()),
        )
        .await;
    assert_eq!(binary.headers["content-type"], "application/proto");
    let case = Case::decode(binary.body).unwrap();
    assert_eq!(case.r#type, Type::Incident as i32);

    let missing = http
        .send(connect_json(
            json!({ "name": "cases/00000000-0000-4000-8000-000000000000" }),
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let body = missing.json();
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["details"][0]["type"], "google.rpc.ErrorInfo");
    assert!(body["details"][0]["value"].is_string());

    let version = http
        .send(connect_json(json!({})).header("connect-protocol-version", "2"))
        .await;
    assert_eq!(version.status, StatusCode::BAD_REQUEST);
    let anonymous = Http::new(stack.addr(), "", &log);
    let refused = anonymous
        .send(
            anonymous
                .request(Method::POST, url)
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["code"], "unauthenticated");
}

#[tokio::test]
async fn browsers_may_preflight_rest_writes_with_preconditions() {
    let log = exchanges("browsers_may_preflight_rest_writes_with_preconditions");
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
    let http = Http::new(stack.addr(), &token, &log);
    let created = http
        .send(
            http.request(Method::POST, "/v1/cases")
                .header("origin", "http://app.test")
                .json(&json!({"title": "from a browser", "type": "REQUEST"})),
        )
        .await;
    let exposed = created.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("etag"), "{exposed}");
}

#[tokio::test]
async fn the_openapi_document_is_served_everywhere_and_committed() {
    let stack = GatewayStack::start(1, |_| {}).await;
    let committed: Value = serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
    let get = |addr: std::net::SocketAddr| async move {
        Client::new()
            .get(format!("http://{addr}/openapi.json"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let served = get(stack.addr()).await;
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
    let cases = get(stack.cases[0].addr()).await;
    assert!(cases["paths"].get("/v1/cases").is_some());
    assert!(cases["paths"].get("/api/auth/me").is_none());
}
