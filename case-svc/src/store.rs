//! `CaseStore`: every query on the `cases` table, for PostgreSQL and SQLite.
//!
//! Each statement is written once, in PostgreSQL's dialect with explicit casts
//! (`$1::uuid`, `$2::case_status`, `$3::timestamptz`); the SQLite text is
//! derived from it at start (casts dropped, `$n` → `?n`). Values are always
//! bound, never formatted into SQL. Every query names the owner: a case of
//! another user is indistinguishable from one that does not exist.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine, engine::general_purpose::STANDARD};
use casebook::{
    auth::UserId,
    db::{Connection, Database, Pool},
};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::AssertSqlSafe;

use crate::{
    list_query::{Cursor, Filter, Order, SortField},
    resource::{CaseId, Description, Title},
};
use casebook::pb::casebook::cases::v1::case::{Status, Type};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// One row of `cases`, as both back ends return it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CaseRow {
    /// Hyphenated lowercase UUID.
    pub id: String,
    /// Better Auth user id of the owner.
    pub user_id: String,
    /// Title, verbatim.
    pub title: String,
    /// Description, verbatim.
    pub description: String,
    /// Status enum name.
    pub status: String,
    /// Type enum name.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Incremented by every write; the etag.
    pub version: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last write.
    pub updated_at: DateTime<Utc>,
    /// Soft-deletion time.
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the purge removes a deleted row.
    pub purge_at: Option<DateTime<Utc>>,
}

impl CaseRow {
    /// The value this row has for `field`, as a page cursor stores it.
    pub fn cursor(&self, field: SortField) -> Cursor {
        let key = match field {
            SortField::CreateTime => sql_time(self.created_at),
            SortField::UpdateTime => sql_time(self.updated_at),
            SortField::Title => self.title.clone(),
        };
        Cursor {
            key,
            id: self.id.clone(),
        }
    }
}

/// A new case, already validated.
pub struct NewCase {
    /// Title.
    pub title: Title,
    /// Description.
    pub description: Description,
    /// Status (never unspecified).
    pub status: Status,
    /// Type (never unspecified).
    pub kind: Type,
}

/// The fields an update changes; `None` leaves a field alone.
#[derive(Default)]
pub struct CasePatch {
    /// New title.
    pub title: Option<Title>,
    /// New description.
    pub description: Option<Description>,
    /// New status.
    pub status: Option<Status>,
    /// New type.
    pub kind: Option<Type>,
}

/// What a conditional write found.
pub enum Write {
    /// Done; the row after the write.
    Done(CaseRow),
    /// No such case for this owner.
    NotFound,
    /// The case is not in a state the write applies to (e.g. updating a deleted case).
    WrongState(CaseRow),
    /// The caller's etag (or a concurrent write) disagrees with the row.
    Conflict,
}

/// Store errors: the database failed or a constraint refused the write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The owner has no Better Auth user row (deleted after the token was issued).
    #[error("the caller's user no longer exists")]
    UnknownOwner,
    /// Any other database failure.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    fn from_write(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => Self::UnknownOwner,
            _ => Self::Database(error),
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Better Auth's tables are missing.
    #[error(transparent)]
    Schema(#[from] casebook::db::users::SchemaError),
    /// A migration failed.
    #[error("cannot migrate the cases table: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed.
    #[error("cannot prepare the cases table: {0}")]
    Database(#[from] sqlx::Error),
}

/// One statement in both dialects.
struct Sql {
    postgres: Arc<str>,
    sqlite: Arc<str>,
}

impl Sql {
    fn new(postgres: &str) -> Self {
        Self {
            sqlite: sqlite_dialect(postgres).into(),
            postgres: postgres.into(),
        }
    }
}

/// PostgreSQL text → SQLite text: drop `::type` casts, `$n` → `?n`.
fn sqlite_dialect(postgres: &str) -> String {
    let mut out = String::with_capacity(postgres.len());
    let mut chars = postgres.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    chars.next();
                }
            }
            '$' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// A bound value.
enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

/// Binds `$args` to `$query` in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::OptText(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
            };
        }
        query
    }};
}

