//! Server streams over HTTP: Server-Sent Events on a REST route, and
//! Connect's streaming protocol.
//!
//! Each message is relayed as it arrives, never collected: the HTTP body
//! reads the next message of the gRPC response when the connection asks it
//! for more, with no task or queue between them. So a client that stops
//! reading stops the reading (and the service cuts it off as a slow
//! consumer) instead of growing a buffer here, and a client that goes away
//! drops the body, which cancels the call.
//!
//! - SSE: every message is an event whose `data` is the message's JSON and
//!   whose `id` is its `resume_token` field, when it has one, so a browser's
//!   `EventSource` reconnects with `Last-Event-ID` by itself. A call that
//!   fails after it started ends with an `error` event holding Google's JSON
//!   error; one that fails at once is an ordinary REST error (401, 429, ...).
//! - Connect: enveloped messages, then the end-of-stream envelope with the
//!   error, if any (Connect answers streams with HTTP 200 whatever happens).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body::Frame;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{Value, json};
use tonic::Status;

use super::{
    error,
    grpc::{Frames, Next},
};
use crate::observe::REQUEST_ID;

/// Connect's end-of-stream envelope flag.
const END_STREAM: u8 = 0b10;

/// How the messages of a stream are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `text/event-stream`.
    ServerSentEvents,
    /// `application/connect+json`.
    ConnectJson,
    /// `application/connect+proto`.
    ConnectProto,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Self::ServerSentEvents => "text/event-stream",
            Self::ConnectJson => "application/connect+json",
            Self::ConnectProto => "application/connect+proto",
        }
    }
}

/// Relays `frames` (the answer to a call whose response headers are
/// `call_headers`) to the client as `encoding`.
pub fn relay(
    encoding: Encoding,
    call_headers: &HeaderMap,
    frames: Frames,
    output: MessageDescriptor,
    pool: DescriptorPool,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::builder()
        .header(header::CONTENT_TYPE, encoding.content_type())
        .header(header::CACHE_CONTROL, "no-store")
        // Tells nginx-style proxies not to hold events back.
        .header("x-accel-buffering", "no");
    if let Some(id) = call_headers.get(REQUEST_ID) {
        response = response.header(REQUEST_ID, id.clone());
    }
    let body = Relay {
        encoding,
        frames,
        output,
        pool,
        over: false,
    };
    response
        .body(tonic::body::Body::new(body))
        .unwrap_or_default()
}

/// A Connect stream that failed before it started: HTTP 200 with only the
/// end-of-stream envelope.
pub fn connect_failure(encoding: Encoding, status: &Status) -> http::Response<tonic::body::Body> {
    let end = end_of_stream(Some(status));
    http::Response::builder()
        .header(header::CONTENT_TYPE, encoding.content_type())
        .body(tonic::body::Body::new(http_body_util::Full::new(end)))
        .unwrap_or_default()
}

/// The HTTP body of a relayed stream: each gRPC message re-encoded as it
/// is read, then what ends the stream.
struct Relay {
    encoding: Encoding,
    frames: Frames,
    output: MessageDescriptor,
    pool: DescriptorPool,
    over: bool,
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let relay = &mut *self;
        while !relay.over {
            let chunk = match ready!(relay.frames.poll_next(cx)) {
                Next::Message(bytes) => match encode(relay.encoding, &relay.output, bytes) {
                    Ok(chunk) => chunk,
                    Err(status) => relay.finish(Err(status)),
                },
                Next::End(end) => relay.finish(end),
            };
            if let Some(chunk) = chunk {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.over
    }
}

impl Relay {
    /// What ends the body: SSE writes an `error` event for a failure and
    /// nothing for success; Connect always writes its end-of-stream envelope.
    fn finish(&mut self, end: Result<(), Status>) -> Option<Bytes> {
        self.over = true;
        match (self.encoding, end) {
            (Encoding::ServerSentEvents, Ok(())) => None,
            (Encoding::ServerSentEvents, Err(status)) => {
                let http = error::http_status(status.code());
                let json = error::rest_json(&status, http, &self.pool);
                Some(Bytes::from(format!("event: error\ndata: {json}\n\n")))
            }
            (_, end) => Some(end_of_stream(end.err().as_ref())),
        }
    }
}

/// One message, as `encoding` writes it.
fn encode(
    encoding: Encoding,
    output: &MessageDescriptor,
    bytes: Bytes,
) -> Result<Option<Bytes>, Status> {
    if encoding == Encoding::ConnectProto {
        return Ok(Some(envelope(0, &bytes)));
    }
    let message = DynamicMessage::decode(output.clone(), bytes.as_ref())
        .map_err(|e| Status::internal(format!("undecodable response: {e}")))?;
    let json = serde_json::to_vec(&message)
        .map_err(|e| Status::internal(format!("unserializable response: {e}")))?;
    Ok(Some(match encoding {
        Encoding::ConnectJson | Encoding::ConnectProto => envelope(0, &json),
        Encoding::ServerSentEvents => {
            let mut event = BytesMut::new();
            let token = message
                .get_field_by_name("resume_token")
                .and_then(|value| value.as_str().map(str::to_owned))
                .filter(|token| !token.is_empty());
            if let Some(token) = token {
                event.put_slice(format!("id: {token}\n").as_bytes());
            }
            event.put_slice(b"data: ");
            event.put_slice(&json);
            event.put_slice(b"\n\n");
            event.freeze()
        }
    }))
}

fn end_of_stream(status: Option<&Status>) -> Bytes {
    let body: Value = match status {
        Some(status) => json!({ "error": error::connect_json(status) }),
        None => json!({}),
    };
    envelope(END_STREAM, body.to_string().as_bytes())
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 5);
    frame.put_u8(flags);
    frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    frame.put_slice(payload);
    frame.freeze()
}

/// The payload of a Connect request's single enveloped message.
pub fn unenvelope(body: &[u8]) -> Result<&[u8], Status> {
    let malformed = || {
        crate::rpc_error::with_reason(
            tonic::Code::InvalidArgument,
            "MALFORMED_MESSAGE",
            "a Connect streaming request is one enveloped message (flags, length, payload)",
        )
    };
    let (head, payload) = body.split_at_checked(5).ok_or_else(malformed)?;
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != 0 || payload.len() != length {
        return Err(malformed());
    }
    Ok(payload)
}

/// The `Last-Event-ID` a reconnecting `EventSource` sends, if any.
pub fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty())
}

/// The Connect streaming encoding of `headers`' content type, if it is one.
pub fn connect_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    match value.split(';').next()?.trim() {
        "application/connect+json" => Some(Encoding::ConnectJson),
        "application/connect+proto" => Some(Encoding::ConnectProto),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_envelopes_round_trip_and_junk_is_refused() {
        let framed = envelope(0, b"{}");
        assert_eq!(unenvelope(&framed).unwrap(), b"{}");
        assert!(unenvelope(b"\0\0\0").is_err());
        assert!(unenvelope(&[0, 0, 0, 0, 9, 1]).is_err());
        assert!(unenvelope(&envelope(END_STREAM, b"{}")).is_err());
        let end = end_of_stream(Some(&Status::not_found("gone")));
        assert_eq!(end[0], END_STREAM);
        let body: Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}
