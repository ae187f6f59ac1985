//! The `case-svc` binary: parse settings, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = case_svc::Config::parse();
    let start = case_svc::build(config.clone());
    casebook::server::run_binary(
        config.probe,
        config.listen_addr,
        &config.service.telemetry,
        &config.service.server,
        start,
    )
    .await
}
