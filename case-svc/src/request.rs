//! Requests parsed into domain values before any handler sees them.
//!
//! Each `TryFrom` names every bad field at once (one `BadRequest`), and
//! what comes out is trusted: the store never re-checks a title, and a
//! handler never holds an `Option` that "validation guarantees" is set.

use casebook::{
    auth::{Principal, UserId},
    observe::request_id::REQUEST_ID,
    pb::casebook::cases::v1::{
        CreateCaseRequest, DeleteCaseRequest, ListCaseEventsRequest, ListCasesRequest,
        UndeleteCaseRequest, UpdateCaseRequest, WatchCasesRequest,
        case::{Status, Type},
    },
};
use tonic::Request;

use crate::{
    error::CaseError,
    events::EventRow,
    list_query::{Cursor, Filter, Order, PageTokens},
    resource::{CaseId, Description, Etag, MAX_REQUEST_ID_CHARS, Title, Violations},
    store::CaseRow,
};

/// Default and maximum `page_size` (AIP-158).
const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

/// Who is calling, and under which request id: what every write records.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's user: the owner of every case the call touches.
    pub owner: UserId,
    /// The call's `x-request-id`, recorded with the events it causes.
    pub request_id: Option<String>,
}

impl Caller {
    /// The caller of `request`, from its verified principal.
    pub fn of<T>(request: &Request<T>) -> Result<Self, tonic::Status> {
        let owner = Principal::of(request)?.user_id.clone();
        let request_id = request
            .metadata()
            .get(REQUEST_ID.as_str())
            .and_then(|id| id.to_str().ok())
            .map(str::to_owned);
        Ok(Self { owner, request_id })
    }
}

/// A client's idempotency key (AIP-155): at most 128 printable characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `None` for an empty key (no idempotency asked for).
    fn parse(key: &str, violations: &mut Violations) -> Option<Self> {
        if key.chars().count() > MAX_REQUEST_ID_CHARS || key.chars().any(char::is_control) {
            violations.add(
                "request_id",
                format!(
                    "at most {MAX_REQUEST_ID_CHARS} printable characters (a UUID is recommended)"
                ),
            );
            return None;
        }
        (!key.is_empty()).then(|| Self(key.to_owned()))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A case to create.
#[derive(Clone, Debug)]
pub struct NewCase {
    /// Title.
    pub title: Title,
    /// Description.
    pub description: Description,
    /// Status (never unspecified: unset means `OPEN`).
    pub status: Status,
    /// Type (never unspecified).
    pub kind: Type,
    /// The idempotency key, if the client sent one.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl TryFrom<CreateCaseRequest> for NewCase {
    type Error = CaseError;

    fn try_from(request: CreateCaseRequest) -> Result<Self, CaseError> {
        let mut violations = Violations::default();
        let idempotency_key = IdempotencyKey::parse(&request.request_id, &mut violations);
        let Some(case) = request.case else {
            violations.add("case", "required: the case to create");
            return violations.finish(None);
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
        let new = title.zip(description).zip(status.zip(kind));
        violations.finish(new.map(|((title, description), (status, kind))| Self {
            title,
            description,
            status,
            kind,
            idempotency_key,
        }))
    }
}

/// The fields an update changes; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct CasePatch {
    /// New title.
    pub title: Option<Title>,
    /// New description.
    pub description: Option<Description>,
    /// New status.
    pub status: Option<Status>,
    /// New type.
    pub kind: Option<Type>,
}

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

/// Which case a write applies to, and on what condition.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The case.
    pub id: CaseId,
    /// The version the client read (its etag), if it made the write conditional.
    pub expected: Option<Etag>,
}

impl Target {
    fn parse(
        name: &str,
        name_field: &str,
        etag: &str,
        etag_field: &str,
        violations: &mut Violations,
    ) -> Option<Self> {
        let id = violations.check(CaseId::parse_name(name, name_field));
        let expected = violations.check(Etag::parse_optional(etag, etag_field));
        Some(Self {
            id: id?,
            expected: expected?,
        })
    }
}

/// An update: which case, on what condition, and the new values.
#[derive(Clone, Debug)]
pub struct Update {
    /// The case and its expected etag.
    pub target: Target,
    /// What changes.
    pub patch: CasePatch,
}

impl TryFrom<UpdateCaseRequest> for Update {
    type Error = CaseError;

