//! The event log: one `case_events` row per change, what it holds, and how
//! it is read. `logged_write` writes it, in the change's transaction, and
//! says why an owner's `seq` is complete; `feeds` delivers new events.
//!
//! After a commit the store tells `feeds`, which wakes this replica's
//! watchers of the owner and, on PostgreSQL, announces the change to the
//! other replicas: a wake-up, never the data.

use casebook::{
    auth::UserId,
    db::{Database, sql::Sql},
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
    resource::{CaseId, Etag},
    store::CaseRow,
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
