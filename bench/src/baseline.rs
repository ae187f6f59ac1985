//! The ceilings the scenarios are judged against, measured in the same run:
//! the database (GetCase's SQL straight through sqlx at the same concurrency)
//! and the crypto (the raw Ed25519 verify of a real token, one core).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use casebook::{
    auth::{Algorithm, issuer::SigningKey, jwk::KeySet},
    db::{Database, Pool},
};

use crate::{
    closed_loop::{self, Worker},
    load::Fixture,
    stats::Recorder,
};

/// GetCase's query, exactly as case-svc sends it on PostgreSQL.
const GET_CASE: &str = "SELECT id::text AS id, user_id, title, description, status::text AS status, type::text AS type, version, created_at, updated_at, deleted_at, purge_at FROM cases WHERE id = $1::uuid AND user_id = $2";

/// The database ceiling: GetCase's SQL from `concurrency` tasks for `duration`.
pub async fn database(
    db: &Database,
    fixture: Arc<Fixture>,
    user_ids: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let Pool::Postgres(pool) = db.pool() else {
        anyhow::bail!("the database baseline is defined for PostgreSQL");
    };
    let workers = (0..concurrency.max(1)).map(|worker| SqlWorker {
        pool: pool.clone(),
        fixture: Arc::clone(&fixture),
        user_ids: Arc::clone(&user_ids),
        i: worker,
    });
    closed_loop::run(workers, duration).await
}

/// A worker sending GetCase's SQL for cases picked by a cheap sequence.
struct SqlWorker {
    pool: sqlx::PgPool,
    fixture: Arc<Fixture>,
    user_ids: Arc<Vec<String>>,
    i: usize,
}

impl Worker for SqlWorker {
    async fn call(&mut self) -> Result<(), tonic::Code> {
        self.i = self.i.wrapping_mul(31).wrapping_add(7);
        let user = self.i % self.fixture.users.len().max(1);
        let names = &self.fixture.users[user].1;
        let id = names[self.i % names.len().max(1)].trim_start_matches("cases/");
        sqlx::query(GET_CASE)
            .bind(id)
            .bind(&self.user_ids[user])
            .fetch_optional(&self.pool)
            .await
            .map(drop)
            .map_err(|_| tonic::Code::Unavailable)
    }
}

/// The crypto ceiling: raw Ed25519 verifications per second on one core.
pub fn eddsa_verifies_per_second(duration: Duration) -> anyhow::Result<f64> {
    let key = SigningKey::generate(Algorithm::EdDsa, "k")?;
    let token = key.sign(&serde_json::json!({"sub": "u", "exp": 4_000_000_000_u64}));
    let (keys, _) = KeySet::from_json(casebook::auth::issuer::jwks([&key]).to_string().as_bytes())?;
    let verifying = keys
        .find(Some("k"))
        .ok_or_else(|| anyhow::anyhow!("key missing"))?;
    let (input, signature) = token
        .rsplit_once('.')
        .ok_or_else(|| anyhow::anyhow!("not a JWS"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature)?;
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        for _ in 0..100 {
            count += u64::from(verifying.verify(Algorithm::EdDsa, input.as_bytes(), &signature));
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