    fn try_from(request: UpdateCaseRequest) -> Result<Self, CaseError> {
        let Some(case) = request.case else {
            return Err(CaseError::invalid(
                "case",
                "required: the case with its new values",
            ));
        };
        let mut violations = Violations::default();
        let target = Target::parse(
            &case.name,
            "case.name",
            &case.etag,
            "case.etag",
            &mut violations,
        );
        let mut paths: Vec<String> = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            // AIP-134: no mask means every field the client populated.
            let populated = |field: &str| match field {
                "title" => !case.title.is_empty(),
                "description" => !case.description.is_empty(),
                "status" => case.status != 0,
                _ => case.r#type != 0,
            };
            paths = MUTABLE_FIELDS
                .into_iter()
                .filter(|field| populated(field))
                .map(str::to_owned)
                .collect();
        }
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
                            "unknown field {other:?}; updatable: title, description, status, type"
                        ),
                    ),
                }
            }
        }
        violations.finish(target.map(|target| Self { target, patch }))
    }
}

/// A soft delete.
#[derive(Clone, Copy, Debug)]
pub struct Delete {
    /// The case and its expected etag.
    pub target: Target,
    /// Succeed when there is nothing to delete.
    pub allow_missing: bool,
}

impl TryFrom<DeleteCaseRequest> for Delete {
    type Error = CaseError;

    fn try_from(request: DeleteCaseRequest) -> Result<Self, CaseError> {
        let mut violations = Violations::default();
        let target = Target::parse(
            &request.name,
            "name",
            &request.etag,
            "etag",
            &mut violations,
        );
        violations.finish(target.map(|target| Self {
            target,
            allow_missing: request.allow_missing,
        }))
    }
}

impl TryFrom<UndeleteCaseRequest> for Target {
    type Error = CaseError;

    fn try_from(request: UndeleteCaseRequest) -> Result<Self, CaseError> {
        let mut violations = Violations::default();
        let target = Target::parse(
            &request.name,
            "name",
            &request.etag,
            "etag",
            &mut violations,
        );
        violations.finish(target)
    }
}

/// A page size: the default for 0, capped at the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSize(usize);

impl PageSize {
    fn parse(size: i32, violations: &mut Violations) -> Self {
        Self(match usize::try_from(size) {
            Err(_) => {
                violations.add("page_size", "must not be negative");
                DEFAULT_PAGE_SIZE
            }
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        })
    }

    /// How many items a page holds.
    pub fn get(self) -> usize {
        self.0
    }

    /// `rows` (read with one extra) cut to a page, and the token `after`
    /// makes for its last row when there is a next page (else empty).
    fn page<T>(self, mut rows: Vec<T>, after: impl FnOnce(&T) -> String) -> (Vec<T>, String) {
        if rows.len() <= self.0 {
            return (rows, String::new());
        }
        rows.truncate(self.0);
        let next = rows.last().map(after).unwrap_or_default();
        (rows, next)
    }
}

impl Default for PageSize {
    fn default() -> Self {
        Self(DEFAULT_PAGE_SIZE)
    }
}

/// The position in a request's `page_token` (`None` for the first page),
/// if it was issued to `owner` for `query`.
fn open_page_token<P: serde::de::DeserializeOwned>(
    tokens: &PageTokens,
    owner: &UserId,
    query: &str,
    token: &str,
) -> Result<Option<P>, CaseError> {
    match token {
        "" => Ok(None),
        token => tokens
            .open(owner.as_str(), query, token)
            .map(Some)
            .map_err(|error| CaseError::invalid("page_token", error.to_string())),
    }
}

/// A parsed `ListCases`: what to list, and where the previous page ended
/// (its token, still sealed: opening it needs the caller and the key).
#[derive(Clone, Debug)]
pub struct ListQuery {
    /// Conditions.
    pub filter: Filter,
    /// Sort order.
    pub order: Order,
    /// Include soft-deleted cases.
    pub show_deleted: bool,
    /// Page size.
    pub page_size: PageSize,
    /// The previous page's token, empty for the first page.
    pub page_token: String,
}

impl ListQuery {
    /// The query's canonical text: a page token is valid only for the query
    /// it was issued for.
    pub fn canonical(&self) -> String {
        format!(
            "{}|{}|{}",
            self.filter.canonical(),
            self.order.canonical(),
            self.show_deleted
        )
    }
}

impl ListQuery {
    /// Where the previous page ended, from its token (bound to this caller
    /// and this query).
    pub fn cursor(&self, tokens: &PageTokens, owner: &UserId) -> Result<Option<Cursor>, CaseError> {
        open_page_token(tokens, owner, &self.canonical(), &self.page_token)
    }

