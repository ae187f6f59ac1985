//! The `CaseService` handlers: parse the request, call the store, map the outcome.

use std::{sync::Arc, time::Duration};

use casebook::{
    auth::{Principal, UserId},
    pb::casebook::cases::v1::{
        Case, CreateCaseRequest, DeleteCaseRequest, GetCaseRequest, ListCasesRequest,
        ListCasesResponse, UndeleteCaseRequest, UpdateCaseRequest, case::Status,
        case_service_server::CaseService,
    },
    rpc_error,
};
use tonic::{Code, Request, Response, Status as RpcStatus};

use crate::{
    convert,
    list_query::{Filter, Order, PageTokens},
    resource::{
        CaseId, Description, Etag, MAX_REQUEST_ID_CHARS, Title, Violations, parse_status,
        parse_type,
    },
    store::{CasePatch, CaseStore, NewCase, StoreError, Write},
};

/// Default and maximum `page_size` (AIP-158).
const DEFAULT_PAGE_SIZE: i32 = 20;
const MAX_PAGE_SIZE: i32 = 100;

/// Fields a client may name in `update_mask`.
const MUTABLE_FIELDS: [&str; 4] = ["title", "description", "status", "type"];
/// Fields the server owns.
const OUTPUT_ONLY_FIELDS: [&str; 7] = [
    "name",
    "owner",
    "create_time",
    "update_time",
    "delete_time",
    "purge_time",
    "etag",
];

/// `casebook.cases.v1.CaseService`.
pub struct CaseApi {
    store: Arc<CaseStore>,
    page_tokens: PageTokens,
    retention: Duration,
}

impl CaseApi {
    /// Handlers over `store`; deleted cases are kept for `retention`.
    pub fn new(store: Arc<CaseStore>, page_tokens: PageTokens, retention: Duration) -> Self {
        Self {
            store,
            page_tokens,
            retention,
        }
    }
}

fn owner<T>(request: &Request<T>) -> Result<UserId, RpcStatus> {
    Ok(Principal::of(request)?.user_id.clone())
}

fn not_found(id: CaseId) -> RpcStatus {
    rpc_error::with_reason(
        Code::NotFound,
        "CASE_NOT_FOUND",
        format!("{} does not exist", id.name()),
    )
}

fn conflict(id: CaseId) -> RpcStatus {
    rpc_error::with_reason(
        Code::Aborted,
        "ETAG_MISMATCH",
        format!(
            "{} changed since it was read; read it again and retry",
            id.name()
        ),
    )
}

fn store_error(error: StoreError) -> RpcStatus {
    match error {
        StoreError::UnknownOwner => rpc_error::with_reason(
            Code::NotFound,
            "USER_NOT_FOUND",
            "your user no longer exists; sign in again",
        ),
        StoreError::Database(error) => {
            tracing::error!(%error, "case store failed");
            rpc_error::database(&error, "the case store")
        }
    }
}

fn name_of(text: &str, field: &str) -> Result<CaseId, RpcStatus> {
    CaseId::parse_name(text, field).map_err(|v| rpc_error::invalid_argument(vec![v]))
}

fn etag_of(text: &str, field: &str) -> Result<Option<i64>, RpcStatus> {
    Etag::parse_optional(text, field)
        .map(|etag| etag.map(|e| e.0))
        .map_err(|v| rpc_error::invalid_argument(vec![v]))
}

/// A value the `Violations` check guarantees; its absence is a server bug.
fn checked<T>(value: Option<T>) -> Result<T, RpcStatus> {
    value.ok_or_else(|| RpcStatus::internal("validation state lost"))
}

