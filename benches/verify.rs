//! Cost of the token check per algorithm, against the raw signature primitive
//! measured in the same run. `cargo bench --bench verify` prints a markdown
//! table for docs/benchmarks.md. A benchmark, not a test: nothing here asserts.
//!
//! - raw: `VerifyingKey::verify` over the token's signing input (the crypto floor);
//! - warm: the full `TokenVerifier::verify` with the key set cached (parse,
//!   key lookup, signature, claims, principal);
//! - cold: the first verification of a fresh verifier, which includes fetching
//!   the JWKS over loopback HTTP.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use casebook::auth::{JwksCache, JwksCacheConfig, TokenVerifier, VerificationPolicy, jwk::KeySet};
use common::{ISSUER, Issuer, JwksServer, claims};

const ITERATIONS: u32 = 20_000;

fn per_call(elapsed: Duration, iterations: u32) -> f64 {
    elapsed.as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let issuer = Issuer::every_algorithm();
    let server = JwksServer::start(issuer.jwks()).await;
    let (keys, _) = KeySet::from_json(issuer.jwks().to_string().as_bytes()).unwrap();

    println!(
        "| algorithm | raw signature (µs) | full check, warm (µs) | warm / raw | first check incl. JWKS fetch (µs) |"
    );
    println!("|---|---|---|---|---|");
    for key in &issuer.keys {
        let token = key.sign(&claims("bench-user"));
        let (signing_input, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let verifying = keys.find(Some(key.kid())).unwrap();

        let cache = JwksCache::new(JwksCacheConfig::new(server.url())).unwrap();
        let verifier = TokenVerifier::new(cache, VerificationPolicy::for_issuer(ISSUER));
        let started = Instant::now();
        verifier.verify(&token).await.unwrap();
        let cold = started.elapsed();

        // Interleave rounds so machine noise hits both measurements alike.
        let (mut raw, mut warm) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..10 {
            let started = Instant::now();
            for _ in 0..ITERATIONS / 10 {
                assert!(verifying.verify(key.algorithm(), signing_input.as_bytes(), &signature));
            }
            raw += started.elapsed();
            let started = Instant::now();
            for _ in 0..ITERATIONS / 10 {
                verifier.verify(&token).await.unwrap();
            }
            warm += started.elapsed();
        }
        let (raw, warm) = (per_call(raw, ITERATIONS), per_call(warm, ITERATIONS));
        println!(
            "| {} | {raw:.1} | {warm:.1} | {:.2}x | {:.0} |",
            key.algorithm(),
            warm / raw,
            per_call(cold, 1)
        );
    }
}
