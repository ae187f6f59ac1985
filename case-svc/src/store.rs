//! `CaseStore`: every query on the `cases` table, for PostgreSQL and SQLite.
//!
//! Statements are `casebook::db::sql` statements, each declared in the
//! function that binds it. Every query names the owner: a case of another
//! user is indistinguishable from one that does not exist. Every change runs
//! in an [`EventWrite`], which takes the owner's next event number first:
//! the owner's writes are serialised from there to commit, so the read,
//! the check of state and etag, and the write see one consistent case, and
//! the change and its event commit together.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine, engine::general_purpose::STANDARD};
use casebook::{
    auth::UserId,
    db::{
        Database, Pool,
        sql::{Arg, Executor, Sql, SqlBuilder},
    },
    pb::casebook::cases::v1::case_event::Kind,
    sql,
};
use chrono::{DateTime, SubsecRound, Utc};

use crate::{
    error::CaseError,
    events::{EventLog, EventWrite, changes},
    feeds::Feeds,
    list_query::{Cursor, SortField},
    request::{Caller, Delete, ListQuery, NewCase, Target, Update},
    resource::CaseId,
};

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

/// Time as both back ends store and compare it: UTC, microseconds, fixed width.
pub fn sql_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Now, at the precision the database keeps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Columns every case query returns, normalised to text where types differ.
macro_rules! case_columns {
    () => {
        "id::text AS id, user_id, title, description, status::text AS status, \
         type::text AS type, version, created_at, updated_at, deleted_at, purge_at"
    };
}

/// The cases table, and the event log written with every change to it.
pub struct CaseStore {
    db: Database,
    log: EventLog,
    feeds: Arc<Feeds>,
}

impl CaseStore {
    /// Checks Better Auth's tables exist, then migrates. On PostgreSQL sqlx's
    /// migrator holds an advisory lock, so replicas starting together migrate
    /// once. SQLite has no such lock: there the loser of a race fails that
    /// migration's transaction, and simply runs the migrator again, which
    /// then finds it applied. Every committed change wakes `feeds`.
    pub async fn open(db: Database, feeds: Arc<Feeds>) -> Result<Self, OpenError> {
        casebook::db::users::UserDirectory::open(db.clone()).await?;
        match db.pool() {
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
            Pool::Sqlite(pool) => {
                // Each failure means another process applied that migration,
                // so every attempt gets further: one more than there are
                // migrations always suffices.
                let mut attempts = SQLITE_MIGRATIONS.iter().count();
                while let Err(error) = SQLITE_MIGRATIONS.run(pool).await {
                    if attempts == 0 {
                        return Err(error.into());
                    }
                    attempts -= 1;
                }
            }
        }
        Ok(Self {
            log: EventLog::new(db.clone()),
            db,
            feeds,
        })
    }

