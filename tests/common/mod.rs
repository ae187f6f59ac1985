//! Shared test fixture: a real JWKS over HTTP, a token issuer, a real database
//! (SQLite by default, PostgreSQL when `CASEBOOK_TEST_POSTGRES` is set) and
//! services started on ephemeral ports exactly as their binaries start them.

#![allow(dead_code)] // each test binary uses a different part of the fixture

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use casebook::{
    auth::{Algorithm, issuer::SigningKey},
    metrics::Metrics,
    rpc_error::ERROR_DOMAIN,
    server::RunningServer,
};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

/// The issuer every test token claims (Better Auth's base URL).
pub const ISSUER: &str = "https://better-auth.test";

/// Environment variable naming a PostgreSQL admin URL; when set, every test
/// database is a fresh PostgreSQL database instead of a SQLite file.
pub const POSTGRES_ENV: &str = "CASEBOOK_TEST_POSTGRES";

/// A unique suffix for names: process id, time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{nanos:x}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How the test JWKS endpoint answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with the current document.
    Serve,
    /// The given HTTP status, empty body.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// The document, after a delay.
    Slow(Duration),
    /// Close the connection without answering.
    Hang,
}

struct JwksState {
    document: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    behaviour: Mutex<Behaviour>,
    hits: AtomicUsize,
}

/// A real HTTP server publishing a JWKS and counting requests.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<JwksState>,
}

impl JwksServer {
    pub async fn start(document: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(JwksState {
            document: Mutex::new(document.to_string()),
            cache_control: Mutex::new(None),
            behaviour: Mutex::new(Behaviour::Serve),
            hits: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/api/auth/jwks", self.addr)
    }

    pub fn publish(&self, document: Value) {
        *self.state.document.lock().unwrap() = document.to_string();
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_owned);
    }

    pub fn behave(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Hangup;
impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hang up")
    }
}
impl std::error::Error for Hangup {}

async fn answer(
    state: Arc<JwksState>,
    _request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Hangup> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let behaviour = state.behaviour.lock().unwrap().clone();
    let document = state.document.lock().unwrap().clone();
    let cache_control = state.cache_control.lock().unwrap().clone();
    let ok = |body: String| {
        let mut response = Response::builder().header("content-type", "application/json");
        if let Some(value) = &cache_control {
            response = response.header("cache-control", value);
        }
        Ok(response.body(Full::new(Bytes::from(body))).unwrap())
    };
    match behaviour {
        Behaviour::Serve => ok(document),
        Behaviour::Status(code) => Ok(Response::builder()
            .status(code)
            .body(Full::new(Bytes::new()))
            .unwrap()),
        Behaviour::Garbage => ok("<html>not a jwks</html>".into()),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            ok(document)
        }
        Behaviour::Hang => Err(Hangup),
    }
}

/// Signing keys standing in for Better Auth.
pub struct Issuer {
    pub keys: Vec<SigningKey>,
}

impl Issuer {
    /// One key per algorithm, kids `kid-EdDSA`, `kid-ES256`, ...
    pub fn every_algorithm() -> Self {
        Self {
            keys: Algorithm::ALL
                .iter()
                .map(|alg| SigningKey::generate(*alg, format!("kid-{alg}")).unwrap())
                .collect(),
        }
    }

    pub fn single(algorithm: Algorithm) -> Self {
        Self {
            keys: vec![SigningKey::generate(algorithm, format!("kid-{algorithm}")).unwrap()],
        }
    }

    pub fn jwks(&self) -> Value {
        casebook::auth::issuer::jwks(&self.keys)
    }

    pub fn key(&self, algorithm: Algorithm) -> &SigningKey {
        self.keys
            .iter()
            .find(|k| k.algorithm() == algorithm)
            .unwrap()
    }

    /// A valid token for `user_id`, signed with the first key.
    pub fn token(&self, user_id: &str) -> String {
        self.keys[0].sign(&claims(user_id))
    }
}

/// Claims shaped like Better Auth's default payload, valid for 15 minutes.
pub fn claims(user_id: &str) -> Value {
    let now = now();
    json!({
        "iat": now,
        "name": "Carol", "email": "carol@example.com", "emailVerified": false, "image": null,
        "createdAt": "2026-11-25T23:39:38.439Z", "updatedAt": "2026-11-25T23:39:38.439Z",
        "id": user_id, "sub": user_id,
        "exp": now + 900, "iss": ISSUER, "aud": ISSUER,
    })
}

/// Asserts `status` has `code` and an ErrorInfo with `reason` in our domain.
#[track_caller]
pub fn assert_reason(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected code: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason: {status:?}");
    assert_eq!(info.domain, ERROR_DOMAIN);
}

