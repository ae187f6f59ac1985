//! Database connections: PostgreSQL in production, SQLite embedded by default.
//!
//! The two back ends differ in SQL dialect, so stores hold a [`Database`] and
//! match on its [`Pool`] or [`Connection`] where the SQL differs, instead of
//! hiding both behind sqlx's `Any` driver (which loses the type mappings we
//! rely on). Request paths take connections through [`Database::acquire`],
//! which counts the calls waiting for one: sqlx's pool does not expose that,
//! and it is the first sign that `DATABASE_MAX_CONNECTIONS` is too small.

pub mod sql;
pub mod users;

use std::{
    path::Path,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{
    PgPool, Postgres, SqlSafeStr, Sqlite, SqlitePool,
    pool::PoolConnection,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use crate::{
    config::DatabaseArgs,
    metrics::{SampleKind, ServerMetrics},
};

/// A connection pool to one of the supported databases, with its metrics.
#[derive(Clone, Debug)]
pub struct Database(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    pool: Pool,
    waiting: AtomicUsize,
    /// The last probe of the server (see [`Database::acquire`]): when, and
    /// whether it refused. One probe at a time, shared by every waiter.
    probe: tokio::sync::Mutex<Option<(tokio::time::Instant, bool)>>,
}

/// How long a call waits for a new connection before the server is probed.
const PROBE_AFTER: Duration = Duration::from_millis(50);
/// How long a probe's answer stands for every other waiter.
const PROBE_VALID: Duration = Duration::from_millis(200);

/// The pool of one of the supported databases.
#[derive(Clone, Debug)]
pub enum Pool {
    /// PostgreSQL (production).
    Postgres(PgPool),
    /// SQLite (embedded default, one file).
    Sqlite(SqlitePool),
}

/// A connection taken from a [`Database`], returned to it when dropped.
pub enum Connection {
    /// PostgreSQL.
    Postgres(PoolConnection<Postgres>),
    /// SQLite.
    Sqlite(PoolConnection<Sqlite>),
}

impl Connection {
    /// The connection, for [`sql!`](crate::sql).
    pub fn executor(&mut self) -> sql::Executor<'_> {
        match self {
            Self::Postgres(connection) => sql::Executor::Postgres(connection),
            Self::Sqlite(connection) => sql::Executor::Sqlite(connection),
        }
    }
}

/// A transaction on a connection taken from a [`Database`]; rolled back if
/// dropped before [`Transaction::commit`].
pub enum Transaction {
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, Postgres>),
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Transaction {
    /// The transaction's connection, for [`sql!`](crate::sql).
    pub fn executor(&mut self) -> sql::Executor<'_> {
        match self {
            Self::Postgres(transaction) => sql::Executor::Postgres(transaction),
            Self::Sqlite(transaction) => sql::Executor::Sqlite(transaction),
        }
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(transaction) => transaction.commit().await,
            Self::Sqlite(transaction) => transaction.commit().await,
        }
    }
}

/// What a pool holds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    /// Open connections nobody is using.
    pub idle: usize,
    /// Callers waiting in [`Database::acquire`] for a connection.
    pub waiting: usize,
    /// The most connections the pool opens.
    pub max: u32,
}

