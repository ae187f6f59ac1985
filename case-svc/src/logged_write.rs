//! Writing a change to `cases` and its event, committed together.
//!
//! Why resuming never misses an event: each owner's events are numbered by
//! `seq`, taken from the owner's row in `case_event_heads` after the case
//! row is written. Taking it locks that row until the transaction ends, so
//! a second write by the same owner waits there, and gets the next number
//! only after the first committed (or rolled back, which frees its number).
//! An owner's events therefore commit in `seq` order with no hole, and a
//! reader that has seen `seq = n` has seen everything up to `n`:
//! `WHERE seq > n` is complete. (With one global sequence, a transaction
//! that took 7 could commit after one that took 8, and a reader at 8 would
//! never see 7.) Different owners never wait for each other. Every write
//! locks its case row before the owner's row, so two writes never wait for
//! each other in opposite orders.
//!
//! On PostgreSQL a write is one statement: the change, the owner's next
//! `seq` and the event, chained by data-modifying `WITH` clauses that each
//! read the one before, so a change that writes no row takes no number and
//! records nothing. One round trip, as before the log existed; the log costs
//! its rows, not waiting. SQLite cannot modify data in `WITH`, and runs
//! the same three steps in one in-process transaction ([`EventWrite`]).

use std::sync::OnceLock;

use casebook::{
    auth::UserId,
    db::{
        Database, Pool, Transaction,
        sql::{Arg, Executor, Sql},
    },
    pb::casebook::cases::v1::case_event::Kind,
    sql,
};
use chrono::{DateTime, Utc};

use crate::{
    error::CaseError,
    events::Change,
    request::Caller,
    resource::CaseId,
    store::{CaseRow, sql_time},
};

/// What a change records besides the case row it leaves.
#[derive(Debug)]
pub struct Event<'a> {
    /// The kind of change.
    pub kind: Kind,
    /// Who made it (`None`: the service itself, for a purge).
    pub caller: Option<&'a Caller>,
    /// The fields it changed.
    pub changes: Vec<Change>,
}

impl Event<'_> {
    /// The changes as `case_events.changes` stores them.
    pub fn changes_json(&self) -> Result<String, CaseError> {
        serde_json::to_string(&self.changes).map_err(|e| CaseError::CorruptRow(e.to_string()))
    }

    /// The values of `$kind, $actor, $request_id, $changes`, in that order.
    fn args(&self) -> Result<[Arg; 4], CaseError> {
        let changes = self.changes_json()?;
        Ok([
            self.kind.as_str_name().into(),
            self.caller
                .map(|c| c.owner.as_str())
                .unwrap_or_default()
                .into(),
            self.caller.and_then(|c| c.request_id.as_deref()).into(),
            changes.into(),
        ])
    }
}

/// A statement that writes one case row and returns it (or returns no row
/// when its condition no longer holds), run so that the row it writes and
/// its event commit together.
#[derive(Debug)]
pub struct LoggedWrite {
    write: Sql,
    /// PostgreSQL: the write with its event, as one statement.
    with_event: OnceLock<Sql>,
}

impl LoggedWrite {
    /// `write` returns the case's columns (`RETURNING` the store's column list).
    pub const fn new(write: &'static str) -> Self {
        Self {
            write: Sql::new(write),
            with_event: OnceLock::new(),
        }
    }

    /// Runs the write with `args` (bound to `$1`, `$2`, …) and, if it wrote
    /// a row, records `event` for it by `owner`.
    pub async fn run(
        &self,
        db: &Database,
        owner: &UserId,
        mut args: Vec<Arg>,
        event: &Event<'_>,
    ) -> Result<Option<CaseRow>, CaseError> {
        if let Pool::Postgres(_) = db.pool() {
            let statement = self
                .with_event
                .get_or_init(|| Sql::owned(with_event(self.write.postgres())));
            args.extend(event.args()?);
            let mut connection = db.acquire().await?;
            return sql!(
                connection.executor(),
                statement,
                args: args,
                query_as,
                fetch_optional
            )
            .map_err(write_error);
        }
        let mut write = EventWrite::begin(db, owner).await?;
        let written: Option<CaseRow> = sql!(
            write.executor(),
            self.write,
            args: args,
            query_as,
            fetch_optional
        )
        .map_err(write_error)?;
        if let Some(row) = &written {
            write.record(event, row, row.updated_at).await?;
            write.commit().await?;
        }
        Ok(written)
    }
}