/// A throwaway database holding Better Auth's tables.
pub struct TestDb {
    url: String,
    cleanup: Option<(String, String)>, // (admin url, database name) for PostgreSQL
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn create() -> Self {
        let db = match std::env::var(POSTGRES_ENV) {
            Ok(admin) => Self::postgres(admin).await,
            Err(_) => Self::sqlite(),
        };
        db.execute_script(if db.is_postgres() {
            include_str!("../../stack/better-auth/schema.postgres.sql")
        } else {
            include_str!("../../stack/better-auth/schema.sqlite.sql")
        })
        .await;
        db
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/casebook.db?mode=rwc", dir.path().display());
        Self {
            url,
            cleanup: None,
            _dir: Some(dir),
        }
    }

    async fn postgres(admin: String) -> Self {
        let name = unique("casebook_test");
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is set but PostgreSQL is unreachable: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        Self {
            url: format!("{base}/{name}"),
            cleanup: Some((admin, name)),
            _dir: None,
        }
    }

    /// A database the test manages itself (e.g. its own PostgreSQL server),
    /// with Better Auth's tables created.
    pub async fn at(url: &str) -> Self {
        let db = Self {
            url: url.to_owned(),
            cleanup: None,
            _dir: None,
        };
        db.execute_script(include_str!("../../stack/better-auth/schema.postgres.sql"))
            .await;
        db
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// This PostgreSQL database's URL over the server's Unix socket (the
    /// form Cloud Run's Cloud SQL connector mounts); `None` on SQLite.
    pub fn socket_url(&self) -> Option<String> {
        let (admin, name) = self.cleanup.as_ref()?;
        let port = admin
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .unwrap_or("5432");
        let user = admin
            .strip_prefix("postgres://")?
            .split(['@', ':'])
            .next()?;
        Some(format!(
            "postgres://{user}@/{name}?host=/var/run/postgresql&port={port}"
        ))
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    /// Runs `sql` (several statements) on the test database.
    pub async fn execute_script(&self, sql: &str) {
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                .await
                .unwrap();
        }
    }

    /// Inserts a Better Auth user the way Better Auth writes one.
    pub async fn insert_user(&self, id: &str, name: &str, email: &str) {
        let sql = r#"INSERT INTO "user" ("id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt") VALUES ($1, $2, $3, $4, NULL, $5, $5)"#;
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T23:37:56.395Z").unwrap();
            sqlx::query(sql)
                .bind(id)
                .bind(name)
                .bind(email)
                .bind(true)
                .bind(at)
                .execute(&mut conn)
                .await
                .unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql)
                .bind(id)
                .bind(name)
                .bind(email)
                .bind(1_i64)
                .bind("2026-11-25T23:37:56.395Z")
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    /// `SELECT count(*) … WHERE … = $1` with one text parameter.
    pub async fn count(&self, sql: &'static str, param: &str) -> i64 {
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(param)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .bind(param)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }

    /// Holds a lock under which every write to `cases` waits (reads go on),
    /// until [`WriteLock::release`].
    pub async fn block_case_writes(&self) -> WriteLock {
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            conn.execute("BEGIN; LOCK TABLE cases IN EXCLUSIVE MODE")
                .await
                .unwrap();
            WriteLock::Postgres(conn)
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            conn.execute("BEGIN EXCLUSIVE").await.unwrap();
            WriteLock::Sqlite(conn)
        }
    }

    pub async fn delete_user(&self, id: &str) {
        let sql = r#"DELETE FROM "user" WHERE "id" = $1"#;
        if self.is_postgres() {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap();
        }
    }
}

