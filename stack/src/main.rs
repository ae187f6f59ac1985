//! `casebook`: the whole system in one process (`cargo stack`), or
//! `casebook token --email …` to mint a development token, or
//! `casebook issuer` to run only the development issuer (docker-compose), or
//! `casebook openapi` to print the OpenAPI document.

use casebook_stack::{Cli, Command, Stack, mint_token, run_issuer};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    casebook::telemetry::init(casebook::config::LogFormat::Text);
    match &cli.command {
        Some(Command::Token { email, name }) => {
            println!("{}", mint_token(&cli.stack, email, name.as_deref()).await?);
            return Ok(());
        }
        Some(Command::Issuer {
            public_url,
            allow_non_loopback,
        }) => return run_issuer(&cli.stack, public_url.as_deref(), *allow_non_loopback).await,
        Some(Command::Openapi) => {
            print!(
                "{}",
                casebook::transcode::openapi(&casebook_stack::SERVICES)?
            );
            return Ok(());
        }
        None => {}
    }
    let stack = Stack::start(&cli.stack).await?;
    println!("{}", stack.banner());
    casebook::server::shutdown_signal().await;
    tracing::info!("stopping");
    stack.shutdown().await
}