/// `write` followed, in the same statement, by the owner's next `seq` and
/// the event, each taking its input from the step before. The event's
/// values follow the write's own parameters; its time is the case's new
/// `updated_at`.
fn with_event(write: &str) -> String {
    let next = placeholders(write) + 1;
    let (kind, actor, request_id, changes) = (next, next + 1, next + 2, next + 3);
    format!(
        "WITH written AS ({write}), \
         head AS (INSERT INTO case_event_heads (user_id, seq) SELECT user_id, 1 FROM written \
                  ON CONFLICT (user_id) DO UPDATE SET seq = case_event_heads.seq + 1 RETURNING seq), \
         logged AS (INSERT INTO case_events \
                    (user_id, seq, case_id, kind, actor, request_id, status, type, version, changes, created_at) \
                    SELECT written.user_id, head.seq, written.id::uuid, ${kind}, ${actor}, ${request_id}, \
                    written.status::case_status, written.type::case_type, written.version, ${changes}, \
                    written.updated_at FROM written, head) \
         SELECT * FROM written"
    )
}

/// The highest `$n` in `statement`.
fn placeholders(statement: &str) -> usize {
    statement
        .split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest[..digits].parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// A write whose owner has no Better Auth row is refused by the foreign key.
pub fn write_error(error: sqlx::Error) -> CaseError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => CaseError::UnknownOwner,
        _ => CaseError::Database(error),
    }
}

static NEXT_SEQ: Sql = Sql::new(
    "INSERT INTO case_event_heads (user_id, seq) VALUES ($1, 1) \
     ON CONFLICT (user_id) DO UPDATE SET seq = case_event_heads.seq + 1 RETURNING seq",
);
static APPEND: Sql = Sql::new(
    "INSERT INTO case_events (user_id, seq, case_id, status, type, version, created_at, kind, actor, request_id, changes) \
     VALUES ($1, $2, $3::uuid, $4::case_status, $5::case_type, $6, $7::timestamptz, $8, $9, $10, $11)",
);
static TRIM_CASE: Sql =
    Sql::new("DELETE FROM case_events WHERE user_id = $1 AND case_id = $2::uuid RETURNING seq");
static RAISE_TRIMMED: Sql = Sql::new(
    "UPDATE case_event_heads SET trimmed_through = $2 WHERE user_id = $1 AND trimmed_through < $2",
);

/// A change as a transaction of separate statements: how SQLite writes, and
/// how a purge (which also trims the log) writes on both back ends.
/// Dropping it rolls the change back.
pub struct EventWrite {
    transaction: Transaction,
    owner: UserId,
}

impl EventWrite {
    /// Begins a change to `owner`'s cases.
    pub async fn begin(db: &Database, owner: &UserId) -> Result<Self, CaseError> {
        Ok(Self {
            transaction: db.begin().await?,
            owner: owner.clone(),
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

    /// Takes the owner's next `seq` (holding it until the transaction
    /// ends) and records `event` of `case` (its row after the change, or as
    /// it was when purged) at `at`. Call it after the change's own
    /// statements: the case row is locked before the owner's. Returns the
    /// event's `seq`.
    pub async fn record(
        &mut self,
        event: &Event<'_>,
        case: &CaseRow,
        at: DateTime<Utc>,
    ) -> Result<i64, CaseError> {
        let seq: i64 = sql!(
            self.transaction.executor(),
            NEXT_SEQ,
            [self.owner.as_str()],
            query_scalar,
            fetch_one
        )
        .map_err(write_error)?;
        let mut args: Vec<Arg> = vec![
            self.owner.as_str().into(),
            seq.into(),
            case.id.as_str().into(),
            case.status.as_str().into(),
            case.kind.as_str().into(),
            case.version.into(),
            sql_time(at).into(),
        ];
        args.extend(event.args()?);
        sql!(
            self.transaction.executor(),
            APPEND,
            args: args,
            query,
            execute,
            |done| done.rows_affected()
        )?;
        Ok(seq)
    }

    /// Commits the change and its event.
    pub async fn commit(self) -> Result<(), CaseError> {
        Ok(self.transaction.commit().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_parameters_follow_the_writes_own() {
        let statement = with_event("UPDATE cases SET a = $2 WHERE id = $11 RETURNING *");
        assert!(
            statement.contains("written.id::uuid, $12, $13, $14,"),
            "{statement}"
        );
        assert!(statement.contains("written.version, $15,"), "{statement}");
        assert_eq!(placeholders("SELECT 1"), 0);
    }
}
