//! The conventions of Cloud Run and the platforms like it (Knative, Heroku,
//! Fly, Render): the port comes in `PORT`, secrets come as files, and Cloud
//! SQL is a Unix socket.

mod common;

use std::{process::Command, sync::Arc, time::Duration};

use casebook::{
    metrics::Metrics,
    pb::casebook::cases::v1::{Case, CreateCaseRequest, case::Type},
};
use common::{CaseSvc, ISSUER, Issuer, TestEnv, bearer};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
struct Child(Option<std::process::Child>);

impl Child {
    /// Stops it and returns everything it wrote.
    fn stop(mut self) -> String {
        let mut child = self.0.take().unwrap();
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_without_its_own_address_listens_on_port_and_reads_secrets_from_files() {
    let env = TestEnv::new(Issuer::single(casebook::auth::Algorithm::EdDsa)).await;
    let secrets = tempfile::tempdir().unwrap();
    let url_file = secrets.path().join("database-url");
    // As a secret volume holds it: the value and a final newline.
    std::fs::write(&url_file, format!("{}\n", env.db.url())).unwrap();
    let port = free_port();
    let child = Command::new(common::binary("case-svc"))
        .env_clear()
        .env("PORT", port.to_string())
        .env("BETTER_AUTH_URL", ISSUER)
        .env("JWKS_URL", env.jwks.url())
        .env("DATABASE_URL_FILE", &url_file)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(|child| Child(Some(child)))
        .unwrap();
    // PORT means every interface, as the platform's proxy connects from outside.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let serving = common::eventually(Duration::from_secs(20), async || {
        casebook::server::check_health(addr, false).await.is_ok()
    })
    .await;
    assert!(serving, "case-svc never served on PORT {port}");
    let token = env.user("alice").await;
    let mut client =
        casebook::pb::casebook::cases::v1::case_service_client::CaseServiceClient::connect(
            format!("http://{addr}"),
        )
        .await
        .unwrap();
    client
        .create_case(bearer(create("from a file"), &token))
        .await
        .expect("the database named by the file is the one in use");
    let logs = child.stop();
    assert!(logs.contains("listening"), "the binary logged: {logs}");
    assert!(
        !logs.contains(env.db.url()),
        "the secret file's contents were logged"
    );
}

#[tokio::test]
async fn an_explicit_address_wins_over_port_and_both_secret_forms_at_once_are_refused() {
    let env = Arc::new(TestEnv::new(Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
    let mut config = env.case_config();
    config.service.server.port = Some(1);
    assert_eq!(config.listen(), config.listen_addr.unwrap());
    config.listen_addr = None;
    assert_eq!(
        config.listen(),
        std::net::SocketAddr::from(([0, 0, 0, 0], 1))
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "postgres://app:hunter2@db/app").unwrap();
    let mut both = env.case_config();
    both.service.database.database_url_file = Some(file.path().to_owned());
    let error = case_svc::build(both, &Metrics::new())
        .await
        .err()
        .expect("both forms are refused")
        .to_string();
    assert!(
        error.contains("DATABASE_URL and DATABASE_URL_FILE"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn postgres_over_its_unix_socket_as_cloud_sql_mounts_it() {
    let env = Arc::new(TestEnv::new(Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
    let Some(socket_url) = env.db.socket_url() else {
        // SQLite run: the PostgreSQL run in CI covers this.
        return;
    };
    let app = CaseSvc::start_in(Arc::clone(&env), |c| {
        c.service.database.database_url = Some(socket_url.clone());
    })
    .await;
    let token = env.user("bob").await;
    app.client()
        .await
        .create_case(bearer(create("over the socket"), &token))
        .await
        .expect("served over the Unix socket");
    let metrics = app.metrics.render();
    let redacted = casebook::db::redact(&socket_url);
    assert!(
        metrics.contains(&format!(r#"database="{redacted}""#)),
        "{metrics}"
    );
    assert!(redacted.contains("host=/var/run/postgresql"), "{redacted}");
}

fn create(title: &str) -> CreateCaseRequest {
    CreateCaseRequest {
        case: Some(Case {
            title: title.into(),
            r#type: Type::Incident as i32,
            ..Case::default()
        }),
        ..Default::default()
    }
}