/// Decrements the waiting count however the acquire ends (even cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `DATABASE_URL` names neither PostgreSQL nor SQLite.
    #[error("DATABASE_URL must start with postgres:// or sqlite:, got {0:?}")]
    UnsupportedUrl(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the directory for the SQLite file: {0}")]
    Directory(#[from] std::io::Error),
    /// Connecting failed.
    #[error("cannot connect to DATABASE_URL: {0}")]
    Connect(#[from] sqlx::Error),
    /// `DATABASE_URL` or `DATABASE_URL_FILE` is unusable.
    #[error(transparent)]
    Setting(#[from] crate::config::ConfigError),
}

impl Database {
    /// Opens a pool for [`DatabaseArgs::url`], reported in `metrics`.
    /// A SQLite file (and its directory) is created if missing, in WAL mode so
    /// readers do not block the writer.
    pub async fn connect(
        args: &DatabaseArgs,
        metrics: &ServerMetrics,
    ) -> Result<Self, ConnectError> {
        let url = args.url()?;
        let pool = Self::open_pool(&url, args).await?;
        let db = Self(Arc::new(Shared {
            pool,
            waiting: AtomicUsize::new(0),
            probe: tokio::sync::Mutex::new(None),
        }));
        db.report_to(metrics, redact(&url));
        Ok(db)
    }

    async fn open_pool(url: &str, args: &DatabaseArgs) -> Result<Pool, ConnectError> {
        let acquire_timeout = args.database_acquire_timeout;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(args.database_max_connections)
                .acquire_timeout(acquire_timeout)
                .connect(&with_host(url))
                .await?;
            return Ok(Pool::Postgres(pool));
        }
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5));
            if let Some(dir) = Path::new(options.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            // Switching a new file to WAL takes a lock SQLite cannot wait for,
            // so processes opening the same new file at once may see BUSY:
            // the loser simply tries again (the switch is permanent).
            let mut attempt = 0;
            let pool = loop {
                let opened = SqlitePoolOptions::new()
                    .max_connections(args.database_max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(options.clone())
                    .await;
                match opened {
                    Err(sqlx::Error::Database(e))
                        if e.code().as_deref() == Some("5") && attempt < 5 =>
                    {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    }
                    other => break other?,
                }
            };
            return Ok(Pool::Sqlite(pool));
        }
        Err(ConnectError::UnsupportedUrl(redact(url)))
    }

    /// Reports the pool's [`PoolStats`] as gauges labelled with the
    /// (credential-free) database URL, for as long as the pool lives.
    fn report_to(&self, metrics: &ServerMetrics, database: String) {
        // Weak, so the pool closes when its last user drops it.
        let watched = Arc::downgrade(&self.0);
        metrics.report(move |samples| {
            let Some(shared) = watched.upgrade() else {
                return false;
            };
            let db = Database(shared);
            if db.is_closed() {
                return false;
            }
            let stats = db.stats();
            let labels = |state: Option<&'static str>| {
                let mut labels = vec![("database", database.clone())];
                labels.extend(state.map(|state| ("state", state.to_owned())));
                labels
            };
            let in_use = (stats.size as usize).saturating_sub(stats.idle);
            let connections = "Open database connections, idle or in use";
            for (state, count) in [("idle", stats.idle), ("in_use", in_use)] {
                samples.push(
                    "casebook_db_pool_connections",
                    connections,
                    SampleKind::Gauge,
                    labels(Some(state)),
                    count as f64,
                );
            }
            samples.push(
                "casebook_db_pool_max_connections",
                "DATABASE_MAX_CONNECTIONS",
                SampleKind::Gauge,
                labels(None),
                f64::from(stats.max),
            );
            samples.push(
                "casebook_db_pool_waiting",
                "Calls waiting for a database connection right now",
                SampleKind::Gauge,
                labels(None),
                stats.waiting as f64,
            );
            true
        });
    }

    /// The pool, for work outside request paths (migrations, schema checks).
    pub fn pool(&self) -> &Pool {
        &self.0.pool
    }

    /// Takes a connection, counted as waiting until it has one. Fails after
    /// `DATABASE_ACQUIRE_TIMEOUT` with [`sqlx::Error::PoolTimedOut`] when the
    /// pool is merely busy, but at once when PostgreSQL refuses connections:
    /// sqlx retries a refused connect until the acquire timeout, which would
    /// hold every call (and its admission slot) for that long during an outage.
    pub async fn acquire(&self) -> Result<Connection, sqlx::Error> {
        let _waiting = Waiting::enter(&self.0.waiting);
        let acquire = async {
            Ok(match &self.0.pool {
                Pool::Postgres(pool) => Connection::Postgres(pool.acquire().await?),
                Pool::Sqlite(pool) => Connection::Sqlite(pool.acquire().await?),
            })
        };
        tokio::select! {
            biased;
            connection = acquire => connection,
            refused = self.refused() => Err(refused),
        }
    }

    /// Begins a transaction on a connection taken by [`Database::acquire`].
    /// On SQLite it is `BEGIN IMMEDIATE`: the write lock is taken at the
    /// start, so a transaction that reads before it writes waits its turn
    /// (up to the busy timeout) instead of failing to upgrade its lock.
    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        Ok(match self.acquire().await? {
            Connection::Postgres(connection) => {
                Transaction::Postgres(sqlx::Transaction::begin(connection, None).await?)
            }
            Connection::Sqlite(connection) => Transaction::Sqlite(
                sqlx::Transaction::begin(connection, Some("BEGIN IMMEDIATE".into_sql_str()))
                    .await?,
            ),
        })
    }

    /// Resolves (with the error to report) once the server refuses a
    /// connection while this acquire waits; never while the pool is merely
    /// full (every connection in use), which leaves the acquire to finish or
    /// time out. Checked every [`PROBE_AFTER`]: a waiting acquire may be
    /// testing idle connections that died with the server, then reconnecting.
    async fn refused(&self) -> sqlx::Error {
        let Pool::Postgres(pool) = &self.0.pool else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(PROBE_AFTER).await;
            let busy = pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0;
            if !busy && self.server_refuses(pool).await {
                return sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "the database refuses connections",
                ));
            }
        }
    }

    /// Whether PostgreSQL refuses a new connection: one probe at a time,
    /// its answer shared for [`PROBE_VALID`] by every waiter.
    async fn server_refuses(&self, pool: &PgPool) -> bool {
        use sqlx::ConnectOptions;
        let mut last = self.0.probe.lock().await;
        let now = tokio::time::Instant::now();
        match *last {
            Some((at, refused)) if now.duration_since(at) < PROBE_VALID => refused,
            _ => {
                let probe = pool.connect_options().connect().await;
                let refused = probe
                    .as_ref()
                    .is_err_and(|e| matches!(e, sqlx::Error::Io(_)));
                *last = Some((tokio::time::Instant::now(), refused));
                refused
            }
        }
    }

    /// What the pool holds now.
    pub fn stats(&self) -> PoolStats {
        let (size, idle, max) = match &self.0.pool {
            Pool::Postgres(pool) => (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            ),
            Pool::Sqlite(pool) => (
                pool.size(),
                pool.num_idle(),
                pool.options().get_max_connections(),
            ),
        };
        PoolStats {
            size,
            idle,
            waiting: self.0.waiting.load(Ordering::Relaxed),
            max,
        }
    }

    /// `"postgres"` or `"sqlite"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self.0.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    fn is_closed(&self) -> bool {
        match &self.0.pool {
            Pool::Postgres(pool) => pool.is_closed(),
            Pool::Sqlite(pool) => pool.is_closed(),
        }
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match &self.0.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }

    /// Whether `table` exists (in the search path, on PostgreSQL).
    pub async fn has_table(&self, table: &str) -> Result<bool, sqlx::Error> {
        match &self.0.pool {
            Pool::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
                    .bind(table)
                    .fetch_one(pool)
                    .await
            }
            Pool::Sqlite(pool) => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
            )
            .bind(table)
            .fetch_one(pool)
            .await,
        }
    }
}

