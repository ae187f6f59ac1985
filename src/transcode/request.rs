//! A REST request becomes its method's request message as AIP-127 and
//! `google/api/http.proto` define: path variables and query parameters fill
//! the fields they name, the body fills the field the rule names (or the
//! whole message), and three HTTP headers fill the fields they stand for
//! (`Idempotency-Key` → `request_id`, `If-Match` → `etag`). Everything is
//! assembled as the message's proto3 JSON and parsed once by prost-reflect,
//! so one mapping (the canonical one) decides every type.

use http::HeaderMap;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};
use tonic_types::FieldViolation;

use super::routes::{BodyTarget, Route};

/// Well-known types whose JSON form is a string, so a query value can set them.
const STRING_FORM_TYPES: [&str; 3] = [
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// What the HTTP request carried, apart from the verb and path.
pub struct Parts<'a> {
    /// The field values the path binds.
    pub bindings: Vec<(String, String)>,
    /// The query string, if any.
    pub query: Option<&'a str>,
    /// The body, parsed as JSON (absent: no body).
    pub body: Option<Value>,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// The request message of `route` for `parts`, or the fields that are wrong.
pub fn build(route: &Route, parts: Parts<'_>) -> Result<DynamicMessage, Vec<FieldViolation>> {
    let descriptor = route.method.input();
    let mut json = Map::new();
    match (&route.body, parts.body) {
        (BodyTarget::None, _) | (_, None) => {}
        (BodyTarget::Whole, Some(Value::Object(fields))) => json = fields,
        (BodyTarget::Whole, Some(_)) => {
            return Err(vec![FieldViolation::new("body", "must be a JSON object")]);
        }
        (BodyTarget::Field(name), Some(value)) => {
            let field = find(&descriptor, name)
                .ok_or_else(|| vec![FieldViolation::new("body", format!("no field {name}"))])?;
            json.insert(field.json_name().to_owned(), value);
        }
    }
    let mut violations = Vec::new();
    for (name, value) in &parts.bindings {
        if let Err(violation) = set(&descriptor, &mut json, name, value, false) {
            violations.push(violation);
        }
    }
    let query = parts.query.unwrap_or("");
    let bound: Vec<&str> = route.template.fields().collect();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let dotted = snake_path(&descriptor, &name);
        if matches!(route.body, BodyTarget::Whole)
            || bound.contains(&dotted.as_str())
            || matches!(&route.body, BodyTarget::Field(body) if dotted.starts_with(body.as_str()))
        {
            violations.push(FieldViolation::new(
                name.as_ref(),
                "is set by the path or the body, not the query",
            ));
            continue;
        }
        if let Err(violation) = set(&descriptor, &mut json, &name, &value, true) {
            violations.push(violation);
        }
    }
    apply_headers(
        &descriptor,
        &route.body,
        &mut json,
        parts.headers,
        &mut violations,
    );
    if !violations.is_empty() {
        return Err(violations);
    }
    DynamicMessage::deserialize_with_options(
        descriptor,
        Value::Object(json),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|error| vec![FieldViolation::new("body", error.to_string())])
}

/// `Idempotency-Key` is the request id and `If-Match` the etag condition,
/// where the request message has such fields; the header wins over the body.
fn apply_headers(
    descriptor: &MessageDescriptor,
    body: &BodyTarget,
    json: &mut Map<String, Value>,
    headers: &HeaderMap,
    violations: &mut Vec<FieldViolation>,
) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(key) = text("idempotency-key")
        && let Some(field) = find(descriptor, "request_id")
    {
        json.insert(field.json_name().to_owned(), Value::String(key.to_owned()));
    }
    let Some(condition) = text("if-match") else {
        return;
    };
    let Some(etag) = first_entity_tag(condition) else {
        return; // `*`: any current version will do.
    };
    // The etag lives on the request, or on the resource in the body.
    if let Some(field) = find(descriptor, "etag") {
        json.insert(field.json_name().to_owned(), Value::String(etag));
        return;
    }
    if let BodyTarget::Field(name) = body
        && let Some(resource) = find(descriptor, name)
        && let Kind::Message(message) = resource.kind()
        && let Some(field) = find(&message, "etag")
    {
        let slot = json
            .entry(resource.json_name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(fields) = slot {
            fields.insert(field.json_name().to_owned(), Value::String(etag));
            return;
        }
    }
    violations.push(FieldViolation::new(
        "If-Match",
        "this method takes no precondition",
    ));
}

/// The first entity tag of an `If-Match`/`If-None-Match` value without its
/// quotes and weakness marker; `None` for `*`.
pub fn first_entity_tag(value: &str) -> Option<String> {
    entity_tags(value).next().flatten()
}

/// Every entity tag listed (`None` standing for `*`).
pub fn entity_tags(value: &str) -> impl Iterator<Item = Option<String>> + '_ {
    value.split(',').map(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return None;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag);
        Some(tag.trim_matches('"').to_owned())
    })
}

/// The field called `name` (proto or JSON name).
fn find(descriptor: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    descriptor
        .get_field_by_name(name)
        .or_else(|| descriptor.get_field_by_json_name(name))
}

