//! Rows to `casebook.cases.v1.Case` messages.

use casebook::{
    pb::casebook::cases::v1::{
        Case,
        case::{Status, Type},
    },
    wkt::timestamp,
};

use crate::{resource::Etag, store::CaseRow};

/// The wire form of a stored case.
pub fn case(row: CaseRow) -> Case {
    Case {
        name: format!("cases/{}", row.id),
        title: row.title,
        description: row.description,
        status: Status::from_str_name(&row.status).unwrap_or(Status::Unspecified) as i32,
        r#type: Type::from_str_name(&row.kind).unwrap_or(Type::Unspecified) as i32,
        owner: format!("users/{}", row.user_id),
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        delete_time: row.deleted_at.map(timestamp),
        purge_time: row.purge_at.map(timestamp),
        etag: Etag(row.version).to_wire(),
    }
}
