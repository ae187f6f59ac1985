//! One statement, two dialects: how every store writes its SQL.
//!
//! A statement is written once, in PostgreSQL's dialect with explicit casts
//! (`$1::uuid`, `$2::timestamptz`); its SQLite text is derived from it (casts
//! dropped, `$n` → `?n`). Values are always bound, never formatted in, and
//! bound where the statement is run: [`sql!`](crate::sql) takes the values in
//! placeholder order right beside the statement's name, and [`SqlBuilder`]
//! writes a placeholder and records its value in the same call, the way
//! sqlx's `QueryBuilder::push_bind` does, for queries assembled at run time.
//!
//! sqlx's query builders are typed by database, so [`sql!`](crate::sql) is a
//! macro that expands to one arm per back end over an [`Executor`].

use std::{borrow::Cow, sync::OnceLock};

/// A statement in both dialects.
#[derive(Debug)]
pub struct Sql {
    postgres: Cow<'static, str>,
    sqlite: OnceLock<String>,
}

impl Sql {
    /// A statement written in PostgreSQL's dialect (usable in a `static`).
    pub const fn new(postgres: &'static str) -> Self {
        Self {
            postgres: Cow::Borrowed(postgres),
            sqlite: OnceLock::new(),
        }
    }

    /// A statement assembled at run time.
    pub fn owned(postgres: String) -> Self {
        Self {
            postgres: Cow::Owned(postgres),
            sqlite: OnceLock::new(),
        }
    }

    /// The PostgreSQL text.
    pub fn postgres(&self) -> &str {
        &self.postgres
    }

    /// The SQLite text, derived once.
    pub fn sqlite(&self) -> &str {
        self.sqlite.get_or_init(|| sqlite_dialect(&self.postgres))
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

/// A value bound to an assembled statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// Text.
    Text(String),
    /// Text or NULL.
    OptText(Option<String>),
    /// An integer.
    Int(i64),
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<Option<&str>> for Arg {
    fn from(value: Option<&str>) -> Self {
        Self::OptText(value.map(str::to_owned))
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        Self::OptText(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// Assembles a statement whose shape is decided at run time: each
/// placeholder is numbered and its value recorded by the same call.
#[derive(Debug, Default)]
pub struct SqlBuilder {
    text: String,
    args: Vec<Arg>,
}

impl SqlBuilder {
    /// Starts with `text` (which must hold no placeholder).
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends the next placeholder, cast to `cast` (e.g. `"::uuid"`, or
    /// `""`), bound to `value`.
    pub fn push_bind(&mut self, value: Arg, cast: &str) -> &mut Self {
        self.args.push(value);
        self.text.push_str(&format!("${}{cast}", self.args.len()));
        self
    }

    /// The statement and its values, in placeholder order.
    pub fn finish(self) -> (Sql, Vec<Arg>) {
        (Sql::owned(self.text), self.args)
    }
}

/// A connection (pooled or inside a transaction) of either back end.
pub enum Executor<'c> {
    /// PostgreSQL.
    Postgres(&'c mut sqlx::PgConnection),
    /// SQLite.
    Sqlite(&'c mut sqlx::SqliteConnection),
}

/// Runs a [`Sql`] statement on an [`Executor`]:
/// `sql!(executor, STATEMENT, [first, second], query_as, fetch_optional)`
/// binds the listed values to `$1`, `$2`, … and finishes with the named
/// sqlx call, then an optional `map` of its success (both arms must give
/// one type: `execute` is followed by `|done| done.rows_affected()`). `sql!(executor, statement, args: vec_of_args, …)` binds a
/// [`SqlBuilder`]'s values. Every value must be bindable on both back ends.
#[macro_export]
macro_rules! sql {
    ($executor:expr, $sql:expr, [$($value:expr),* $(,)?], $kind:ident, $finish:ident $(, $map:expr)?) => {
        match $executor {
            $crate::db::sql::Executor::Postgres(connection) => {
                sqlx::$kind(sqlx::AssertSqlSafe($sql.postgres()))
                    $(.bind($value))*
                    .$finish(connection)
                    .await
                    $(.map($map))?
            }
            $crate::db::sql::Executor::Sqlite(connection) => {
                sqlx::$kind(sqlx::AssertSqlSafe($sql.sqlite()))
                    $(.bind($value))*
                    .$finish(connection)
                    .await
                    $(.map($map))?
            }
        }
    };
    ($executor:expr, $sql:expr, args: $args:expr, $kind:ident, $finish:ident $(, $map:expr)?) => {
        match $executor {
            $crate::db::sql::Executor::Postgres(connection) => {
                let mut query = sqlx::$kind(sqlx::AssertSqlSafe($sql.postgres()));
                for arg in $args {
                    query = $crate::sql!(@bind query, arg);
                }
                query.$finish(connection).await $(.map($map))?
            }
            $crate::db::sql::Executor::Sqlite(connection) => {
                let mut query = sqlx::$kind(sqlx::AssertSqlSafe($sql.sqlite()));
                for arg in $args {
                    query = $crate::sql!(@bind query, arg);
                }
                query.$finish(connection).await $(.map($map))?
            }
        }
    };
    (@bind $query:expr, $arg:expr) => {
        match $arg {
            $crate::db::sql::Arg::Text(value) => $query.bind(value),
            $crate::db::sql::Arg::OptText(value) => $query.bind(value),
            $crate::db::sql::Arg::Int(value) => $query.bind(value),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_dialect_drops_casts_and_numbers_parameters() {
        assert_eq!(
            Sql::new("SELECT id::text AS id FROM t WHERE a = $1::uuid AND b = $12").sqlite(),
            "SELECT id AS id FROM t WHERE a = ?1 AND b = ?12"
        );
    }

    #[test]
    fn the_builder_numbers_each_placeholder_as_it_binds_its_value() {
        let mut builder = SqlBuilder::new("SELECT 1 FROM t WHERE a = ");
        builder
            .push_bind(Arg::Text("x".into()), "::uuid")
            .push(" AND b < ")
            .push_bind(Arg::Int(3), "");
        let (sql, args) = builder.finish();
        assert_eq!(
            sql.postgres(),
            "SELECT 1 FROM t WHERE a = $1::uuid AND b < $2"
        );
        assert_eq!(sql.sqlite(), "SELECT 1 FROM t WHERE a = ?1 AND b < ?2");
        assert_eq!(args, [Arg::Text("x".into()), Arg::Int(3)]);
    }
}
