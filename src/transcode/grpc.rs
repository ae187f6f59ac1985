//! A gRPC call made in-process through the rest of the server's stack, so a
//! transcoded call gets the same request id, metrics, log line, admission
//! and authentication as a native one. Unary calls are read whole; server
//! streams message by message, as they arrive.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body::Body as _;
use http_body_util::Full;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::listener::ConnectionStreams;

/// The largest response message a transcoded call reads (a page of cases is far less).
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

/// Calls the unary method `path` on `inner` with the encoded `message`;
/// `headers` become the call's metadata (minus those describing the HTTP
/// exchange), and the call takes its stream slot from `connection`.
pub async fn call<S: super::GrpcStack>(
    inner: S,
    path: &str,
    headers: &HeaderMap,
    connection: Option<&ConnectionStreams>,
    message: Bytes,
) -> Reply {
    let (headers, mut frames) = match open(inner, path, headers, connection, message).await {
        Ok(opened) => opened,
        Err((headers, status)) => {
            return Reply {
                headers,
                result: Err(status),
            };
        }
    };
    let result = match frames.next().await {
        Next::Message(message) => match frames.next().await {
            Next::End(Ok(())) => Ok(message),
            Next::End(Err(status)) => Err(status),
            Next::Message(_) => Err(Status::internal("a unary call answered twice")),
        },
        Next::End(Ok(())) => Err(Status::internal("the response carries no message")),
        Next::End(Err(status)) => Err(status),
    };
    Reply { headers, result }
}

/// Starts a call of `path` (unary or server streaming) on `inner`: the
/// response headers and its messages, or the headers and the status of a
/// call that failed before answering anything.
pub async fn open<S: super::GrpcStack>(
    inner: S,
    path: &str,
    headers: &HeaderMap,
    connection: Option<&ConnectionStreams>,
    message: Bytes,
) -> Result<(HeaderMap, Frames), (HeaderMap, Status)> {
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
    if let Some(connection) = connection {
        request.extensions_mut().insert(connection.clone());
    }
    let Ok(response) = inner.oneshot(request).await;
    let (parts, body) = response.into_parts();
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = Status::from_header_map(&parts.headers).filter(|s| s.code() != Code::Ok) {
        return Err((parts.headers, status));
    }
    Ok((
        parts.headers,
        Frames {
            body,
            buffer: BytesMut::new(),
        },
    ))
}

/// The messages of a response body, as they arrive.
pub struct Frames {
    body: tonic::body::Body,
    buffer: BytesMut,
}

/// What a response body holds next.
pub enum Next {
    /// One message's encoding.
    Message(Bytes),
    /// The call is over: OK, or its status.
    End(Result<(), Status>),
}

impl Frames {
    /// The next message, or the end of the call.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// The next message, or the end of the call, once the body has it.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            if let Some(message) = self.split_message() {
                return Poll::Ready(message);
            }
            let end = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if self.buffer.len() + data.len() > MAX_RESPONSE_BYTES + 5 => {
                        Err(Status::resource_exhausted(
                            "a response message is larger than this server relays",
                        ))
                    }
                    Ok(data) => {
                        self.buffer.extend_from_slice(&data);
                        continue;
                    }
                    Err(frame) => {
                        let status = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .unwrap_or_else(|| Status::new(Code::Ok, ""));
                        match status.code() {
                            Code::Ok => Ok(()),
                            _ => Err(status),
                        }
                    }
                },
                Some(Err(error)) => Err(Status::unavailable(format!(
                    "reading the response: {error}"
                ))),
                None => Err(Status::internal("the response ended without a status")),
            };
            return Poll::Ready(Next::End(end));
        }
    }

    /// The first whole message in the buffer, if there is one.
    fn split_message(&mut self) -> Option<Next> {
        if self.buffer.len() < 5 {
            return None;
        }
        if self.buffer[0] != 0 {
            return Some(Next::End(Err(Status::internal(
                "the response is compressed, which this server does not relay",
            ))));
        }
        let length = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if self.buffer.len() < 5 + length {
            return None;
        }
        let _ = self.buffer.split_to(5);
        Some(Next::Message(self.buffer.split_to(length).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;

    fn frames(chunks: Vec<Frame<Bytes>>) -> Frames {
        let stream = tokio_stream::iter(chunks.into_iter().map(Ok::<_, Status>));
        Frames {
            body: tonic::body::Body::new(StreamBody::new(stream)),
            buffer: BytesMut::new(),
        }
    }

    fn trailers(code: Code) -> Frame<Bytes> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from(code as i32));
        Frame::trailers(map)
    }

    #[tokio::test]
    async fn messages_split_across_chunks_arrive_whole_and_in_order() {
        let mut frames = frames(vec![
            Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, 8])),
            Frame::data(Bytes::from_static(&[1, 0, 0, 0, 0, 1, 9])),
            trailers(Code::Ok),
        ]);
        assert!(matches!(frames.next().await, Next::Message(m) if m.as_ref() == [8, 1]));
        assert!(matches!(frames.next().await, Next::Message(m) if m.as_ref() == [9]));
        assert!(matches!(frames.next().await, Next::End(Ok(()))));
    }

    #[tokio::test]
    async fn a_failing_status_a_missing_status_and_compression_end_the_call() {
        let mut failed = frames(vec![trailers(Code::NotFound)]);
        assert!(matches!(failed.next().await, Next::End(Err(s)) if s.code() == Code::NotFound));
        let mut cut = frames(vec![Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))]);
        assert!(matches!(cut.next().await, Next::End(Err(s)) if s.code() == Code::Internal));
        let mut compressed = frames(vec![Frame::data(Bytes::from_static(&[1, 0, 0, 0, 0]))]);
        assert!(matches!(compressed.next().await, Next::End(Err(s)) if s.code() == Code::Internal));
    }
}
