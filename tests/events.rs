//! Case history and live updates end to end: the event log behind
//! `ListCaseEvents` and `WatchCases`, over real sockets, on SQLite (or
//! PostgreSQL with `CASEBOOK_TEST_POSTGRES`). Streams are read with a
//! bound on each wait; nothing here sleeps to let something happen.

mod common;

use std::{sync::Arc, time::Duration};

use casebook::pb::casebook::cases::v1::{
    Case, CaseEvent, CreateCaseRequest, DeleteCaseRequest, GetCaseRequest, ListCaseEventsRequest,
    UndeleteCaseRequest, UpdateCaseRequest, WatchCasesRequest, WatchCasesResponse,
    case::{Status, Type},
    case_event::Kind,
    case_service_client::CaseServiceClient,
};
use common::{CaseSvc, TestEnv, assert_reason, bearer};
use prost_types::FieldMask;
use tonic::{Code, Streaming, transport::Channel};

/// The longest any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(15);

/// A client acting as one user.
use common::CaseUser as As;

impl As {
    async fn create(&mut self, title: &str) -> Case {
        let case = Case {
            title: title.to_owned(),
            r#type: Type::Incident as i32,
            ..Case::default()
        };
        let request = CreateCaseRequest {
            case: Some(case),
            request_id: String::new(),
        };
        self.client
            .create_case(bearer(request, &self.token))
            .await
            .unwrap()
            .into_inner()
    }

    async fn update(&mut self, case: Case, mask: &[&str]) -> Result<Case, tonic::Status> {
        let request = UpdateCaseRequest {
            case: Some(case),
            update_mask: Some(FieldMask {
                paths: mask.iter().map(|p| (*p).to_owned()).collect(),
            }),
        };
        self.client
            .update_case(bearer(request, &self.token))
            .await
            .map(|r| r.into_inner())
    }

    async fn retitle(&mut self, case: &Case, title: &str) -> Case {
        let case = Case {
            name: case.name.clone(),
            title: title.to_owned(),
            ..Case::default()
        };
        self.update(case, &["title"]).await.unwrap()
    }

    async fn history(
        &mut self,
        name: &str,
        page_size: i32,
        page_token: &str,
    ) -> (Vec<CaseEvent>, String) {
        let request = ListCaseEventsRequest {
            parent: name.to_owned(),
            page_size,
            page_token: page_token.to_owned(),
        };
        let page = self
            .client
            .list_case_events(bearer(request, &self.token))
            .await
            .unwrap()
            .into_inner();
        (page.events, page.next_page_token)
    }

    async fn watch(&mut self, filter: &str, resume_token: &str) -> Watcher {
        let request = WatchCasesRequest {
            filter: filter.to_owned(),
            resume_token: resume_token.to_owned(),
        };
        let stream = self
            .client
            .watch_cases(bearer(request, &self.token))
            .await
            .unwrap()
            .into_inner();
        let mut watcher = Watcher {
            stream,
            token: String::new(),
        };
        // Every stream starts by saying where it stands.
        watcher.next().await.unwrap();
        watcher
    }
}

/// An open `WatchCases` stream and the resume token of its last message.
struct Watcher {
    stream: Streaming<WatchCasesResponse>,
    token: String,
}

impl Watcher {
    /// The next message (event or heartbeat), or the status the stream ended with.
    async fn next(&mut self) -> Result<WatchCasesResponse, tonic::Status> {
        let message = tokio::time::timeout(STEP, self.stream.message())
            .await
            .expect("the stream answered within the step limit")?
            .ok_or_else(|| tonic::Status::ok("the stream ended"))?;
        self.token = message.resume_token.clone();
        Ok(message)
    }

    /// The next event, skipping heartbeats.
    async fn event(&mut self) -> CaseEvent {
        loop {
            if let Some(event) = self.next().await.unwrap().event {
                return event;
            }
        }
    }

    /// The status the stream ends with, skipping whatever comes first.
    async fn end(&mut self) -> tonic::Status {
        loop {
            if let Err(status) = self.next().await {
                return status;
            }
        }
    }
}

fn seq(event: &CaseEvent) -> i64 {
    event.name.rsplit('/').next().unwrap().parse().unwrap()
}

fn change<'a>(event: &'a CaseEvent, field: &str) -> (&'a str, &'a str) {
    let change = event
        .changes
        .iter()
        .find(|c| c.field == field)
        .unwrap_or_else(|| panic!("{field} is not among the changes of {event:?}"));
    (&change.old_value, &change.new_value)
}

