//! Conversions into protobuf well-known types (`Timestamp`, `Struct`).

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};

/// A UTC time as a `google.protobuf.Timestamp`.
pub fn timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Seconds since the Unix epoch as a `google.protobuf.Timestamp`.
pub fn unix_timestamp(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_struct(object: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: object
            .iter()
            .map(|(name, value)| (name.clone(), json_value(value)))
            .collect(),
    }
}

/// A JSON value as a `google.protobuf.Value`. Numbers become doubles, as in
/// protobuf's own JSON mapping.
pub fn json_value(value: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        Json::Object(object) => Kind::StructValue(json_struct(object)),
    };
    Value { kind: Some(kind) }
}
