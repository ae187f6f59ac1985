//! The JWKS cache against a real HTTP endpoint that counts its requests:
//! caching, rotation, floods of unknown kids, outages, slowness, garbage.

mod common;

use std::time::Duration;

use casebook::auth::{
    Algorithm, AuthError, JwksCache, JwksCacheConfig, TokenVerifier, VerificationPolicy,
    issuer::{self, SigningKey},
    jwk::KeySet,
};
use common::{Behaviour, ISSUER, JwksServer, claims, eventually};
use serde_json::json;

fn config(server: &JwksServer) -> JwksCacheConfig {
    JwksCacheConfig {
        fetch_timeout: Duration::from_millis(500),
        ..JwksCacheConfig::new(server.url())
    }
}

fn verifier(config: JwksCacheConfig) -> TokenVerifier {
    let cache = JwksCache::new(config).unwrap();
    cache.start();
    TokenVerifier::new(cache, VerificationPolicy::for_issuer(ISSUER))
}

/// A JWKS server publishing `keys` and a started verifier that has loaded them.
async fn loaded(keys: &[&SigningKey]) -> (JwksServer, TokenVerifier) {
    let server = JwksServer::start(issuer::jwks(keys.iter().copied())).await;
    let verifier = verifier(config(&server));
    verifier.keys().wait_until_loaded().await;
    (server, verifier)
}

fn key(kid: &str) -> SigningKey {
    SigningKey::generate(Algorithm::EdDsa, kid).unwrap()
}

#[tokio::test]
async fn keys_are_fetched_once_and_then_served_from_memory() {
    let signer = key("k1");
    let (server, verifier) = loaded(&[&signer]).await;
    for _ in 0..200 {
        verifier.verify(&signer.sign(&claims("u"))).await.unwrap();
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_newly_published_key_is_accepted_after_one_refetch() {
    let old = key("old");
    let (server, verifier) = loaded(&[&old]).await;

    let new = key("new");
    server.publish(issuer::jwks([&old, &new]));
    let principal = verifier.verify(&new.sign(&claims("u"))).await.unwrap();
    assert_eq!(principal.key_id.as_deref(), Some("new"));
    assert_eq!(server.hits(), 2, "exactly one refetch for the new kid");
}

#[tokio::test]
async fn a_key_published_just_after_an_unknown_kid_fetch_is_retry_later_not_unknown() {
    let known = key("known");
    let (server, verifier) = loaded(&[&known]).await;
    // An unknown kid spends the on-demand fetch: a fetch that lacks it.
    let stranger = key("stranger").sign(&claims("u"));
    assert_eq!(verifier.verify(&stranger).await, Err(AuthError::UnknownKey));
    let hits = server.hits();

    // Better Auth rotates a moment later; the cooldown forbids a fetch now.
    let rotated = key("rotated");
    server.publish(issuer::jwks([&known, &rotated]));
    let token = rotated.sign(&claims("u"));
    match verifier.verify(&token).await {
        Err(error @ AuthError::KeyNotFetchedYet { retry_after }) => {
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(30));
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::Unavailable);
            let retry = tonic_types::StatusExt::get_details_retry_info(&status)
                .and_then(|info| info.retry_delay);
            assert_eq!(retry, Some(retry_after), "RetryInfo says when");
        }
        other => panic!("a valid token must not be told not to retry: {other:?}"),
    }
    assert_eq!(server.hits(), hits, "no fetch within the cooldown");

    // The next fetch (here the background one) brings the key in.
    verifier.keys().refresh().await.unwrap();
    verifier.verify(&token).await.unwrap();
}