/// Whether `error` is the database being unreachable or too busy right now
/// (the caller should get UNAVAILABLE and retry) rather than a bug: no
/// connection within the acquire timeout, a broken connection, PostgreSQL's
/// connection failures (SQLSTATE class 08), operator shutdown (class 57) or
/// lock timeout (55P03), SQLite's BUSY or LOCKED after its busy timeout.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| match db
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        {
            // SQLite reports its primary result code, possibly extended (e.g. 517 = BUSY_SNAPSHOT).
            Some(_) => code
                .parse::<i32>()
                .is_ok_and(|code| matches!(code & 0xff, 5 | 6)),
            None => code.starts_with("08") || code.starts_with("57") || code == "55P03",
        }),
        _ => false,
    }
}

/// `url` with a placeholder host when it has none. libpq, and the Cloud SQL
/// form Cloud Run documents (`postgres://user@/db?host=/cloudsql/…`), leave
/// the host empty when `host=` names a socket directory; the URL parser sqlx
/// uses refuses an empty host after user info. sqlx lets the `host=`
/// parameter win, so the placeholder is never dialled.
fn with_host(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        format!("{scheme}://{authority}localhost{tail}").into()
    } else {
        url.into()
    }
}

/// Query parameters that carry a credential (libpq's and sqlx's names).
const SECRET_PARAMETERS: [&str; 4] = ["password", "sslpassword", "sslkey", "passfile"];

