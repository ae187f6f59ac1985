//! The case as a resource: its name, its enums and its checked fields.
//!
//! Requests are parsed here once into these types ("parse, don't validate");
//! the store and handlers only ever see values that are already valid. Every
//! problem becomes a `BadRequest` field violation naming the field.

use tonic_types::FieldViolation;
use uuid::Uuid;

/// Longest title, in characters, after trimming.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
/// Longest idempotency key.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A case's id, from its resource name `cases/{uuid}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaseId(pub Uuid);

impl CaseId {
    /// A new, time-ordered id (UUIDv7).
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses `cases/{uuid}`; `field` names the request field on failure.
    pub fn parse_name(name: &str, field: &str) -> Result<Self, FieldViolation> {
        let invalid = || {
            FieldViolation::new(
                field,
                format!("must be \"cases/{{uuid}}\", got {:?}", truncate(name)),
            )
        };
        if name.is_empty() {
            return Err(FieldViolation::new(
                field,
                "required: the case's name, \"cases/{uuid}\"",
            ));
        }
        let id = name.strip_prefix("cases/").ok_or_else(invalid)?;
        Uuid::try_parse(id).map(Self).map_err(|_| invalid())
    }

    /// The resource name, `cases/{uuid}`.
    pub fn name(&self) -> String {
        format!("cases/{}", self.0.hyphenated())
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A case title: non-blank, at most 200 characters, no control characters.
/// Stored trimmed, so what is counted is what is kept (a visible character
/// padded with a megabyte of ideographic spaces is one character, and one
/// character is what gets stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    /// Checks `title` as the request field `field`.
    pub fn parse(title: &str, field: &str) -> Result<Self, FieldViolation> {
        let title = title.trim();
        let length = title.chars().count();
        if length == 0 {
            return Err(FieldViolation::new(field, "required: a non-blank title"));
        }
        if length > MAX_TITLE_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("at most {MAX_TITLE_CHARS} characters, got {length}"),
            ));
        }
        if title.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(title.to_owned()))
    }

    /// The title as stored (at most 4 bytes per character: 800 bytes).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A case description: at most 10,000 characters (so at most 40,000 bytes),
/// no NUL (which PostgreSQL text cannot hold). Kept exactly as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    /// Checks `description` as the request field `field`.
    pub fn parse(description: &str, field: &str) -> Result<Self, FieldViolation> {
        let length = description.chars().count();
        if length > MAX_DESCRIPTION_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("at most {MAX_DESCRIPTION_CHARS} characters, got {length}"),
            ));
        }
        if description.contains('\0') {
            return Err(FieldViolation::new(
                field,
                "must not contain NUL characters",
            ));
        }
        Ok(Self(description.to_owned()))
    }

    /// The description as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An etag: the case's version, opaque to clients (`v{version}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Etag(pub i64);

impl Etag {
    /// Parses an etag; empty means "no condition".
    pub fn parse_optional(etag: &str, field: &str) -> Result<Option<Self>, FieldViolation> {
        if etag.is_empty() {
            return Ok(None);
        }
        etag.strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .map(|v| Some(Self(v)))
            .ok_or_else(|| FieldViolation::new(field, "not an etag this service issued"))
    }

    /// The wire form.
    pub fn to_wire(self) -> String {
        format!("v{}", self.0)
    }
}

/// Collects field violations, so one reply names every bad field.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// The value, or `None` after recording its violation.
    pub fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.0.push(v)).ok()
    }

    /// Records a violation.
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `value` when nothing was recorded (a value whose parts all parsed),
    /// otherwise the error naming every violation.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, crate::error::CaseError> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(crate::error::CaseError::Invalid(self.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_lookalikes() {
        let id = CaseId::generate();
        assert_eq!(CaseId::parse_name(&id.name(), "name").unwrap(), id);
        for bad in [
            "",
            "cases/",
            "case/0190",
            "cases/not-a-uuid",
            "users/x",
            "cases/../x",
        ] {
            assert!(CaseId::parse_name(bad, "name").is_err(), "{bad}");
        }
    }

    #[test]
    fn titles_are_trimmed_before_they_are_counted_and_stored() {
        assert_eq!(Title::parse("  hi  ", "t").unwrap().as_str(), "hi");
        let padded = format!("x{}", "\u{3000}".repeat(300_000));
        assert_eq!(Title::parse(&padded, "t").unwrap().as_str().len(), 1);
        assert!(Title::parse("   ", "t").is_err());
        assert!(Title::parse(&"é".repeat(200), "t").is_ok());
        assert!(Title::parse(&"é".repeat(201), "t").is_err());
        assert!(Title::parse("bell\u{7}", "t").is_err());
    }
}