#[tokio::test]
async fn a_removed_key_stops_verifying_after_the_next_refresh() {
    let old = key("old");
    let new = key("new");
    let (server, verifier) = loaded(&[&old, &new]).await;
    let token = old.sign(&claims("u"));
    verifier.verify(&token).await.unwrap();

    server.publish(issuer::jwks([&new]));
    verifier.keys().refresh().await.unwrap();
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_at_most_one_fetch() {
    let known = key("known");
    let (server, verifier) = loaded(&[&known]).await;
    let before = server.hits();

    let forger = key("forger");
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let verifier = verifier.clone();
            let header = json!({"alg": "EdDSA", "kid": format!("random-{i}")});
            let token = forger.sign_parts(
                header.to_string().as_bytes(),
                claims("u").to_string().as_bytes(),
            );
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        // Joined the one fetch and it lacked the kid, or came after it
        // within the cooldown: "retry later".
        match task.await.unwrap() {
            Err(AuthError::UnknownKey | AuthError::KeyNotFetchedYet { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        server.hits() - before <= 1,
        "{} fetches for 1000 unknown kids",
        server.hits() - before
    );
    // Known keys keep working throughout.
    verifier.verify(&known.sign(&claims("u"))).await.unwrap();
}

#[tokio::test]
async fn stale_keys_serve_through_an_outage_then_become_unavailable_then_recover() {
    let signer = key("k1");
    let server = JwksServer::start(issuer::jwks([&signer])).await;
    let verifier = verifier(JwksCacheConfig {
        ttl: Duration::from_millis(300),
        max_stale: Duration::from_millis(1200),
        refetch_cooldown: Duration::ZERO,
        ..config(&server)
    });
    verifier.keys().wait_until_loaded().await;
    let token = signer.sign(&claims("u"));

    server.behave(Behaviour::Status(500));
    tokio::time::sleep(Duration::from_millis(600)).await; // fresh window over, stale window not
    verifier
        .verify(&token)
        .await
        .expect("stale keys keep verifying");
    assert!(
        verifier.keys().stats().failed >= 1,
        "the refresher kept trying"
    );

    let unavailable = eventually(Duration::from_secs(5), async || {
        verifier.verify(&token).await == Err(AuthError::JwksUnavailable)
    })
    .await;
    assert!(unavailable, "keys past the stale window must not verify");

    server.behave(Behaviour::Serve);
    let recovered = eventually(Duration::from_secs(10), async || {
        verifier.verify(&token).await.is_ok()
    })
    .await;
    assert!(recovered, "verification resumes once the endpoint is back");
}

#[tokio::test]
async fn a_slow_endpoint_costs_a_caller_at_most_the_fetch_timeout() {
    let signer = key("k1");
    let server = JwksServer::start(issuer::jwks([&signer])).await;
    server.behave(Behaviour::Slow(Duration::from_secs(10)));
    let cache = JwksCache::new(config(&server)).unwrap();
    let verifier = TokenVerifier::new(cache, VerificationPolicy::for_issuer(ISSUER));
    let started = tokio::time::Instant::now();
    let result = verifier.verify(&signer.sign(&claims("u"))).await;
    assert_eq!(result, Err(AuthError::JwksUnavailable));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn garbage_errors_and_hangups_keep_the_last_good_keys() {
    let signer = key("k1");
    let (server, verifier) = loaded(&[&signer]).await;
    let token = signer.sign(&claims("u"));
    for behaviour in [Behaviour::Garbage, Behaviour::Status(404), Behaviour::Hang] {
        server.behave(behaviour.clone());
        assert!(
            verifier.keys().refresh().await.is_err(),
            "{behaviour:?} must fail the fetch"
        );
        verifier.verify(&token).await.unwrap();
    }
    server.publish(json!({"keys": []}));
    server.behave(Behaviour::Serve);
    assert!(
        verifier.keys().refresh().await.is_err(),
        "an empty set is a failed fetch"
    );
    verifier.verify(&token).await.unwrap();
    assert_eq!(verifier.keys().stats().failed, 4);
}

#[tokio::test]
async fn cache_control_max_age_overrides_the_ttl() {
    let signer = key("k1");
    let server = JwksServer::start(issuer::jwks([&signer])).await;
    server.set_cache_control(Some("public, max-age=1"));
    let verifier = verifier(config(&server)); // default TTL: 10 minutes
    verifier.keys().wait_until_loaded().await;
    let refetched = eventually(Duration::from_secs(5), async || server.hits() >= 3).await;
    assert!(
        refetched,
        "max-age=1 should refresh about every second, got {} fetches",
        server.hits()
    );
}

#[tokio::test]
async fn the_service_starts_while_the_jwks_is_down_and_loads_when_it_returns() {
    let signer = key("k1");
    let server = JwksServer::start(issuer::jwks([&signer])).await;
    server.behave(Behaviour::Status(503));
    let verifier = verifier(config(&server));
    assert_eq!(verifier.keys().key_count(), 0);
    server.behave(Behaviour::Serve);
    tokio::time::timeout(Duration::from_secs(10), verifier.keys().wait_until_loaded())
        .await
        .expect("the refresher retries until the JWKS is back");
    verifier.verify(&signer.sign(&claims("u"))).await.unwrap();
}

#[test]
fn unusable_keys_are_skipped_and_the_rest_kept() {
    let good = key("good");
    let twin_a = key("twin");
    let twin_b = key("twin");
    let mut small_rsa = SigningKey::generate(Algorithm::Rs256, "small")
        .unwrap()
        .public_jwk();
    // A 1024-bit modulus (top bit set): too weak to trust.
    small_rsa["n"] = json!(base64_url(&[0xC0; 128]));
    let mut off_curve = SigningKey::generate(Algorithm::Es256, "off-curve")
        .unwrap()
        .public_jwk();
    off_curve["y"] = json!(base64_url(&[0x01; 32]));
    let document = json!({"keys": [
        good.public_jwk(),
        twin_a.public_jwk(),
        twin_b.public_jwk(),
        small_rsa,
        off_curve,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
        {"kty": "OKP", "kid": "enc", "crv": "Ed25519", "use": "enc", "x": good.public_jwk()["x"]},
        {"kty": "OKP", "kid": "hs-declared", "alg": "HS256", "crv": "Ed25519", "x": good.public_jwk()["x"]},
        {"kty": "OKP", "kid": "wrong-alg", "alg": "ES256", "crv": "Ed25519", "x": good.public_jwk()["x"]},
        "not even an object",
    ]});
    let (keys, skipped) = KeySet::from_json(document.to_string().as_bytes()).unwrap();
    assert_eq!(keys.len(), 1);
    assert!(keys.find(Some("good")).is_some());
    let skipped_kids: Vec<_> = skipped
        .iter()
        .map(|s| s.kid.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        skipped_kids,
        [
            "twin",
            "twin",
            "small",
            "off-curve",
            "hmac",
            "p384",
            "enc",
            "hs-declared",
            "wrong-alg",
            ""
        ]
    );
    for skip in &skipped {
        assert!(
            !skip.reason.contains("c2VjcmV0"),
            "reasons never quote key material"
        );
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_token_verified_once_is_served_from_the_cache() {
    let signer = key("k1");
    let (_server, verifier) = loaded(&[&signer]).await;
    let token = signer.sign(&claims("u"));
    let first = verifier.verify(&token).await.unwrap();
    let again = verifier.verify(&token).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "the second answer is the cached principal"
    );
    verifier
        .verify(&signer.sign(&claims("other")))
        .await
        .unwrap();
    let stats = verifier.cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 2));
}

#[tokio::test]
async fn a_cached_token_stops_verifying_when_its_key_leaves_the_jwks() {
    let old = key("old");
    let new = key("new");
    let (server, verifier) = loaded(&[&old, &new]).await;
    let token = old.sign(&claims("u"));
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    server.publish(issuer::jwks([&new]));
    verifier.keys().refresh().await.unwrap();
    assert_eq!(verifier.verify(&token).await, Err(AuthError::UnknownKey));
}

#[tokio::test]
async fn a_cached_token_expires_with_its_exp() {
    let signer = key("k1");
    let server = JwksServer::start(issuer::jwks([&signer])).await;
    let mut policy = VerificationPolicy::for_issuer(ISSUER);
    policy.claims.leeway = Duration::ZERO;
    let cache = JwksCache::new(config(&server)).unwrap();
    cache.start();
    let verifier = TokenVerifier::new(cache, policy);
    let mut short = claims("u");
    short["exp"] = json!(common::now() + 1);
    let token = signer.sign(&short);
    verifier.verify(&token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(verifier.verify(&token).await, Err(AuthError::TokenExpired));
}
