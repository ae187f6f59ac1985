//! `CaseStore`: every query on the `cases` table, for PostgreSQL and SQLite.
//!
//! Statements are `casebook::db::sql` statements, each declared in the
//! function that binds it. Every query names the owner: a case of another
//! user is indistinguishable from one that does not exist. A change is
//! decided here, in Rust, from the case as read (the row it becomes and the
//! fields that differ), then written as a [`LoggedWrite`] on condition that
//! the case still has the version read, so the change and its event commit
//! together and describe the same row.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::{Engine, engine::general_purpose::STANDARD};
use casebook::{
    auth::UserId,
    db::{
        Database, Pool,
        sql::{Arg, Sql, SqlBuilder},
    },
    metrics::ServerMetrics,
    pb::casebook::cases::v1::case_event::Kind,
    sql,
};
use chrono::{DateTime, SubsecRound, Utc};

use crate::{
    create_queue::{CreateBatching, CreateQueue, QueuedCreate},
    error::CaseError,
    events::{EventLog, changes},
    feeds::Feeds,
    list_query::{Cursor, SortField},
    logged_write::{Event, EventWrite, LoggedWrite},
    request::{Caller, CasePatch, Delete, ListQuery, NewCase, Target, Update},
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
    /// The row `new` creates for `owner` at `now`.
    fn new(owner: &UserId, new: &NewCase, now: DateTime<Utc>) -> Self {
        Self {
            id: CaseId::generate().0.hyphenated().to_string(),
            user_id: owner.as_str().to_owned(),
            title: new.title.as_str().to_owned(),
            description: new.description.as_str().to_owned(),
            status: new.status.as_str_name().to_owned(),
            kind: new.kind.as_str_name().to_owned(),
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            purge_at: None,
        }
    }

    /// This row written again at `now`: the next version.
    fn next(&self, now: DateTime<Utc>) -> Self {
        Self {
            version: self.version + 1,
            updated_at: now,
            ..self.clone()
        }
    }

    /// This row with `patch` applied.
    fn patched(&self, patch: &CasePatch, now: DateTime<Utc>) -> Self {
        let mut next = self.next(now);
        if let Some(title) = &patch.title {
            next.title = title.as_str().to_owned();
        }
        if let Some(description) = &patch.description {
            next.description = description.as_str().to_owned();
        }
        if let Some(status) = patch.status {
            next.status = status.as_str_name().to_owned();
        }
        if let Some(kind) = patch.kind {
            next.kind = kind.as_str_name().to_owned();
        }
        next
    }

    /// This row soft-deleted at `now`, to be purged `retention` later.
    fn deleted(&self, now: DateTime<Utc>, retention: Duration) -> Self {
        let purge_at = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|retention| now.checked_add_signed(retention))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        Self {
            deleted_at: Some(now),
            purge_at: Some(purge_at),
            ..self.next(now)
        }
    }

    /// This row restored at `now`.
    fn undeleted(&self, now: DateTime<Utc>) -> Self {
        Self {
            deleted_at: None,
            purge_at: None,
            ..self.next(now)
        }
    }

    /// `$1`…`$9`: id, owner, title, description, status, type, version,
    /// created_at, updated_at, as both writes bind them.
    fn content_args(&self) -> Vec<Arg> {
        vec![
            self.id.as_str().into(),
            self.user_id.as_str().into(),
            self.title.as_str().into(),
            self.description.as_str().into(),
            self.status.as_str().into(),
            self.kind.as_str().into(),
            self.version.into(),
            sql_time(self.created_at).into(),
            sql_time(self.updated_at).into(),
        ]
    }

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

/// An optional time as [`sql_time`] writes it.
fn sql_time_opt(time: Option<DateTime<Utc>>) -> Arg {
    time.map(sql_time).into()
}

/// How many writers may race for one case before a write without an etag
/// gives up with ABORTED.
const UNCONDITIONAL_ATTEMPTS: usize = 32;

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

/// [`case_columns!`] as a value, for statements assembled at run time.
pub const CASE_COLUMNS: &str = case_columns!();

/// The cases table, and the event log written with every change to it.
pub struct CaseStore {
    db: Database,
    log: EventLog,
    feeds: Arc<Feeds>,
    /// PostgreSQL: concurrent creates share a statement.
    creates: Option<CreateQueue>,
}

