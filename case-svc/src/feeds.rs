//! Live delivery: one feed per owner somebody is watching, fed from the log.
//!
//! The event table is the truth; everything here is a wake-up. A commit in
//! this process wakes its owner's feed directly. On PostgreSQL it is also
//! announced to the other replicas: [`announce`] gathers the owners that
//! changed for a few milliseconds and sends them in one `NOTIFY` statement
//! from its own connection, and [`listen`] turns other replicas'
//! announcements into wake-ups here. Writes never `NOTIFY` themselves:
//! PostgreSQL serialises the commits of notifying transactions, and a
//! notification per write costs every replica's listener
//! (docs/benchmarks.md). A woken feed reads the owner's new events once and
//! broadcasts them to every watcher of that owner, so a write costs one
//! read however many tabs are open. A feed also
//! reads every `WATCH_POLL_INTERVAL` without being woken, which bounds how
//! late an event can be when a notification is lost; when the listener's
//! connection drops, every feed reads at once after it reconnects.
//!
//! Memory is bounded by the watchers: a feed exists while someone watches its
//! owner and holds at most [`FEED_BUFFER`] events; a watcher that falls
//! further behind reads what it missed from the table. Each watcher's
//! [`Place`] tells the feed how far it has got, so the feed, which sees every
//! event go out, can cut off one that stopped taking them.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use casebook::{
    auth::UserId,
    db::{Database, Pool},
    metrics::{SampleKind, ServerMetrics},
};
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};
use tokio_stream::wrappers::BroadcastStream;

use crate::{
    error::CaseError,
    events::{CHANNEL, EventLog, EventRow},
};

/// How many events a feed reads from the table at a time.
const READ_BATCH: i64 = 256;
/// Events a feed holds for its watchers between their reads. A watcher
/// drains it as fast as its client reads, and one that falls behind
/// catches up from the table, so this only needs to cover a burst of one
/// owner's writes; each feed allocates it whole, and there is a feed per
/// watched owner.
const FEED_BUFFER: usize = 16;

/// Limits and timings of live delivery.
#[derive(Clone, Copy, Debug)]
pub struct FeedSettings {
    /// Events a watcher may fall behind its feed before it counts as too slow.
    pub buffer: usize,
    /// Heartbeat period of an idle stream; also how long a watcher too far
    /// behind may take nothing before it is cut off.
    pub heartbeat: Duration,
    /// How often a feed reads the table without being woken.
    pub poll_interval: Duration,
    /// Open watch streams per user.
    pub max_watches_per_user: usize,
}

/// Every feed in this process.
pub struct Feeds {
    log: EventLog,
    settings: FeedSettings,
    feeds: Mutex<HashMap<UserId, Weak<Feed>>>,
    /// Owners whose changes the other replicas have not been told of yet
    /// (PostgreSQL only), and the announcer's wake-up.
    unannounced: Option<Mutex<HashSet<UserId>>>,
    announce: Notify,
    /// Tells this replica's announcements from the others'.
    replica: String,
    /// Set (under the `feeds` lock) when the server starts shutting down.
    closing: AtomicBool,
    /// What [`Place::asked`] counts from.
    epoch: Instant,
    watchers: AtomicUsize,
    slow_consumers: AtomicU64,
    listener_reconnects: AtomicU64,
}

/// One owner's feed: shared by every stream watching that owner.
pub struct Feed {
    owner: UserId,
    /// Taken when the server closes, which ends every watcher's events.
    events: Mutex<Option<broadcast::Sender<Arc<EventRow>>>>,
    /// Where its watchers are.
    places: Mutex<Vec<Weak<Place>>>,
    wake: Arc<Notify>,
    watchers: AtomicUsize,
    feeds: Weak<Feeds>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Let the reading task see that nobody is left, and forget the owner.
        self.wake.notify_one();
        if let Some(feeds) = self.feeds.upgrade() {
            let mut map = feeds.feeds.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&self.owner).is_some_and(|f| f.strong_count() == 0) {
                map.remove(&self.owner);
            }
        }
    }
}

/// How far one watcher has got, shared between its stream and its feed.
#[derive(Debug, Default)]
pub struct Place {
    /// The last event the stream accounted for.
    position: AtomicI64,
    /// When the stream last asked for more, in ms since [`Feeds::epoch`].
    asked: AtomicU64,
    /// Set by the feed when the stream stopped asking too far behind.
    cut_off: AtomicBool,
}

/// A watcher's subscription to its owner's feed; leaving drops it.
pub struct Subscription {
    feed: Arc<Feed>,
    feeds: Arc<Feeds>,
    place: Arc<Place>,
    /// Events as the feed reads them; they end when the server closes.
    pub events: BroadcastStream<Arc<EventRow>>,
}

