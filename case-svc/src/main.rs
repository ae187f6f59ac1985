//! The `case-svc` binary: parse settings, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = case_svc::Config::parse();
    let settings = config.clone();
    casebook::server::run_binary(
        config.probe,
        config.listen(),
        &config.service.telemetry,
        &config.service.server,
        |metrics| async move { case_svc::build(settings, &metrics).await },
    )
    .await
}
