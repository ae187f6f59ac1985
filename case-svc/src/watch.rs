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
//! The stream is pulled, not pushed: it is the response body's source, and
//! does its work when the connection asks it for the next message. It has no
//! task and no queue of its own, so an open stream costs its state and
//! nothing more, and a client that stops reading stops asking and makes
//! nothing grow. Its feed notices: a watcher that has not asked for a
//! heartbeat period while more than `WATCH_BUFFER` events behind is cut off,
//! ends `RESOURCE_EXHAUSTED` when next asked, and resumes with its last
//! token. A stream the feed outran simply catches up from the table: the
//! table is the buffer, and it is already there.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use casebook::{
    auth::AuthError,
    pb::casebook::cases::v1::{CaseEvent, WatchCasesResponse},
};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, wrappers::errors::BroadcastStreamRecvError};
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
        let now = Instant::now();
        let expires = now + until(self.expires_at);
        let timer = Box::pin(tokio::time::sleep_until(
            (now + self.heartbeat).min(expires),
        ));
        let mut running = Running {
            watch: self,
            subscription,
            position,
            expires,
            timer,
            started: false,
            catch_up: CatchUp::Following,
        };
        // What committed between the position and the subscription.
        running.read_after_position();
        WatchStream {
            running: Some(running),
        }
    }
}

/// The response stream: messages until the stream ends with a status.
pub struct WatchStream {
    /// `None` once the stream has ended (its subscription given up at once).
    running: Option<Running>,
}

impl Stream for WatchStream {
    type Item = Result<WatchCasesResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(running) = self.running.as_mut() else {
            return Poll::Ready(None);
        };
        let next = ready!(running.poll_message(cx));
        if next.is_err() {
            self.running = None;
        }
        Poll::Ready(Some(next))
    }
}

struct Running {
    watch: Watch,
    subscription: Subscription,
    position: i64,
    /// When the caller's token expires.
    expires: Instant,
    /// The next heartbeat, or the token's expiry if that comes first.
    timer: Pin<Box<Sleep>>,
    /// Whether the first message, which tells the position, has gone out.
    started: bool,
    catch_up: CatchUp,
}

type Read = Pin<Box<dyn Future<Output = Result<Vec<EventRow>, CaseError>> + Send>>;

/// Where reading from the table is.
enum CatchUp {
    /// Not reading: following the feed.
    Following,
    /// A batch is being read (boxed, like everything a stream does seldom,
    /// so that an idle stream is only as large as its waiting).
    Reading(Read),
    /// A batch being delivered; `full` if more may follow it.
    Delivering {
        rows: std::vec::IntoIter<EventRow>,
        full: bool,
    },
}

impl Running {
    /// The next message, or the status the stream ends with.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<WatchCasesResponse, Status>> {
        self.subscription.ask(self.position)?;
        if Instant::now() >= self.expires {
            return Poll::Ready(Err(AuthError::TokenExpired.into()));
        }
        // A stream opened "from now" learns its position at once, so it can
        // resume with no gap even if it drops before anything happens.
        if !self.started {
            self.started = true;
            return Poll::Ready(Ok(self.message(None)));
        }
        loop {
            let row = match &mut self.catch_up {
                CatchUp::Delivering { rows, full } => match (rows.next(), *full) {
                    (Some(row), _) => row,
                    (None, true) => {
                        self.read_after_position();
                        continue;
                    }
                    (None, false) => {
                        self.catch_up = CatchUp::Following;
                        continue;
                    }
                },
                CatchUp::Reading(read) => match read.as_mut().poll(cx) {
                    Poll::Ready(rows) => {
                        let rows = rows?;
                        let full = rows.len() as i64 == CATCH_UP_BATCH;
                        let rows = rows.into_iter();
                        self.catch_up = CatchUp::Delivering { rows, full };
                        continue;
                    }
                    Poll::Pending => return self.poll_heartbeat(cx),
                },
                CatchUp::Following => match Pin::new(&mut self.subscription.events).poll_next(cx) {
                    Poll::Ready(Some(Ok(row))) if row.seq <= self.position => continue,
                    Poll::Ready(Some(Ok(row))) if row.seq == self.position + 1 => {
                        match self.deliver(&row)? {
                            Some(message) => return Poll::Ready(Ok(message)),
                            None => continue,
                        }
                    }
                    // Something between here and there was not broadcast to
                    // us, or the feed outran us: the table has it all.
                    Poll::Ready(Some(Ok(_) | Err(BroadcastStreamRecvError::Lagged(_)))) => {
                        self.read_after_position();
                        continue;
                    }
                    Poll::Ready(None) => return Poll::Ready(Err(CaseError::ShuttingDown.into())),
                    Poll::Pending => return self.poll_heartbeat(cx),
                },
            };
            if let Some(message) = self.deliver(&row)? {
                return Poll::Ready(Ok(message));
            }
        }
    }

    /// A heartbeat when the timer says so, or the end when the token has expired.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Poll<Result<WatchCasesResponse, Status>> {
        ready!(self.timer.as_mut().poll(cx));
        let now = Instant::now();
        if now >= self.expires {
            return Poll::Ready(Err(AuthError::TokenExpired.into()));
        }
        let next = (now + self.watch.heartbeat).min(self.expires);
        self.timer.as_mut().reset(next);
        Poll::Ready(Ok(self.message(None)))
    }

    /// Starts reading the events after the position from the table.
    fn read_after_position(&mut self) {
        let (log, owner) = (self.watch.log.clone(), self.watch.caller.owner.clone());
        let after = self.position;
        self.catch_up = CatchUp::Reading(Box::pin(async move {
            log.after(&owner, after, CATCH_UP_BATCH).await
        }));
    }

    /// Accounts for `row`: the message to send if the filter wants it.
    fn deliver(&mut self, row: &EventRow) -> Result<Option<WatchCasesResponse>, CaseError> {
        self.position = row.seq;
        let (status, kind) = row.classification()?;
        let (was_status, was_kind) = row.previous_classification()?;
        let filter = &self.watch.filter;
        if !filter.matches(status, kind) && !filter.matches(was_status, was_kind) {
            return Ok(None);
        }
        Ok(Some(self.message(Some(CaseEvent::try_from(row)?))))
    }

    /// A message at the current position (a heartbeat, without an event).
    fn message(&self, event: Option<CaseEvent>) -> WatchCasesResponse {
        WatchCasesResponse {
            event,
            resume_token: self.watch.token(self.position),
        }
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