/// A URL with its credentials removed, safe to print or to use as a label:
/// the user info and the value of every credential query parameter.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut redacted = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…@{}", &base[..scheme_end], &base[at + 1..])
        }
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| {
                let name = parameter
                    .split_once('=')
                    .map_or(parameter, |(name, _)| name);
                if SECRET_PARAMETERS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(name))
                {
                    format!("{name}=…")
                } else {
                    parameter.to_owned()
                }
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parameters.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Executor, SqliteConnection, sqlite::SqliteConnectOptions};

    use super::*;

    #[tokio::test]
    async fn sqlite_lock_contention_is_transient_and_a_bad_statement_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("contended.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
        holder.execute("CREATE TABLE t (x INTEGER)").await.unwrap();
        holder.execute("BEGIN EXCLUSIVE").await.unwrap();
        let mut writer = SqliteConnection::connect_with(&options.busy_timeout(Duration::ZERO))
            .await
            .unwrap();

        let busy = writer
            .execute("INSERT INTO t VALUES (1)")
            .await
            .unwrap_err();
        assert!(is_transient(&busy), "{busy}");
        let bug = writer
            .execute("INSERT INTO missing VALUES (1)")
            .await
            .unwrap_err();
        assert!(!is_transient(&bug), "{bug}");
    }

    #[tokio::test]
    async fn an_unreachable_postgres_is_transient() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error =
            sqlx::PgConnection::connect(&format!("postgres://nobody@127.0.0.1:{port}/none"))
                .await
                .unwrap_err();
        assert!(is_transient(&error), "{error}");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/casebook"),
            "postgres://…@db:5432/casebook"
        );
        assert_eq!(
            redact("sqlite://data/casebook.db"),
            "sqlite://data/casebook.db"
        );
    }

    #[tokio::test]
    async fn connection_errors_never_carry_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for url in [
            format!("postgres://app:hunter2@127.0.0.1:{port}/db?password=hunter2"),
            "mysql://app:hunter2@db/app?password=hunter2".to_owned(),
        ] {
            let mut args = DatabaseArgs::for_url(&url).unwrap();
            args.database_acquire_timeout = Duration::from_millis(200);
            let error = Database::connect(&args, &ServerMetrics::detached("test"))
                .await
                .unwrap_err();
            assert!(
                !format!("{error} {error:?}").contains("hunter2"),
                "{error:?}"
            );
        }
    }

    #[test]
    fn socket_urls_without_a_host_get_a_placeholder_the_socket_overrides() {
        assert_eq!(
            with_host("postgres://app@/db?host=/cloudsql/p:r:i"),
            "postgres://app@localhost/db?host=/cloudsql/p:r:i"
        );
        assert_eq!(
            with_host("postgres:///db?host=/var/run/postgresql"),
            "postgres://localhost/db?host=/var/run/postgresql"
        );
        let given = "postgres://app:pw@db:5432/app?sslmode=require";
        assert_eq!(with_host(given), given);
        let options: sqlx::postgres::PgConnectOptions =
            with_host("postgres://app@/db?host=/cloudsql/p:r:i")
                .parse()
                .unwrap();
        assert_eq!(
            options.get_socket(),
            Some(&std::path::PathBuf::from("/cloudsql/p:r:i"))
        );
    }

    #[test]
    fn credential_query_parameters_lose_their_values() {
        assert_eq!(
            redact("postgres://db/app?password=hunter2&sslmode=require&SSLPassword=x"),
            "postgres://db/app?password=…&sslmode=require&SSLPassword=…"
        );
        assert_eq!(
            redact("postgres://u:p@/db?host=/cloudsql/p:r:i&password=s"),
            "postgres://…@/db?host=/cloudsql/p:r:i&password=…"
        );
    }
}
