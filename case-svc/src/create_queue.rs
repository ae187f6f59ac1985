//! Creates on PostgreSQL, written together: group commit for the event log.
//!
//! Why: a create is one row in `cases`, one in `case_events` and the owner's
//! `seq` in `case_event_heads`, and most of what PostgreSQL spends on it is
//! per statement, not per row (executor start-up for three tables and their
//! indexes, the round trip, the commit's WAL flush). Measured with pgbench
//! on this project's schema, a statement of eight logged creates costs
//! PostgreSQL less per create than one create did before the log existed
//! (docs/benchmarks.md). So concurrent creates share a statement.
//!
//! How: a create joins a queue; `CREATE_WRITERS` writer tasks each take
//! whatever is queued (up to `CREATE_BATCH`) and write it as one statement.
//! A writer that is free takes a create at once, so a lone create waits for
//! nobody; batches form only while every writer is busy, which is exactly
//! when sharing pays. Each owner's creates in a batch get consecutive
//! `seq`s in the order they were queued, taken under the owner's head row
//! lock as a single create takes its one (see `logged_write`). Rows are
//! inserted, and owners' head rows locked, in `user_id` (then idempotency
//! key) order, so two batches never wait for each other in opposite
//! orders, at head rows or at a key both insert; of two creates with one
//! key, the first queued wins. If a row fails a batch (a deleted owner's
//! foreign key, say), each of its creates is written again on its own, so
//! the error reaches only the create that caused it; if the database is
//! out of reach, every create of the batch gets that transient error.
//!
//! A create whose caller goes away once it is queued is still written, as
//! a statement already sent would be.

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicU64, Ordering},
};

use casebook::{
    db::{Connection, Database},
    metrics::{SampleKind, ServerMetrics},
};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::{
    error::CaseError,
    logged_write::write_error,
    store::{CASE_COLUMNS, CaseRow, sql_time},
};

/// How creates are batched: `CREATE_WRITERS` and `CREATE_BATCH`.
#[derive(Clone, Copy, Debug)]
pub struct CreateBatching {
    /// Statements writing creates at once (each holds a pool connection
    /// while it runs).
    pub writers: usize,
    /// The most creates one statement writes.
    pub max_batch: usize,
}

/// A create as it is queued: the row, its idempotency key and what its
/// event records besides the row (the actor is the owner).
#[derive(Debug)]
pub struct QueuedCreate {
    /// The row to insert.
    pub row: CaseRow,
    /// The caller's idempotency key, if any.
    pub key: Option<String>,
    /// The call's request id, recorded in the event.
    pub request_id: Option<String>,
    /// The event's changes, as stored (JSON).
    pub changes: String,
}

/// The row written, or `None` when the idempotency key was already used.
type Reply = Result<Option<CaseRow>, CaseError>;

struct Job {
    create: QueuedCreate,
    reply: oneshot::Sender<Reply>,
}

/// Batches written and creates they held, for `/metrics`.
#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    creates: AtomicU64,
}

/// The queue creates join; its writers end when it is dropped.
pub struct CreateQueue {
    jobs: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

impl CreateQueue {
    /// Starts `batching.writers` writers on `db` (PostgreSQL).
    pub fn start(db: Database, batching: CreateBatching) -> Self {
        let writers = batching.writers.max(1);
        let max_batch = batching.max_batch.max(1);
        let (jobs, queued) = mpsc::channel(writers * max_batch);
        let queued = Arc::new(Mutex::new(queued));
        let counts = Arc::new(Counts::default());
        for _ in 0..writers {
            tokio::spawn(write_batches(
                db.clone(),
                Arc::clone(&queued),
                max_batch,
                Arc::clone(&counts),
            ));
        }
        Self { jobs, counts }
    }