    /// `rows` (read with one extra) cut to a page, and the next page's token.
    pub fn page(
        &self,
        tokens: &PageTokens,
        owner: &UserId,
        rows: Vec<CaseRow>,
    ) -> (Vec<CaseRow>, String) {
        self.page_size.page(rows, |last| {
            let after = last.cursor(self.order.field);
            tokens.issue(owner.as_str(), &self.canonical(), after)
        })
    }
}

impl TryFrom<ListCasesRequest> for ListQuery {
    type Error = CaseError;

    fn try_from(request: ListCasesRequest) -> Result<Self, CaseError> {
        let mut violations = Violations::default();
        let page_size = PageSize::parse(request.page_size, &mut violations);
        let filter = violations.check(Filter::parse_field(&request.filter, "filter"));
        let order = violations.check(
            Order::parse(&request.order_by)
                .map_err(|e| tonic_types::FieldViolation::new("order_by", e)),
        );
        violations.finish(filter.zip(order).map(|(filter, order)| Self {
            filter,
            order,
            show_deleted: request.show_deleted,
            page_size,
            page_token: request.page_token,
        }))
    }
}

/// A parsed `ListCaseEvents`.
#[derive(Clone, Debug)]
pub struct HistoryQuery {
    /// The case whose events are listed.
    pub case: CaseId,
    /// Page size.
    pub page_size: PageSize,
    /// The previous page's token, empty for the first page.
    pub page_token: String,
}

impl HistoryQuery {
    fn canonical(&self) -> String {
        format!("events|{}", self.case.name())
    }

    /// The events to list are older than this `seq` (the previous page's last).
    pub fn before(&self, tokens: &PageTokens, owner: &UserId) -> Result<i64, CaseError> {
        let after = open_page_token(tokens, owner, &self.canonical(), &self.page_token)?;
        Ok(after.unwrap_or(i64::MAX))
    }

    /// `rows` (read with one extra) cut to a page, and the next page's token.
    pub fn page(
        &self,
        tokens: &PageTokens,
        owner: &UserId,
        rows: Vec<EventRow>,
    ) -> (Vec<EventRow>, String) {
        self.page_size.page(rows, |last| {
            tokens.issue(owner.as_str(), &self.canonical(), last.seq)
        })
    }
}

impl TryFrom<ListCaseEventsRequest> for HistoryQuery {
    type Error = CaseError;

    fn try_from(request: ListCaseEventsRequest) -> Result<Self, CaseError> {
        let mut violations = Violations::default();
        let page_size = PageSize::parse(request.page_size, &mut violations);
        let case = violations.check(CaseId::parse_name(&request.parent, "parent"));
        violations.finish(case.map(|case| Self {
            case,
            page_size,
            page_token: request.page_token,
        }))
    }
}

/// A parsed `WatchCases`.
#[derive(Clone, Debug)]
pub struct WatchQuery {
    /// Which cases' events to send.
    pub filter: Filter,
    /// Where the previous stream ended, still sealed; empty means "from now".
    pub resume_token: String,
}

impl TryFrom<WatchCasesRequest> for WatchQuery {
    type Error = CaseError;

    fn try_from(request: WatchCasesRequest) -> Result<Self, CaseError> {
        let filter = Filter::parse_field(&request.filter, "filter").map_err(|v| vec![v])?;
        Ok(Self {
            filter,
            resume_token: request.resume_token,
        })
    }
}

/// A status that may be stored (never `STATUS_UNSPECIFIED`).
fn parse_status(value: i32, field: &str) -> Result<Status, tonic_types::FieldViolation> {
    match Status::try_from(value) {
        Ok(Status::Unspecified) => Err(tonic_types::FieldViolation::new(field, "must be set")),
        Ok(status) => Ok(status),
        Err(_) => Err(tonic_types::FieldViolation::new(
            field,
            format!("unknown status value {value}"),
        )),
    }
}

/// A type that may be stored (never `TYPE_UNSPECIFIED`).
fn parse_type(value: i32, field: &str) -> Result<Type, tonic_types::FieldViolation> {
    match Type::try_from(value) {
        Ok(Type::Unspecified) => Err(tonic_types::FieldViolation::new(
            field,
            "required: the kind of case",
        )),
        Ok(kind) => Ok(kind),
        Err(_) => Err(tonic_types::FieldViolation::new(
            field,
            format!("unknown type value {value}"),
        )),
    }
}
