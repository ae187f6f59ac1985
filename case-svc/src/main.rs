//! The `case-svc` binary: parse settings, start, serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = case_svc::Config::parse();
    casebook::telemetry::init(config.telemetry.log_format);
    let server = case_svc::build(config).await?;
    server.run_until_stopped().await?;
    Ok(())
}
