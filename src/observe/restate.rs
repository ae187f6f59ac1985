//! A request tonic could not decode is the caller's error, not ours: its
//! status is restated as `INVALID_ARGUMENT` (`MALFORMED_MESSAGE`; a body
//! with no message at all, or one cut off mid-frame, included), and an
//! over-size message as `RESOURCE_EXHAUSTED` (`MESSAGE_TOO_LARGE`, as the
//! gRPC status-code table asks), each with an `ErrorInfo`, so neither pages
//! the operator as an `INTERNAL` or reads as a range error. tonic answers
//! both trailers-only, so only response headers need looking at.

use http::HeaderMap;
use tonic::{Code, Status};

use crate::rpc_error;

/// Rewrites the trailers-only status tonic produces when it cannot decode
/// the request; any other response is left alone. Used as a
/// `tower::util::MapResponseLayer`.
pub fn restate_decode_errors<B>(mut response: http::Response<B>) -> http::Response<B> {
    restate(response.headers_mut());
    response
}

fn restate(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let message = status.message();
    let restated = match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            rpc_error::with_reason(
                Code::InvalidArgument,
                "MALFORMED_MESSAGE",
                format!(
                    "the request is not a valid protobuf message of this method's type ({message})"
                ),
            )
        }
        Code::Internal if message.starts_with("Missing request message") => rpc_error::with_reason(
            Code::InvalidArgument,
            "MALFORMED_MESSAGE",
            "the request body carries no message: send one length-prefixed message (an empty one is 5 zero bytes)",
        ),
        Code::Internal
            if message.starts_with("Unexpected EOF decoding stream")
                || (message.starts_with("protocol error")
                    && message.ends_with("while sending request")) =>
        {
            rpc_error::with_reason(
                Code::InvalidArgument,
                "MALFORMED_MESSAGE",
                format!("the request's message frame is cut off or malformed ({message})"),
            )
        }
        Code::OutOfRange if message.contains("decoded message length too large") => {
            rpc_error::with_reason(
                Code::ResourceExhausted,
                "MESSAGE_TOO_LARGE",
                format!("the request message is too large: {message}"),
            )
        }
        _ => return,
    };
    // Only fails on an unencodable message, which ours never are; then the
    // original status stands.
    let mut fields = HeaderMap::new();
    if restated.add_header(&mut fields).is_ok() {
        for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
            headers.remove(name);
        }
        headers.extend(fields);
    }
}
