//! The event log: one `case_events` row per change, in the change's transaction.
//!
//! Why resuming never misses an event: each owner's events are numbered by
//! `seq`, taken from the owner's row in `case_event_heads` by the write's
//! first statement. Taking it locks that row until the transaction ends, so
//! a second write by the same owner waits, and gets the next number only
//! after the first committed (or rolled back, which frees its number). An
//! owner's events therefore commit in `seq` order with no hole, and a reader
//! that has seen `seq = n` has seen everything up to `n`: `WHERE seq > n`
//! is complete. (With one global sequence, a transaction that took 7 could
//! commit after one that took 8, and a reader at 8 would never see 7.) The
//! cost is that one owner's writes are serialised; different owners never
//! wait for each other. Watchers only ever follow one owner, their own.
//!
//! After a commit the store tells `feeds`, which wakes this replica's
//! watchers of the owner and, on PostgreSQL, announces the change to the
//! other replicas: a wake-up, never the data.

use casebook::{
    auth::UserId,
    db::{Database, Transaction, sql::Executor, sql::Sql},
    pb::casebook::cases::v1::{
        CaseEvent, FieldChange,
        case::{Status, Type},
        case_event::Kind,
    },
    sql,
    wkt::timestamp,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    error::CaseError,
    request::Caller,
    resource::{CaseId, Etag},
    store::{CaseRow, now, sql_time},
};

/// The PostgreSQL channel replicas announce changes on and listen to.
pub const CHANNEL: &str = "case_events";

/// One field's change, as stored (JSON in `case_events.changes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The field's name in `Case`.
    #[serde(rename = "f")]
    pub field: String,
    /// Before ("" for unset).
    #[serde(rename = "o")]
    pub old: String,
    /// After ("" for unset).
    #[serde(rename = "n")]
    pub new: String,
}

/// The fields of `after` that differ from `before` (every content field, for a new case).
pub fn changes(before: Option<&CaseRow>, after: &CaseRow) -> Vec<Change> {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    let fields = |row: Option<&CaseRow>| -> [(&'static str, String); 6] {
        [
            ("title", row.map(|r| r.title.clone()).unwrap_or_default()),
            (
                "description",
                row.map(|r| r.description.clone()).unwrap_or_default(),
            ),
            ("status", row.map(|r| r.status.clone()).unwrap_or_default()),
            ("type", row.map(|r| r.kind.clone()).unwrap_or_default()),
            ("delete_time", time(row.and_then(|r| r.deleted_at))),
            ("purge_time", time(row.and_then(|r| r.purge_at))),
        ]
    };
    fields(before)
        .into_iter()
        .zip(fields(Some(after)))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((field, old), (_, new))| Change {
            field: field.to_owned(),
            old,
            new,
        })
        .collect()
}

/// One row of `case_events`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRow {
    /// The owner.
    pub user_id: String,
    /// The owner's change number.
    pub seq: i64,
    /// The case.
    pub case_id: String,
    /// `Kind` name.
    pub kind: String,
    /// Who made the change (empty for the purge).
    pub actor: String,
    /// The call's `x-request-id`.
    pub request_id: Option<String>,
    /// Status after the change.
    pub status: String,
    /// Type after the change.
    #[sqlx(rename = "type")]
    pub kind_of_case: String,
    /// Version (etag) after the change.
    pub version: i64,
    /// JSON list of [`Change`].
    pub changes: String,
    /// Commit time.
    pub created_at: DateTime<Utc>,
}

impl EventRow {
    /// The case's status and type after the change.
    pub fn classification(&self) -> Result<(Status, Type), CaseError> {
        Ok((parse_status(&self.status)?, parse_type(&self.kind_of_case)?))
    }

    /// The case's status and type before the change.
    pub fn previous_classification(&self) -> Result<(Status, Type), CaseError> {
        let (mut status, mut kind) = self.classification()?;
        for change in self.parsed_changes()? {
            match change.field.as_str() {
                "status" if !change.old.is_empty() => status = parse_status(&change.old)?,
                "type" if !change.old.is_empty() => kind = parse_type(&change.old)?,
                _ => {}
            }
        }
        Ok((status, kind))
    }

