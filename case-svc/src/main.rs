//! The `case-svc` binary: parse settings, start, serve until SIGINT/SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let config = case_svc::Config::parse();
    if config.probe.is_some() {
        return Ok(casebook::server::healthcheck(config.listen_addr).await);
    }
    casebook::telemetry::init(config.telemetry.log_format);
    if let Some(addr) = config.server.metrics_addr {
        casebook::metrics::serve(addr).await?;
    }
    let server = case_svc::build(config).await?;
    server.run_until_stopped().await?;
    Ok(std::process::ExitCode::SUCCESS)
}
