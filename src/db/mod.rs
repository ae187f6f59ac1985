//! Database connections: PostgreSQL in production, SQLite embedded by default.
//!
//! The two back ends differ in SQL dialect, so stores hold a [`Database`] and
//! match on it where the SQL differs, instead of hiding both behind sqlx's
//! `Any` driver (which loses the type mappings we rely on).

pub mod users;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    postgres::PgPoolOptions,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};

use crate::config::DatabaseArgs;

/// A connection pool to one of the supported databases.
#[derive(Clone, Debug)]
pub enum Database {
    /// PostgreSQL (production).
    Postgres(PgPool),
    /// SQLite (embedded default, one file).
    Sqlite(SqlitePool),
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
}

impl Database {
    /// Opens a pool for `args.database_url`. A SQLite file (and its directory)
    /// is created if missing, in WAL mode so readers do not block the writer.
    pub async fn connect(args: &DatabaseArgs) -> Result<Self, ConnectError> {
        let url = args.database_url.as_str();
        let acquire_timeout = args.database_acquire_timeout;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(args.database_max_connections)
                .acquire_timeout(acquire_timeout)
                .connect(url)
                .await?;
            return Ok(Self::Postgres(pool));
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
            return Ok(Self::Sqlite(pool));
        }
        Err(ConnectError::UnsupportedUrl(redact(url)))
    }

    /// `"postgres"` or `"sqlite"`, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }

    /// Whether `table` exists (in the search path, on PostgreSQL).
    pub async fn has_table(&self, table: &str) -> Result<bool, sqlx::Error> {
        match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT to_regclass(quote_ident($1)) IS NOT NULL")
                    .bind(table)
                    .fetch_one(pool)
                    .await
            }
            Self::Sqlite(pool) => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)",
            )
            .bind(table)
            .fetch_one(pool)
            .await,
        }
    }
}

/// A URL with any password removed, safe to print.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