    fn parsed_changes(&self) -> Result<Vec<Change>, CaseError> {
        serde_json::from_str(&self.changes)
            .map_err(|e| CaseError::CorruptRow(format!("event changes: {e}")))
    }
}

fn parse_status(name: &str) -> Result<Status, CaseError> {
    Status::from_str_name(name).ok_or_else(|| CaseError::CorruptRow(format!("status {name:?}")))
}

fn parse_type(name: &str) -> Result<Type, CaseError> {
    Type::from_str_name(name).ok_or_else(|| CaseError::CorruptRow(format!("type {name:?}")))
}

impl TryFrom<&EventRow> for CaseEvent {
    type Error = CaseError;

    fn try_from(row: &EventRow) -> Result<Self, CaseError> {
        let kind = Kind::from_str_name(&row.kind)
            .ok_or_else(|| CaseError::CorruptRow(format!("event kind {:?}", row.kind)))?;
        let (status, kind_of_case) = row.classification()?;
        let changes = row
            .parsed_changes()?
            .into_iter()
            .map(|c| FieldChange {
                field: c.field,
                old_value: c.old,
                new_value: c.new,
            })
            .collect();
        Ok(CaseEvent {
            name: format!("cases/{}/events/{}", row.case_id, row.seq),
            r#case: format!("cases/{}", row.case_id),
            kind: kind as i32,
            actor: if row.actor.is_empty() {
                String::new()
            } else {
                format!("users/{}", row.actor)
            },
            event_time: Some(timestamp(row.created_at)),
            request_id: row.request_id.clone().unwrap_or_default(),
            changes,
            case_etag: Etag(row.version).to_wire(),
            status: status as i32,
            r#type: kind_of_case as i32,
        })
    }
}

/// Columns every event query returns.
macro_rules! event_columns {
    () => {
        "user_id, seq, case_id::text AS case_id, kind, actor, request_id, status::text AS status, \
         type::text AS type, version, changes, created_at"
    };
}

static NEXT_SEQ: Sql = Sql::new(
    "INSERT INTO case_event_heads (user_id, seq) VALUES ($1, 1) \
     ON CONFLICT (user_id) DO UPDATE SET seq = case_event_heads.seq + 1 RETURNING seq",
);
static APPEND: Sql = Sql::new(
    "INSERT INTO case_events (user_id, seq, case_id, kind, actor, request_id, status, type, version, changes, created_at) \
     VALUES ($1, $2, $3::uuid, $4, $5, $6, $7::case_status, $8::case_type, $9, $10, $11::timestamptz)",
);
static TRIM_CASE: Sql =
    Sql::new("DELETE FROM case_events WHERE user_id = $1 AND case_id = $2::uuid RETURNING seq");
static RAISE_TRIMMED: Sql = Sql::new(
    "UPDATE case_event_heads SET trimmed_through = $2 WHERE user_id = $1 AND trimmed_through < $2",
);

/// A change in progress: a transaction that holds the owner's next `seq`.
/// Dropping it rolls the change back and frees the number.
pub struct EventWrite {
    transaction: Transaction,
    owner: UserId,
    seq: i64,
}