impl Subscription {
    /// The stream asks for more at `position`: refused once the feed has
    /// cut it off for having stopped asking.
    pub fn ask(&self, position: i64) -> Result<(), CaseError> {
        self.place.position.store(position, Ordering::Relaxed);
        self.place.asked.store(self.feeds.now(), Ordering::Relaxed);
        if self.place.cut_off.load(Ordering::Relaxed) {
            return Err(CaseError::SlowConsumer {
                behind: self.feeds.settings.buffer,
            });
        }
        Ok(())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.feed.watchers.fetch_sub(1, Ordering::Relaxed);
        self.feeds.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Feeds {
    /// No feeds yet, reading from `db`; reported in `metrics`.
    pub fn new(db: Database, settings: FeedSettings, metrics: &ServerMetrics) -> Arc<Self> {
        let shared_by_replicas = matches!(db.pool(), Pool::Postgres(_));
        let feeds = Arc::new(Self {
            log: EventLog::new(db),
            settings,
            feeds: Mutex::default(),
            unannounced: shared_by_replicas.then(Mutex::default),
            announce: Notify::new(),
            replica: uuid::Uuid::now_v7().simple().to_string(),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            watchers: AtomicUsize::new(0),
            slow_consumers: AtomicU64::new(0),
            listener_reconnects: AtomicU64::new(0),
        });
        feeds.report_to(metrics);
        feeds
    }

    /// The settings.
    pub fn settings(&self) -> FeedSettings {
        self.settings
    }

    /// Milliseconds since `epoch`: the clock of [`Place::asked`].
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Joins `owner`'s feed, creating it if nobody watches them yet.
    /// Refused past `MAX_WATCHES_PER_USER`, and once the server is closing.
    pub async fn subscribe(self: &Arc<Self>, owner: &UserId) -> Result<Subscription, CaseError> {
        let feed = match self.find(owner) {
            Some(feed) => feed,
            None => {
                // Read before the feed exists: whatever commits after this
                // read is the feed's to deliver; what committed before it, the
                // watcher reads itself.
                let head = self.log.head(owner).await?;
                let mut map = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
                if self.closing.load(Ordering::Relaxed) {
                    return Err(CaseError::ShuttingDown);
                }
                match map.get(owner).and_then(Weak::upgrade) {
                    Some(feed) => feed,
                    None => {
                        let feed = self.start_feed(owner, head.seq);
                        map.insert(owner.clone(), Arc::downgrade(&feed));
                        feed
                    }
                }
            }
        };
        let events = feed
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(broadcast::Sender::subscribe)
            .ok_or(CaseError::ShuttingDown)?;
        let limit = self.settings.max_watches_per_user;
        if feed.watchers.fetch_add(1, Ordering::Relaxed) >= limit {
            feed.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(CaseError::TooManyWatches { limit });
        }
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let place = Arc::new(Place::default());
        place.asked.store(self.now(), Ordering::Relaxed);
        {
            let mut places = feed.places.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget those who left, so the list is as long as the watchers.
            places.retain(|place| place.strong_count() > 0);
            places.push(Arc::downgrade(&place));
        }
        Ok(Subscription {
            events: BroadcastStream::new(events),
            feed,
            feeds: Arc::clone(self),
            place,
        })
    }

    fn find(&self, owner: &UserId) -> Option<Arc<Feed>> {
        let map = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(owner).and_then(Weak::upgrade)
    }

    fn start_feed(self: &Arc<Self>, owner: &UserId, after: i64) -> Arc<Feed> {
        let (events, _) = broadcast::channel(FEED_BUFFER);
        let wake = Arc::new(Notify::new());
        let feed = Arc::new(Feed {
            owner: owner.clone(),
            events: Mutex::new(Some(events)),
            places: Mutex::default(),
            wake: Arc::clone(&wake),
            watchers: AtomicUsize::new(0),
            feeds: Arc::downgrade(self),
        });
        tokio::spawn(follow(
            Arc::downgrade(&feed),
            wake,
            self.log.clone(),
            after,
            self.settings.poll_interval,
        ));
        feed
    }

    /// `owner` committed a change here: wakes the owner's feed, and queues
    /// the news for the other replicas.
    pub fn committed(&self, owner: &UserId) {
        self.wake(owner);
        if let Some(unannounced) = &self.unannounced {
            let mut owners = unannounced.lock().unwrap_or_else(PoisonError::into_inner);
            owners.insert(owner.clone());
            self.announce.notify_one();
        }
    }

    /// `owner` committed a change (here, or in another replica).
    fn wake(&self, owner: &UserId) {
        if let Some(feed) = self.find(owner) {
            feed.wake.notify_one();
        }
    }

    /// Notifications may have been lost: every feed reads the table.
    pub fn wake_all(&self) {
        for feed in self.all() {
            feed.wake.notify_one();
        }
    }

    /// Ends every stream (with a status the client retries) and refuses new ones.
    pub fn close(&self) {
        for feed in self.all_and(|| self.closing.store(true, Ordering::Relaxed)) {
            // Its watchers see the end of their events after what is buffered.
            drop(
                feed.events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
        }
    }

    /// Every feed, after running `then` under the lock that creates feeds.
    /// (They are collected first because dropping the last handle to a feed
    /// takes that lock again.)
    fn all_and(&self, then: impl FnOnce()) -> Vec<Arc<Feed>> {
        let map = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        then();
        map.values().filter_map(Weak::upgrade).collect()
    }

    fn all(&self) -> Vec<Arc<Feed>> {
        self.all_and(|| {})
    }

    fn report_to(self: &Arc<Self>, metrics: &ServerMetrics) {
        let feeds = Arc::downgrade(self);
        metrics.report(move |samples| {
            let Some(feeds) = feeds.upgrade() else {
                return false;
            };
            let open = feeds.feeds.lock().map(|m| m.len()).unwrap_or_default();
            let gauges = [
                (
                    "casebook_watch_streams",
                    "Open WatchCases streams",
                    feeds.watchers.load(Ordering::Relaxed) as f64,
                ),
                (
                    "casebook_watch_feeds",
                    "Owners with at least one open watch stream",
                    open as f64,
                ),
            ];
            for (name, help, value) in gauges {
                samples.push(name, help, SampleKind::Gauge, vec![], value);
            }
            samples.counters([
                (
                    "casebook_watch_slow_consumers",
                    "Watch streams cut off for taking nothing for a heartbeat period while WATCH_BUFFER events behind",
                    feeds.slow_consumers.load(Ordering::Relaxed),
                ),
                (
                    "casebook_watch_listener_reconnects",
                    "Times the PostgreSQL LISTEN connection was lost and re-established",
                    feeds.listener_reconnects.load(Ordering::Relaxed),
                ),
            ]);
            true
        });
    }
}

/// A feed's reading task: after every wake-up (or poll interval), reads
/// the owner's events after the last one it read and broadcasts them. Ends
/// when the feed is gone.
async fn follow(
    feed: Weak<Feed>,
    wake: Arc<Notify>,
    log: EventLog,
    mut last: i64,
    poll_interval: Duration,
) {
    loop {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(poll_interval) => {}
        }
        let Some(feed) = feed.upgrade() else { return };
        feed.cut_off_stalled(last);
        // Boxed: a database read is a large future, and a feed spends its
        // life waiting, so its task should not carry room for one.
        last = Box::pin(publish_new(&feed, &log, last)).await;
    }
}

impl Feed {
    /// Cuts off every watcher that is more than `WATCH_BUFFER` events
    /// behind `head` (what this feed has sent so far) and has not asked for
    /// more for a heartbeat period: its client stopped reading. A watcher
    /// that reads, however far behind, asks as it goes.
    fn cut_off_stalled(&self, head: i64) {
        let Some(feeds) = self.feeds.upgrade() else {
            return;
        };
        let (now, settings) = (feeds.now(), feeds.settings);
        let patience = u64::try_from(settings.heartbeat.as_millis()).unwrap_or(u64::MAX);
        let places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        for place in places.iter().filter_map(Weak::upgrade) {
            let behind = head.saturating_sub(place.position.load(Ordering::Relaxed));
            let waited = now.saturating_sub(place.asked.load(Ordering::Relaxed));
            if usize::try_from(behind).is_ok_and(|behind| behind > settings.buffer)
                && waited >= patience
                && !place.cut_off.swap(true, Ordering::Relaxed)
            {
                feeds.slow_consumers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Broadcasts `feed`'s events after `last`; returns the last one sent.
async fn publish_new(feed: &Feed, log: &EventLog, mut last: i64) -> i64 {
    loop {
        match log.after(&feed.owner, last, READ_BATCH).await {
            Ok(rows) => {
                let full = rows.len() as i64 == READ_BATCH;
                let events = feed.events.lock().unwrap_or_else(PoisonError::into_inner);
                for row in rows {
                    last = row.seq;
                    // No receiver right now is fine: watchers read the table
                    // first. No sender is fine too: the server is closing.
                    if let Some(events) = events.as_ref() {
                        let _ = events.send(Arc::new(row));
                    }
                }
                drop(events);
                if !full {
                    return last;
                }
            }
            Err(error) => {
                // Watchers stay connected; the next wake-up or poll retries.
                tracing::warn!(%error, "reading new case events failed");
                return last;
            }
        }
    }
}

/// How long the announcer gathers owners before it sends them: at most
/// this many `NOTIFY` statements per second, whatever the write rate, for
/// that much more latency across replicas.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(5);
/// Owners per notification (a payload must stay under PostgreSQL's 8,000 bytes).
const OWNERS_PER_NOTIFICATION: usize = 100;

/// One notification: which replica, and which owners changed there.
#[derive(serde::Serialize, serde::Deserialize)]
struct Announcement {
    #[serde(rename = "r")]
    replica: String,
    #[serde(rename = "o")]
    owners: Vec<String>,
}

/// On PostgreSQL, tells the other replicas which owners changed here, for
/// as long as the server runs (it owns the returned future): every
/// [`ANNOUNCE_EVERY`] at most, one statement with a notification per
/// [`OWNERS_PER_NOTIFICATION`] owners. A failed batch is logged and dropped;
/// the other replicas' feeds re-read within `WATCH_POLL_INTERVAL` anyway.
/// On SQLite it returns at once.
pub async fn announce(feeds: Arc<Feeds>, db: Database) {
    static ANNOUNCE: &str =
        "SELECT count(pg_notify($1, payload)) FROM unnest($2::text[]) AS payload";
    let (Some(unannounced), Pool::Postgres(pool)) = (&feeds.unannounced, db.pool()) else {
        return;
    };
    // A notification is a wake-up, not data: a crash that loses one loses
    // nothing the table does not hold, so its commit (which has an xid, for
    // the queue) need not wait for a WAL flush beside the writes' own.
    let pool = own_connection(pool, Some("SET synchronous_commit = off"));
    loop {
        feeds.announce.notified().await;
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        let owners: Vec<String> = {
            let mut owners = unannounced.lock().unwrap_or_else(PoisonError::into_inner);
            owners
                .drain()
                .map(|owner| owner.as_str().to_owned())
                .collect()
        };
        let payloads: Vec<String> = owners
            .chunks(OWNERS_PER_NOTIFICATION)
            .filter_map(|chunk| {
                let announcement = Announcement {
                    replica: feeds.replica.clone(),
                    owners: chunk.to_vec(),
                };
                serde_json::to_string(&announcement).ok()
            })
            .collect();
        if payloads.is_empty() {
            continue;
        }
        let sent = sqlx::query(ANNOUNCE)
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, owners = owners.len(), "announcing changes to the other replicas failed");
        }
    }
}

/// A pool of one connection beside the request pool, for work that holds a
/// connection for good (`LISTEN`) or must not queue behind calls (`NOTIFY`).
/// `setup` runs on each new connection (a `SET` for the session: a
/// statement, not a startup option, so that it passes any proxy).
fn own_connection(pool: &sqlx::PgPool, setup: Option<&'static str>) -> sqlx::PgPool {
    let mut options = sqlx::postgres::PgPoolOptions::new().max_connections(1);
    if let Some(setup) = setup {
        options = options.after_connect(move |connection, _| {
            Box::pin(async move { sqlx::Executor::execute(connection, setup).await.map(drop) })
        });
    }
    options.connect_lazy_with((*pool.connect_options()).clone())
}

/// On PostgreSQL, turns the other replicas' announcements into wake-ups
/// here, for as long as the server runs (it owns the returned future). A dropped
/// connection is re-established and followed by a read of every feed, since
/// notifications sent meanwhile are gone. On SQLite (one process) it
/// returns at once: in-process wake-ups are all there is.
pub async fn listen(feeds: Arc<Feeds>, db: Database) {
    let Pool::Postgres(pool) = db.pool() else {
        return;
    };
    let pool = own_connection(pool, None);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything committed while there was no listener.
        feeds.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    // This replica woke its own feeds at commit.
                    if let Ok(announced) =
                        serde_json::from_str::<Announcement>(notification.payload())
                        && announced.replica != feeds.replica
                    {
                        for owner in announced.owners {
                            feeds.wake(&UserId::new(owner));
                        }
                    }
                }
                Ok(None) => {
                    // Reconnected (and listening again) after losing the connection.
                    feeds.listener_reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("LISTEN connection was lost and re-established");
                    feeds.wake_all();
                }
                Err(error) => {
                    feeds.listener_reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}
