//! `casebook`: the whole system in one process (`cargo stack`), or
//! `casebook token --email …` to mint a development token.

use casebook_stack::{Cli, Command, Stack, mint_token};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token { email, name }) = &cli.command {
        println!("{}", mint_token(&cli.stack, email, name.as_deref()).await?);
        return Ok(());
    }
    casebook::telemetry::init(casebook::config::LogFormat::Text);
    let stack = Stack::start(&cli.stack).await?;
    println!("{}", stack.banner());
    casebook::server::shutdown_signal().await;
    tracing::info!("stopping");
    stack.shutdown().await
}
