//! Better Auth's users, read-only: the `"user"` table as Better Auth creates it.
//!
//! Better Auth owns this table (camelCase, quoted names; text ids). Casebook
//! only ever selects from it.

use chrono::{DateTime, Utc};

use super::{Database, sql::Sql};
use crate::auth::UserId;

/// Better Auth's user table, quoted because `user` is reserved in PostgreSQL.
pub const USER_TABLE: &str = "user";

/// One row of Better Auth's `"user"` table.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRecord {
    /// Better Auth's id (a token's `sub`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Whether Better Auth verified the address.
    #[sqlx(rename = "emailVerified")]
    pub email_verified: bool,
    /// Avatar URL.
    pub image: Option<String>,
    /// Sign-up time.
    #[sqlx(rename = "createdAt")]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[sqlx(rename = "updatedAt")]
    pub updated_at: DateTime<Utc>,
}

static FIND_USER: Sql = Sql::new(
    r#"SELECT "id", "name", "email", "emailVerified", "image", "createdAt", "updatedAt" FROM "user" WHERE "id" = $1"#,
);

/// Why Better Auth's tables cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The table is absent: Better Auth's migrations have not run on this database.
    #[error(
        "Better Auth's \"user\" table is missing in DATABASE_URL ({backend}); run Better Auth's migrations against this database first"
    )]
    MissingUserTable {
        /// Which back end was checked.
        backend: &'static str,
    },
    /// The check itself failed.
    #[error("cannot inspect the database: {0}")]
    Query(#[from] sqlx::Error),
}

/// Looks Better Auth users up by id.
#[derive(Clone, Debug)]
pub struct UserDirectory {
    db: Database,
}

impl UserDirectory {
    /// A directory over `db`, after checking Better Auth's table is there.
    pub async fn open(db: Database) -> Result<Self, SchemaError> {
        if !db.has_table(USER_TABLE).await? {
            return Err(SchemaError::MissingUserTable {
                backend: db.backend(),
            });
        }
        Ok(Self { db })
    }

    /// The user with `id`, if Better Auth still has one.
    pub async fn find(&self, id: &UserId) -> Result<Option<UserRecord>, sqlx::Error> {
        let mut connection = self.db.acquire().await?;
        crate::sql!(
            connection.executor(),
            FIND_USER,
            [id.as_str()],
            query_as,
            fetch_optional
        )
    }
}
