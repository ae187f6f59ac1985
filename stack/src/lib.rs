//! The whole Casebook system in one process, for a laptop: auth-svc and
//! case-svc on the embedded SQLite default, plus a development token issuer
//! standing in for Better Auth. Each service starts exactly as its own binary
//! would (same `build`, same settings); the stack only supplies what Better
//! Auth would: keys, a JWKS URL, its tables and a user.

pub mod better_auth;
pub mod dev_issuer;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use casebook::{
    config::{DatabaseArgs, ServerArgs, ServiceArgs, duration},
    db::Database,
    metrics::{Metrics, ServerMetrics},
    server::RunningServer,
};
use clap::{Args, Parser, Subcommand};

use better_auth::UserRow;
use dev_issuer::{DevIssuer, Exposure};

/// Every service the gateway routes to, by full name.
pub const SERVICES: [&str; 2] = [
    casebook::pb::casebook::auth::v1::auth_service_server::SERVICE_NAME,
    casebook::pb::casebook::cases::v1::case_service_server::SERVICE_NAME,
];

/// Email of the user the stack creates and prints a token for.
pub const DEMO_EMAIL: &str = "demo@casebook.local";

/// `casebook`: run the stack, or mint a development token.
#[derive(Parser, Debug)]
#[command(
    name = "casebook",
    version,
    about = "Casebook's services in one process, with a development token issuer",
    args_override_self = true
)]
pub struct Cli {
    /// What to do (default: run the stack).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where and how the stack runs.
    #[command(flatten)]
    pub stack: StackArgs,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run only the development issuer (for docker-compose): create Better
    /// Auth's tables and the demo user in DATABASE_URL, print a token, serve the JWKS.
    Issuer {
        /// The issuer URL services use as BETTER_AUTH_URL [default: http://{DEV_ISSUER_ADDR}].
        #[arg(long, env = "DEV_ISSUER_URL")]
        public_url: Option<String>,
        /// Allow a non-loopback DEV_ISSUER_ADDR (a private container network only).
        #[arg(long, env = "DEV_ISSUER_ALLOW_NON_LOOPBACK")]
        allow_non_loopback: bool,
    },
    /// Print the OpenAPI document of every REST route (what the gateway serves
    /// at /openapi.json; committed as docs/openapi.json).
    Openapi,
    /// Print a development token for a user (created if missing), for scripts.
    Token {
        /// The user's email.
        #[arg(long)]
        email: String,
        /// Display name for a new user [default: the email's local part].
        #[arg(long)]
        name: Option<String>,
    },
}

/// Settings of the development stack.
#[derive(Args, Clone, Debug)]
pub struct StackArgs {
    /// Directory for the SQLite database and the issuer's key (created on first start).
    #[arg(long, env = "CASEBOOK_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Loopback address of the development issuer (serves /api/auth/jwks).
    #[arg(long, env = "DEV_ISSUER_ADDR", default_value = "127.0.0.1:3900")]
    pub issuer_addr: SocketAddr,
    /// Database [default: sqlite://{CASEBOOK_DATA_DIR}/casebook.db].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// auth-svc's address.
    #[arg(long, env = "AUTH_SVC_ADDR", default_value = "127.0.0.1:50051")]
    pub auth_svc_addr: SocketAddr,
    /// case-svc's address.
    #[arg(long, env = "CASE_SVC_ADDR", default_value = "127.0.0.1:50052")]
    pub case_svc_addr: SocketAddr,
    /// The gateway's address (REST, Connect, grpc-web and gRPC on one origin).
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub gateway_addr: SocketAddr,
    /// Browser origins allowed to call the gateway (the example page's dev server by default).
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:5173,http://127.0.0.1:5173"
    )]
    pub cors_allowed_origins: Vec<String>,
    /// Where to serve Prometheus metrics for every service (GET /metrics).
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: Option<SocketAddr>,
    /// Lifetime of the tokens the stack prints.
    #[arg(long, env = "DEV_TOKEN_LIFETIME", value_parser = duration, default_value = "12h")]
    pub token_lifetime: Duration,
}