    /// Writes `create` with whatever else is queued; returns its row, or
    /// `None` if its idempotency key was already used.
    pub async fn write(&self, create: QueuedCreate) -> Reply {
        let (reply, replied) = oneshot::channel();
        let closed = || CaseError::Database(sqlx::Error::PoolClosed);
        self.jobs
            .send(Job { create, reply })
            .await
            .map_err(|_| closed())?;
        replied.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Reports the queue and its batches in `metrics`.
    pub fn report_to(&self, metrics: &ServerMetrics) {
        let (jobs, counts) = (self.jobs.downgrade(), Arc::downgrade(&self.counts));
        metrics.report(move |samples| {
            let (Some(jobs), Some(counts)) = (jobs.upgrade(), counts.upgrade()) else {
                return false;
            };
            let queued = jobs.max_capacity() - jobs.capacity();
            samples.push(
                "casebook_case_create_queued",
                "Creates waiting for a writer (CREATE_WRITERS all busy)",
                SampleKind::Gauge,
                vec![],
                queued as f64,
            );
            samples.counters([
                (
                    "casebook_case_create_batches",
                    "Statements that wrote creates (PostgreSQL)",
                    counts.batches.load(Ordering::Relaxed),
                ),
                (
                    "casebook_case_create_batched",
                    "Creates taken by those statements: divided by the batches, the mean batch size",
                    counts.creates.load(Ordering::Relaxed),
                ),
            ]);
            true
        });
    }
}

/// One writer: takes what is queued, writes it, replies; ends when the
/// queue is gone.
async fn write_batches(
    db: Database,
    queued: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    counts: Arc<Counts>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        if queued.lock().await.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts
            .creates
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let creates: Vec<&QueuedCreate> = batch.iter().map(|job| &job.create).collect();
        match insert(&db, &creates).await {
            Ok(rows) => {
                for job in batch.drain(..) {
                    let row = rows.iter().find(|row| row.id == job.create.row.id);
                    let _ = job.reply.send(Ok(row.cloned()));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(error));
                }
            }
            // The database is out of reach: one by one would only wait again.
            Err(CaseError::Database(error)) if casebook::db::is_transient(&error) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(CaseError::Database(again(&error))));
                }
            }
            // A row failed the statement: each on its own, so that only the
            // create at fault fails.
            Err(_) => {
                for job in batch.drain(..) {
                    let written = insert(&db, &[&job.create]).await;
                    let _ = job.reply.send(written.map(|mut rows| rows.pop()));
                }
            }
        }
    }
}

/// A transient `error` once more, for each create of the batch it failed
/// (`sqlx::Error` is not `Clone`); still transient, so still `UNAVAILABLE`.
fn again(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
    }
}

/// Inserts `creates` with their events in one statement; returns the rows
/// written (a create whose idempotency key was already used writes none).
async fn insert(db: &Database, creates: &[&QueuedCreate]) -> Result<Vec<CaseRow>, CaseError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH input AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) WITH ORDINALITY \
                 AS input (id, user_id, title, description, status, type, at, key, request_id, changes, ord)), \
         written AS (INSERT INTO cases (id, user_id, title, description, status, type, version, created_at, updated_at, request_id) \
                 SELECT id::uuid, user_id, title, description, status::case_status, type::case_type, 1, \
                 at::timestamptz, at::timestamptz, key FROM input ORDER BY user_id, key, ord \
                 ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING {CASE_COLUMNS}), \
         counted AS (SELECT user_id, count(*) AS n FROM written GROUP BY user_id), \
         head AS (INSERT INTO case_event_heads (user_id, seq) SELECT user_id, n FROM counted ORDER BY user_id \
                 ON CONFLICT (user_id) DO UPDATE SET seq = case_event_heads.seq + excluded.seq \
                 RETURNING user_id, seq), \
         logged AS (INSERT INTO case_events \
                 (user_id, seq, case_id, kind, actor, request_id, status, type, version, changes, created_at) \
                 SELECT written.user_id, \
                 head.seq - counted.n + row_number() OVER (PARTITION BY written.user_id ORDER BY input.ord), \
                 written.id::uuid, 'CREATED', written.user_id, input.request_id, written.status::case_status, \
                 written.type::case_type, written.version, input.changes, written.updated_at \
                 FROM written JOIN input ON input.id = written.id \
                 JOIN counted ON counted.user_id = written.user_id JOIN head ON head.user_id = written.user_id) \
         SELECT * FROM written"
        )
    });
    let column = |value: fn(&QueuedCreate) -> Option<String>| -> Vec<Option<String>> {
        creates.iter().map(|create| value(create)).collect()
    };
    let Connection::Postgres(mut connection) = db.acquire().await? else {
        let wrong = "the create queue writes to PostgreSQL only".into();
        return Err(CaseError::Database(sqlx::Error::Configuration(wrong)));
    };
    sqlx::query_as(INSERT.as_str())
        .bind(column(|c| Some(c.row.id.clone())))
        .bind(column(|c| Some(c.row.user_id.clone())))
        .bind(column(|c| Some(c.row.title.clone())))
        .bind(column(|c| Some(c.row.description.clone())))
        .bind(column(|c| Some(c.row.status.clone())))
        .bind(column(|c| Some(c.row.kind.clone())))
        .bind(column(|c| Some(sql_time(c.row.created_at))))
        .bind(column(|c| c.key.clone()))
        .bind(column(|c| c.request_id.clone()))
        .bind(column(|c| Some(c.changes.clone())))
        .fetch_all(&mut *connection)
        .await
        .map_err(write_error)
}
