//! `ListCases` parameters: the filter, the order and the page token.
//!
//! All three are parsed from untrusted text into small closed types; SQL is
//! then assembled from fixed fragments chosen by those types, never from the
//! text itself. Page tokens are opaque and tamper-evident: an HMAC over the
//! owner and the position, bound to the query they were issued for.

use aws_lc_rs::hmac;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use casebook::pb::casebook::cases::v1::case::{Status, Type};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A parsed `filter`: conditions joined with `AND`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `status = X`
    pub status: Option<Status>,
    /// `type = Y`
    pub kind: Option<Type>,
}

impl Filter {
    /// Parses e.g. `status = OPEN AND type = INCIDENT`. Values may be quoted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut filter = Filter::default();
        if text.trim().is_empty() {
            return Ok(filter);
        }
        for clause in text.split(" AND ") {
            let (field, value) = clause
                .split_once('=')
                .ok_or_else(|| format!("expected `field = VALUE`, got {:?}", short(clause)))?;
            let value = value.trim().trim_matches('"');
            match field.trim() {
                "status" if filter.status.is_none() => {
                    filter.status = Some(
                        Status::from_str_name(value)
                            .filter(|s| *s != Status::Unspecified)
                            .ok_or_else(|| format!("unknown status {:?}", short(value)))?,
                    );
                }
                "type" if filter.kind.is_none() => {
                    filter.kind = Some(
                        Type::from_str_name(value)
                            .filter(|t| *t != Type::Unspecified)
                            .ok_or_else(|| format!("unknown type {:?}", short(value)))?,
                    );
                }
                "status" | "type" => return Err(format!("{} appears twice", field.trim())),
                other => {
                    return Err(format!(
                        "cannot filter on {:?}; supported: status, type",
                        short(other)
                    ));
                }
            }
        }
        Ok(filter)
    }

    /// Parses the request field `field`.
    pub fn parse_field(text: &str, field: &str) -> Result<Self, tonic_types::FieldViolation> {
        Self::parse(text).map_err(|e| tonic_types::FieldViolation::new(field, e))
    }

    /// Whether a case with `status` and `kind` passes.
    pub fn matches(&self, status: Status, kind: Type) -> bool {
        self.status.is_none_or(|s| s == status) && self.kind.is_none_or(|k| k == kind)
    }

    /// The canonical text of this filter (parses back to the same filter).
    pub fn canonical(&self) -> String {
        let mut clauses = Vec::new();
        if let Some(status) = self.status {
            clauses.push(format!("status = {}", status.as_str_name()));
        }
        if let Some(kind) = self.kind {
            clauses.push(format!("type = {}", kind.as_str_name()));
        }
        clauses.join(" AND ")
    }
}

fn short(text: &str) -> String {
    text.trim().chars().take(40).collect()
}

/// The field a list is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SortField {
    /// `create_time`
    CreateTime,
    /// `update_time`
    UpdateTime,
    /// `title`
    Title,
}

/// A parsed `order_by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Order {
    /// The sort field.
    pub field: SortField,
    /// Descending?
    pub descending: bool,
}

impl Order {
    /// Parses `create_time desc`, `title`, ... Empty means newest first.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut words = text.split_whitespace();
        let Some(field) = words.next() else {
            return Ok(Self {
                field: SortField::CreateTime,
                descending: true,
            });
        };
        let field = match field {
            "create_time" => SortField::CreateTime,
            "update_time" => SortField::UpdateTime,
            "title" => SortField::Title,
            other => {
                return Err(format!(
                    "cannot order by {:?}; supported: create_time, update_time, title",
                    short(other)
                ));
            }
        };
        let descending = match (words.next(), words.next()) {
            (None, _) | (Some("asc"), None) => false,
            (Some("desc"), None) => true,
            _ => return Err("expected `field`, `field asc` or `field desc`".into()),
        };
        Ok(Self { field, descending })
    }

    /// The canonical text of this order.
    pub fn canonical(&self) -> String {
        let field = match self.field {
            SortField::CreateTime => "create_time",
            SortField::UpdateTime => "update_time",
            SortField::Title => "title",
        };
        format!("{field} {}", if self.descending { "desc" } else { "asc" })
    }
}

/// Where the previous page ended: the last row's sort key and id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort key as stored (timestamp text or title).
    #[serde(rename = "k")]
    pub key: String,
    /// The last case's id.
    #[serde(rename = "i")]
    pub id: String,
}

#[derive(Serialize, Deserialize)]
struct TokenBody<P> {
    /// The query the token belongs to.
    q: String,
    /// The position in it.
    p: P,
}

/// Signs and checks page and resume tokens with a key every replica shares.
pub struct PageTokens {
    key: hmac::Key,
}

/// Why a page token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a token this service issued to this caller (or altered).
    #[error("page_token is not a token this service issued")]
    Invalid,
    /// Issued for a different filter, order or show_deleted.
    #[error(
        "page_token belongs to a different query; repeat the filter, order_by and show_deleted it was issued for"
    )]
    QueryChanged,
}

