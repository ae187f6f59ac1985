//! The `gateway` binary: parse settings, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = gateway::Config::parse();
    let settings = config.clone();
    casebook::server::run_binary(
        config.probe,
        config.listen(),
        &config.telemetry,
        &config.server,
        |metrics| async move { Ok(gateway::build(settings, &metrics).await?.server) },
    )
    .await
}
