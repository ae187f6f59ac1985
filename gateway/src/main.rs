//! The `gateway` binary: parse settings, start, serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::Config::parse();
    casebook::telemetry::init(config.telemetry.log_format);
    let gateway = gateway::build(config).await?;
    gateway.server.run_until_stopped().await?;
    Ok(())
}
