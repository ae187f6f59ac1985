//! Claim checks on a payload whose signature has already been verified.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{AuthError, Principal, UserId, jwk::VerifyingKey, token::UnverifiedToken};

/// What the claims must satisfy.
#[derive(Clone, Debug)]
pub struct ClaimRules {
    /// The only accepted `iss`, compared exactly.
    pub issuer: String,
    /// `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Tolerated clock difference for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

/// How deeply the other claims may nest. They are handed on (VerifyToken
/// returns them as a `google.protobuf.Struct`, two protobuf levels per JSON
/// level) and protobuf decoders stop at 100 levels, so deeper claims would
/// make a response its clients cannot read. serde_json itself stops at 128.
pub const MAX_CLAIM_DEPTH: usize = 32;

/// Registered claims reported in their own [`Principal`] fields.
const REGISTERED: [&str; 6] = ["iss", "sub", "aud", "exp", "nbf", "iat"];

/// Validates `payload` at `now` (Unix seconds) and builds the principal.
pub fn validate(
    payload: &[u8],
    token: &UnverifiedToken<'_>,
    key: &VerifyingKey,
    rules: &ClaimRules,
    now: i64,
) -> Result<Principal, AuthError> {
    let mut claims: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|_| AuthError::MalformedToken("payload is not a JSON object"))?;
    let leeway = i64::try_from(rules.leeway.as_secs()).unwrap_or(i64::MAX);

    let expires_at = numeric_date(&claims, "exp")?.ok_or(AuthError::MissingClaim("exp"))?;
    if expires_at.saturating_add(leeway) <= now {
        return Err(AuthError::TokenExpired);
    }
    let not_before = numeric_date(&claims, "nbf")?;
    let issued_at = numeric_date(&claims, "iat")?;
    if [not_before, issued_at]
        .into_iter()
        .flatten()
        .any(|t| t > now.saturating_add(leeway))
    {
        return Err(AuthError::TokenNotYetValid);
    }

    match claims.get("iss") {
        None => return Err(AuthError::MissingClaim("iss")),
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::InvalidIssuer),
        Some(_) => return Err(AuthError::InvalidClaim("iss")),
    }
    let audiences = match claims.get("aud") {
        None => return Err(AuthError::MissingClaim("aud")),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(AuthError::InvalidClaim("aud"))?,
        Some(_) => return Err(AuthError::InvalidClaim("aud")),
    };
    if !audiences.iter().any(|a| rules.audiences.contains(a)) {
        return Err(AuthError::InvalidAudience);
    }
    let user_id = match claims.get("sub") {
        None => return Err(AuthError::MissingClaim("sub")),
        Some(Value::String(sub)) if !sub.is_empty() => UserId::new(sub.clone()),
        Some(_) => return Err(AuthError::InvalidClaim("sub")),
    };

    claims.retain(|name, _| !REGISTERED.contains(&name.as_str()));
    if claims.values().any(|value| depth(value) > MAX_CLAIM_DEPTH) {
        return Err(AuthError::MalformedToken(
            "claims nest more than 32 levels deep",
        ));
    }
    Ok(Principal {
        user_id,
        issuer: rules.issuer.clone(),
        audiences,
        issued_at,
        expires_at,
        key_id: key.kid().map(str::to_owned),
        algorithm: token.algorithm(),
        claims,
    })
}

/// How many arrays or objects deep `value` goes (a scalar is 0). Iterative,
/// so no input can exhaust the stack here.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0)];
    while let Some((value, level)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        pending.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds, possibly
/// fractional; fractions are truncated towards the past.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(AuthError::InvalidClaim(name)),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_containers_not_scalars() {
        assert_eq!(depth(&serde_json::json!("text")), 0);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        // Built directly: `json!` would serialize the inner value again at every level.
        let deep = (0..10_000).fold(serde_json::json!(1), |inner, _| Value::Array(vec![inner]));
        assert_eq!(depth(&deep), 10_000, "iterative: no stack overflow");
        // serde_json's recursive Drop would overflow on this value; unwind it by hand.
        let mut value = deep;
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }
}