impl CaseStore {
    /// Checks Better Auth's tables exist, then migrates. On PostgreSQL sqlx's
    /// migrator holds an advisory lock, so replicas starting together migrate
    /// once. SQLite has no such lock: there the loser of a race fails that
    /// migration's transaction, and simply runs the migrator again, which
    /// then finds it applied. Every committed change wakes `feeds`. On
    /// PostgreSQL creates are written in batches as `batching` says.
    pub async fn open(
        db: Database,
        feeds: Arc<Feeds>,
        batching: CreateBatching,
    ) -> Result<Self, OpenError> {
        casebook::db::users::UserDirectory::open(db.clone()).await?;
        let mut creates = None;
        match db.pool() {
            Pool::Postgres(pool) => {
                POSTGRES_MIGRATIONS.run(pool).await?;
                creates = Some(CreateQueue::start(db.clone(), batching));
            }
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
            creates,
        })
    }

    /// Reports the create batches in `metrics` (PostgreSQL).
    pub fn report_to(&self, metrics: &ServerMetrics) {
        if let Some(creates) = &self.creates {
            creates.report_to(metrics);
        }
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

    /// Inserts a case and its `CREATED` event (on PostgreSQL through the
    /// create queue). With an idempotency key the owner already used,
    /// returns the case that key created instead (and records nothing).
    pub async fn create(&self, caller: &Caller, new: &NewCase) -> Result<CaseRow, CaseError> {
        // SQLite's create; PostgreSQL's go through the create queue.
        static INSERT: LoggedWrite = LoggedWrite::new(concat!(
            "INSERT INTO cases (id, user_id, title, description, status, type, version, created_at, updated_at, request_id) \
             VALUES ($1::uuid, $2, $3, $4, $5::case_status, $6::case_type, $7, $8::timestamptz, $9::timestamptz, $10) \
             ON CONFLICT (user_id, request_id) WHERE request_id IS NOT NULL DO NOTHING RETURNING ",
            case_columns!()
        ));
        static BY_KEY: Sql = Sql::new(concat!(
            "SELECT ",
            case_columns!(),
            " FROM cases WHERE user_id = $1 AND request_id = $2"
        ));
        let key = new.idempotency_key.as_ref().map(|k| k.as_str());
        let row = CaseRow::new(&caller.owner, new, now());
        let event = Event {
            kind: Kind::Created,
            caller: Some(caller),
            changes: changes(None, &row),
        };
        let written = match &self.creates {
            Some(queue) => {
                let create = QueuedCreate {
                    key: key.map(str::to_owned),
                    request_id: caller.request_id.clone(),
                    changes: event.changes_json()?,
                    row,
                };
                queue.write(create).await?
            }
            None => {
                let mut args = row.content_args();
                args.push(key.into());
                INSERT.run(&self.db, &caller.owner, args, &event).await?
            }
        };
        if let Some(row) = written {
            self.feeds.committed(&caller.owner);
            return Ok(row);
        }
        // Only a used idempotency key makes the insert do nothing.
        let mut connection = self.db.acquire().await?;
        Ok(sql!(
            connection.executor(),
            BY_KEY,
            [caller.owner.as_str(), key],
            query_as,
            fetch_one
        )?)
    }

    /// The owner's case `id`, deleted or not.
    pub async fn get(&self, owner: &UserId, id: CaseId) -> Result<CaseRow, CaseError> {
        static GET: Sql = Sql::new(concat!(
            "SELECT ",
            case_columns!(),
            " FROM cases WHERE id = $1::uuid AND user_id = $2"
        ));
        let mut connection = self.db.acquire().await?;
        let row: Option<CaseRow> = sql!(
            connection.executor(),
            GET,
            [id.0.hyphenated().to_string(), owner.as_str()],
            query_as,
            fetch_optional
        )?;
        row.ok_or(CaseError::NotFound(id))
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
        let id = update.target.id;
        self.change(caller, update.target, Kind::Updated, |current, now| {
            if current.deleted_at.is_some() {
                return Err(CaseError::Deleted(id));
            }
            Ok(Some(current.patched(&update.patch, now)))
        })
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
        let id = delete.target.id;
        let deleted = self.change(caller, delete.target, Kind::Deleted, |current, now| match (
            current.deleted_at,
            delete.allow_missing,
        ) {
            (None, _) => Ok(Some(current.deleted(now, retention))),
            (Some(_), true) => Ok(None),
            (Some(_), false) => Err(CaseError::NotFound(id)),
        });
        match deleted.await {
            Err(CaseError::NotFound(_)) if delete.allow_missing => Ok(None),
            other => other.map(Some),
        }
    }

    /// Restores a soft-deleted case.
    pub async fn undelete(&self, caller: &Caller, target: Target) -> Result<CaseRow, CaseError> {
        self.change(caller, target, Kind::Undeleted, |current, now| {
            if current.deleted_at.is_none() {
                return Err(CaseError::NotDeleted(target.id));
            }
            Ok(Some(current.undeleted(now)))
        })
        .await
    }

    /// The shape of every change to an existing case: read it, check the
    /// caller's etag, let `next` decide the row it becomes (`None`: nothing
    /// to change, return it as it is), then write that row with its event on
    /// condition that the version read is still current. A caller without
    /// an etag asked for no condition, so losing a race to another writer
    /// means reading again, not ABORTED. Every round has a winner, so a
    /// writer loses at most as many rounds as there are writers racing for
    /// the same case: [`UNCONDITIONAL_ATTEMPTS`] of them.
    async fn change(
        &self,
        caller: &Caller,
        target: Target,
        kind: Kind,
        next: impl Fn(&CaseRow, DateTime<Utc>) -> Result<Option<CaseRow>, CaseError>,
    ) -> Result<CaseRow, CaseError> {
        // Every column the row can change, from the row decided here
        // (`created_at` comes back as read: both writes bind `content_args`).
        static SAVE: LoggedWrite = LoggedWrite::new(concat!(
            "UPDATE cases SET title = $3, description = $4, status = $5::case_status, \
             type = $6::case_type, version = $7, created_at = $8::timestamptz, \
             updated_at = $9::timestamptz, deleted_at = $10::timestamptz, purge_at = $11::timestamptz \
             WHERE id = $1::uuid AND user_id = $2 AND version = $12 RETURNING ",
            case_columns!()
        ));
        for _ in 0..UNCONDITIONAL_ATTEMPTS {
            let current = self.get(&caller.owner, target.id).await?;
            if target
                .expected
                .is_some_and(|etag| etag.0 != current.version)
            {
                return Err(CaseError::EtagMismatch(target.id));
            }
            let Some(row) = next(&current, now())? else {
                return Ok(current);
            };
            let event = Event {
                kind,
                caller: Some(caller),
                changes: changes(Some(&current), &row),
            };
            let mut args = row.content_args();
            args.extend([
                sql_time_opt(row.deleted_at),
                sql_time_opt(row.purge_at),
                current.version.into(),
            ]);
            if let Some(written) = self.write(&SAVE, &caller.owner, args, &event).await? {
                return Ok(written);
            }
            if target.expected.is_some() {
                return Err(CaseError::EtagMismatch(target.id));
            }
            // Let the round's winner finish before reading again.
            tokio::task::yield_now().await;
        }
        Err(CaseError::EtagMismatch(target.id))
    }

    /// Runs `statement` with its event and, if it wrote, wakes the owner's watchers.
    async fn write(
        &self,
        statement: &LoggedWrite,
        owner: &UserId,
        args: Vec<Arg>,
        event: &Event<'_>,
    ) -> Result<Option<CaseRow>, CaseError> {
        let written = statement.run(&self.db, owner, args, event).await?;
        if written.is_some() {
            self.feeds.committed(owner);
        }
        Ok(written)
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
                // The case row first, the owner's after, as every write locks them.
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
                let event = Event {
                    kind: Kind::Purged,
                    caller: None,
                    changes: Vec::new(),
                };
                write.record(&event, &row, now()).await?;
                write.commit().await?;
                self.feeds.committed(&owner);
                purged += 1;
            }
            if last_batch {
                return Ok(purged);
            }
        }
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
    sql.push_bind(owner.as_str().into(), "");
    if !query.show_deleted {
        sql.push(" AND deleted_at IS NULL");
    }
    if let Some(status) = query.filter.status {
        sql.push(" AND status = ")
            .push_bind(status.as_str_name().into(), "::case_status");
    }
    if let Some(kind) = query.filter.kind {
        sql.push(" AND type = ")
            .push_bind(kind.as_str_name().into(), "::case_type");
    }
    if let Some(cursor) = after {
        sql.push(&format!(" AND (cases.{column}, cases.id) {compare} ("))
            .push_bind(cursor.key.as_str().into(), cast)
            .push(", ")
            .push_bind(cursor.id.as_str().into(), "::uuid")
            .push(")");
    }
    sql.push(&format!(
        " ORDER BY cases.{column} {direction}, cases.id {direction} LIMIT "
    ))
    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX).into(), "");
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
