//! Faults that must lose nothing: PostgreSQL restarted under a steady write
//! load (the test's own throwaway server: `initdb` into a temporary directory,
//! a free port, `pg_ctl` from /usr/lib/postgresql/*/bin — never the shared
//! one), and SIGTERM under load.

mod common;

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use casebook::pb::casebook::cases::v1::{Case, CreateCaseRequest, GetCaseRequest, case::Type};
use common::{CaseSvc, Issuer, TestDb, TestEnv, bearer};
use tonic::Code;

/// A PostgreSQL server of the test's own.
struct OwnPostgres {
    bin: PathBuf,
    data: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    /// The newest PostgreSQL server installation, if the machine has one.
    fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .collect();
        found.sort();
        found.pop()
    }

    /// PostgreSQL refuses to run as root: as root, run its tools as `postgres`.
    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0"));
        let status = if is_root {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .status()
        } else {
            Command::new(&program).args(args).status()
        }
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(status.success(), "{tool} {args:?} failed");
    }

    /// A fresh server, or `None` on a machine without PostgreSQL installed
    /// (the README's `cargo test` needs only Rust). Where PostgreSQL tests
    /// were asked for (`CASEBOOK_TEST_POSTGRES`, as in CI) it must exist.
    fn init() -> Option<Self> {
        let Some(bin) = Self::bin_dir() else {
            assert!(
                std::env::var(common::POSTGRES_ENV).is_err(),
                "{} is set but no PostgreSQL server binaries exist under /usr/lib/postgresql",
                common::POSTGRES_ENV
            );
            eprintln!("no PostgreSQL server binaries on this machine: restart test not run");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(data.path())
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { bin, data, port };
        let pgdata = server.pgdata();
        server.run(
            "initdb",
            &["-D", &pgdata, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        Some(server)
    }

    fn pgdata(&self) -> String {
        self.data.path().join("pgdata").display().to_string()
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.data.path().display()
        );
        let log = self.data.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.pgdata(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.pgdata(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.pgdata(), "-m", "immediate", "stop"])
            .output();
    }
}

fn draft(title: String) -> Case {
    Case {
        title,
        r#type: Type::Incident as i32,
        ..Case::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_writes_fails_fast_recovers_and_loses_nothing() {
    let Some(postgres) = OwnPostgres::init() else {
        return;
    };
    postgres.start();
    let db = TestDb::at(&postgres.url()).await;
    let env =
        Arc::new(TestEnv::with_db(Issuer::single(casebook::auth::Algorithm::EdDsa), db).await);
    // A long acquire timeout: calls that fail during the outage prove they
    // did not wait for it (a refused connection fails at once).
    let app = CaseSvc::start_in(Arc::clone(&env), |c| {
        c.service.database.database_acquire_timeout = Duration::from_secs(30);
    })
    .await;
    let token = env.user("alice").await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let mut client = app.client().await;
        let (token, acknowledged, failures, stop) = (
            token.clone(),
            Arc::clone(&acknowledged),
            Arc::clone(&failures),
            Arc::clone(&stop),
        );
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let request = CreateCaseRequest {
                    case: Some(draft(format!("w{worker}-{i}"))),
                    request_id: format!("w{worker}-{i}"),
                };
                let started = tokio::time::Instant::now();
                match client.create_case(bearer(request, &token)).await {
                    Ok(reply) => acknowledged.lock().unwrap().push(reply.into_inner().name),
                    Err(status) => {
                        failures
                            .lock()
                            .unwrap()
                            .push((status.code(), started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let written = || acknowledged.lock().unwrap().len();
    assert!(common::grows_by(50, written).await, "the load runs");
    // The outage itself lasts a fixed time: it is the scenario, not a wait.
    let stopper = tokio::task::spawn_blocking(move || {
        postgres.stop();
        std::thread::sleep(Duration::from_secs(2));
        postgres.start();
        postgres
    });
    let postgres = stopper.await.unwrap();
    assert!(
        common::grows_by(50, written).await,
        "writes resume by themselves after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    assert!(!failures.is_empty(), "the outage was noticed");
    for (code, took) in &failures {
        assert_eq!(*code, Code::Unavailable, "an outage is UNAVAILABLE");
        assert!(
            *took < Duration::from_secs(2),
            "a failed call took {took:?}: it must fail fast"
        );
    }
    // The service recovered by itself: writes succeeded after the restart.
    let before_restart = acknowledged.len();
    let mut client = app.client().await;
    let late = client
        .create_case(bearer(
            CreateCaseRequest {
                case: Some(draft("after".into())),
                request_id: String::new(),
            },
            &token,
        ))
        .await;
    assert!(late.is_ok(), "no recovery: {late:?}");
    for name in &acknowledged {
        client
            .get_case(bearer(GetCaseRequest { name: name.clone() }, &token))
            .await
            .unwrap_or_else(|status| panic!("acknowledged {name} is lost: {status:?}"));
    }
    let slowest = failures.iter().map(|(_, took)| *took).max();
    eprintln!(
        "{before_restart} writes acknowledged, {} failed during the outage, the slowest failure after {slowest:?}",
        failures.len()
    );
    drop(app);
    drop(postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_in_flight_calls_and_exits_in_time() {
    let bin = common::binary("case-svc");
    let env = TestEnv::new(Issuer::single(casebook::auth::Algorithm::EdDsa)).await;
    let token = env.user("alice").await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(&bin)
        .args(env.flags(&["--listen-addr", &addr.to_string(), "--shutdown-grace", "3s"]))
        // Only what the test sets: nothing exported around the test leaks in.
        .env_clear()
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let serving = common::eventually(Duration::from_secs(20), async || {
        casebook::server::check_health(addr, false).await.is_ok()
    })
    .await;
    assert!(serving);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let mut client =
            casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient::new(
                channel.clone(),
            );
        let (token, stop, outcomes) = (token.clone(), Arc::clone(&stop), Arc::clone(&outcomes));
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let request_id = format!("w{worker}-{i}");
                let request = CreateCaseRequest {
                    case: Some(draft("draining".into())),
                    request_id: request_id.clone(),
                };
                let outcome = client
                    .create_case(bearer(request, &token))
                    .await
                    .map(drop)
                    .map_err(|s| s.code());
                let failed = outcome.is_err();
                outcomes.lock().unwrap().push((request_id, outcome));
                if failed {
                    break; // the door is closed; this worker is done
                }
            }
        }));
    }
    assert!(
        common::grows_by(20, || outcomes.lock().unwrap().len()).await,
        "the load runs"
    );
    let signalled = tokio::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Health flips to NOT_SERVING before the listener goes away.
    let flipped = common::eventually(Duration::from_secs(2), async || {
        casebook::server::check_health(addr, false).await.is_err()
    })
    .await;
    assert!(flipped);
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
    assert!(
        took < Duration::from_secs(3),
        "exited within the 3 s grace: {took:?}"
    );
    let outcomes = outcomes.lock().unwrap().clone();
    let ok = outcomes.iter().filter(|(_, o)| o.is_ok()).count();
    assert!(ok > 10, "the load ran: {ok} calls");
    // A call that failed must not have been applied: had the server admitted
    // it, draining would have let it finish and answer.
    for (request_id, outcome) in &outcomes {
        let stored = env
            .db
            .count(
                "SELECT count(*) FROM cases WHERE request_id = $1",
                request_id,
            )
            .await;
        match outcome {
            Ok(()) => assert_eq!(stored, 1, "{request_id} acknowledged but not stored"),
            Err(code) => assert_eq!(
                stored, 0,
                "{request_id} failed ({code:?}) after being applied"
            ),
        }
    }
}