/// Runs `$sql` with `$args` on whichever back end `$db` is, finishing with
/// `$finish` (`fetch_optional`, `execute`, ...) and an optional `map` of the
/// result. A macro because the two pools have different types and sqlx's
/// query builders are typed by database.
macro_rules! run {
    ($db:expr, $sql:expr, $args:expr, $kind:ident, $finish:ident $(, $map:expr)?) => {
        match $db.acquire().await {
            Ok(Connection::Postgres(mut connection)) => {
                bind_all!(sqlx::$kind(AssertSqlSafe(Arc::clone(&$sql.postgres))), $args)
                    .$finish(&mut *connection)
                    .await
                    $(.map($map))?
            }
            Ok(Connection::Sqlite(mut connection)) => {
                bind_all!(sqlx::$kind(AssertSqlSafe(Arc::clone(&$sql.sqlite))), $args)
                    .$finish(&mut *connection)
                    .await
                    $(.map($map))?
            }
            Err(error) => Err(error),
        }
    };
}

/// How many writers may race for one case before an update without an etag
/// gives up with ABORTED.
const UNCONDITIONAL_ATTEMPTS: usize = 32;

/// Columns every case query returns, normalised to text where types differ.
const COLUMNS: &str = "id::text AS id, user_id, title, description, status::text AS status, \
     type::text AS type, version, created_at, updated_at, deleted_at, purge_at";

/// Time as both back ends store and compare it: UTC, microseconds, fixed width.
pub fn sql_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Now, at the precision the database keeps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

struct Statements {
    insert: Sql,
    by_request_id: Sql,
    get: Sql,
    update: Sql,
    delete: Sql,
    undelete: Sql,
    purge: Sql,
    read_secret: Sql,
    insert_secret: Sql,
}

impl Statements {
    fn new() -> Self {
        Self {
            insert: Sql::new(&format!(
                "INSERT INTO cases (id, user_id, title, description, status, type, request_id, version, created_at, updated_at) \
                 VALUES ($1::uuid, $2, $3, $4, $5::case_status, $6::case_type, $7, 1, $8::timestamptz, $8::timestamptz) \
                 ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING \
                 RETURNING {COLUMNS}"
            )),
            by_request_id: Sql::new(&format!(
                "SELECT {COLUMNS} FROM cases WHERE user_id = $1 AND request_id = $2"
            )),
            get: Sql::new(&format!(
                "SELECT {COLUMNS} FROM cases WHERE id = $1::uuid AND user_id = $2"
            )),
            update: Sql::new(&format!(
                "UPDATE cases SET title = COALESCE($4, title), description = COALESCE($5, description), \
                 status = COALESCE($6::case_status, status), type = COALESCE($7::case_type, type), \
                 version = version + 1, updated_at = $8::timestamptz \
                 WHERE id = $1::uuid AND user_id = $2 AND version = $3 AND deleted_at IS NULL \
                 RETURNING {COLUMNS}"
            )),
            delete: Sql::new(&format!(
                "UPDATE cases SET deleted_at = $4::timestamptz, purge_at = $5::timestamptz, \
                 version = version + 1, updated_at = $4::timestamptz \
                 WHERE id = $1::uuid AND user_id = $2 AND version = $3 AND deleted_at IS NULL \
                 RETURNING {COLUMNS}"
            )),
            undelete: Sql::new(&format!(
                "UPDATE cases SET deleted_at = NULL, purge_at = NULL, \
                 version = version + 1, updated_at = $4::timestamptz \
                 WHERE id = $1::uuid AND user_id = $2 AND version = $3 AND deleted_at IS NOT NULL \
                 RETURNING {COLUMNS}"
            )),
            purge: Sql::new("DELETE FROM cases WHERE purge_at <= $1::timestamptz"),
            read_secret: Sql::new("SELECT value FROM case_svc_secrets WHERE name = $1"),
            insert_secret: Sql::new(
                "INSERT INTO case_svc_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            ),
        }
    }
}

/// The cases table.
pub struct CaseStore {
    db: Database,
    sql: Statements,
    lists: std::sync::Mutex<std::collections::HashMap<ListShape, Arc<Sql>>>,
}

/// What decides the text of a list query (never the values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ListShape {
    order: Order,
    show_deleted: bool,
    by_status: bool,
    by_type: bool,
    after_cursor: bool,
}