    /// The event log.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The page-token key: generated by the first replica ever to start,
    /// shared by every replica through the database.
    pub async fn page_token_secret(&self) -> Result<Vec<u8>, sqlx::Error> {
        static INSERT_SECRET: Sql = Sql::new(
            "INSERT INTO case_svc_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        );
        static READ_SECRET: Sql = Sql::new("SELECT value FROM case_svc_secrets WHERE name = $1");
        const NAME: &str = "page_token_key";
        let mut fresh = [0u8; 32];
        // aws-lc's system RNG does not fail on supported platforms; a zero key
        // would still only make page tokens forgeable, never leak data.
        let _ = SystemRandom::new().fill(&mut fresh);
        let mut connection = self.db.acquire().await?;
        sql!(
            connection.executor(),
            INSERT_SECRET,
            [NAME, STANDARD.encode(fresh)],
            query,
            execute,
            |done| done.rows_affected()
        )?;
        let stored: String = sql!(
            connection.executor(),
            READ_SECRET,
            [NAME],
            query_scalar,
            fetch_one
        )?;
        Ok(STANDARD.decode(stored).unwrap_or_else(|_| fresh.to_vec()))
    }

    /// Inserts a case and its `CREATED` event. With an idempotency key the
    /// owner already used, returns the case that key created instead (and
    /// records nothing).
    pub async fn create(&self, caller: &Caller, new: &NewCase) -> Result<CaseRow, CaseError> {
        static INSERT: Sql = Sql::new(concat!(
            "INSERT INTO cases (id, user_id, title, description, status, type, request_id, version, created_at, updated_at) \
             VALUES ($1::uuid, $2, $3, $4, $5::case_status, $6::case_type, $7, 1, $8::timestamptz, $8::timestamptz) \
             ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING ",
            case_columns!()
        ));
        static BY_KEY: Sql = Sql::new(concat!(
            "SELECT ",
            case_columns!(),
            " FROM cases WHERE user_id = $1 AND request_id = $2"
        ));
        let key = new.idempotency_key.as_ref().map(|k| k.as_str());
        let mut write = EventWrite::begin(&self.db, &caller.owner).await?;
        let inserted: Option<CaseRow> = sql!(
            write.executor(),
            INSERT,
            [
                CaseId::generate().0.hyphenated().to_string(),
                caller.owner.as_str(),
                new.title.as_str(),
                new.description.as_str(),
                new.status.as_str_name(),
                new.kind.as_str_name(),
                key,
                sql_time(now()),
            ],
            query_as,
            fetch_optional
        )?;
        if let Some(row) = inserted {
            return self.commit(write, caller, Kind::Created, None, row).await;
        }
        // Only a used idempotency key makes the insert do nothing.
        Ok(sql!(
            write.executor(),
            BY_KEY,
            [caller.owner.as_str(), key],
            query_as,
            fetch_one
        )?)
    }

    /// The owner's case `id`, deleted or not.
    pub async fn get(&self, owner: &UserId, id: CaseId) -> Result<CaseRow, CaseError> {
        let mut connection = self.db.acquire().await?;
        find(connection.executor(), owner, id)
            .await?
            .ok_or(CaseError::NotFound(id))
    }

    /// One page of `query`: up to `limit` rows after `after`.
    pub async fn list(
        &self,
        owner: &UserId,
        query: &ListQuery,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<CaseRow>, CaseError> {
        let (statement, args) = list_sql(owner, query, after, limit).finish();
        let mut connection = self.db.acquire().await?;
        Ok(sql!(
            connection.executor(),
            statement,
            args: args,
            query_as,
            fetch_all
        )?)
    }

    /// Applies `update` to a live case.
    pub async fn update(&self, caller: &Caller, update: &Update) -> Result<CaseRow, CaseError> {
        static UPDATE: Sql = Sql::new(concat!(
            "UPDATE cases SET title = COALESCE($3, title), description = COALESCE($4, description), \
             status = COALESCE($5::case_status, status), type = COALESCE($6::case_type, type), \
             version = version + 1, updated_at = $7::timestamptz \
             WHERE id = $1::uuid AND user_id = $2 RETURNING ",
            case_columns!()
        ));
        let id = update.target.id;
        let mut write = EventWrite::begin(&self.db, &caller.owner).await?;
        let current = current(&mut write, &caller.owner, update.target).await?;
        if current.deleted_at.is_some() {
            return Err(CaseError::Deleted(id));
        }
        let patch = &update.patch;
        let row: CaseRow = sql!(
            write.executor(),
            UPDATE,
            [
                current.id.as_str(),
                caller.owner.as_str(),
                patch.title.as_ref().map(|t| t.as_str()),
                patch.description.as_ref().map(|d| d.as_str()),
                patch.status.map(|s| s.as_str_name()),
                patch.kind.map(|t| t.as_str_name()),
                sql_time(now()),
            ],
            query_as,
            fetch_one
        )?;
        self.commit(write, caller, Kind::Updated, Some(&current), row)
            .await
    }

    /// Soft-deletes a live case; it is purged `retention` later. With
    /// `allow_missing`, a case that does not exist is `None` and one already
    /// deleted is returned as it is.
    pub async fn delete(
        &self,
        caller: &Caller,
        delete: &Delete,
        retention: Duration,
    ) -> Result<Option<CaseRow>, CaseError> {
        static DELETE: Sql = Sql::new(concat!(
            "UPDATE cases SET deleted_at = $3::timestamptz, purge_at = $4::timestamptz, \
             version = version + 1, updated_at = $3::timestamptz \
             WHERE id = $1::uuid AND user_id = $2 RETURNING ",
            case_columns!()
        ));
        let mut write = EventWrite::begin(&self.db, &caller.owner).await?;
        let current = match current(&mut write, &caller.owner, delete.target).await {
            Err(CaseError::NotFound(_)) if delete.allow_missing => return Ok(None),
            other => other?,
        };
        if current.deleted_at.is_some() {
            return match delete.allow_missing {
                true => Ok(Some(current)),
                false => Err(CaseError::NotFound(delete.target.id)),
            };
        }
        let now = now();
        let purge_at = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|retention| now.checked_add_signed(retention))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let row: CaseRow = sql!(
            write.executor(),
            DELETE,
            [
                current.id.as_str(),
                caller.owner.as_str(),
                sql_time(now),
                sql_time(purge_at),
            ],
            query_as,
            fetch_one
        )?;
        let row = self
            .commit(write, caller, Kind::Deleted, Some(&current), row)
            .await?;
        Ok(Some(row))
    }

    /// Restores a soft-deleted case.
    pub async fn undelete(&self, caller: &Caller, target: Target) -> Result<CaseRow, CaseError> {
        static UNDELETE: Sql = Sql::new(concat!(
            "UPDATE cases SET deleted_at = NULL, purge_at = NULL, \
             version = version + 1, updated_at = $3::timestamptz \
             WHERE id = $1::uuid AND user_id = $2 RETURNING ",
            case_columns!()
        ));
        let mut write = EventWrite::begin(&self.db, &caller.owner).await?;
        let current = current(&mut write, &caller.owner, target).await?;
        if current.deleted_at.is_none() {
            return Err(CaseError::NotDeleted(target.id));
        }
        let row: CaseRow = sql!(
            write.executor(),
            UNDELETE,
            [current.id.as_str(), caller.owner.as_str(), sql_time(now())],
            query_as,
            fetch_one
        )?;
        self.commit(write, caller, Kind::Undeleted, Some(&current), row)
            .await
    }

    /// Commits `write` with the event of `caller`'s change (`kind`, from
    /// `before` to `after`), then wakes the owner's watchers.
    async fn commit(
        &self,
        write: EventWrite,
        caller: &Caller,
        kind: Kind,
        before: Option<&CaseRow>,
        after: CaseRow,
    ) -> Result<CaseRow, CaseError> {
        write
            .commit(Some(caller), kind, &after, &changes(before, &after))
            .await?;
        self.feeds.committed(&caller.owner);
        Ok(after)
    }

    /// Removes soft-deleted cases whose purge time has passed, each with its
    /// history, leaving one `PURGED` event; returns how many. One
    /// transaction per case, so a sweep never holds an owner's writes for
    /// longer than one removal.
    pub async fn purge_expired(&self) -> Result<u64, CaseError> {
        static EXPIRED: Sql = Sql::new(
            "SELECT id::text AS id, user_id FROM cases WHERE purge_at <= $1::timestamptz \
             ORDER BY purge_at LIMIT $2",
        );
        static PURGE: Sql = Sql::new(concat!(
            "DELETE FROM cases WHERE id = $1::uuid AND user_id = $2 AND purge_at <= $3::timestamptz RETURNING ",
            case_columns!()
        ));
        const BATCH: i64 = 100;
        let mut purged = 0;
        loop {
            let cutoff = sql_time(now());
            let expired: Vec<(String, String)> = {
                let mut connection = self.db.acquire().await?;
                sql!(
                    connection.executor(),
                    EXPIRED,
                    [cutoff.as_str(), BATCH],
                    query_as,
                    fetch_all
                )?
            };
            let last_batch = expired.len() < BATCH as usize;
            for (id, owner) in expired {
                let owner = UserId::new(owner);
                let mut write = EventWrite::begin(&self.db, &owner).await?;
                let removed: Option<CaseRow> = sql!(
                    write.executor(),
                    PURGE,
                    [id.as_str(), owner.as_str(), cutoff.as_str()],
                    query_as,
                    fetch_optional
                )?;
                // Undeleted (or purged by another replica) since it was listed.
                let Some(row) = removed else { continue };
                let case = CaseId::parse_name(&format!("cases/{id}"), "id")
                    .map_err(|_| CaseError::CorruptRow(format!("case id {id:?}")))?;
                write.trim(case).await?;
                write.commit(None, Kind::Purged, &row, &[]).await?;
                self.feeds.committed(&owner);
                purged += 1;
            }
            if last_batch {
                return Ok(purged);
            }
        }
    }
}

/// The owner's case `id` as `executor` sees it.
async fn find(
    executor: Executor<'_>,
    owner: &UserId,
    id: CaseId,
) -> Result<Option<CaseRow>, sqlx::Error> {
    static GET: Sql = Sql::new(concat!(
        "SELECT ",
        case_columns!(),
        " FROM cases WHERE id = $1::uuid AND user_id = $2"
    ));
    sql!(
        executor,
        GET,
        [id.0.hyphenated().to_string(), owner.as_str()],
        query_as,
        fetch_optional
    )
}

/// The case a write applies to, read inside the write (whose owner lock
/// keeps it current until commit), if the caller's etag still matches.
async fn current(
    write: &mut EventWrite,
    owner: &UserId,
    target: Target,
) -> Result<CaseRow, CaseError> {
    let row = find(write.executor(), owner, target.id)
        .await?
        .ok_or(CaseError::NotFound(target.id))?;
    match target.expected {
        Some(etag) if etag.0 != row.version => Err(CaseError::EtagMismatch(target.id)),
        _ => Ok(row),
    }
}

/// Keyset pagination on `(sort column, id)`, in the order of the
/// `cases_owner_*` indexes. Columns are qualified (`cases.id`) because the
/// select list's `id` is a text alias, and sorting by it would defeat the index.
fn list_sql(owner: &UserId, query: &ListQuery, after: Option<&Cursor>, limit: usize) -> SqlBuilder {
    let (column, cast) = match query.order.field {
        SortField::CreateTime => ("created_at", "::timestamptz"),
        SortField::UpdateTime => ("updated_at", "::timestamptz"),
        SortField::Title => ("title", ""),
    };
    let (direction, compare) = if query.order.descending {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let mut sql = SqlBuilder::new(concat!(
        "SELECT ",
        case_columns!(),
        " FROM cases WHERE user_id = "
    ));
    sql.push_bind(Arg::Text(owner.as_str().to_owned()), "");
    if !query.show_deleted {
        sql.push(" AND deleted_at IS NULL");
    }
    if let Some(status) = query.filter.status {
        sql.push(" AND status = ")
            .push_bind(Arg::Text(status.as_str_name().to_owned()), "::case_status");
    }
    if let Some(kind) = query.filter.kind {
        sql.push(" AND type = ")
            .push_bind(Arg::Text(kind.as_str_name().to_owned()), "::case_type");
    }
    if let Some(cursor) = after {
        sql.push(&format!(" AND (cases.{column}, cases.id) {compare} ("))
            .push_bind(Arg::Text(cursor.key.clone()), cast)
            .push(", ")
            .push_bind(Arg::Text(cursor.id.clone()), "::uuid")
            .push(")");
    }
    sql.push(&format!(
        " ORDER BY cases.{column} {direction}, cases.id {direction} LIMIT "
    ))
    .push_bind(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX)), "");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list_query::{Filter, Order};
    use casebook::pb::casebook::cases::v1::case::Status;

