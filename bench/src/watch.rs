//! The watch scenario: N open `WatchCases` streams spread over the seeded
//! users, UpdateCase at a steady rate on one replica, and for every event
//! each watcher receives, the time from its `event_time` (stamped just before
//! the change commits) to its arrival. Watchers are on the writer's replica
//! or on another one sharing the database (then every delivery crossed
//! LISTEN/NOTIFY). Each delivery is counted, so a missed event shows.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use casebook::pb::casebook::cases::v1::{
    Case, UpdateCaseRequest, WatchCasesRequest, case_service_client::CaseServiceClient,
};
use prost_types::FieldMask;
use serde::Serialize;
use tonic::transport::Channel;

use crate::{load::Fixture, stats::Recorder};

/// What the watch run measured.
#[derive(Debug, Serialize)]
pub struct WatchReport {
    /// Open streams.
    pub watchers: usize,
    /// Whether watchers were on another replica than the writes.
    pub across_replicas: bool,
    /// Writes per second asked for, and done.
    pub target_rate: f64,
    /// Writes that succeeded.
    pub writes: u64,
    /// Events the watchers should have received (writes × watchers of that user).
    pub expected_deliveries: u64,
    /// Events they received.
    pub deliveries: u64,
    /// Commit-to-delivery latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// The watched case-svc's resident memory once every stream is open
    /// (each has sent its first message), MiB.
    pub rss_mib_opened: Option<f64>,
    /// The same after the writes, every stream having sent its events.
    pub rss_mib_after_writes: Option<f64>,
}

/// How to run it.
pub struct WatchOptions {
    /// Streams to open.
    pub watchers: usize,
    /// UpdateCase calls per second.
    pub rate: f64,
    /// How long to write.
    pub duration: Duration,
    /// Streams per HTTP/2 connection.
    pub streams_per_connection: usize,
}

/// Opens the watchers on `watch_at`, writes on `write_at`, reports.
pub async fn run(
    watch_at: SocketAddr,
    write_at: SocketAddr,
    fixture: &Fixture,
    options: &WatchOptions,
    rss_mib: impl Fn() -> Option<f64>,
) -> anyhow::Result<WatchReport> {
    let users = fixture.users.len().max(1);
    let connections = options
        .watchers
        .div_ceil(options.streams_per_connection.max(1));
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(crate::load::connect(watch_at).await?);
    }
    let deliveries = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for watcher in 0..options.watchers {
        let channel = channels[watcher % channels.len()].clone();
        let token = fixture.users[watcher % users].0.clone();
        let first = watch(channel, &token).await?;
        tasks.spawn(follow(first, Arc::clone(&deliveries), stopped.clone()));
    }
    let rss_mib_opened = rss_mib();

    let mut writer = CaseServiceClient::new(crate::load::connect(write_at).await?);
    let watchers_of = |user: usize| (options.watchers + users - 1 - user) / users;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    let end = tokio::time::Instant::now() + options.duration;
    let (mut writes, mut expected, mut n) = (0u64, 0u64, 0usize);
    while tokio::time::Instant::now() < end {
        ticks.tick().await;
        let user = n % users;
        let (token, cases) = &fixture.users[user];
        n += 1;
        let Some(name) = cases.first() else { continue };
        let request = UpdateCaseRequest {
            case: Some(Case {
                name: name.clone(),
                title: format!("write {n}"),
                ..Case::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["title".into()],
            }),
        };
        // One write at a time keeps the rate honest: a slow write delays the next.
        if writer
            .update_case(crate::load::bearer(request, token))
            .await
            .is_ok()
        {
            writes += 1;
            expected += watchers_of(user) as u64;
        }
    }
    // The last events are in flight: give them a moment, then stop.
    let settle = tokio::time::Instant::now() + Duration::from_secs(2);
    while deliveries.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_mib_after_writes = rss_mib();
    let _ = stop.send(true);
    let mut latencies = Recorder::default();
    while let Some(recorder) = tasks.join_next().await {
        latencies.merge(recorder?);
    }
    let summary = latencies.summarize("watch", options.duration);
    Ok(WatchReport {
        watchers: options.watchers,
        across_replicas: watch_at != write_at,
        target_rate: options.rate,
        writes,
        expected_deliveries: expected,
        deliveries: deliveries.load(Ordering::Relaxed),
        p50_ms: summary.p50_ms,
        p99_ms: summary.p99_ms,
        max_ms: summary.max_ms,
        rss_mib_opened,
        rss_mib_after_writes,
    })
}

type Stream = tonic::Streaming<casebook::pb::casebook::cases::v1::WatchCasesResponse>;

/// Opens one stream and waits for its first message (it is then following).
async fn watch(channel: Channel, token: &str) -> anyhow::Result<Stream> {
    let mut client = CaseServiceClient::new(channel);
    let mut stream = client
        .watch_cases(crate::load::bearer(WatchCasesRequest::default(), token))
        .await?
        .into_inner();
    stream.message().await?;
    Ok(stream)
}

/// Receives events until told to stop, timing each from its `event_time`.
async fn follow(
    mut stream: Stream,
    deliveries: Arc<AtomicU64>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Recorder {
    let mut latencies = Recorder::default();
    loop {
        let message = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return latencies,
            message = stream.message() => message,
        };
        let Ok(Some(message)) = message else {
            return latencies;
        };
        let Some(time) = message.event.and_then(|e| e.event_time) else {
            continue;
        };
        let committed = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(time.seconds).unwrap_or_default(),
                u32::try_from(time.nanos).unwrap_or_default(),
            );
        let elapsed = SystemTime::now()
            .duration_since(committed)
            .unwrap_or_default();
        latencies.record(elapsed, Ok(()));
        deliveries.fetch_add(1, Ordering::Relaxed);
    }
}