#[tokio::test]
async fn every_kind_of_change_is_in_the_history_with_its_fields_and_actor() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create("Printer on fire").await;
    let updated = alice
        .update(
            Case {
                name: case.name.clone(),
                title: "Printer smoking".into(),
                status: Status::InProgress as i32,
                ..Case::default()
            },
            &["title", "status"],
        )
        .await
        .unwrap();
    let delete = DeleteCaseRequest {
        name: case.name.clone(),
        ..Default::default()
    };
    let deleted = alice
        .client
        .delete_case(bearer(delete, &alice.token))
        .await
        .unwrap()
        .into_inner();
    let undelete = UndeleteCaseRequest {
        name: case.name.clone(),
        etag: deleted.etag.clone(),
    };
    alice
        .client
        .undelete_case(bearer(undelete, &alice.token))
        .await
        .unwrap();

    let (events, next) = alice.history(&case.name, 0, "").await;
    assert!(next.is_empty());
    let kinds: Vec<i32> = events.iter().map(|e| e.kind).collect();
    let newest_first = [Kind::Undeleted, Kind::Deleted, Kind::Updated, Kind::Created];
    assert_eq!(kinds, newest_first.map(|k| k as i32));
    for event in &events {
        assert_eq!(event.actor, "users/alice");
        assert_eq!(event.r#case, case.name);
        assert!(event.name.starts_with(&format!("{}/events/", case.name)));
        assert!(
            !event.request_id.is_empty(),
            "the call's x-request-id is kept"
        );
        assert!(event.event_time.is_some());
    }
    let [undeleted, deleted_event, updated_event, created] = &events[..] else {
        unreachable!()
    };
    assert_eq!(change(created, "title"), ("", "Printer on fire"));
    assert_eq!(change(created, "status"), ("", "OPEN"));
    assert_eq!(created.case_etag, case.etag);
    assert_eq!(
        change(updated_event, "title"),
        ("Printer on fire", "Printer smoking")
    );
    assert_eq!(change(updated_event, "status"), ("OPEN", "IN_PROGRESS"));
    assert_eq!(
        updated_event.changes.len(),
        2,
        "only what changed: {updated_event:?}"
    );
    assert_eq!(updated_event.case_etag, updated.etag);
    assert_eq!(change(deleted_event, "delete_time").0, "");
    assert!(!change(deleted_event, "purge_time").1.is_empty());
    assert_eq!(change(undeleted, "delete_time").1, "");
    assert!(seq(undeleted) > seq(deleted_event) && seq(updated_event) > seq(created));

    // Pages of two, newest first, with the same events.
    let (first, token) = alice.history(&case.name, 2, "").await;
    let (second, last) = alice.history(&case.name, 2, &token).await;
    assert!(last.is_empty());
    assert_eq!([first, second].concat(), events);
}

#[tokio::test]
async fn a_write_that_fails_records_nothing() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create("One").await;
    let stale = Case {
        name: case.name.clone(),
        title: "Two".into(),
        etag: "v99".into(),
        ..Case::default()
    };
    let refused = alice.update(stale, &["title"]).await.unwrap_err();
    assert_reason(&refused, Code::Aborted, "ETAG_MISMATCH");
    let undelete = UndeleteCaseRequest {
        name: case.name.clone(),
        etag: String::new(),
    };
    let refused = alice
        .client
        .undelete_case(bearer(undelete, &alice.token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::AlreadyExists, "CASE_NOT_DELETED");
    let (events, _) = alice.history(&case.name, 0, "").await;
    assert_eq!(events.len(), 1, "only the create: {events:?}");
}

