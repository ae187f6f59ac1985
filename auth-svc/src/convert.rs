//! From the library's types to the `casebook.auth.v1` messages.

use casebook::{
    auth::Principal,
    db::users::UserRecord,
    pb::casebook::auth::v1 as pb,
    wkt::{json_struct, timestamp, unix_timestamp},
};

/// The wire form of a verified principal.
pub fn principal(principal: &Principal) -> pb::Principal {
    pb::Principal {
        user_id: principal.user_id.to_string(),
        issuer: principal.issuer.clone(),
        audiences: principal.audiences.clone(),
        issue_time: principal.issued_at.map(unix_timestamp),
        expire_time: Some(unix_timestamp(principal.expires_at)),
        key_id: principal.key_id.clone().unwrap_or_default(),
        algorithm: principal.algorithm.as_str().to_owned(),
        claims: Some(json_struct(&principal.claims)),
    }
}

/// The wire form of a Better Auth user.
pub fn user(record: UserRecord) -> pb::User {
    pb::User {
        name: format!("users/{}", record.id),
        id: record.id,
        display_name: record.name,
        email: record.email,
        email_verified: record.email_verified,
        image: record.image.unwrap_or_default(),
        create_time: Some(timestamp(record.created_at)),
        update_time: Some(timestamp(record.updated_at)),
    }
}
