//! Past one machine, on one: the gateway in front of two auth-svc and two
//! case-svc *processes* sharing one database (PostgreSQL with
//! `CASEBOOK_TEST_POSTGRES`). A bounded write load runs while one replica of
//! each service is killed (SIGKILL) and restarted. No acknowledged write may be
//! lost, and only calls in flight on a killed process may fail.

mod common;

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use casebook::pb::casebook::{
    auth::v1::{WhoAmIRequest, auth_service_client::AuthServiceClient},
    cases::v1::{
        Case, CreateCaseRequest, GetCaseRequest, case::Type, case_service_client::CaseServiceClient,
    },
};
use common::{ISSUER, Issuer, TestEnv, bearer};
use tonic::{Code, transport::Channel};

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, env: &[(&str, String)]) -> Process {
    let child = Command::new(common::binary(name))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Process { child }
}

async fn until_serving(addr: SocketAddr) {
    let serving = common::eventually(Duration::from_secs(20), async || {
        casebook::server::check_health(addr, false).await.is_ok()
    })
    .await;
    assert!(serving, "{addr} never became SERVING");
}

/// Writes acknowledged between two steps of the test.
const PROGRESS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_of_each_service_loses_no_acknowledged_write() {
    let env = Arc::new(TestEnv::new(Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
    let token = env.user("alice").await;
    let service_env = |addr_var: &'static str, addr: SocketAddr| {
        vec![
            (addr_var, addr.to_string()),
            ("BETTER_AUTH_URL", ISSUER.to_owned()),
            ("JWKS_URL", env.jwks.url()),
            ("DATABASE_URL", env.db.url().to_owned()),
            ("SHUTDOWN_GRACE", "2s".to_owned()),
        ]
    };
    let auth_addrs = [free_addr(), free_addr()];
    let case_addrs = [free_addr(), free_addr()];
    let mut auth: Vec<Process> = auth_addrs
        .iter()
        .map(|a| spawn("auth-svc", &service_env("AUTH_SVC_ADDR", *a)))
        .collect();
    // Migrations are safe to race, but start the first case-svc alone to keep the log quiet.
    let mut cases = vec![spawn(
        "case-svc",
        &service_env("CASE_SVC_ADDR", case_addrs[0]),
    )];
    until_serving(case_addrs[0]).await;
    cases.push(spawn(
        "case-svc",
        &service_env("CASE_SVC_ADDR", case_addrs[1]),
    ));
    for addr in auth_addrs.iter().chain(&case_addrs) {
        until_serving(*addr).await;
    }
    let gateway_addr = free_addr();
    let urls = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let _gateway = spawn(
        "gateway",
        &[
            ("GATEWAY_ADDR", gateway_addr.to_string()),
            ("AUTH_SVC_URL", urls(&auth_addrs)),
            ("CASE_SVC_URL", urls(&case_addrs)),
        ],
    );
    until_serving(gateway_addr).await;
    let channel = Channel::from_shared(format!("http://{gateway_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    const WORKERS: usize = 4;
    let mut load = Vec::new();
    for worker in 0..WORKERS {
        let (channel, token) = (channel.clone(), token.clone());
        let (acknowledged, failures) = (Arc::clone(&acknowledged), Arc::clone(&failures));
        let stop = Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            let mut cases = CaseServiceClient::new(channel.clone());
            let mut auth = AuthServiceClient::new(channel);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let case = Case {
                    title: format!("w{worker}-{i}"),
                    r#type: Type::Request as i32,
                    ..Case::default()
                };
                let request = CreateCaseRequest {
                    case: Some(case),
                    request_id: format!("w{worker}-{i}"),
                };
                match cases.create_case(bearer(request, &token)).await {
                    Ok(reply) => acknowledged.lock().unwrap().push(reply.into_inner().name),
                    Err(status) => failures.lock().unwrap().push(status),
                }
                if let Err(status) = auth.who_am_i(bearer(WhoAmIRequest {}, &token)).await {
                    failures.lock().unwrap().push(status);
                }
            }
        }));
    }

    // Each step waits for the load to make progress, not for a time to pass.
    let progressed = async |step: &str| {
        let moved = common::grows_by(PROGRESS, || acknowledged.lock().unwrap().len()).await;
        assert!(moved, "the load stalled {step}");
    };
    progressed("before the kill").await;
    // SIGKILL: no drain, no goodbye.
    drop(cases.remove(0));
    drop(auth.remove(0));
    progressed("with one replica of each service dead").await;
    cases.push(spawn(
        "case-svc",
        &service_env("CASE_SVC_ADDR", case_addrs[0]),
    ));
    auth.push(spawn(
        "auth-svc",
        &service_env("AUTH_SVC_ADDR", auth_addrs[0]),
    ));
    until_serving(case_addrs[0]).await;
    until_serving(auth_addrs[0]).await;
    progressed("after the restart").await;
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    // Each worker has one call in flight at a time, and two processes died.
    assert!(
        failures.len() <= 2 * WORKERS,
        "{} calls failed: {failures:?}",
        failures.len()
    );
    for status in &failures {
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "only in-flight calls may fail: {status:?}"
        );
    }

    // Every acknowledged write is stored (read back through the gateway).
    let mut reader = CaseServiceClient::new(channel);
    let unique: HashSet<_> = acknowledged.iter().collect();
    assert_eq!(unique.len(), acknowledged.len());
    for name in &acknowledged {
        reader
            .get_case(bearer(GetCaseRequest { name: name.clone() }, &token))
            .await
            .unwrap_or_else(|status| panic!("acknowledged {name} is lost: {status:?}"));
    }
    eprintln!(
        "{} writes acknowledged, {} calls failed in flight",
        acknowledged.len(),
        failures.len()
    );
}
