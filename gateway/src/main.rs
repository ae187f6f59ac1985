//! The `gateway` binary: parse settings, start, serve until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = gateway::Config::parse();
    let start = async { Ok(gateway::build(config.clone()).await?.server) };
    casebook::server::run_binary(
        config.probe,
        config.listen_addr,
        &config.telemetry,
        &config.server,
        start,
    )
    .await
}
