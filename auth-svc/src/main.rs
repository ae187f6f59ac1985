//! The `auth-svc` binary: parse settings, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = auth_svc::Config::parse();
    let settings = config.clone();
    casebook::server::run_binary(
        config.probe,
        config.listen(),
        &config.service.telemetry,
        &config.service.server,
        |metrics| async move { auth_svc::build(settings, &metrics).await },
    )
    .await
}