impl EventWrite {
    /// Begins a change to `owner`'s cases, taking (and locking) their next
    /// `seq` first, so every later statement runs with the owner's writes
    /// serialised. An owner without a Better Auth user is `UnknownOwner`.
    pub async fn begin(db: &Database, owner: &UserId) -> Result<Self, CaseError> {
        let mut transaction = db.begin().await?;
        let seq: i64 = sql!(
            transaction.executor(),
            NEXT_SEQ,
            [owner.as_str()],
            query_scalar,
            fetch_one
        )
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => CaseError::UnknownOwner,
            _ => CaseError::Database(error),
        })?;
        Ok(Self {
            transaction,
            owner: owner.clone(),
            seq,
        })
    }

    /// The transaction, for the change itself.
    pub fn executor(&mut self) -> Executor<'_> {
        self.transaction.executor()
    }

    /// Removes every event of `case` (it is being purged), remembering the
    /// newest removed, below which a resume point is no longer complete.
    pub async fn trim(&mut self, case: CaseId) -> Result<(), CaseError> {
        let removed: Vec<i64> = sql!(
            self.transaction.executor(),
            TRIM_CASE,
            [self.owner.as_str(), case.0.hyphenated().to_string()],
            query_scalar,
            fetch_all
        )?;
        if let Some(newest) = removed.into_iter().max() {
            sql!(
                self.transaction.executor(),
                RAISE_TRIMMED,
                [self.owner.as_str(), newest],
                query,
                execute,
                |done| done.rows_affected()
            )?;
        }
        Ok(())
    }

    /// Records `kind` of `case` (its row after the change, or as it was when
    /// purged) by `caller` (`None`: the service itself), and commits the
    /// change and its event together. Returns the event's `seq`.
    pub async fn commit(
        mut self,
        caller: Option<&Caller>,
        kind: Kind,
        case: &CaseRow,
        changes: &[Change],
    ) -> Result<i64, CaseError> {
        let changes =
            serde_json::to_string(changes).map_err(|e| CaseError::CorruptRow(e.to_string()))?;
        sql!(
            self.transaction.executor(),
            APPEND,
            [
                self.owner.as_str(),
                self.seq,
                case.id.as_str(),
                kind.as_str_name(),
                caller.map(|c| c.owner.as_str()).unwrap_or_default(),
                caller.and_then(|c| c.request_id.as_deref()),
                case.status.as_str(),
                case.kind.as_str(),
                case.version,
                changes,
                sql_time(now()),
            ],
            query,
            execute,
            |done| done.rows_affected()
        )?;
        self.transaction.commit().await?;
        Ok(self.seq)
    }
}

/// Where an owner's log stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Head {
    /// The last `seq` taken (0 before the first change).
    pub seq: i64,
    /// The newest `seq` removed by a purge (0 if none).
    pub trimmed_through: i64,
}

static HEAD: Sql = Sql::new("SELECT seq, trimmed_through FROM case_event_heads WHERE user_id = $1");
static AFTER: Sql = Sql::new(concat!(
    "SELECT ",
    event_columns!(),
    " FROM case_events WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
));
static HISTORY: Sql = Sql::new(concat!(
    "SELECT ",
    event_columns!(),
    " FROM case_events WHERE user_id = $1 AND case_id = $2::uuid AND seq < $3 \
     ORDER BY seq DESC LIMIT $4"
));

/// Reads the log.
#[derive(Clone, Debug)]
pub struct EventLog {
    db: Database,
}

impl EventLog {
    /// The log in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Where `owner`'s log stands now.
    pub async fn head(&self, owner: &UserId) -> Result<Head, CaseError> {
        let mut connection = self.db.acquire().await?;
        let head: Option<Head> = sql!(
            connection.executor(),
            HEAD,
            [owner.as_str()],
            query_as,
            fetch_optional
        )?;
        Ok(head.unwrap_or_default())
    }

    /// Up to `limit` of `owner`'s events after `seq`, oldest first.
    pub async fn after(
        &self,
        owner: &UserId,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, CaseError> {
        let mut connection = self.db.acquire().await?;
        Ok(sql!(
            connection.executor(),
            AFTER,
            [owner.as_str(), seq, limit],
            query_as,
            fetch_all
        )?)
    }

    /// Up to `limit` of `case`'s events before `seq`, newest first.
    pub async fn history(
        &self,
        owner: &UserId,
        case: CaseId,
        before: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>, CaseError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut connection = self.db.acquire().await?;
        Ok(sql!(
            connection.executor(),
            HISTORY,
            [
                owner.as_str(),
                case.0.hyphenated().to_string(),
                before,
                limit
            ],
            query_as,
            fetch_all
        )?)
    }
}