    #[test]
    fn list_queries_sort_by_the_indexed_columns_and_bind_values_in_order() {
        let query = ListQuery {
            filter: Filter {
                status: Some(Status::Open),
                kind: None,
            },
            order: Order {
                field: SortField::CreateTime,
                descending: true,
            },
            show_deleted: false,
            page_size: crate::request::PageSize::default(),
            page_token: String::new(),
        };
        let cursor = Cursor {
            key: "k".into(),
            id: "i".into(),
        };
        let (sql, args) = list_sql(&UserId::new("u"), &query, Some(&cursor), 21).finish();
        assert!(
            sql.postgres().ends_with(
                " AND deleted_at IS NULL AND status = $2::case_status AND (cases.created_at, cases.id) < ($3::timestamptz, $4::uuid) ORDER BY cases.created_at DESC, cases.id DESC LIMIT $5"
            ),
            "{}",
            sql.postgres()
        );
        assert!(sql.sqlite().ends_with("(cases.created_at, cases.id) < (?3, ?4) ORDER BY cases.created_at DESC, cases.id DESC LIMIT ?5"), "{}", sql.sqlite());
        assert_eq!(
            args,
            [
                Arg::Text("u".into()),
                Arg::Text("OPEN".into()),
                Arg::Text("k".into()),
                Arg::Text("i".into()),
                Arg::Int(21)
            ]
        );
    }
}