/// A transaction holding a write lock, from [`TestDb::block_case_writes`].
pub enum WriteLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteLock {
    pub async fn release(self) {
        match self {
            Self::Postgres(mut conn) => conn.execute("ROLLBACK").await.map(drop),
            Self::Sqlite(mut conn) => conn.execute("ROLLBACK").await.map(drop),
        }
        .unwrap();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.cleanup.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on itself.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// What every service under test needs: a JWKS endpoint, an issuer whose keys
/// it publishes, and a database with Better Auth's tables.
pub struct TestEnv {
    pub jwks: JwksServer,
    pub issuer: Issuer,
    pub db: TestDb,
}

impl TestEnv {
    pub async fn new(issuer: Issuer) -> Self {
        let jwks = JwksServer::start(issuer.jwks()).await;
        Self::with_jwks(jwks, issuer).await
    }

    pub async fn with_jwks(jwks: JwksServer, issuer: Issuer) -> Self {
        Self {
            jwks,
            issuer,
            db: TestDb::create().await,
        }
    }

    /// An environment on a database the test provides.
    pub async fn with_db(issuer: Issuer, db: TestDb) -> Self {
        Self {
            jwks: JwksServer::start(issuer.jwks()).await,
            issuer,
            db,
        }
    }

    /// auth-svc's configuration pointed at this environment, on port 0.
    pub fn auth_config(&self) -> auth_svc::Config {
        let mut config: auth_svc::Config = casebook::config::defaults().unwrap();
        config.listen_addr = Some(([127, 0, 0, 1], 0).into());
        self.point(&mut config.service);
        config
    }

    /// case-svc's configuration pointed at this environment, on port 0.
    pub fn case_config(&self) -> case_svc::Config {
        let mut config: case_svc::Config = casebook::config::defaults().unwrap();
        config.listen_addr = Some(([127, 0, 0, 1], 0).into());
        self.point(&mut config.service);
        config
    }

    /// The command-line flags that point a service binary at this
    /// environment, then `extra` (for tests of the binaries themselves).
    pub fn flags(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen-addr",
            "127.0.0.1:0",
            "--better-auth-url",
            ISSUER,
            "--jwks-url",
            &self.jwks.url(),
            "--database-url",
            self.db.url(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    }

    fn point(&self, service: &mut casebook::config::ServiceArgs) {
        service.auth.better_auth_url = Some(ISSUER.to_owned());
        service.auth.jwks_url = Some(self.jwks.url());
        service.database.database_url = Some(self.db.url().to_owned());
    }

    /// Inserts a Better Auth user and returns a valid token for it.
    pub async fn user(&self, id: &str) -> String {
        self.db
            .insert_user(id, &format!("User {id}"), &format!("{id}@example.com"))
            .await;
        self.issuer.token(id)
    }
}

/// A service running on an ephemeral port inside its [`TestEnv`], with a
/// metrics registry of its own.
pub struct Running {
    pub server: RunningServer,
    pub env: Arc<TestEnv>,
    pub metrics: Metrics,
}

impl std::ops::Deref for Running {
    type Target = TestEnv;

    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

impl Running {
    /// The value of the first sample in this service's metrics whose series
    /// (`name{labels}`) starts with `series`.
    pub fn sample(&self, series: &str) -> Option<f64> {
        self.metrics
            .render()
            .lines()
            .filter(|line| line.starts_with(series))
            .find_map(|line| line.rsplit(' ').next()?.parse().ok())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// auth-svc under test.
pub type AuthSvc = Running;

impl AuthSvc {
    /// Every algorithm published; `configure` adjusts the settings.
    pub async fn start(configure: impl FnOnce(&mut auth_svc::Config)) -> Self {
        Self::start_with(Issuer::every_algorithm(), configure).await
    }

    pub async fn start_with(issuer: Issuer, configure: impl FnOnce(&mut auth_svc::Config)) -> Self {
        Self::start_in(Arc::new(TestEnv::new(issuer).await), configure).await
    }

    /// Starts against a JWKS server the test prepared (e.g. already down).
    pub async fn start_on(
        jwks: JwksServer,
        issuer: Issuer,
        configure: impl FnOnce(&mut auth_svc::Config),
    ) -> Self {
        Self::start_in(Arc::new(TestEnv::with_jwks(jwks, issuer).await), configure).await
    }

    pub async fn start_in(
        env: Arc<TestEnv>,
        configure: impl FnOnce(&mut auth_svc::Config),
    ) -> Self {
        let mut config = env.auth_config();
        configure(&mut config);
        let metrics = Metrics::new();
        let server = auth_svc::build(config, &metrics).await.unwrap();
        Self {
            server,
            env,
            metrics,
        }
    }

    pub async fn client(
        &self,
    ) -> casebook::pb::casebook::auth::v1::auth_service_client::AuthServiceClient<Channel> {
        casebook::pb::casebook::auth::v1::auth_service_client::AuthServiceClient::new(
            self.channel().await,
        )
    }
}

/// case-svc under test, with its own service type so both can coexist.
pub struct CaseSvc(pub Running);

impl std::ops::Deref for CaseSvc {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.0
    }
}

impl CaseSvc {
    pub async fn start(configure: impl FnOnce(&mut case_svc::Config)) -> Self {
        Self::start_in(
            Arc::new(TestEnv::new(Issuer::single(Algorithm::EdDsa)).await),
            configure,
        )
        .await
    }

    pub async fn start_in(
        env: Arc<TestEnv>,
        configure: impl FnOnce(&mut case_svc::Config),
    ) -> Self {
        let mut config = env.case_config();
        configure(&mut config);
        let metrics = Metrics::new();
        let server = case_svc::build(config, &metrics).await.unwrap();
        Self(Running {
            server,
            env,
            metrics,
        })
    }

    pub async fn client(
        &self,
    ) -> casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient<Channel> {
        casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient::new(
            self.channel().await,
        )
    }
}

/// A case-svc client acting as one user; each suite adds the calls it makes
/// in its own `impl` block.
pub struct CaseUser {
    pub client: casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient<Channel>,
    pub token: String,
}

impl CaseUser {
    /// Inserts Better Auth user `id` and returns a client with a token for it.
    pub async fn user(app: &CaseSvc, id: &str) -> Self {
        Self {
            client: app.client().await,
            token: app.user(id).await,
        }
    }
}

/// The service binary `name` (`auth-svc`, `case-svc`, `gateway`), built on
/// demand: the test harness builds only this package. The cargo and the
/// target directory are the ones that built this test (compile-time facts),
/// never whatever the environment exports.
pub fn binary(name: &str) -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", name])
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {name} failed");
    target_dir().join("debug").join(name)
}

/// The target directory this test was built in (`CARGO_TARGET_TMPDIR` is
/// its `tmp` subdirectory).
fn target_dir() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR lies inside the target directory")
}

/// A request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Waits until a running load's `count` has grown by `by`, so a test steps
/// on the load's progress instead of on time passing; whether it did within 20 s.
pub async fn grows_by(by: usize, count: impl Fn() -> usize) -> bool {
    let from = count();
    eventually(Duration::from_secs(20), async || count() >= from + by).await
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a grpc-web exchange returned, decoded the way a browser client would.
#[derive(Debug)]
pub struct GrpcWebReply {
    pub http_status: u16,
    pub headers: http::HeaderMap,
    pub messages: Vec<Bytes>,
    /// The trailer frame's fields (or, for a trailers-only reply, the headers').
    pub trailers: std::collections::HashMap<String, String>,
}

impl GrpcWebReply {
    pub fn grpc_status(&self) -> Option<i32> {
        self.trailers
            .get("grpc-status")
            .and_then(|s| s.parse().ok())
    }

    pub fn message<M: prost::Message + Default>(&self) -> M {
        M::decode(self.messages[0].clone()).unwrap()
    }
}

/// Sends one raw HTTP/1.1 request and returns the response head and body.
pub async fn http1(request: http::Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// Sends one HTTP/1.1 request over TLS, trusting only `ca_pem`.
pub async fn https1(
    request: http::Request<Full<Bytes>>,
    ca_pem: &[u8],
) -> (http::response::Parts, Bytes) {
    use http_body_util::BodyExt;
    let client = reqwest::Client::builder()
        .http1_only()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).unwrap()])
        .build()
        .unwrap();
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let request = reqwest::Request::try_from(http::Request::from_parts(parts, body)).unwrap();
    let response = http::Response::from(client.execute(request).await.unwrap());
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// A unary grpc-web call over HTTP/1.1, binary or text (base64) encoded.
pub async fn grpc_web(
    addr: SocketAddr,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
    text: bool,
) -> GrpcWebReply {
    let request = grpc_web_request(&format!("http://{addr}{path}"), message, headers, text);
    let (parts, body) = http1(request).await;
    decode_grpc_web(parts, body, text)
}

/// A unary binary grpc-web call over HTTP/1.1 and TLS, trusting only `ca_pem`.
pub async fn grpc_web_tls(
    url: &str,
    ca_pem: &[u8],
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> GrpcWebReply {
    let request = grpc_web_request(url, message, headers, false);
    let (parts, body) = https1(request, ca_pem).await;
    decode_grpc_web(parts, body, false)
}

fn grpc_web_request(
    url: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
    text: bool,
) -> http::Request<Full<Bytes>> {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let (content_type, body) = if text {
        (
            "application/grpc-web-text",
            STANDARD.encode(&frame).into_bytes(),
        )
    } else {
        ("application/grpc-web+proto", frame)
    };
    let mut request = http::Request::post(url)
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

fn decode_grpc_web(parts: http::response::Parts, body: Bytes, text: bool) -> GrpcWebReply {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let text_reply = parts.headers.get("content-type").is_some_and(|t| {
        t.to_str()
            .unwrap_or("")
            .starts_with("application/grpc-web-text")
    });
    assert_eq!(
        text_reply, text,
        "the reply is encoded as the client accepts"
    );
    let mut body = if text_reply {
        // Each frame may be base64-encoded (and padded) separately: decode
        // group by group of four characters, restarting after padding.
        let text = String::from_utf8(body.to_vec()).unwrap();
        let mut decoded = Vec::new();
        let mut pending = String::new();
        for c in text.chars() {
            pending.push(c);
            if pending.len().is_multiple_of(4) && pending.ends_with('=') {
                decoded.extend(STANDARD.decode(&pending).unwrap());
                pending.clear();
            }
        }
        decoded.extend(STANDARD.decode(&pending).unwrap());
        Bytes::from(decoded)
    } else {
        body
    };
    let mut messages = Vec::new();
    let mut trailers = std::collections::HashMap::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let data = body.slice(5..5 + len);
        body = body.slice(5 + len..);
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(&data)
                .split("\r\n")
                .filter(|l| !l.is_empty())
            {
                let (name, value) = line.split_once(':').unwrap();
                trailers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        } else {
            messages.push(data);
        }
    }
    if trailers.is_empty() {
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            if let Some(value) = parts.headers.get(name) {
                trailers.insert(name.to_owned(), value.to_str().unwrap().to_owned());
            }
        }
    }
    GrpcWebReply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        messages,
        trailers,
    }
}

/// The gateway's configuration on port 0 in front of the given upstream URLs.
pub fn gateway_config(auth_url: &str, case_urls: &[String]) -> gateway::Config {
    let mut config: gateway::Config = casebook::config::defaults().unwrap();
    config.listen_addr = Some(([127, 0, 0, 1], 0).into());
    config.auth_svc_url = vec![auth_url.to_owned()];
    config.case_svc_url = case_urls.to_vec();
    config
}

/// A gateway on an ephemeral port in front of the given upstream URLs.
pub async fn start_gateway(
    auth_url: &str,
    case_url: &str,
    configure: impl FnOnce(&mut gateway::Config),
) -> gateway::Gateway {
    let mut config = gateway_config(auth_url, &[case_url.to_owned()]);
    configure(&mut config);
    gateway::build(config, &Metrics::new()).await.unwrap()
}

/// The whole system behind a gateway: auth-svc and `case_replicas` case-svc
/// processes sharing one environment.
pub struct GatewayStack {
    pub gateway: gateway::Gateway,
    pub auth: AuthSvc,
    pub cases: Vec<CaseSvc>,
    pub env: Arc<TestEnv>,
    pub metrics: Metrics,
}

impl GatewayStack {
    pub async fn start(case_replicas: usize, configure: impl FnOnce(&mut gateway::Config)) -> Self {
        Self::start_configured(case_replicas, |_| {}, configure).await
    }

    /// As [`GatewayStack::start`], with every case-svc replica's settings
    /// adjusted by `configure_cases`.
    pub async fn start_configured(
        case_replicas: usize,
        configure_cases: impl Fn(&mut case_svc::Config),
        configure: impl FnOnce(&mut gateway::Config),
    ) -> Self {
        let env = Arc::new(TestEnv::new(Issuer::single(Algorithm::EdDsa)).await);
        let auth = AuthSvc::start_in(Arc::clone(&env), |_| {}).await;
        let mut cases = Vec::new();
        for _ in 0..case_replicas {
            cases.push(CaseSvc::start_in(Arc::clone(&env), &configure_cases).await);
        }
        let case_urls: Vec<String> = cases
            .iter()
            .map(|c| format!("http://{}", c.addr()))
            .collect();
        let mut config = gateway_config(&format!("http://{}", auth.addr()), &case_urls);
        config.server.cors_allowed_origins = vec!["http://app.test".into()];
        configure(&mut config);
        let metrics = Metrics::new();
        let gateway = gateway::build(config, &metrics).await.unwrap();
        Self {
            gateway,
            auth,
            cases,
            env,
            metrics,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gateway.local_addr()
    }
}

/// A private CA and a server certificate it signed for `localhost` and
/// `127.0.0.1`, written to PEM files in a temporary directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca_pem: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Self {
            dir,
            ca_pem: ca_pem.into_bytes(),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Turns TLS on with the server certificate.
    pub fn serve_tls(&self, server: &mut casebook::config::ServerArgs) {
        server.tls.tls_cert_file = Some(self.path("server.pem").into());
        server.tls.tls_key_file = Some(self.path("server.key").into());
    }

    /// A channel to `addr` over TLS, checking the certificate against this CA.
    pub async fn channel(&self, addr: SocketAddr) -> Channel {
        use tonic::transport::{Certificate, ClientTlsConfig};
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}