#[tonic::async_trait]
impl CaseService for CaseApi {
    async fn create_case(
        &self,
        request: Request<CreateCaseRequest>,
    ) -> Result<Response<Case>, RpcStatus> {
        let owner = owner(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let Some(case) = request.case else {
            violations.add("case", "required: the case to create");
            violations.finish()?;
            return Err(RpcStatus::internal("unreachable"));
        };
        let title = violations.check(Title::parse(&case.title, "case.title"));
        let description =
            violations.check(Description::parse(&case.description, "case.description"));
        let status = if case.status == Status::Unspecified as i32 {
            Some(Status::Open)
        } else {
            violations.check(parse_status(case.status, "case.status"))
        };
        let kind = violations.check(parse_type(case.r#type, "case.type"));
        let request_id = request.request_id.as_str();
        if request_id.chars().count() > MAX_REQUEST_ID_CHARS
            || request_id.chars().any(char::is_control)
        {
            violations.add(
                "request_id",
                format!(
                    "at most {MAX_REQUEST_ID_CHARS} printable characters (a UUID is recommended)"
                ),
            );
        }
        violations.finish()?;
        let new = NewCase {
            title: checked(title)?,
            description: checked(description)?,
            status: checked(status)?,
            kind: checked(kind)?,
        };
        let request_id = (!request_id.is_empty()).then_some(request_id);
        let row = self
            .store
            .create(&owner, &new, request_id)
            .await
            .map_err(store_error)?;
        Ok(Response::new(convert::case(row)))
    }

    async fn get_case(
        &self,
        request: Request<GetCaseRequest>,
    ) -> Result<Response<Case>, RpcStatus> {
        let owner = owner(&request)?;
        let id = name_of(&request.get_ref().name, "name")?;
        match self.store.get(&owner, id).await.map_err(store_error)? {
            Some(row) => Ok(Response::new(convert::case(row))),
            None => Err(not_found(id)),
        }
    }

    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, RpcStatus> {
        let owner = owner(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page_size = match request.page_size {
            size if size < 0 => {
                violations.add("page_size", "must not be negative");
                0
            }
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let filter = violations.check(
            Filter::parse(&request.filter)
                .map_err(|e| tonic_types::FieldViolation::new("filter", e)),
        );
        let order = violations.check(
            Order::parse(&request.order_by)
                .map_err(|e| tonic_types::FieldViolation::new("order_by", e)),
        );
        violations.finish()?;
        let (filter, order) = (checked(filter)?, checked(order)?);
        let query = format!(
            "{}|{}|{}",
            filter.canonical(),
            order.canonical(),
            request.show_deleted
        );
        let cursor = match request.page_token.as_str() {
            "" => None,
            token => Some(
                self.page_tokens
                    .open(owner.as_str(), &query, token)
                    .map_err(|e| rpc_error::invalid_field("page_token", e.to_string()))?,
            ),
        };
        let mut rows = self
            .store
            .list(
                &owner,
                filter,
                order,
                request.show_deleted,
                cursor.as_ref(),
                i64::from(page_size) + 1,
            )
            .await
            .map_err(store_error)?;
        let next_page_token = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|last| {
                    self.page_tokens
                        .issue(owner.as_str(), &query, last.cursor(order.field))
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListCasesResponse {
            cases: rows.into_iter().map(convert::case).collect(),
            next_page_token,
        }))
    }

    async fn update_case(
        &self,
        request: Request<UpdateCaseRequest>,
    ) -> Result<Response<Case>, RpcStatus> {
        let owner = owner(&request)?;
        let request = request.into_inner();
        let Some(case) = request.case else {
            return Err(rpc_error::invalid_field(
                "case",
                "required: the case with its new values",
            ));
        };
        let id = name_of(&case.name, "case.name")?;
        let expected = etag_of(&case.etag, "case.etag")?;
        let mut paths: Vec<String> = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            // AIP-134: no mask means every field the client populated.
            let populated = [
                !case.title.is_empty(),
                !case.description.is_empty(),
                case.status != 0,
                case.r#type != 0,
            ];
            paths = MUTABLE_FIELDS
                .iter()
                .zip(populated)
                .filter(|(_, set)| *set)
                .map(|(field, _)| (*field).to_owned())
                .collect();
        }
        let mut violations = Violations::default();
        if paths.is_empty() {
            violations.add("update_mask", "nothing to update: name a field or set one");
        }
        let mut patch = CasePatch::default();
        for path in &paths {
            let named = [path.as_str()];
            let fields: &[&str] = if path == "*" { &MUTABLE_FIELDS } else { &named };
            for field in fields {
                match *field {
                    "title" => {
                        patch.title = violations.check(Title::parse(&case.title, "case.title"))
                    }
                    "description" => {
                        patch.description = violations
                            .check(Description::parse(&case.description, "case.description"));
                    }
                    "status" => {
                        patch.status = violations.check(parse_status(case.status, "case.status"))
                    }
                    "type" => patch.kind = violations.check(parse_type(case.r#type, "case.type")),
                    other if OUTPUT_ONLY_FIELDS.contains(&other) => {
                        violations.add("update_mask", format!("{other} is output only"));
                    }
                    other => violations.add(
                        "update_mask",
                        format!(
                            "unknown field {:?}; updatable: title, description, status, type",
                            other
                        ),
                    ),
                }
            }
        }
        violations.finish()?;
        match self
            .store
            .update(&owner, id, expected, &patch)
            .await
            .map_err(store_error)?
        {
            Write::Done(row) => Ok(Response::new(convert::case(row))),
            Write::NotFound => Err(not_found(id)),
            Write::Conflict => Err(conflict(id)),
            Write::WrongState(_) => Err(rpc_error::with_reason(
                Code::FailedPrecondition,
                "CASE_DELETED",
                format!("{} is deleted; undelete it before updating", id.name()),
            )),
        }
    }

    async fn delete_case(
        &self,
        request: Request<DeleteCaseRequest>,
    ) -> Result<Response<Case>, RpcStatus> {
        let owner = owner(&request)?;
        let request = request.into_inner();
        let id = name_of(&request.name, "name")?;
        let expected = etag_of(&request.etag, "etag")?;
        match self
            .store
            .delete(&owner, id, expected, self.retention)
            .await
            .map_err(store_error)?
        {
            Write::Done(row) => Ok(Response::new(convert::case(row))),
            Write::Conflict => Err(conflict(id)),
            Write::WrongState(row) if request.allow_missing => {
                Ok(Response::new(convert::case(row)))
            }
            Write::NotFound if request.allow_missing => Ok(Response::new(Case {
                name: id.name(),
                ..Case::default()
            })),
            Write::NotFound | Write::WrongState(_) => Err(not_found(id)),
        }
    }

    async fn undelete_case(
        &self,
        request: Request<UndeleteCaseRequest>,
    ) -> Result<Response<Case>, RpcStatus> {
        let owner = owner(&request)?;
        let request = request.into_inner();
        let id = name_of(&request.name, "name")?;
        let expected = etag_of(&request.etag, "etag")?;
        match self
            .store
            .undelete(&owner, id, expected)
            .await
            .map_err(store_error)?
        {
            Write::Done(row) => Ok(Response::new(convert::case(row))),
            Write::NotFound => Err(not_found(id)),
            Write::Conflict => Err(conflict(id)),
            Write::WrongState(_) => Err(rpc_error::with_reason(
                Code::AlreadyExists,
                "CASE_NOT_DELETED",
                format!("{} is not deleted", id.name()),
            )),
        }
    }
}
