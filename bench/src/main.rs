//! `casebook-bench`: starts auth-svc and case-svc (optionally pinned to CPUs),
//! seeds users and cases through the API, drives each scenario with N
//! connections × M calls in flight for a fixed time, measures the ceilings
//! in the same run, and reports throughput, latency percentiles and errors by
//! gRPC code as a markdown table and JSON. Loads go to 127.0.0.1 only.

mod baseline;
mod closed_loop;
mod cold_start;
mod load;
mod stats;
mod system;
mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use load::Scenario;
use serde::Serialize;
use stats::Summary;

#[derive(Parser)]
#[command(
    name = "casebook-bench",
    about = "Load generator and baselines for Casebook"
)]
struct Cli {
    /// PostgreSQL to run against (a dedicated database: the bench writes to it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Directory holding the auth-svc and case-svc binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// How long each scenario runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// HTTP/2 connections per service.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Scenarios to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// CPUs for the services (`taskset -c` list); empty: not pinned.
    #[arg(long, default_value = "")]
    server_cpus: String,
    /// MAX_CONCURRENT_CALLS for the services: set it below --concurrency to
    /// measure overload (refusals and the admitted calls' latency). Unset:
    /// the services' own default.
    #[arg(long)]
    max_concurrent_calls: Option<usize>,
    /// Verified tokens the services remember (0: every call verifies).
    #[arg(long, default_value_t = 10_000)]
    cache_entries: usize,
    /// Users to seed, and cases per user.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// Cases seeded per user.
    #[arg(long, default_value_t = 20)]
    cases_per_user: usize,
    /// Also start case-svc this many times, one after another, and report
    /// start → SERVING and the first call (0: skip).
    #[arg(long, default_value_t = 0)]
    cold_starts: usize,
    /// Open this many WatchCases streams (spread over the seeded users) and
    /// measure commit-to-delivery latency under steady writes (0: skip).
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// UpdateCase calls per second during the watch run.
    #[arg(long, default_value_t = 500.0)]
    watch_rate: f64,
    /// Watch on a second case-svc replica while writing on the first.
    #[arg(long)]
    watch_across_replicas: bool,
    /// Run only the watch scenario (and its setup).
    #[arg(long)]
    watch_only: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    concurrency: usize,
    connections: usize,
    duration_secs: f64,
    server_cpus: String,
    cache_entries: usize,
    max_concurrent_calls: Option<usize>,
    eddsa_raw_verifies_per_sec: f64,
    rss_mib_idle: Option<(f64, f64)>,
    rss_mib_max_under_load: Option<(f64, f64)>,
    rows: Vec<Summary>,
    cold_starts: Vec<cold_start::ColdStart>,
    watch: Option<watch::WatchReport>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenarios = if cli.watch_only {
        Vec::new()
    } else if cli.scenarios.is_empty() {
        vec![
            Scenario::Noop,
            Scenario::VerifyToken,
            Scenario::WhoAmI,
            Scenario::GetCase,
            Scenario::ListCases,
            Scenario::CreateCase,
            Scenario::UpdateCase,
            Scenario::Mixed,
            Scenario::GrpcWebGetCase,
            Scenario::GatewayGetCase,
            Scenario::RestGetCase,
            Scenario::RestListCases,
            Scenario::RestCreateCase,
            Scenario::ConnectGetCase,
        ]
    } else {
        cli.scenarios.clone()
    };
    let system = system::System::start(&system::Options {
        database_url: &cli.database_url,
        bin_dir: &cli.bin_dir,
        server_cpus: &cli.server_cpus,
        cache_entries: cli.cache_entries,
        max_concurrent_calls: cli.max_concurrent_calls,
        users: cli.users,
    })
    .await?;
    let idle = system.auth.rss_mib().zip(system.cases.rss_mib());
    let fixture =
        Arc::new(load::seed(system.cases.addr, &system.tokens, cli.cases_per_user).await?);
    let user_ids = Arc::new(user_ids(&system.tokens));

