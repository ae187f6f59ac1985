//! Better Auth's tables, for development only: created in Better Auth's own
//! shape when missing, and users added the way Better Auth adds them.
//!
//! The services never write these tables; the development stack does, because
//! on a laptop there is no Better Auth to do it.

use casebook::db::{Database, Pool};

const SQLITE_SCHEMA: &str = include_str!("../better-auth/schema.sqlite.sql");
const POSTGRES_SCHEMA: &str = include_str!("../better-auth/schema.postgres.sql");

/// The columns of a user the stack needs.
#[derive(Clone, Debug)]
pub struct UserRow {
    /// Better Auth's id (32 alphanumeric characters).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
}

/// Creates Better Auth's tables unless they exist.
pub async fn ensure_schema(db: &Database) -> Result<(), sqlx::Error> {
    if db.has_table(casebook::db::users::USER_TABLE).await? {
        return Ok(());
    }
    tracing::info!(
        backend = db.backend(),
        "creating Better Auth's tables for development"
    );
    // The DDL is a fixed file of this repository, never built from input.
    match db.pool() {
        Pool::Postgres(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(POSTGRES_SCHEMA))
                .execute(pool)
                .await?;
        }
        Pool::Sqlite(pool) => {
            sqlx::raw_sql(sqlx::AssertSqlSafe(SQLITE_SCHEMA))
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// The user with `email`, created (with `name`) if there is none.
pub async fn ensure_user(db: &Database, email: &str, name: &str) -> Result<UserRow, sqlx::Error> {
    const FIND: &str = r#"SELECT "id", "name", "email" FROM "user" WHERE "email" = $1"#;
    let found: Option<(String, String, String)> = match db.pool() {
        Pool::Postgres(pool) => {
            sqlx::query_as(FIND)
                .bind(email)
                .fetch_optional(pool)
                .await?
        }
        Pool::Sqlite(pool) => {
            sqlx::query_as(FIND)
                .bind(email)
                .fetch_optional(pool)
                .await?
        }
    };
    if let Some((id, name, email)) = found {
        return Ok(UserRow { id, name, email });
    }
    let user = UserRow {
        id: better_auth_id(),
        name: name.to_owned(),
        email: email.to_owned(),
    };
    let now = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    // Timestamps as Better Auth writes them: ISO-8601 text on SQLite, timestamptz on PostgreSQL.
    match db.pool() {
        Pool::Postgres(pool) => {
            sqlx::query(r#"INSERT INTO "user" ("id", "name", "email", "emailVerified", "createdAt", "updatedAt") VALUES ($1, $2, $3, true, $4::timestamptz, $4::timestamptz)"#)
                .bind(&user.id).bind(&user.name).bind(&user.email).bind(&now)
                .execute(pool).await?;
        }
        Pool::Sqlite(pool) => {
            sqlx::query(r#"INSERT INTO "user" ("id", "name", "email", "emailVerified", "createdAt", "updatedAt") VALUES (?1, ?2, ?3, 1, ?4, ?4)"#)
                .bind(&user.id).bind(&user.name).bind(&user.email).bind(&now)
                .execute(pool).await?;
        }
    }
    Ok(user)
}

/// A random id in Better Auth's format: 32 alphanumeric characters.
fn better_auth_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 32];
    // The system RNG does not fail on supported platforms; zeros would only
    // make a predictable development id.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}
