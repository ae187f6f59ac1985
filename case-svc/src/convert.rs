//! Stored rows to `casebook.cases.v1.Case` messages.

use casebook::{
    pb::casebook::cases::v1::{
        Case,
        case::{Status, Type},
    },
    wkt::timestamp,
};

use crate::{error::CaseError, resource::Etag, store::CaseRow};

/// The wire form of a stored case. A status or type this version does not
/// know is an error, never an `*_UNSPECIFIED` the client would store back.
impl TryFrom<CaseRow> for Case {
    type Error = CaseError;

    fn try_from(row: CaseRow) -> Result<Self, CaseError> {
        let status = Status::from_str_name(&row.status)
            .ok_or_else(|| CaseError::CorruptRow(format!("case status {:?}", row.status)))?;
        let kind = Type::from_str_name(&row.kind)
            .ok_or_else(|| CaseError::CorruptRow(format!("case type {:?}", row.kind)))?;
        Ok(Case {
            name: format!("cases/{}", row.id),
            title: row.title,
            description: row.description,
            status: status as i32,
            r#type: kind as i32,
            owner: format!("users/{}", row.user_id),
            create_time: Some(timestamp(row.created_at)),
            update_time: Some(timestamp(row.updated_at)),
            delete_time: row.deleted_at.map(timestamp),
            purge_time: row.purge_at.map(timestamp),
            etag: Etag(row.version).to_wire(),
        })
    }
}