/// Keyset pagination on `(sort column, id)`, in the order of the
/// `cases_owner_*` indexes. Columns are qualified (`cases.id`) because the
/// select list's `id` is a text alias, and sorting by it would defeat the index.
fn list_sql(shape: ListShape) -> Sql {
    let (column, cast) = match shape.order.field {
        SortField::CreateTime => ("created_at", "::timestamptz"),
        SortField::UpdateTime => ("updated_at", "::timestamptz"),
        SortField::Title => ("title", ""),
    };
    let (direction, compare) = if shape.order.descending {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let mut sql = format!("SELECT {COLUMNS} FROM cases WHERE user_id = $1");
    let mut next = 1;
    let mut param = || {
        next += 1;
        next
    };
    if !shape.show_deleted {
        sql.push_str(" AND deleted_at IS NULL");
    }
    if shape.by_status {
        sql.push_str(&format!(" AND status = ${}::case_status", param()));
    }
    if shape.by_type {
        sql.push_str(&format!(" AND type = ${}::case_type", param()));
    }
    if shape.after_cursor {
        let (key, id) = (param(), param());
        sql.push_str(&format!(
            " AND (cases.{column}, cases.id) {compare} (${key}{cast}, ${id}::uuid)"
        ));
    }
    sql.push_str(&format!(
        " ORDER BY cases.{column} {direction}, cases.id {direction} LIMIT ${}",
        param()
    ));
    Sql::new(&sql)
}

impl CaseStore {
    /// Checks Better Auth's tables exist, then migrates. On PostgreSQL sqlx's
    /// migrator holds an advisory lock, so replicas starting together migrate
    /// once. SQLite has no such lock: there the loser of a race fails its
    /// transaction, and simply runs the migrator again, which then finds
    /// everything applied.
    pub async fn open(db: Database) -> Result<Self, OpenError> {
        casebook::db::users::UserDirectory::open(db.clone()).await?;
        match db.pool() {
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
            Pool::Sqlite(pool) => {
                if SQLITE_MIGRATIONS.run(pool).await.is_err() {
                    SQLITE_MIGRATIONS.run(pool).await?;
                }
            }
        }
        Ok(Self {
            db,
            sql: Statements::new(),
            lists: Default::default(),
        })
    }

    /// The page-token key: generated by the first replica ever to start,
    /// shared by every replica through the database.
    pub async fn page_token_secret(&self) -> Result<Vec<u8>, sqlx::Error> {
        let mut fresh = [0u8; 32];
        // aws-lc's system RNG does not fail on supported platforms; a zero key
        // would still only make page tokens forgeable, never leak data.
        let _ = SystemRandom::new().fill(&mut fresh);
        let name = || Arg::Text("page_token_key".into());
        let args = [name(), Arg::Text(STANDARD.encode(fresh))];
        run!(
            &self.db,
            self.sql.insert_secret,
            args,
            query,
            execute,
            |done| done.rows_affected()
        )?;
        let stored: String = run!(
            &self.db,
            self.sql.read_secret,
            [name()],
            query_scalar,
            fetch_one
        )?;
        Ok(STANDARD.decode(stored).unwrap_or_else(|_| fresh.to_vec()))
    }

    /// Inserts a case; with `request_id`, returns the existing case instead
    /// when this owner already created one with that id.
    pub async fn create(
        &self,
        owner: &UserId,
        new: &NewCase,
        request_id: Option<&str>,
    ) -> Result<CaseRow, StoreError> {
        let args = [
            Arg::Text(CaseId::generate().0.hyphenated().to_string()),
            Arg::Text(owner.as_str().to_owned()),
            Arg::Text(new.title.as_str().to_owned()),
            Arg::Text(new.description.as_str().to_owned()),
            Arg::Text(new.status.as_str_name().to_owned()),
            Arg::Text(new.kind.as_str_name().to_owned()),
            Arg::OptText(request_id.map(str::to_owned)),
            Arg::Text(sql_time(now())),
        ];
        let inserted: Option<CaseRow> =
            run!(&self.db, self.sql.insert, args, query_as, fetch_optional)
                .map_err(StoreError::from_write)?;
        match (inserted, request_id) {
            (Some(row), _) => Ok(row),
            (None, Some(request_id)) => {
                let args = [
                    Arg::Text(owner.as_str().to_owned()),
                    Arg::Text(request_id.to_owned()),
                ];
                Ok(run!(
                    &self.db,
                    self.sql.by_request_id,
                    args,
                    query_as,
                    fetch_one
                )?)
            }
            // Without a request id there is no conflict target, so a row always returns.
            (None, None) => Err(StoreError::Database(sqlx::Error::RowNotFound)),
        }
    }

    /// The owner's case `id`, deleted or not.
    pub async fn get(&self, owner: &UserId, id: CaseId) -> Result<Option<CaseRow>, StoreError> {
        let args = [
            Arg::Text(id.0.hyphenated().to_string()),
            Arg::Text(owner.as_str().to_owned()),
        ];
        Ok(run!(
            &self.db,
            self.sql.get,
            args,
            query_as,
            fetch_optional
        )?)
    }

    /// One page: up to `limit` rows after `after`, in `order`.
    pub async fn list(
        &self,
        owner: &UserId,
        filter: Filter,
        order: Order,
        show_deleted: bool,
        after: Option<&Cursor>,
        limit: i64,
    ) -> Result<Vec<CaseRow>, StoreError> {
        let shape = ListShape {
            order,
            show_deleted,
            by_status: filter.status.is_some(),
            by_type: filter.kind.is_some(),
            after_cursor: after.is_some(),
        };
        let sql = self.list_statement(shape);
        let mut args = vec![Arg::Text(owner.as_str().to_owned())];
        args.extend(filter.status.map(|s| Arg::Text(s.as_str_name().to_owned())));
        args.extend(filter.kind.map(|t| Arg::Text(t.as_str_name().to_owned())));
        if let Some(cursor) = after {
            args.push(Arg::Text(cursor.key.clone()));
            args.push(Arg::Text(cursor.id.clone()));
        }
        args.push(Arg::Int(limit));
        Ok(run!(&self.db, sql, args, query_as, fetch_all)?)
    }

    /// The list statement for `shape`, built once per shape and kept (there
    /// are at most 96). Its parameters, in order: owner, status?, type?,
    /// cursor key and id?, limit.
    fn list_statement(&self, shape: ListShape) -> Arc<Sql> {
        let mut cache = self
            .lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(
            cache
                .entry(shape)
                .or_insert_with(|| Arc::new(list_sql(shape))),
        )
    }

    /// The shape of every write: read the row, check its state and the
    /// caller's etag, then write on condition that the version read is still
    /// current. A caller without an etag asked for no condition, so losing a
    /// race to another writer means reading again, not ABORTED. Every round
    /// has a winner, so a writer loses at most as many rounds as there are
    /// writers racing for the same case: [`UNCONDITIONAL_ATTEMPTS`] of them.
    async fn write_if(
        &self,
        owner: &UserId,
        id: CaseId,
        expected: Option<i64>,
        applies: impl Fn(&CaseRow) -> bool,
        statement: &Sql,
        args: impl Fn(&CaseRow) -> Vec<Arg>,
    ) -> Result<Write, StoreError> {
        for _ in 0..UNCONDITIONAL_ATTEMPTS {
            let Some(current) = self.get(owner, id).await? else {
                return Ok(Write::NotFound);
            };
            if !applies(&current) {
                return Ok(Write::WrongState(current));
            }
            if expected.is_some_and(|v| v != current.version) {
                return Ok(Write::Conflict);
            }
            let written: Option<CaseRow> = run!(
                &self.db,
                statement,
                args(&current),
                query_as,
                fetch_optional
            )?;
            if let Some(row) = written {
                return Ok(Write::Done(row));
            }
            if expected.is_some() {
                return Ok(Write::Conflict);
            }
            // Let the round's winner finish before reading again.
            tokio::task::yield_now().await;
        }
        Ok(Write::Conflict)
    }

    /// Applies `patch` to a live case, if `expected` (a version) still holds.
    pub async fn update(
        &self,
        owner: &UserId,
        id: CaseId,
        expected: Option<i64>,
        patch: &CasePatch,
    ) -> Result<Write, StoreError> {
        let live = |row: &CaseRow| row.deleted_at.is_none();
        self.write_if(owner, id, expected, live, &self.sql.update, |current| {
            vec![
                Arg::Text(current.id.clone()),
                Arg::Text(owner.as_str().to_owned()),
                Arg::Int(current.version),
                Arg::OptText(patch.title.as_ref().map(|t| t.as_str().to_owned())),
                Arg::OptText(patch.description.as_ref().map(|d| d.as_str().to_owned())),
                Arg::OptText(patch.status.map(|s| s.as_str_name().to_owned())),
                Arg::OptText(patch.kind.map(|t| t.as_str_name().to_owned())),
                Arg::Text(sql_time(now())),
            ]
        })
        .await
    }

    /// Soft-deletes a live case; it is purged `retention` later.
    pub async fn delete(
        &self,
        owner: &UserId,
        id: CaseId,
        expected: Option<i64>,
        retention: Duration,
    ) -> Result<Write, StoreError> {
        let live = |row: &CaseRow| row.deleted_at.is_none();
        self.write_if(owner, id, expected, live, &self.sql.delete, |current| {
            let now = now();
            let purge_at = chrono::Duration::from_std(retention)
                .ok()
                .and_then(|retention| now.checked_add_signed(retention))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            vec![
                Arg::Text(current.id.clone()),
                Arg::Text(owner.as_str().to_owned()),
                Arg::Int(current.version),
                Arg::Text(sql_time(now)),
                Arg::Text(sql_time(purge_at)),
            ]
        })
        .await
    }

    /// Restores a soft-deleted case.
    pub async fn undelete(
        &self,
        owner: &UserId,
        id: CaseId,
        expected: Option<i64>,
    ) -> Result<Write, StoreError> {
        let deleted = |row: &CaseRow| row.deleted_at.is_some();
        self.write_if(
            owner,
            id,
            expected,
            deleted,
            &self.sql.undelete,
            |current| {
                vec![
                    Arg::Text(current.id.clone()),
                    Arg::Text(owner.as_str().to_owned()),
                    Arg::Int(current.version),
                    Arg::Text(sql_time(now())),
                ]
            },
        )
        .await
    }

    /// Removes soft-deleted cases whose purge time has passed; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let args = [Arg::Text(sql_time(now()))];
        Ok(run!(
            &self.db,
            self.sql.purge,
            args,
            query,
            execute,
            |done| done.rows_affected()
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_sort_by_the_indexed_columns_and_number_parameters_in_order() {
        let shape = ListShape {
            order: Order {
                field: SortField::CreateTime,
                descending: true,
            },
            show_deleted: false,
            by_status: true,
            by_type: false,
            after_cursor: true,
        };
        let sql = list_sql(shape);
        assert!(
            sql.postgres.ends_with(
                " AND deleted_at IS NULL AND status = $2::case_status AND (cases.created_at, cases.id) < ($3::timestamptz, $4::uuid) ORDER BY cases.created_at DESC, cases.id DESC LIMIT $5"
            ),
            "{}",
            sql.postgres
        );
        assert!(sql.sqlite.ends_with("(cases.created_at, cases.id) < (?3, ?4) ORDER BY cases.created_at DESC, cases.id DESC LIMIT ?5"), "{}", sql.sqlite);
    }

    #[test]
    fn the_sqlite_dialect_drops_casts_and_numbers_parameters() {
        assert_eq!(
            sqlite_dialect("SELECT id::text AS id FROM t WHERE a = $1::uuid AND b = $12"),
            "SELECT id AS id FROM t WHERE a = ?1 AND b = ?12"
        );
    }
}