    let mut rows = Vec::new();
    let mut peak = (0.0f64, 0.0f64);
    let (db, wall) = baseline::database(
        &system.db,
        Arc::clone(&fixture),
        user_ids,
        cli.concurrency,
        cli.duration,
    )
    .await?;
    rows.push(db.summarize("baseline: GetCase SQL via sqlx (database ceiling)", wall));
    let targets = load::Targets {
        auth: system.auth.addr,
        cases: system.cases.addr,
        web: load::WebClient::new(system.gateway.addr),
        gateway: system.gateway.addr,
    };
    let server_cpu = || {
        [&system.auth, &system.cases, &system.gateway]
            .iter()
            .map(|service| service.cpu_seconds())
            .sum::<Option<f64>>()
    };
    for scenario in scenarios {
        let cpu_before = server_cpu();
        let (recorder, wall) = load::run(
            scenario,
            &targets,
            Arc::clone(&fixture),
            cli.connections,
            cli.concurrency,
            cli.duration,
        )
        .await?;
        if let Some((auth, cases)) = system.auth.rss_mib().zip(system.cases.rss_mib()) {
            peak = (peak.0.max(auth), peak.1.max(cases));
        }
        let name = match scenario {
            Scenario::Noop => "baseline: health check (transport ceiling)".to_owned(),
            other => format!("{other:?}"),
        };
        let mut summary = recorder.summarize(&name, wall);
        summary.server_cpu_us_per_call = cpu_before
            .zip(server_cpu())
            .filter(|_| summary.ok > 0)
            .map(|(before, after)| (after - before) * 1e6 / summary.ok as f64);
        rows.push(summary);
    }
    let watch = if cli.watchers > 0 {
        let replica = match cli.watch_across_replicas {
            true => Some(system.launcher.spawn(
                "case-svc",
                "CASE_SVC_ADDR",
                &system::WATCH_LIMITS.map(|(k, v)| (k, v.to_owned())),
            )?),
            false => None,
        };
        if let Some(replica) = &replica {
            system::wait_serving(replica.addr).await?;
        }
        let watched = replica.as_ref().unwrap_or(&system.cases);
        let options = watch::WatchOptions {
            watchers: cli.watchers,
            rate: cli.watch_rate,
            duration: cli.duration,
            streams_per_connection: 100,
        };
        let report = watch::run(watched.addr, system.cases.addr, &fixture, &options, || {
            watched.rss_mib()
        })
        .await?;
        Some(report)
    } else {
        None
    };
    let eddsa = baseline::eddsa_verifies_per_second(Duration::from_secs(2))?;
    let cold_starts = match fixture.users.first() {
        Some((token, cases)) if cli.cold_starts > 0 && !cases.is_empty() => {
            cold_start::measure(&system.launcher, cli.cold_starts, &cases[0], token).await?
        }
        _ => Vec::new(),
    };

    println!(
        "{} calls in flight over {} connections, {:?} each; services on CPUs {:?}; token cache {} entries; MAX_CONCURRENT_CALLS {}\n",
        cli.concurrency,
        cli.connections,
        cli.duration,
        cli.server_cpus,
        cli.cache_entries,
        cli.max_concurrent_calls
            .map_or("default".to_owned(), |n| n.to_string())
    );
    println!("{}", Summary::HEADER);
    for row in &rows {
        println!("{}", row.row());
    }
    println!(
        "| baseline: raw EdDSA verify, one core (crypto ceiling) | {eddsa:.0} | | | | | | | |"
    );
    if let Some((auth, cases)) = idle {
        println!(
            "\nresident memory: idle auth-svc {auth:.1} MiB, case-svc {cases:.1} MiB; under load max auth-svc {:.1} MiB, case-svc {:.1} MiB",
            peak.0, peak.1
        );
    }
    if !cold_starts.is_empty() {
        let (serving, serving_max) = cold_start::median_and_max(
            &mut cold_starts
                .iter()
                .map(|c| c.to_serving_ms)
                .collect::<Vec<_>>(),
        );
        let (first, first_max) = cold_start::median_and_max(
            &mut cold_starts
                .iter()
                .map(|c| c.first_call_ms)
                .collect::<Vec<_>>(),
        );
        println!(
            "\ncase-svc cold start over {} starts: exec → SERVING median {serving:.1} ms, max {serving_max:.1} ms; first GetCase median {first:.2} ms, max {first_max:.2} ms",
            cold_starts.len()
        );
    }
    if let Some(watch) = &watch {
        println!(
            "\nwatch: {} streams{}, {:.0} writes/s asked, {} writes, {}/{} deliveries; commit → delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; case-svc RSS with the streams open {}, after the writes {}",
            watch.watchers,
            if watch.across_replicas {
                " on another replica"
            } else {
                ""
            },
            watch.target_rate,
            watch.writes,
            watch.deliveries,
            watch.expected_deliveries,
            watch.p50_ms,
            watch.p99_ms,
            watch.max_ms,
            mib(watch.rss_mib_opened),
            mib(watch.rss_mib_after_writes),
        );
    }
    if let Some(path) = &cli.json {
        let report = Report {
            concurrency: cli.concurrency,
            connections: cli.connections,
            duration_secs: cli.duration.as_secs_f64(),
            server_cpus: cli.server_cpus.clone(),
            cache_entries: cli.cache_entries,
            max_concurrent_calls: cli.max_concurrent_calls,
            eddsa_raw_verifies_per_sec: eddsa,
            rss_mib_idle: idle,
            rss_mib_max_under_load: Some(peak),
            rows,
            cold_starts,
            watch,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// The `sub` of each seeded token (the database baseline queries by owner).
fn user_ids(tokens: &[String]) -> Vec<String> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    tokens
        .iter()
        .filter_map(|token| token.split('.').nth(1))
        .filter_map(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .filter_map(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .filter_map(|claims| claims["sub"].as_str().map(str::to_owned))
        .collect()
}

/// A memory reading for the report.
fn mib(reading: Option<f64>) -> String {
    reading.map_or("unknown".to_owned(), |mib| format!("{mib:.1} MiB"))
}
