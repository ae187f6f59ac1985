//! One `WatchCases` stream: catch up from the table, then follow the feed.
//!
//! The stream's position is the last `seq` it has accounted for (sent, or
//! skipped by the filter). Every message carries it as a resume token. The
//! feed's events are matched against it: an old one is a duplicate of what
//! catch-up read, the next one is sent, and one further ahead means a gap
//! (the feed started after this position), which is read from the table.
//! Because an owner's events commit in `seq` order (see `events`), reading
//! `seq > position` never skips one that commits later.
//!
//! Messages queue for the client in a channel of `WATCH_BUFFER`. When it is
//! full the stream waits, at most one heartbeat period: a client that takes
//! nothing for that long is cut off with `RESOURCE_EXHAUSTED` and resumes with
//! its last token. A stream the feed outran meanwhile simply catches up from
//! the table: the table is the buffer, and it is already there.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use casebook::{
    auth::AuthError,
    pb::casebook::cases::v1::{CaseEvent, WatchCasesResponse},
};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::{
    error::CaseError,
    events::{EventLog, EventRow},
    feeds::Subscription,
    list_query::{Filter, PageTokens},
    request::Caller,
};

/// How many events catch-up reads at a time.
const CATCH_UP_BATCH: i64 = 256;
/// The query resume tokens are bound to.
const RESUME_QUERY: &str = "watch";

/// What a stream needs besides its subscription.
pub struct Watch {
    /// Reads the table.
    pub log: EventLog,
    /// Signs resume tokens.
    pub tokens: Arc<PageTokens>,
    /// Whose cases.
    pub caller: Caller,
    /// Which cases.
    pub filter: Filter,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Messages queued for the client before it counts as too slow.
    pub buffer: usize,
    /// When the caller's token expires (seconds since the Unix epoch).
    pub expires_at: i64,
}

impl Watch {
    /// The position `token` resumes from: the event after which the stream continues.
    pub fn resume_point(&self, token: &str) -> Result<i64, CaseError> {
        self.tokens
            .open(self.caller.owner.as_str(), RESUME_QUERY, token)
            .map_err(|_| CaseError::InvalidResumeToken)
    }

    fn token(&self, position: i64) -> String {
        self.tokens
            .issue(self.caller.owner.as_str(), RESUME_QUERY, position)
    }

    /// Starts the stream at `position` (already checked against the log).
    pub fn start(self, subscription: Subscription, position: i64) -> WatchStream {
        let (messages, queue) = mpsc::channel(self.buffer.max(1));
        let (end, ended) = oneshot::channel();
        let expires = tokio::time::Instant::now() + until(self.expires_at);
        // Built outside the task, so the task holds one `Running`, not
        // also the parts it was built from.
        let mut stream = Running {
            watch: self,
            subscription,
            messages,
            position,
            expires,
        };
        tokio::spawn(async move {
            if let Some(status) = stream.run().await {
                let _ = end.send(status);
            }
        });
        WatchStream {
            queue,
            ended: Some(ended),
        }
    }
}

struct Running {
    watch: Watch,
    subscription: Subscription,
    messages: mpsc::Sender<Box<WatchCasesResponse>>,
    position: i64,
    /// When the caller's token expires.
    expires: tokio::time::Instant,
}

/// Why a stream ends: a status for the client, or nobody left to tell.
enum End {
    Status(Status),
    ClientGone,
}

impl From<CaseError> for End {
    fn from(error: CaseError) -> Self {
        Self::Status(error.into())
    }
}

impl Running {
    /// Runs until the stream ends; the status to end it with, if the client is still there.
    async fn run(&mut self) -> Option<Status> {
        match self.follow().await {
            End::Status(status) => Some(status),
            End::ClientGone => None,
        }
    }

