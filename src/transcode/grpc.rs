//! A unary gRPC call made in-process through the rest of the server's stack,
//! so a transcoded call gets the same request id, metrics, log line,
//! admission and authentication as a native one.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body_util::{BodyExt, Full, Limited};
use tonic::{Code, Status};
use tower::ServiceExt;

/// The largest response a transcoded call reads (a page of cases is far less).
const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Request headers that describe the HTTP exchange, not the call: they are
/// not passed on as gRPC metadata.
const NOT_METADATA: [HeaderName; 9] = [
    header::HOST,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::UPGRADE,
];

/// What a call answered: the response headers (e.g. `x-request-id`) and the
/// encoded response message or the status.
pub struct Reply {
    /// The response's headers.
    pub headers: HeaderMap,
    /// The message, or why there is none.
    pub result: Result<Bytes, Status>,
}

/// Calls `path` on `inner` with the encoded `message`; `headers` become the
/// call's metadata (minus those describing the HTTP exchange).
pub async fn call<S: super::GrpcStack>(
    inner: S,
    path: &str,
    headers: &HeaderMap,
    message: Bytes,
) -> Reply {
    let mut frame = BytesMut::with_capacity(message.len() + 5);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    let mut request = http::Request::post(path)
        .version(http::Version::HTTP_2)
        .body(tonic::body::Body::new(Full::new(frame.freeze())))
        .unwrap_or_default();
    let metadata = request.headers_mut();
    for (name, value) in headers {
        if !NOT_METADATA.contains(name) && !name.as_str().starts_with("connect-") {
            metadata.append(name, value.clone());
        }
    }
    metadata.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    metadata.insert(header::TE, HeaderValue::from_static("trailers"));
    let Ok(response) = inner.oneshot(request).await;
    let (parts, body) = response.into_parts();
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = Status::from_header_map(&parts.headers).filter(|s| s.code() != Code::Ok) {
        return Reply {
            headers: parts.headers,
            result: Err(status),
        };
    }
    let collected = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
        Ok(collected) => collected,
        Err(error) => {
            return Reply {
                headers: parts.headers,
                result: Err(Status::internal(format!("reading the response: {error}"))),
            };
        }
    };
    let status = collected
        .trailers()
        .and_then(Status::from_header_map)
        .unwrap_or_else(|| Status::new(Code::Ok, ""));
    let result = if status.code() == Code::Ok {
        first_message(collected.to_bytes())
            .ok_or_else(|| Status::internal("the response carries no message"))
    } else {
        Err(status)
    };
    Reply {
        headers: parts.headers,
        result,
    }
}

/// The payload of the first length-prefixed, uncompressed message.
fn first_message(mut frames: Bytes) -> Option<Bytes> {
    if frames.len() < 5 || frames[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([frames[1], frames[2], frames[3], frames[4]]) as usize;
    let _ = frames.split_to(5);
    (frames.len() >= length).then(|| frames.split_to(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_is_read_and_short_or_compressed_ones_are_not() {
        let frame = Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1, 0, 0]);
        assert_eq!(first_message(frame).unwrap().as_ref(), &[8, 1]);
        assert!(first_message(Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_none());
        assert!(first_message(Bytes::from_static(&[1, 0, 0, 0, 0])).is_none());
        assert!(first_message(Bytes::new()).is_none());
    }
}
