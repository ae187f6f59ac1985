//! Project Wycheproof vectors (`tests/data/wycheproof/`, Apache-2.0, written by
//! others to catch real bugs) against the exact signature path tokens take:
//! JWK → `VerifyingKey` → verify, and for whole JWS: parse → key lookup → verify.

use std::collections::HashSet;

use casebook::auth::{
    Algorithm,
    jwk::{KeySet, VerifyingKey},
    token::UnverifiedToken,
};
use serde_json::{Value, json};

fn load(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/wycheproof/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The group's public key as a JWK; groups without one give the raw point.
fn group_jwk(group: &Value, curve: &str) -> Value {
    if let Some(jwk) = group.get("publicKeyJwk").or_else(|| group.get("keyJwk")) {
        return jwk.clone();
    }
    let point = hex(group["publicKey"]["uncompressed"].as_str().unwrap());
    let half = (point.len() - 1) / 2;
    json!({"kty": "EC", "crv": curve, "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])})
}

/// Runs a per-algorithm file; returns how many vectors were checked.
fn run_signature_file(file: &str, algorithm: Algorithm, curve: &str) -> usize {
    let data = load(file);
    let mut checked = 0;
    for group in data["testGroups"].as_array().unwrap() {
        let key = VerifyingKey::from_jwk_json(&group_jwk(group, curve));
        for test in group["tests"].as_array().unwrap() {
            let verdict = key.as_ref().is_ok_and(|key| {
                key.verify(
                    algorithm,
                    &hex(test["msg"].as_str().unwrap()),
                    &hex(test["sig"].as_str().unwrap()),
                )
            });
            match test["result"].as_str().unwrap() {
                "valid" => assert!(verdict, "{file} tcId {} must verify", test["tcId"]),
                "invalid" => assert!(!verdict, "{file} tcId {} must not verify", test["tcId"]),
                _ => {} // "acceptable": either verdict is allowed
            }
            checked += 1;
        }
    }
    checked
}

#[test]
fn ed25519_vectors() {
    assert_eq!(
        run_signature_file("ed25519_test.json", Algorithm::EdDsa, "Ed25519"),
        151
    );
}

#[test]
fn es256_vectors() {
    assert_eq!(
        run_signature_file(
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Algorithm::Es256,
            "P-256"
        ),
        262
    );
}

#[test]
fn es512_vectors() {
    assert_eq!(
        run_signature_file(
            "ecdsa_secp521r1_sha512_p1363_test.json",
            Algorithm::Es512,
            "P-521"
        ),
        318
    );
}

#[test]
fn rs256_vectors() {
    assert_eq!(
        run_signature_file("rsa_signature_2048_sha256_test.json", Algorithm::Rs256, ""),
        259
    );
}

#[test]
fn ps256_vectors() {
    assert_eq!(
        run_signature_file(
            "rsa_pss_2048_sha256_mgf1_32_test.json",
            Algorithm::Ps256,
            ""
        ),
        108
    );
}

/// Valid JWS vectors Casebook rejects on purpose, each for a stated reason.
const DELIBERATELY_REJECTED: [(u64, &str); 2] = [(347, ES521_KEY), (351, ES521_KEY)];
const ES521_KEY: &str = "RFC 7520 figure 27: the key declares \"alg\": \"ES521\" (not a JWS algorithm), so it is skipped: a JWK's alg must equal the token's ES512";

#[test]
fn json_web_signature_vectors() {
    let data = load("json_web_signature_test.json");
    let exceptions: HashSet<u64> = DELIBERATELY_REJECTED.iter().map(|(id, _)| *id).collect();
    let (mut accepted_valid, mut rejected_invalid) = (0, 0);
    for group in data["testGroups"].as_array().unwrap() {
        // Only public keys are ever loaded; HMAC groups publish none.
        let keys = KeySet::from_keys(
            group
                .get("public")
                .and_then(|jwk| VerifyingKey::from_jwk_json(jwk).ok()),
        );
        for test in group["tests"].as_array().unwrap() {
            let id = test["tcId"].as_u64().unwrap();
            let Some(jws) = test["jws"].as_str() else {
                // JSON serialization: not a compact token at all.
                assert_eq!(test["result"], "invalid");
                rejected_invalid += 1;
                continue;
            };
            let verdict =
                UnverifiedToken::parse(jws, 64 * 1024, &Algorithm::ALL).and_then(|token| {
                    let key = keys
                        .find(token.kid())
                        .ok_or(casebook::auth::AuthError::UnknownKey)?;
                    token.verify_signature(key)
                });
            let header_alg = jws
                .split('.')
                .next()
                .and_then(|h| {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(h)
                        .ok()
                })
                .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
                .and_then(|h| h["alg"].as_str().and_then(Algorithm::from_jose));
            match test["result"].as_str().unwrap() {
                "invalid" => {
                    assert!(
                        verdict.is_err(),
                        "tcId {id} ({}) must be rejected",
                        test["comment"]
                    );
                    rejected_invalid += 1;
                }
                "valid" if header_alg.is_some() && !exceptions.contains(&id) => {
                    assert!(
                        verdict.is_ok(),
                        "tcId {id} ({}) must be accepted: {verdict:?}",
                        test["comment"]
                    );
                    accepted_valid += 1;
                }
                // Valid under HS*, RS384, ... (never allowed here) or a listed exception.
                _ => assert!(
                    verdict.is_err(),
                    "tcId {id} uses an algorithm Casebook must refuse"
                ),
            }
        }
    }
    assert!(
        accepted_valid > 0 && rejected_invalid > 300,
        "{accepted_valid} valid, {rejected_invalid} invalid"
    );
}