    async fn follow(&mut self) -> End {
        // A stream opened "from now" learns its position at once, so it can
        // resume with no gap even if it drops before anything happens.
        // (Boxed, like everything a stream does once or seldom, so that its
        // task is only as large as its waiting.)
        if let Err(end) = Box::pin(self.send(None)).await {
            return end;
        }
        if let Err(end) = Box::pin(self.catch_up()).await {
            return end;
        }
        let period = self.watch.heartbeat;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let received = tokio::select! {
                biased;
                end = interrupted(self.subscription.closing.clone(), self.expires, &self.messages) => {
                    return end;
                }
                received = self.subscription.events.recv() => Some(received),
                _ = heartbeat.tick() => None,
            };
            // Boxed: sending (and perhaps catching up) is what a stream does
            // least; its waiting, in the `select!` above, should not carry
            // room for it.
            let step = Box::pin(async {
                match received {
                    Some(received) => self.receive(received).await,
                    None => self.send(None).await,
                }
            });
            if let Err(end) = step.await {
                return end;
            }
        }
    }

    async fn receive(&mut self, received: Result<Arc<EventRow>, RecvError>) -> Result<(), End> {
        match received {
            Ok(row) if row.seq <= self.position => Ok(()),
            Ok(row) if row.seq == self.position + 1 => self.deliver(&row).await,
            // Something between here and there was not broadcast to us, or
            // the feed outran us: the table has it all. (Boxed: a database
            // read is a large future, which delivering should not carry.)
            Ok(_) | Err(RecvError::Lagged(_)) => Box::pin(self.catch_up()).await,
            Err(RecvError::Closed) => Err(CaseError::ShuttingDown.into()),
        }
    }

    /// Sends every event in the table after the position.
    async fn catch_up(&mut self) -> Result<(), End> {
        loop {
            let rows = self
                .watch
                .log
                .after(&self.watch.caller.owner, self.position, CATCH_UP_BATCH)
                .await?;
            let full = rows.len() as i64 == CATCH_UP_BATCH;
            for row in rows {
                self.deliver(&row).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Accounts for `row`: sent if the filter wants it, skipped otherwise.
    async fn deliver(&mut self, row: &EventRow) -> Result<(), End> {
        self.position = row.seq;
        let (status, kind) = row.classification()?;
        let (was_status, was_kind) = row.previous_classification()?;
        let filter = &self.watch.filter;
        if filter.matches(status, kind) || filter.matches(was_status, was_kind) {
            self.send(Some(CaseEvent::try_from(row)?)).await?;
        }
        Ok(())
    }

    /// Queues a message (a heartbeat without an event) at the current
    /// position. When the queue is full the stream waits for the client, but
    /// not for longer than a heartbeat period: a client that takes nothing
    /// for that long is cut off. (While it waits, the feed may run ahead of
    /// it; it then catches up from the table, so waiting loses nothing.)
    async fn send(&mut self, event: Option<CaseEvent>) -> Result<(), End> {
        // Boxed: the queue allocates its slots in blocks, and an unboxed
        // message would make every idle stream's first block kilobytes.
        let message = Box::new(WatchCasesResponse {
            event,
            resume_token: self.watch.token(self.position),
        });
        let message = match self.messages.try_send(message) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(End::ClientGone),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        let closing = self.subscription.closing.clone();
        tokio::select! {
            end = interrupted(closing, self.expires, &self.messages) => Err(end),
            sent = self.messages.send(message) => sent.map_err(|_| End::ClientGone),
            () = tokio::time::sleep(self.watch.heartbeat) => Err(self.too_slow(self.watch.buffer)),
        }
    }

    fn too_slow(&self, buffered: usize) -> End {
        self.subscription.count_slow_consumer();
        CaseError::SlowConsumer { buffered }.into()
    }
}

/// Resolves when a stream must end whatever it is doing: the server is
/// closing, the token expired, or the client went away.
async fn interrupted(
    mut closing: watch::Receiver<bool>,
    expires: tokio::time::Instant,
    messages: &mpsc::Sender<Box<WatchCasesResponse>>,
) -> End {
    tokio::select! {
        _ = closing.wait_for(|closing| *closing) => CaseError::ShuttingDown.into(),
        () = tokio::time::sleep_until(expires) => End::Status(AuthError::TokenExpired.into()),
        () = messages.closed() => End::ClientGone,
    }
}

/// How long until `expires_at` (Unix seconds).
fn until(expires_at: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Duration::from_secs(
        u64::try_from(expires_at)
            .unwrap_or_default()
            .saturating_sub(now),
    )
}

/// The response stream: queued messages, then the status the stream ended with.
pub struct WatchStream {
    queue: mpsc::Receiver<Box<WatchCasesResponse>>,
    ended: Option<oneshot::Receiver<Status>>,
}

impl Stream for WatchStream {
    type Item = Result<WatchCasesResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.queue.poll_recv(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Ok(*message))),
            Poll::Pending => Poll::Pending,
            // The task is done, and it sent its status before letting go of the queue.
            Poll::Ready(None) => Poll::Ready(
                self.ended
                    .take()
                    .and_then(|mut ended| ended.try_recv().ok())
                    .map(Err),
            ),
        }
    }
}