#[tokio::test]
async fn nobody_sees_another_users_history_or_events() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut bob = As::user(&app, "bob").await;
    let mut bobs_watch = bob.watch("", "").await;
    let alices = alice.create("Alice's").await;
    alice.retitle(&alices, "Alice's, renamed").await;

    let request = ListCaseEventsRequest {
        parent: alices.name.clone(),
        ..Default::default()
    };
    let refused = bob
        .client
        .list_case_events(bearer(request, &bob.token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::NotFound, "CASE_NOT_FOUND");

    let bobs = bob.create("Bob's").await;
    let first = bobs_watch.event().await;
    assert_eq!(
        first.r#case, bobs.name,
        "Alice's two events never reached Bob"
    );
    // And Bob's resume token is useless to Alice.
    let request = WatchCasesRequest {
        filter: String::new(),
        resume_token: bobs_watch.token.clone(),
    };
    let refused = alice
        .client
        .watch_cases(bearer(request, &alice.token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::InvalidArgument, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn a_resumed_watch_continues_with_no_gap_and_no_duplicate() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut watch = alice.watch("", "").await;
    let mut made = Vec::new();
    for title in ["one", "two"] {
        made.push(alice.create(title).await.name);
    }
    let mut seen = vec![watch.event().await, watch.event().await];
    let resume_from = watch.token.clone();
    drop(watch);

    for title in ["three", "four", "five"] {
        made.push(alice.create(title).await.name);
    }
    let mut resumed = alice.watch("", &resume_from).await;
    for _ in 0..3 {
        seen.push(resumed.event().await);
    }
    made.push(alice.create("six").await.name);
    seen.push(resumed.event().await);

    let cases: Vec<&String> = seen.iter().map(|e| &e.r#case).collect();
    assert_eq!(cases, made.iter().collect::<Vec<_>>());
    let numbers: Vec<i64> = seen.iter().map(seq).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
}

#[tokio::test]
async fn a_filtered_watch_sends_changes_into_and_out_of_the_filter_only() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut closed = alice.watch("status = CLOSED", "").await;
    let case = alice.create("quiet").await;
    let close = Case {
        name: case.name.clone(),
        status: Status::Closed as i32,
        ..Case::default()
    };
    alice.update(close, &["status"]).await.unwrap();
    let reopen = Case {
        name: case.name.clone(),
        status: Status::Open as i32,
        ..Case::default()
    };
    alice.update(reopen, &["status"]).await.unwrap();
    let into = closed.event().await;
    let out_of = closed.event().await;
    assert_eq!(change(&into, "status"), ("OPEN", "CLOSED"));
    assert_eq!(change(&out_of, "status"), ("CLOSED", "OPEN"));
    assert_eq!(seq(&into), seq(&out_of) - 1, "the create was not sent");
}

/// The interleaving a single global sequence gets wrong: a write takes its
/// number, and before it commits, a second write of the same owner starts.
/// The second must neither commit first nor be numbered first, so a
/// watcher that has seen it has seen the first.
#[tokio::test]
async fn a_write_that_started_first_is_never_skipped_by_one_that_commits_first() {
    use case_svc::{
        feeds::Feeds,
        logged_write::{Event, EventWrite},
        request::Caller,
        store::CaseStore,
    };
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create("contended").await;
    let mut watch = alice.watch("", "").await;

    // The slow writer, through the service's own code on its own pool.
    let metrics = casebook::metrics::Metrics::new();
    let server = metrics.for_server("test");
    let mut args = app.case_config().service.database;
    args.database_max_connections = 2;
    let db = casebook::db::Database::connect(&args, &server)
        .await
        .unwrap();
    let feeds = Feeds::new(db.clone(), app.case_config().feed_settings(), &server);
    let store = CaseStore::open(db.clone(), feeds, app.case_config().create_batching())
        .await
        .unwrap();
    let owner = casebook::auth::UserId::new("alice");
    let id = case_svc::resource::CaseId::parse_name(&case.name, "name").unwrap();
    let row = store.get(&owner, id).await.unwrap();
    let caller = Caller {
        owner: owner.clone(),
        request_id: Some("slow".into()),
    };
    let event = Event {
        kind: Kind::Updated,
        caller: Some(&caller),
        changes: Vec::new(),
    };
    let mut slow = EventWrite::begin(&db, &owner).await.unwrap();
    slow.record(&event, &row, row.updated_at).await.unwrap();

    // The fast writer goes through the API while the slow one holds its number.
    let mut fast = alice.client.clone();
    let request = bearer(
        UpdateCaseRequest {
            case: Some(Case {
                name: case.name.clone(),
                title: "fast".into(),
                ..Case::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["title".into()],
            }),
        },
        &alice.token,
    );
    let fast = tokio::spawn(async move { fast.update_case(request).await });
    if app.db.is_postgres() {
        // Wait until the fast writer is really queued behind the slow one.
        let queued = common::eventually(STEP, async || {
            app.db
                .count(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = $1",
                    "Lock",
                )
                .await
                > 0
        })
        .await;
        assert!(queued, "the second write did not wait for the first");
    }
    slow.commit().await.unwrap();
    fast.await.unwrap().unwrap();

    let first = watch.event().await;
    let second = watch.event().await;
    assert_eq!(
        first.request_id, "slow",
        "the write that started first is first"
    );
    assert_eq!(seq(&second), seq(&first) + 1);
    assert_eq!(change(&second, "title").1, "fast");
}

#[tokio::test]
async fn a_purged_case_takes_its_history_along_and_old_resume_points_say_so() {
    let app = CaseSvc::start(|c| {
        c.case_retention = Duration::ZERO;
        c.case_purge_interval = Duration::from_millis(50);
    })
    .await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create("short-lived").await;
    let mut watch = alice.watch("", "").await;
    let before_delete = watch.token.clone();
    let delete = DeleteCaseRequest {
        name: case.name.clone(),
        ..Default::default()
    };
    alice
        .client
        .delete_case(bearer(delete, &alice.token))
        .await
        .unwrap();
    assert_eq!(watch.event().await.kind, Kind::Deleted as i32);
    let purged = watch.event().await;
    assert_eq!(purged.kind, Kind::Purged as i32);
    assert_eq!(purged.r#case, case.name);
    assert!(purged.actor.is_empty(), "the service purged it, not a user");

    let get = GetCaseRequest {
        name: case.name.clone(),
    };
    let gone = alice
        .client
        .get_case(bearer(get, &alice.token))
        .await
        .unwrap_err();
    assert_reason(&gone, Code::NotFound, "CASE_NOT_FOUND");
    let remaining = app
        .db
        .count(
            "SELECT count(*) FROM case_events WHERE user_id = $1 AND kind <> 'PURGED'",
            "alice",
        )
        .await;
    assert_eq!(remaining, 0, "the case's events went with it");

    let request = WatchCasesRequest {
        filter: String::new(),
        resume_token: before_delete,
    };
    let expired = alice
        .client
        .watch_cases(bearer(request, &alice.token))
        .await
        .unwrap_err();
    assert_reason(&expired, Code::OutOfRange, "RESUME_POINT_EXPIRED");
    // A resume point after the removed events is still complete.
    let mut resumed = alice.watch("", &watch.token).await;
    let later = alice.create("next").await;
    assert_eq!(resumed.event().await.r#case, later.name);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires_and_a_fresh_token_resumes_it() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut claims = common::claims("alice");
    claims["exp"] = (common::now() + 2).into();
    let short = app.issuer.keys[0].sign(&claims);
    let request = WatchCasesRequest::default();
    let stream = alice
        .client
        .watch_cases(bearer(request, &short))
        .await
        .unwrap()
        .into_inner();
    let mut watch = Watcher {
        stream,
        token: String::new(),
    };
    let made = alice.create("while watching").await;
    assert_eq!(watch.event().await.r#case, made.name);
    let ended = watch.end().await;
    assert_reason(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");

    let missed = alice.create("after expiry").await;
    let mut resumed = alice.watch("", &watch.token).await;
    assert_eq!(resumed.event().await.r#case, missed.name);
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_status_the_client_retries() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut watch = alice.watch("", "").await;
    let CaseSvc(common::Running { server, env, .. }) = app;
    let stopping = tokio::spawn(server.shutdown());
    let ended = watch.end().await;
    assert_reason(&ended, Code::Unavailable, "SHUTTING_DOWN");
    assert!(tonic_types::StatusExt::get_details_retry_info(&ended).is_some());
    stopping
        .await
        .unwrap()
        .expect("the drain finished within the grace period");
    drop(env);
}

#[tokio::test]
async fn watches_past_the_per_user_limit_are_refused_and_others_are_not() {
    let app = CaseSvc::start(|c| c.max_watches_per_user = 2).await;
    let mut alice = As::user(&app, "alice").await;
    let mut bob = As::user(&app, "bob").await;
    let _first = alice.watch("", "").await;
    let second = alice.watch("", "").await;
    let refused = alice
        .client
        .watch_cases(bearer(WatchCasesRequest::default(), &alice.token))
        .await
        .unwrap_err();
    assert_reason(&refused, Code::ResourceExhausted, "TOO_MANY_WATCHES");
    let _bobs = bob.watch("", "").await;
    drop(second);
    // A closed stream frees its place.
    let freed = common::eventually(STEP, async || {
        alice
            .client
            .watch_cases(bearer(WatchCasesRequest::default(), &alice.token))
            .await
            .is_ok()
    })
    .await;
    assert!(freed);
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_cut_off_and_resumes_where_it_was() {
    let app = CaseSvc::start(|c| {
        c.watch_buffer = 4;
        c.watch_heartbeat = Duration::from_millis(200);
    })
    .await;
    let mut alice = As::user(&app, "alice").await;
    // A client whose HTTP/2 window holds only a few events.
    let channel = Channel::from_shared(format!("http://{}", app.addr()))
        .unwrap()
        .initial_stream_window_size(2048)
        .connect()
        .await
        .unwrap();
    let mut slow_client = CaseServiceClient::new(channel);
    let stream = slow_client
        .watch_cases(bearer(WatchCasesRequest::default(), &alice.token))
        .await
        .unwrap()
        .into_inner();
    let mut slow = Watcher {
        stream,
        token: String::new(),
    };
    slow.next().await.unwrap();
    // The client reads nothing, and its window fills, until the server has
    // given up on it. The feed judges its watchers as it sends events, so
    // the writes go on until then.
    let mut made = Vec::new();
    let cut_off = common::eventually(STEP, async || {
        made.push(alice.create(&format!("burst {}", made.len())).await.name);
        app.sample("casebook_watch_slow_consumers_total") == Some(1.0)
    })
    .await;
    assert!(cut_off);
    let mut received = Vec::new();
    let ended = loop {
        match slow.next().await {
            Ok(message) => received.extend(message.event.map(|e| e.r#case)),
            Err(status) => break status,
        }
    };
    assert_reason(&ended, Code::ResourceExhausted, "SLOW_CONSUMER");
    assert!(received.len() < made.len(), "it was cut off early");
    let mut resumed = alice.watch("", &slow.token).await;
    while received.len() < made.len() {
        received.push(resumed.event().await.r#case);
    }
    assert_eq!(received, made, "every event once, in order");
}

/// PostgreSQL only: replicas share one database, and a commit on one
/// reaches watchers on the other through LISTEN/NOTIFY.
#[tokio::test]
async fn a_write_on_one_replica_reaches_watchers_on_both_even_after_the_listener_is_killed() {
    let env =
        Arc::new(TestEnv::new(common::Issuer::single(casebook::auth::Algorithm::EdDsa)).await);
    if !env.db.is_postgres() {
        eprintln!("SQLite is one process: cross-replica delivery is a PostgreSQL test");
        return;
    }
    // No polling: only notifications (and the reconnect's catch-up) deliver.
    let quiet = |c: &mut case_svc::Config| c.watch_poll_interval = Duration::from_secs(3600);
    let one = CaseSvc::start_in(Arc::clone(&env), quiet).await;
    let two = CaseSvc::start_in(Arc::clone(&env), quiet).await;
    let mut writer = As::user(&one, "alice").await;
    let mut on_two = As {
        client: two.client().await,
        token: writer.token.clone(),
    };
    let mut watch_one = writer.watch("", "").await;
    let mut watch_two = on_two.watch("", "").await;

    let first = writer.create("first").await;
    assert_eq!(watch_one.event().await.r#case, first.name);
    assert_eq!(watch_two.event().await.r#case, first.name);

    // Kill every LISTEN connection (both replicas'), then write again.
    let killed = env
        .db
        .count(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE $1",
            "LISTEN%",
        )
        .await;
    assert!(killed >= 2, "both replicas listen ({killed} killed)");
    let second = writer.create("second").await;
    assert_eq!(watch_two.event().await.r#case, second.name);
    let reconnected = common::eventually(STEP, async || {
        two.sample("casebook_watch_listener_reconnects_total")
            .is_some_and(|reconnects| reconnects > 0.0)
    })
    .await;
    assert!(reconnected);
    let third = writer.create("third").await;
    assert_eq!(watch_two.event().await.r#case, third.name);
}

/// PostgreSQL only: creates that arrive while the writer is busy share
/// one statement, and each still gets its own outcome: its own case (or,
/// for a repeated idempotency key, the first one's), its own event with
/// the owner's next `seq`, or its own error.
#[tokio::test]
async fn creates_queued_together_share_a_statement_and_each_keeps_its_own_outcome() {
    let app = CaseSvc::start(|c| c.create_writers = 1).await;
    if !app.db.is_postgres() {
        eprintln!("SQLite writes each create on its own: create batching is a PostgreSQL test");
        return;
    }
    let mut alice = As::user(&app, "alice").await;
    let mut bob = As::user(&app, "bob").await;
    let carol = As::user(&app, "carol").await;
    app.db.delete_user("carol").await;
    let mut watch = alice.watch("", "").await;

    // The writer's first statement waits on the lock; the rest queue.
    let lock = app.db.block_case_writes().await;
    const KEY: &str = "8f4b1e70-5d2a-4c1b-9a3e-2f6d7c8b9a01";
    let calls = [
        (&alice, "a1", ""),
        (&alice, "a2", ""),
        (&alice, "a3", KEY),
        (&alice, "a3 again", KEY),
        (&bob, "b1", ""),
        (&bob, "b2", ""),
        (&carol, "c1", ""),
    ];
    let pending: Vec<_> = calls
        .iter()
        .map(|(user, title, key)| {
            let mut client = user.client.clone();
            let request = CreateCaseRequest {
                case: Some(Case {
                    title: (*title).to_owned(),
                    r#type: Type::Question as i32,
                    ..Case::default()
                }),
                request_id: (*key).to_owned(),
            };
            let request = bearer(request, &user.token);
            tokio::spawn(async move { client.create_case(request).await })
        })
        .collect();
    let counter = |name: &str| app.sample(name).unwrap_or_default();
    let all_queued = common::eventually(STEP, async || {
        counter("casebook_case_create_batched_total") + counter("casebook_case_create_queued")
            == calls.len() as f64
    })
    .await;
    assert!(all_queued, "the creates did not all reach the queue");
    lock.release().await;
    let mut outcomes = Vec::new();
    for call in pending {
        outcomes.push(call.await.unwrap().map(tonic::Response::into_inner));
    }
    let batches = counter("casebook_case_create_batches_total");
    assert!(
        (1.0..=2.0).contains(&batches),
        "{} creates took {batches} statements",
        calls.len()
    );

    let created: Vec<Case> = outcomes[..6].iter().map(|o| o.clone().unwrap()).collect();
    assert_eq!(
        created[2].name, created[3].name,
        "one case per idempotency key"
    );
    let error = outcomes[6].as_ref().unwrap_err();
    assert_reason(error, Code::NotFound, "USER_NOT_FOUND");

    // Which of alice's calls reached the queue first is the server's
    // business; that her three cases got one event each, numbered with no
    // gap, is the guarantee.
    let mut seqs = Vec::new();
    let mut cases = Vec::new();
    for _ in 0..3 {
        let event = watch.event().await;
        assert_eq!(event.kind, Kind::Created as i32);
        assert_eq!(event.actor, "users/alice");
        seqs.push(seq(&event));
        cases.push(event.r#case);
    }
    assert_eq!(
        seqs,
        [seqs[0], seqs[0] + 1, seqs[0] + 2],
        "consecutive, no gap"
    );
    cases.sort();
    let mut made: Vec<String> = created[..3].iter().map(|c| c.name.clone()).collect();
    made.sort();
    assert_eq!(cases, made, "one event for each of alice's cases");
    for case in &created[4..] {
        let (events, _) = bob.history(&case.name, 10, "").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].actor, "users/bob");
        assert_eq!(change(&events[0], "title").1, case.title);
    }
    let orphans = app
        .db
        .count(
            "SELECT count(*) FROM case_events WHERE user_id = $1",
            "carol",
        )
        .await;
    assert_eq!(orphans, 0, "the refused create recorded nothing");
}

/// Server-Sent Events as a browser's `EventSource` reads them.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

/// One SSE event: its `event` type (empty for messages), `id` and `data`.
#[derive(Debug, Default)]
struct Sse {
    kind: String,
    id: String,
    data: String,
}

impl EventStream {
    async fn open(url: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.headers());
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> Sse {
        loop {
            if let Some((block, rest)) = self.buffer.split_once("\n\n") {
                let mut event = Sse::default();
                for line in block.lines() {
                    match line.split_once(": ") {
                        Some(("event", value)) => event.kind = value.to_owned(),
                        Some(("id", value)) => event.id = value.to_owned(),
                        Some(("data", value)) => event.data.push_str(value),
                        _ => {}
                    }
                }
                self.buffer = rest.to_owned();
                return event;
            }
            let chunk = tokio::time::timeout(STEP, self.response.chunk())
                .await
                .expect("an event within the step limit")
                .unwrap()
                .expect("the stream is still open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that carries a change, as JSON.
    async fn change(&mut self) -> serde_json::Value {
        loop {
            let event = self.next().await;
            assert_eq!(event.kind, "", "{event:?}");
            let message: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(message["resumeToken"], event.id.as_str());
            if !message["event"].is_null() {
                return message["event"].clone();
            }
        }
    }
}

#[tokio::test]
async fn server_sent_events_through_the_gateway_resume_with_last_event_id() {
    let stack = common::GatewayStack::start(1, |_| {}).await;
    let token = stack.env.user("alice").await;
    let mut alice = As {
        client: stack.cases[0].client().await,
        token: token.clone(),
    };
    let url = format!("http://{}/v1/cases:watch", stack.addr());
    let mut events = EventStream::open(&url, &token, None).await;
    let position = events.next().await;
    assert!(
        !position.id.is_empty(),
        "the first event says where the stream stands"
    );

    let first = alice.create("over SSE").await;
    let seen = events.change().await;
    assert_eq!(seen["case"], first.name.as_str());
    assert_eq!(seen["kind"], "CREATED");
    drop(events);

    // What happens while the browser is away arrives when it reconnects.
    let missed = alice.create("while away").await;
    let mut events = EventStream::open(&url, &token, Some(&position.id)).await;
    events.next().await;
    assert_eq!(events.change().await["case"], first.name.as_str());
    assert_eq!(events.change().await["case"], missed.name.as_str());

    // A filter rides in the query string; a bad one is a plain 400.
    let refused = reqwest::Client::new()
        .get(format!("{url}?filter=owner%3Dx"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let anonymous = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn connect_server_streaming_sends_enveloped_events_and_an_end_of_stream() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let url = format!(
        "http://{}/casebook.cases.v1.CaseService/WatchCases",
        app.addr()
    );
    let envelope = |payload: &[u8]| {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        framed.extend_from_slice(payload);
        framed
    };
    let mut response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&alice.token)
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .body(envelope(b"{}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/connect+json"
    );
    let mut buffer = Vec::new();
    let mut next = async || loop {
        if buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
            if buffer.len() >= 5 + length {
                let flags = buffer[0];
                let message: serde_json::Value =
                    serde_json::from_slice(&buffer[5..5 + length]).unwrap();
                buffer.drain(..5 + length);
                return (flags, message);
            }
        }
        let chunk = tokio::time::timeout(STEP, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buffer.extend_from_slice(&chunk);
    };
    let (flags, position) = next().await;
    assert_eq!(flags, 0);
    assert!(position["event"].is_null() && position["resumeToken"].is_string());
    let made = alice.create("over Connect").await;
    let (_, message) = next().await;
    assert_eq!(message["event"]["case"], made.name.as_str());

    // Errors travel in the end-of-stream envelope, with HTTP 200.
    let end_of_stream = async |version: &str, request: &[u8]| {
        let refused = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&alice.token)
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", version)
            .body(envelope(request))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 200);
        let body = tokio::time::timeout(STEP, refused.bytes())
            .await
            .expect("the stream ended at once")
            .unwrap();
        assert_eq!(body[0], 0b10, "the end-of-stream flag");
        serde_json::from_slice::<serde_json::Value>(&body[5..]).unwrap()
    };
    let forged = end_of_stream("1", br#"{"resumeToken":"forged"}"#).await;
    assert_eq!(forged["error"]["code"], "invalid_argument", "{forged}");
    // The Connect headers mean the same as on unary calls.
    let unsupported = end_of_stream("2", b"{}").await;
    assert_eq!(
        unsupported["error"]["code"], "invalid_argument",
        "{unsupported}"
    );
}

#[tokio::test]
async fn grpc_web_streams_through_the_gateway_outlive_the_call_ceiling_until_their_own() {
    let stack = common::GatewayStack::start_configured(
        1,
        |c| c.watch_heartbeat = Duration::from_millis(100),
        |g| {
            g.max_call_timeout = Duration::from_millis(300);
            g.max_stream_duration = Duration::from_millis(1500);
        },
    )
    .await;
    let token = stack.env.user("alice").await;
    let mut alice = As {
        client: stack.cases[0].client().await,
        token: token.clone(),
    };
    let position = alice.watch("", "").await.token;
    let made = alice.create("seen from the browser").await;
    let request = WatchCasesRequest {
        filter: String::new(),
        resume_token: position,
    };
    let authorization = format!("Bearer {token}");
    let reply = common::grpc_web(
        stack.addr(),
        "/casebook.cases.v1.CaseService/WatchCases",
        &request,
        &[("authorization", &authorization)],
        false,
    )
    .await;
    let messages: Vec<WatchCasesResponse> = reply
        .messages
        .iter()
        .map(|m| prost::Message::decode(m.clone()).unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.event.as_ref().is_some_and(|e| e.r#case == made.name)),
        "{messages:?}"
    );
    let heartbeats = messages.iter().filter(|m| m.event.is_none()).count();
    assert!(
        heartbeats >= 5,
        "heartbeats kept coming past the 300 ms call ceiling: {heartbeats}"
    );
    assert_eq!(reply.grpc_status(), Some(Code::DeadlineExceeded as i32));
}

#[tokio::test]
async fn streams_over_http_count_against_their_connections_stream_slots() {
    use http_body_util::{BodyExt, Full};
    let app = CaseSvc::start(|c| c.service.server.max_streams_per_connection = 2).await;
    let alice = As::user(&app, "alice").await;
    // One HTTP/2 connection, as a browser multiplexes a page's requests.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let open = || {
        let request = http::Request::post(format!(
            "http://{}/casebook.cases.v1.CaseService/WatchCases",
            app.addr()
        ))
        .header("authorization", format!("Bearer {}", alice.token))
        .header("content-type", "application/connect+json")
        .body(Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 2, b'{', b'}',
        ])))
        .unwrap();
        client.request(request)
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut body = open().await.unwrap().into_body();
        let first = tokio::time::timeout(STEP, body.frame()).await.unwrap();
        assert_eq!(
            first.unwrap().unwrap().into_data().unwrap()[0],
            0,
            "a message, not the end"
        );
        held.push(body);
    }
    let refused = open().await.unwrap().into_body().collect().await.unwrap();
    let refused = refused.to_bytes();
    assert_eq!(refused[0], 0b10, "only the end of the stream");
    let end: serde_json::Value = serde_json::from_slice(&refused[5..]).unwrap();
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");

    // A client that goes away cancels its call, and its slot is free again.
    drop(held.pop());
    let freed = common::eventually(STEP, async || {
        let mut body = open().await.unwrap().into_body();
        let first = body.frame().await;
        first.is_some_and(|frame| frame.is_ok_and(|f| f.into_data().is_ok_and(|d| d[0] == 0)))
    })
    .await;
    assert!(freed, "the dropped stream still holds its slot");
}

#[tokio::test]
async fn an_event_stream_that_fails_after_it_started_ends_with_an_error_event() {
    let stack = common::GatewayStack::start(1, |g| {
        g.max_stream_duration = Duration::from_millis(500);
    })
    .await;
    let token = stack.env.user("alice").await;
    let url = format!("http://{}/v1/cases:watch", stack.addr());
    let mut events = EventStream::open(&url, &token, None).await;
    let position = events.next().await;
    assert!(!position.id.is_empty());
    let failure = loop {
        let event = events.next().await;
        if event.kind == "error" {
            break event;
        }
    };
    let error: serde_json::Value = serde_json::from_str(&failure.data).unwrap();
    assert_eq!(error["error"]["status"], "DEADLINE_EXCEEDED", "{error}");
    assert_eq!(error["error"]["code"], 504);
}

#[tokio::test]
async fn a_deleted_user_takes_their_events_with_them() {
    const EVENTS_OF: &str = "SELECT count(*) FROM case_events WHERE user_id = $1";
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut bob = As::user(&app, "bob").await;
    alice.create("hers").await;
    alice.create("hers too").await;
    bob.create("his").await;
    assert_eq!(app.db.count(EVENTS_OF, "alice").await, 2);

    // Better Auth deletes the user; everything of theirs goes with them.
    app.db.delete_user("alice").await;
    assert_eq!(
        app.db.count(EVENTS_OF, "alice").await,
        0,
        "alice's events are gone"
    );
    assert_eq!(app.db.count(EVENTS_OF, "bob").await, 1, "bob's stay");
}
