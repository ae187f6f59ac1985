//! A gRPC status as HTTP users expect it: the standard HTTP status for its
//! code, and a body in Google's JSON error shape (REST) or Connect's.
//!
//! The status details (`ErrorInfo`, `BadRequest`, `RetryInfo`) travel in
//! both: as JSON objects with `@type` for REST, as base64 protobuf for
//! Connect, so the stable `reason` stays machine-readable either way.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The HTTP status Google's API design maps `code` to.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 "client closed request" has no constant.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `NOT_FOUND`, `INVALID_ARGUMENT`, ...: the code's canonical name.
pub fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Connect's name for `code` (`not_found`) and the HTTP status it gives it.
pub fn connect_code(code: Code) -> (String, StatusCode) {
    let status = match code {
        // Connect differs from Google here: the request was well-formed.
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        other => http_status(other),
    };
    let name = match code {
        Code::Cancelled => "canceled".to_owned(),
        other => code_name(other).to_ascii_lowercase(),
    };
    (name, status)
}

/// How long the status's `RetryInfo` says to wait, if it says.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
}

/// The `reason` of the status's `ErrorInfo`.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The status's details as JSON objects with `@type` (the proto3 JSON form
/// of `google.protobuf.Any`), read through `pool`, which holds `google.rpc`.
fn json_details(status: &Status, pool: &DescriptorPool) -> Vec<Value> {
    let Some(descriptor) = pool.get_message_by_name("google.rpc.Status") else {
        return Vec::new();
    };
    let Ok(decoded) = DynamicMessage::decode(descriptor, status.details()) else {
        return Vec::new();
    };
    match serde_json::to_value(&decoded) {
        Ok(Value::Object(mut fields)) => match fields.remove("details") {
            Some(Value::Array(details)) => details,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The headers every error answer carries: `WWW-Authenticate` on 401
/// (RFC 6750; `invalid_token` when a token was sent) and `Retry-After` on
/// 429 and 503 when the status says when.
fn error_headers(
    builder: http::response::Builder,
    status: &Status,
    http: StatusCode,
    token_sent: bool,
) -> http::response::Builder {
    let mut builder = builder;
    if http == StatusCode::UNAUTHORIZED {
        let challenge = if token_sent {
            r#"Bearer error="invalid_token""#
        } else {
            "Bearer"
        };
        builder = builder.header(header::WWW_AUTHENTICATE, challenge);
    }
    if matches!(
        http,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) && let Some(wait) = retry_after(status)
    {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        builder = builder.header(header::RETRY_AFTER, seconds.max(1));
    }
    builder
}

/// A REST error: Google's JSON error shape, with `http` as its status.
pub fn rest(
    status: &Status,
    http: StatusCode,
    token_sent: bool,
    pool: &DescriptorPool,
) -> http::Response<bytes::Bytes> {
    respond(status, http, token_sent, &rest_json(status, http, pool))
}

/// Google's JSON error shape for `status`, answered with `http`.
pub fn rest_json(status: &Status, http: StatusCode, pool: &DescriptorPool) -> Value {
    json!({
        "error": {
            "code": http.as_u16(),
            "message": status.message(),
            "status": code_name(status.code()),
            "details": json_details(status, pool),
        }
    })
}

/// A Connect error: `{"code", "message", "details": [{"type", "value"}]}`
/// with Connect's HTTP status for the code.
pub fn connect(status: &Status, token_sent: bool) -> http::Response<bytes::Bytes> {
    let (_, http) = connect_code(status.code());
    respond(status, http, token_sent, &connect_json(status))
}

/// Connect's JSON error object for `status`.
pub fn connect_json(status: &Status) -> Value {
    use base64::Engine as _;
    let (code, _) = connect_code(status.code());
    let details: Vec<Value> = tonic_types::pb::Status::decode(status.details())
        .map(|decoded| decoded.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            json!({
                "type": any.type_url.rsplit('/').next().unwrap_or(&any.type_url),
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            })
        })
        .collect();
    let mut body = json!({ "code": code, "message": status.message() });
    if !details.is_empty() {
        body["details"] = Value::Array(details);
    }
    body
}

/// `body` as a JSON error answer with the headers of [`error_headers`].
fn respond(
    status: &Status,
    http: StatusCode,
    token_sent: bool,
    body: &Value,
) -> http::Response<bytes::Bytes> {
    let builder = http::Response::builder().status(http).header(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    error_headers(builder, status, http, token_sent)
        .body(bytes::Bytes::from(body.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_googles_http_statuses_and_names() {
        for (code, status, name) in [
            (Code::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (Code::FailedPrecondition, 400, "FAILED_PRECONDITION"),
            (Code::OutOfRange, 400, "OUT_OF_RANGE"),
            (Code::Unauthenticated, 401, "UNAUTHENTICATED"),
            (Code::PermissionDenied, 403, "PERMISSION_DENIED"),
            (Code::NotFound, 404, "NOT_FOUND"),
            (Code::Aborted, 409, "ABORTED"),
            (Code::AlreadyExists, 409, "ALREADY_EXISTS"),
            (Code::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (Code::Cancelled, 499, "CANCELLED"),
            (Code::Internal, 500, "INTERNAL"),
            (Code::Unimplemented, 501, "UNIMPLEMENTED"),
            (Code::Unavailable, 503, "UNAVAILABLE"),
            (Code::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
        ] {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
            assert_eq!(code_name(code), name);
        }
        assert_eq!(connect_code(Code::NotFound).0, "not_found");
        assert_eq!(connect_code(Code::Cancelled).0, "canceled");
        assert_eq!(connect_code(Code::DeadlineExceeded).0, "deadline_exceeded");
    }
}