impl StackArgs {
    fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/casebook.db", self.data_dir.display()))
    }

    async fn database(&self) -> anyhow::Result<Database> {
        let args = DatabaseArgs::for_url(&self.database_url())?;
        let db = Database::connect(&args, &ServerMetrics::detached("casebook")).await?;
        better_auth::ensure_schema(&db).await?;
        Ok(db)
    }
}

/// The running stack.
pub struct Stack {
    issuer: DevIssuer,
    /// auth-svc.
    pub auth: RunningServer,
    /// case-svc.
    pub cases: RunningServer,
    /// The gateway in front of both.
    pub gateway: gateway::Gateway,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The demo user.
    pub demo: UserRow,
    /// A token for the demo user.
    pub token: String,
    token_lifetime: Duration,
    cors_origins: String,
    data_dir: PathBuf,
}

impl Stack {
    /// Starts the issuer and every service, creating data on first start.
    pub async fn start(args: &StackArgs) -> anyhow::Result<Self> {
        let key = dev_issuer::load_or_create_key(&args.data_dir)?;
        let db = args.database().await?;
        let demo = better_auth::ensure_user(&db, DEMO_EMAIL, "Demo User").await?;
        db.close().await;
        let issuer = DevIssuer::start(key, args.issuer_addr, None, Exposure::LoopbackOnly).await?;
        let registry = Metrics::new();
        let database_url = args.database_url();
        let service = |service: &mut ServiceArgs| {
            service.auth.better_auth_url = Some(issuer.url().to_owned());
            service.database.database_url = Some(database_url.clone());
        };
        let mut auth = casebook::config::defaults::<auth_svc::Config>()?;
        auth.listen_addr = Some(args.auth_svc_addr);
        service(&mut auth.service);
        let auth = auth_svc::build(auth, &registry).await?;
        let mut cases = casebook::config::defaults::<case_svc::Config>()?;
        cases.listen_addr = Some(args.case_svc_addr);
        service(&mut cases.service);
        let cases = case_svc::build(cases, &registry).await?;
        let mut gateway = casebook::config::defaults::<gateway::Config>()?;
        gateway.listen_addr = Some(args.gateway_addr);
        gateway.auth_svc_url = vec![format!("http://{}", auth.local_addr())];
        gateway.case_svc_url = vec![format!("http://{}", cases.local_addr())];
        gateway
            .server
            .cors_allowed_origins
            .clone_from(&args.cors_allowed_origins);
        let gateway = gateway::build(gateway, &registry).await?;
        let token = issuer.mint(&demo, args.token_lifetime);
        let metrics = match args.metrics_addr {
            Some(addr) => {
                let limits = ServerArgs::defaults()?;
                Some(casebook::server::serve_metrics(addr, &registry, &limits).await?)
            }
            None => None,
        };
        Ok(Self {
            metrics,
            issuer,
            auth,
            cases,
            gateway,
            demo,
            token,
            token_lifetime: args.token_lifetime,
            cors_origins: args.cors_allowed_origins.join(", "),
            data_dir: args.data_dir.clone(),
        })
    }

    /// The issuer's base URL (what the services use as `BETTER_AUTH_URL`).
    pub fn issuer_url(&self) -> &str {
        self.issuer.url()
    }

