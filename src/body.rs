//! Reading a whole request body into memory, bounded three ways: one body
//! holds at most its limit, all bodies of the process together at most
//! `MAX_BUFFERED_BYTES`, and a body must arrive within `BODY_TIMEOUT`, so
//! clients that send all but the last byte hold neither memory nor a task
//! for long. The gateway buffers every call this way (to retry it on another
//! replica) and the HTTP/JSON front door every REST and Connect body.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};

use crate::rpc_error;

/// The bytes every buffered body may take together, shared by a process.
#[derive(Clone, Debug)]
pub struct BufferBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BufferBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    fn take(&self, bytes: usize) -> Result<OwnedSemaphorePermit, BodyError> {
        let busy = BodyError::Busy { total: self.total };
        let bytes = u32::try_from(bytes).map_err(|_| busy.clone())?;
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(bytes)
            .map_err(|_| busy)
    }
}

/// How one body may be read.
#[derive(Clone, Debug)]
pub struct BodyLimits {
    /// The most bytes one body may have.
    pub max_bytes: usize,
    /// Time the whole body has to arrive.
    pub timeout: Duration,
    /// What all bodies together may hold.
    pub budget: BufferBudget,
}

/// Why a body was not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Longer than its limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not complete within the body timeout.
    #[error("the request body did not arrive within {0:?} (BODY_TIMEOUT)")]
    Timeout(Duration),
    /// The process holds `MAX_BUFFERED_BYTES` of bodies already.
    #[error("the server is buffering {total} bytes of requests already; retry with backoff")]
    Busy {
        /// `MAX_BUFFERED_BYTES`.
        total: usize,
    },
    /// The client's stream failed.
    #[error("the request body could not be read: {0}")]
    Failed(String),
}

impl BodyError {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "REQUEST_TOO_LARGE",
            Self::Timeout(_) => "REQUEST_BODY_TIMEOUT",
            Self::Busy { .. } => "SERVER_BUSY",
            Self::Failed(_) => "REQUEST_BODY_FAILED",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::TooLarge { .. } | Self::Busy { .. } => Code::ResourceExhausted,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Failed(_) => Code::Cancelled,
        }
    }

    /// The HTTP status a REST or Connect client gets.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            Self::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            Self::Timeout(_) => http::StatusCode::REQUEST_TIMEOUT,
            Self::Busy { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            Self::Failed(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

impl From<BodyError> for Status {
    fn from(error: BodyError) -> Self {
        rpc_error::with_reason(error.code(), error.reason(), error.to_string())
    }
}

/// The whole of `body` within `limits`, and the budget it holds until the
/// permit is dropped.
pub async fn read<B>(
    body: B,
    limits: &BodyLimits,
) -> Result<(Bytes, OwnedSemaphorePermit), BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut buffer = bytes::BytesMut::new();
        let mut held = limits.budget.take(0)?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| BodyError::Failed(error.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buffer.len() + data.len() > limits.max_bytes {
                return Err(BodyError::TooLarge {
                    limit: limits.max_bytes,
                });
            }
            held.merge(limits.budget.take(data.len())?);
            buffer.extend_from_slice(&data);
        }
        Ok((buffer.freeze(), held))
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| BodyError::Timeout(limits.timeout))?
}