/// `a.fooBar` → `a.foo_bar`, by the message's fields (unknown parts unchanged).
fn snake_path(descriptor: &MessageDescriptor, dotted: &str) -> String {
    let mut message = Some(descriptor.clone());
    dotted
        .split('.')
        .map(|part| match message.as_ref().and_then(|m| find(m, part)) {
            Some(field) => {
                message = match field.kind() {
                    Kind::Message(inner) => Some(inner),
                    _ => None,
                };
                field.name().to_owned()
            }
            None => {
                message = None;
                part.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Sets the field at `dotted` from the text `value`; a repeated field
/// collects every value given (`from_query`), a path binding sets it once.
fn set(
    descriptor: &MessageDescriptor,
    json: &mut Map<String, Value>,
    dotted: &str,
    value: &str,
    from_query: bool,
) -> Result<(), FieldViolation> {
    let unknown = || FieldViolation::new(dotted, "no such field");
    let mut message = descriptor.clone();
    let mut object = json;
    let parts: Vec<&str> = dotted.split('.').collect();
    let (last, parents) = parts.split_last().ok_or_else(unknown)?;
    for part in parents {
        let field = find(&message, part).ok_or_else(unknown)?;
        let Kind::Message(inner) = field.kind() else {
            return Err(FieldViolation::new(
                dotted,
                format!("{part} is not a message"),
            ));
        };
        if field.is_list() || field.is_map() {
            return Err(FieldViolation::new(dotted, "cannot be set from the URL"));
        }
        let slot = object
            .entry(field.json_name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(fields) = slot else {
            return Err(FieldViolation::new(dotted, "set twice"));
        };
        object = fields;
        message = inner;
    }
    let field = find(&message, last).ok_or_else(unknown)?;
    if field.is_map() {
        return Err(FieldViolation::new(dotted, "cannot be set from the URL"));
    }
    let converted = scalar(&field, value).map_err(|why| FieldViolation::new(dotted, why))?;
    let name = field.json_name().to_owned();
    if field.is_list() && from_query {
        match object
            .entry(name)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(values) => values.push(converted),
            _ => return Err(FieldViolation::new(dotted, "set twice")),
        }
    } else {
        object.insert(name, converted);
    }
    Ok(())
}

/// The proto3 JSON value of `text` for `field`'s type.
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    let number = |parsed: Option<serde_json::Number>| {
        parsed
            .map(Value::Number)
            .ok_or_else(|| format!("{text:?} is not a number of this field's type"))
    };
    match field.kind() {
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{text:?} is not true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            number(text.parse::<i32>().ok().map(Into::into))
        }
        Kind::Uint32 | Kind::Fixed32 => number(text.parse::<u32>().ok().map(Into::into)),
        // 64-bit integers travel as strings in proto3 JSON.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => text
            .parse::<i64>()
            .map(|_| Value::String(text.to_owned()))
            .map_err(|_| format!("{text:?} is not an integer")),
        Kind::Uint64 | Kind::Fixed64 => text
            .parse::<u64>()
            .map(|_| Value::String(text.to_owned()))
            .map_err(|_| format!("{text:?} is not an unsigned integer")),
        Kind::Float | Kind::Double => number(
            text.parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64),
        ),
        Kind::String | Kind::Bytes => Ok(Value::String(text.to_owned())),
        Kind::Enum(_) => Ok(Value::String(text.to_owned())),
        Kind::Message(message) if STRING_FORM_TYPES.contains(&message.full_name()) => {
            Ok(Value::String(text.to_owned()))
        }
        Kind::Message(_) => Err("cannot be set from the URL".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> MessageDescriptor {
        crate::pb::descriptor_pool()
            .unwrap()
            .get_message_by_name(name)
            .unwrap()
    }

    #[test]
    fn query_values_take_their_fields_types_and_repeat_into_lists() {
        let principal = message("casebook.auth.v1.Principal");
        let mut json = Map::new();
        for audience in ["a", "b"] {
            set(&principal, &mut json, "audiences", audience, true).unwrap();
        }
        assert_eq!(json["audiences"], serde_json::json!(["a", "b"]));

        let case = message("casebook.cases.v1.Case");
        let mut json = Map::new();
        set(&case, &mut json, "status", "IN_PROGRESS", true).unwrap();
        set(&case, &mut json, "createTime", "2026-12-01T00:00:00Z", true).unwrap();
        let parsed = DynamicMessage::deserialize(case.clone(), Value::Object(json)).unwrap();
        assert_eq!(
            parsed.get_field_by_name("status").unwrap().as_enum_number(),
            Some(2),
            "enum values by name"
        );
        assert!(parsed.has_field_by_name("create_time"));

        let list = message("casebook.cases.v1.ListCasesRequest");
        let mut json = Map::new();
        for (field, bad) in [("pageSize", "x"), ("showDeleted", "yes"), ("nope", "1")] {
            let violation = set(&list, &mut json, field, bad, true).unwrap_err();
            assert_eq!(violation.field, field);
        }
        set(&list, &mut json, "page_size", "7", true).unwrap();
        assert_eq!(json["pageSize"], 7, "proto and JSON names both work");
    }

    #[test]
    fn entity_tags_lose_quotes_and_weakness_and_star_is_any() {
        assert_eq!(first_entity_tag(r#""v3""#).as_deref(), Some("v3"));
        assert_eq!(first_entity_tag(r#"W/"v3""#).as_deref(), Some("v3"));
        assert_eq!(first_entity_tag("*"), None);
        let listed: Vec<_> = entity_tags(r#""v1", W/"v2", *"#).collect();
        assert_eq!(
            listed,
            vec![Some("v1".to_owned()), Some("v2".to_owned()), None]
        );
    }
}
