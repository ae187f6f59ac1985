//! The system under test: the development issuer in this process, auth-svc
//! and case-svc as separate processes (optionally pinned to CPUs with
//! `taskset`), users and cases seeded through the real API.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use casebook::{config::DatabaseArgs, db::Database, metrics::ServerMetrics};
use casebook_stack::{
    better_auth,
    dev_issuer::{self, DevIssuer, Exposure},
};

/// A service process; killed when dropped.
pub struct Service {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Linux's clock tick for /proc times (USER_HZ, fixed at 100 by the ABI).
const TICKS_PER_SECOND: f64 = 100.0;

impl Service {
    /// CPU time (user + system) the process has used, in seconds, from /proc.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which may hold spaces, in parens):
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let user: f64 = fields.next()?.parse().ok()?;
        let system: f64 = fields.next()?.parse().ok()?;
        Some((user + system) / TICKS_PER_SECOND)
    }

    /// Resident memory (VmRSS) in MiB, from /proc.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

/// Everything the scenarios need.
pub struct System {
    /// auth-svc.
    pub auth: Service,
    /// case-svc.
    pub cases: Service,
    /// The gateway in front of both (grpc-web scenarios).
    pub gateway: Service,
    /// One token per seeded user.
    pub tokens: Vec<String>,
    /// The database, for the baseline.
    pub db: Database,
    /// Starts more service processes like these (cold starts).
    pub launcher: Launcher,
    _issuer: DevIssuer,
    _data: TempDir,
}

/// A directory removed on drop (the issuer's key).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// How to start the system.
pub struct Options<'a> {
    /// PostgreSQL (or SQLite) URL.
    pub database_url: &'a str,
    /// Directory with the `auth-svc` and `case-svc` binaries.
    pub bin_dir: &'a Path,
    /// `taskset -c` list for the services; empty: no pinning.
    pub server_cpus: &'a str,
    /// JWT_CACHE_ENTRIES for the services.
    pub cache_entries: usize,
    /// MAX_CONCURRENT_CALLS for the services (`None`: their default).
    pub max_concurrent_calls: Option<usize>,
    /// Users to seed.
    pub users: usize,
}

impl System {
    /// Starts the issuer and both services and seeds users.
    pub async fn start(options: &Options<'_>) -> anyhow::Result<Self> {
        let data =
            TempDir(std::env::temp_dir().join(format!("casebook-bench-{}", std::process::id())));
        let key = dev_issuer::load_or_create_key(&data.0)?;
        let issuer =
            DevIssuer::start(key, "127.0.0.1:0".parse()?, None, Exposure::LoopbackOnly).await?;
        let args = DatabaseArgs::for_url(options.database_url)?;
        let db = Database::connect(&args, &ServerMetrics::detached("casebook-bench")).await?;
        better_auth::ensure_schema(&db).await?;
        let mut tokens = Vec::new();
        for i in 0..options.users {
            let user = better_auth::ensure_user(&db, &format!("bench-{i}@casebook.local"), "Bench")
                .await?;
            tokens.push(issuer.mint(&user, Duration::from_secs(3600)));
        }
        let launcher = Launcher {
            bin_dir: options.bin_dir.to_owned(),
            server_cpus: options.server_cpus.to_owned(),
            issuer_url: issuer.url().to_owned(),
            database_url: options.database_url.to_owned(),
            cache_entries: options.cache_entries,
            max_concurrent_calls: options.max_concurrent_calls,
        };
        let auth = launcher.spawn("auth-svc", "AUTH_SVC_ADDR", &[])?;
        let cases = launcher.spawn(
            "case-svc",
            "CASE_SVC_ADDR",
            &WATCH_LIMITS.map(|(k, v)| (k, v.to_owned())),
        )?;
        let gateway = launcher.spawn(
            "gateway",
            "GATEWAY_ADDR",
            &[
                ("AUTH_SVC_URL", format!("http://{}", auth.addr)),
                ("CASE_SVC_URL", format!("http://{}", cases.addr)),
            ],
        )?;
        for service in [&auth, &cases, &gateway] {
            wait_serving(service.addr).await?;
        }
        Ok(Self {
            auth,
            cases,
            gateway,
            tokens,
            db,
            launcher,
            _issuer: issuer,
            _data: data,
        })
    }
}

/// Room for the watch scenario's streams: 10,000 is beyond case-svc's
/// default MAX_CONCURRENT_STREAMS (1,024), which an operator raises the same way.
pub const WATCH_LIMITS: [(&str, &str); 1] = [("MAX_CONCURRENT_STREAMS", "20000")];

/// Starts service processes against the system's issuer and database.
pub struct Launcher {
    bin_dir: PathBuf,
    server_cpus: String,
    issuer_url: String,
    database_url: String,
    cache_entries: usize,
    max_concurrent_calls: Option<usize>,
}

impl Launcher {
    /// Starts `binary` listening on a free loopback port named by `addr_var`,
    /// with `extra` settings.
    pub fn spawn(
        &self,
        binary: &str,
        addr_var: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Service> {
        let addr = free_addr()?;
        let path = self.bin_dir.join(binary);
        let mut command = if self.server_cpus.is_empty() {
            Command::new(&path)
        } else {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &self.server_cpus]).arg(&path);
            taskset
        };
        let child = command
            .env(addr_var, addr.to_string())
            .env("BETTER_AUTH_URL", &self.issuer_url)
            .env("DATABASE_URL", &self.database_url)
            .env("JWT_CACHE_ENTRIES", self.cache_entries.to_string())
            .envs(
                self.max_concurrent_calls
                    .map(|n| ("MAX_CONCURRENT_CALLS", n.to_string())),
            )
            .env("RUST_LOG", "warn")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        Ok(Service { child, addr })
    }
}

/// Waits until the service at `addr` reports SERVING.
pub async fn wait_serving(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if casebook::server::check_health(addr, false).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} never became SERVING")
}