    /// The banner: where everything is and commands that work as printed.
    pub fn banner(&self) -> String {
        let (auth, cases) = (self.auth.local_addr(), self.cases.local_addr());
        let gateway = self.gateway.local_addr();
        let token = &self.token;
        format!(
            r#"
Casebook is running (data in {data}).

  gateway   http://{gateway}   REST/JSON, Connect, grpc-web and gRPC: one origin (CORS: {origins})
  auth-svc  {auth}   casebook.auth.v1.AuthService    every protocol too
  case-svc  {cases}   casebook.cases.v1.CaseService   every protocol too
  openapi   http://{gateway}/openapi.json
  metrics   {metrics}
  issuer    {issuer}/api/auth/jwks   development keys (stands in for Better Auth)

Signed in as {email} ({id}). Token (valid {lifetime}):

export JWT={token}

{curl}
grpcurl -plaintext -H "authorization: Bearer $JWT" {auth} casebook.auth.v1.AuthService/WhoAmI
grpcurl -plaintext -H "authorization: Bearer $JWT" -d '{{"case":{{"title":"Printer on fire","type":"INCIDENT"}}}}' {cases} casebook.cases.v1.CaseService/CreateCase
grpcurl -plaintext -H "authorization: Bearer $JWT" {cases} casebook.cases.v1.CaseService/ListCases
cargo stack token --email you@example.com    # a token for another user
(cd examples/web && npm ci && npm run build && npm run serve)   # then open http://localhost:5173/#token=$JWT

Ctrl-C stops everything.
"#,
            curl = self.curl_lines().join("\n"),
            data = self.data_dir.display(),
            origins = self.cors_origins,
            metrics = self
                .metrics
                .map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
            issuer = self.issuer.url(),
            email = self.demo.email,
            id = self.demo.id,
            lifetime = humantime::format_duration(self.token_lifetime),
        )
    }

    /// `curl` commands against the gateway that work as printed (with `$JWT`
    /// exported): every machine has curl.
    pub fn curl_lines(&self) -> Vec<String> {
        let base = format!("http://{}", self.gateway.local_addr());
        let auth = r#"-H "authorization: Bearer $JWT""#;
        vec![
            format!("curl {auth} {base}/api/auth/me"),
            format!(
                r#"curl {auth} -H 'content-type: application/json' -d '{{"title":"Printer on fire","type":"INCIDENT"}}' {base}/v1/cases"#
            ),
            format!("curl {auth} '{base}/v1/cases?pageSize=10&filter=status%20%3D%20OPEN'"),
            format!(
                r#"curl {auth} -H 'content-type: application/json' -d '{{}}' {base}/casebook.auth.v1.AuthService/WhoAmI"#
            ),
        ]
    }

    /// Stops the gateway, then the services (gracefully), then the issuer.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.gateway.server.shutdown().await?;
        let (auth, cases) = tokio::join!(self.auth.shutdown(), self.cases.shutdown());
        self.issuer.stop();
        auth?;
        cases?;
        Ok(())
    }
}

/// `casebook issuer`: the development issuer alone, until SIGINT/SIGTERM.
pub async fn run_issuer(
    args: &StackArgs,
    public_url: Option<&str>,
    allow_non_loopback: bool,
) -> anyhow::Result<()> {
    let key = dev_issuer::load_or_create_key(&args.data_dir)?;
    let db = args.database().await?;
    let demo = better_auth::ensure_user(&db, DEMO_EMAIL, "Demo User").await?;
    db.close().await;
    let exposure = if allow_non_loopback {
        Exposure::BeyondLoopback
    } else {
        Exposure::LoopbackOnly
    };
    let issuer = DevIssuer::start(key, args.issuer_addr, public_url, exposure).await?;
    println!(
        "development issuer {url} (JWKS at {url}/api/auth/jwks); token for {email}:\n\nexport JWT={token}\n",
        url = issuer.url(),
        email = demo.email,
        token = issuer.mint(&demo, args.token_lifetime),
    );
    casebook::server::shutdown_signal().await;
    issuer.stop();
    Ok(())
}

/// `casebook token`: a token for `email` from the development issuer's key,
/// without the stack running (the issuer URL is the configured address).
pub async fn mint_token(
    args: &StackArgs,
    email: &str,
    name: Option<&str>,
) -> anyhow::Result<String> {
    let key = dev_issuer::load_or_create_key(&args.data_dir)?;
    let db = args.database().await?;
    let default_name = email.split('@').next().unwrap_or(email);
    let user = better_auth::ensure_user(&db, email, name.unwrap_or(default_name)).await?;
    db.close().await;
    let issuer_url = format!("http://{}", args.issuer_addr);
    Ok(dev_issuer::mint(
        &key,
        &issuer_url,
        &user,
        args.token_lifetime,
    ))
}