impl PageTokens {
    /// Tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A token continuing `query` (its canonical text) after `position`, for `owner`.
    pub fn issue<P: Serialize>(&self, owner: &str, query: &str, position: P) -> String {
        let body = serde_json::to_vec(&TokenBody {
            q: query.to_owned(),
            p: position,
        })
        .unwrap_or_default();
        let tag = hmac::sign(&self.key, &signed_bytes(owner, &body));
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The position in `token`, if `owner` was issued it for `query`.
    pub fn open<P: DeserializeOwned>(
        &self,
        owner: &str,
        query: &str,
        token: &str,
    ) -> Result<P, PageTokenError> {
        let (body, tag) = token.split_once('.').ok_or(PageTokenError::Invalid)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| PageTokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| PageTokenError::Invalid)?;
        hmac::verify(&self.key, &signed_bytes(owner, &body), &tag)
            .map_err(|_| PageTokenError::Invalid)?;
        let body: TokenBody<P> =
            serde_json::from_slice(&body).map_err(|_| PageTokenError::Invalid)?;
        if body.q != query {
            return Err(PageTokenError::QueryChanged);
        }
        Ok(body.p)
    }
}

/// The owner goes into the MAC, not the token: a token is useless to anyone else.
fn signed_bytes(owner: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(owner.len() + 1 + body.len());
    bytes.extend_from_slice(owner.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn filters_parse_and_canonicalise() {
        let f = Filter::parse("type = INCIDENT AND status = \"OPEN\"").unwrap();
        assert_eq!(f.status, Some(Status::Open));
        assert_eq!(f.kind, Some(Type::Incident));
        assert_eq!(f.canonical(), "status = OPEN AND type = INCIDENT");
        for bad in [
            "status",
            "status = NOPE",
            "owner = x",
            "status = OPEN AND status = CLOSED",
            "status = STATUS_UNSPECIFIED",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_parse() {
        assert_eq!(Order::parse("").unwrap().canonical(), "create_time desc");
        assert_eq!(Order::parse("title").unwrap().canonical(), "title asc");
        assert_eq!(
            Order::parse("update_time desc").unwrap().canonical(),
            "update_time desc"
        );
        for bad in ["owner", "title up", "title asc desc"] {
            assert!(Order::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_bound_to_owner_and_query() {
        let tokens = PageTokens::new(b"secret");
        let cursor = Cursor {
            key: "k".into(),
            id: "i".into(),
        };
        let token = tokens.issue("alice", "q1", cursor.clone());
        assert_eq!(tokens.open("alice", "q1", &token), Ok(cursor));
        assert_eq!(
            tokens.open::<Cursor>("bob", "q1", &token),
            Err(PageTokenError::Invalid)
        );
        assert_eq!(
            tokens.open::<Cursor>("alice", "q2", &token),
            Err(PageTokenError::QueryChanged)
        );
        assert_eq!(
            PageTokens::new(b"other").open::<Cursor>("alice", "q1", &token),
            Err(PageTokenError::Invalid)
        );
    }

    fn filters() -> impl Strategy<Value = Filter> {
        let status =
            prop::option::of(1..=4i32).prop_map(|s| s.and_then(|s| Status::try_from(s).ok()));
        let kind = prop::option::of(1..=4i32).prop_map(|t| t.and_then(|t| Type::try_from(t).ok()));
        (status, kind).prop_map(|(status, kind)| Filter { status, kind })
    }

    proptest! {
        #[test]
        fn filter_parser_never_panics(text in ".{0,200}") {
            let _ = Filter::parse(&text);
        }

        #[test]
        fn filters_round_trip(filter in filters()) {
            prop_assert_eq!(Filter::parse(&filter.canonical()), Ok(filter));
        }

        #[test]
        fn order_parser_never_panics(text in ".{0,100}") {
            let _ = Order::parse(&text);
        }

        #[test]
        fn page_token_parser_never_panics_nor_accepts_junk(token in ".{0,300}") {
            let tokens = PageTokens::new(b"secret");
            prop_assert!(tokens.open::<Cursor>("alice", "q", &token).is_err());
        }

        #[test]
        fn page_tokens_round_trip(owner in "[a-zA-Z0-9]{1,32}", query in ".{0,60}", key in ".{0,60}", id in ".{0,40}") {
            let tokens = PageTokens::new(b"secret");
            let cursor = Cursor { key, id };
            let token = tokens.issue(&owner, &query, cursor.clone());
            prop_assert_eq!(tokens.open(&owner, &query, &token), Ok(cursor));
        }

        #[test]
        fn altered_page_tokens_are_refused(position in 0usize..200, byte in any::<u8>()) {
            let tokens = PageTokens::new(b"secret");
            let token = tokens.issue("alice", "q", Cursor { key: "2026-01-01T00:00:00.000000Z".into(), id: "x".into() });
            let mut bytes = token.clone().into_bytes();
            let index = position % bytes.len();
            prop_assume!(bytes[index] != byte);
            bytes[index] = byte;
            if let Ok(altered) = String::from_utf8(bytes) {
                prop_assert!(tokens.open::<Cursor>("alice", "q", &altered).is_err());
            }
        }
    }
}
