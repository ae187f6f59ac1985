//! case-svc end to end: real gRPC over a socket, real database (SQLite, or
//! PostgreSQL with `CASEBOOK_TEST_POSTGRES`), tokens verified against a real
//! JWKS. Each test reads as the behaviour it pins.

mod common;

use std::{collections::HashSet, time::Duration};

use casebook::metrics::Metrics;
use casebook::pb::casebook::cases::v1::{
    Case, CreateCaseRequest, DeleteCaseRequest, GetCaseRequest, ListCasesRequest,
    UndeleteCaseRequest, UpdateCaseRequest,
    case::{Status, Type},
    case_service_client::CaseServiceClient,
};
use common::{CaseSvc, TestEnv, assert_reason, bearer, eventually};
use prost_types::FieldMask;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// A client acting as one user.
use common::CaseUser as As;

impl As {
    fn draft(title: &str) -> Case {
        Case {
            title: title.to_owned(),
            r#type: Type::Incident as i32,
            ..Case::default()
        }
    }

    async fn create(&mut self, case: Case) -> Result<Case, tonic::Status> {
        self.create_with_id(case, "").await
    }

    async fn create_with_id(
        &mut self,
        case: Case,
        request_id: &str,
    ) -> Result<Case, tonic::Status> {
        let request = CreateCaseRequest {
            case: Some(case),
            request_id: request_id.to_owned(),
        };
        Ok(self
            .client
            .create_case(bearer(request, &self.token))
            .await?
            .into_inner())
    }

    async fn get(&mut self, name: &str) -> Result<Case, tonic::Status> {
        let request = GetCaseRequest {
            name: name.to_owned(),
        };
        Ok(self
            .client
            .get_case(bearer(request, &self.token))
            .await?
            .into_inner())
    }

    async fn list(
        &mut self,
        request: ListCasesRequest,
    ) -> Result<(Vec<Case>, String), tonic::Status> {
        let response = self
            .client
            .list_cases(bearer(request, &self.token))
            .await?
            .into_inner();
        Ok((response.cases, response.next_page_token))
    }

    async fn names(&mut self, request: ListCasesRequest) -> Vec<String> {
        self.list(request)
            .await
            .unwrap()
            .0
            .into_iter()
            .map(|c| c.name)
            .collect()
    }

    async fn update(&mut self, case: Case, paths: &[&str]) -> Result<Case, tonic::Status> {
        let update_mask = (!paths.is_empty()).then(|| FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        });
        let request = UpdateCaseRequest {
            case: Some(case),
            update_mask,
        };
        Ok(self
            .client
            .update_case(bearer(request, &self.token))
            .await?
            .into_inner())
    }

    async fn delete(
        &mut self,
        name: &str,
        etag: &str,
        allow_missing: bool,
    ) -> Result<Case, tonic::Status> {
        let request = DeleteCaseRequest {
            name: name.to_owned(),
            etag: etag.to_owned(),
            allow_missing,
        };
        Ok(self
            .client
            .delete_case(bearer(request, &self.token))
            .await?
            .into_inner())
    }

    async fn undelete(&mut self, name: &str) -> Result<Case, tonic::Status> {
        let request = UndeleteCaseRequest {
            name: name.to_owned(),
            etag: String::new(),
        };
        Ok(self
            .client
            .undelete_case(bearer(request, &self.token))
            .await?
            .into_inner())
    }
}

#[track_caller]
fn assert_bad_fields(status: &tonic::Status, fields: &[&str]) {
    assert_reason(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let named: Vec<_> = status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(named, fields, "{status:?}");
}

fn list() -> ListCasesRequest {
    ListCasesRequest::default()
}

#[tokio::test]
async fn a_case_goes_through_create_get_update_delete_undelete() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;

    let created = alice
        .create(Case {
            description: "printer on fire".into(),
            ..As::draft("Printer")
        })
        .await
        .unwrap();
    assert!(created.name.starts_with("cases/"));
    assert_eq!(created.owner, "users/alice");
    assert_eq!(
        created.status,
        Status::Open as i32,
        "status defaults to OPEN"
    );
    assert_eq!(created.r#type, Type::Incident as i32);
    assert!(created.create_time.is_some() && created.delete_time.is_none());
    assert_eq!(alice.get(&created.name).await.unwrap(), created);

    let updated = alice
        .update(
            Case {
                name: created.name.clone(),
                status: Status::InProgress as i32,
                etag: created.etag.clone(),
                ..Case::default()
            },
            &["status"],
        )
        .await
        .unwrap();
    assert_eq!(updated.status, Status::InProgress as i32);
    assert_eq!(updated.title, "Printer", "fields outside the mask are kept");
    assert_ne!(updated.etag, created.etag);
    let micros = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos / 1000))
    };
    assert!(micros(&updated.update_time) > micros(&created.update_time));

    let deleted = alice
        .delete(&created.name, &updated.etag, false)
        .await
        .unwrap();
    assert!(deleted.delete_time.is_some() && deleted.purge_time.is_some());
    let got = alice.get(&created.name).await.unwrap();
    assert_eq!(
        got.delete_time, deleted.delete_time,
        "deleted cases are still readable"
    );

    let restored = alice.undelete(&created.name).await.unwrap();
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(alice.names(list()).await, vec![created.name]);
}

#[tokio::test]
async fn bad_fields_are_named_in_a_bad_request() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let cases = [
        (As::draft("   "), vec!["case.title"]),
        (As::draft(&"x".repeat(201)), vec!["case.title"]),
        (As::draft("tab\there"), vec!["case.title"]),
        (
            Case {
                r#type: 0,
                ..As::draft("t")
            },
            vec!["case.type"],
        ),
        (
            Case {
                r#type: 99,
                ..As::draft("t")
            },
            vec!["case.type"],
        ),
        (
            Case {
                status: 42,
                ..As::draft("t")
            },
            vec!["case.status"],
        ),
        (
            Case {
                description: "x".repeat(10_001),
                ..As::draft("t")
            },
            vec!["case.description"],
        ),
        (
            Case {
                description: "nul\0".into(),
                r#type: 0,
                ..As::draft("")
            },
            vec!["case.title", "case.description", "case.type"],
        ),
    ];
    for (case, fields) in cases {
        let status = alice.create(case).await.unwrap_err();
        assert_bad_fields(&status, &fields);
    }
    let status = alice
        .create_with_id(As::draft("t"), &"r".repeat(129))
        .await
        .unwrap_err();
    assert_bad_fields(&status, &["request_id"]);

    for name in [
        "",
        "cases/",
        "cases/nope",
        "users/alice",
        "cases/0190d6e2-0000-7000-8000-00000000000g",
    ] {
        let status = alice.get(name).await.unwrap_err();
        assert_bad_fields(&status, &["name"]);
    }
    let bad_lists = [
        (
            ListCasesRequest {
                page_size: -1,
                ..list()
            },
            "page_size",
        ),
        (
            ListCasesRequest {
                filter: "owner = bob".into(),
                ..list()
            },
            "filter",
        ),
        (
            ListCasesRequest {
                filter: "status = MAYBE".into(),
                ..list()
            },
            "filter",
        ),
        (
            ListCasesRequest {
                order_by: "owner".into(),
                ..list()
            },
            "order_by",
        ),
        (
            ListCasesRequest {
                page_token: "garbage".into(),
                ..list()
            },
            "page_token",
        ),
    ];
    for (request, field) in bad_lists {
        let status = alice.list(request).await.unwrap_err();
        assert_bad_fields(&status, &[field]);
    }

    let case = alice.create(As::draft("t")).await.unwrap();
    for (paths, field) in [
        (&["create_time"][..], "update_mask"),
        (&["owner"][..], "update_mask"),
        (&["colour"][..], "update_mask"),
    ] {
        let status = alice
            .update(
                Case {
                    name: case.name.clone(),
                    ..Case::default()
                },
                paths,
            )
            .await
            .unwrap_err();
        assert_bad_fields(&status, &[field]);
    }
    let status = alice
        .update(
            Case {
                name: case.name.clone(),
                ..Case::default()
            },
            &[],
        )
        .await
        .unwrap_err();
    assert_bad_fields(&status, &["update_mask"]);
}

#[tokio::test]
async fn strings_are_stored_and_returned_byte_for_byte_but_titles_lose_their_padding() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let titles = [
        "'; DROP TABLE cases; --",
        "Robert\"); DELETE FROM \"user\";--",
        "  padded  ",
        "emoji 🧯🔥 and ZWJ 👩‍👩‍👧",
        "RTL \u{202E}txet\u{202C} and zero-width\u{200B}space",
        "combining e\u{301} vs é",
        "$1 ?1 %s {} \\ backslash",
    ];
    for title in titles {
        let description = format!("{title}\nline two\ttabbed");
        let created = alice
            .create(Case {
                description: description.clone(),
                ..As::draft(title)
            })
            .await
            .unwrap();
        let read = alice.get(&created.name).await.unwrap();
        assert_eq!(read.title.as_bytes(), title.trim().as_bytes());
        assert_eq!(read.description.as_bytes(), description.as_bytes());
    }
    assert_eq!(
        alice
            .list(ListCasesRequest {
                page_size: 100,
                ..list()
            })
            .await
            .unwrap()
            .0
            .len(),
        titles.len()
    );
}

#[tokio::test]
async fn another_users_case_is_not_found_by_every_method() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut bob = As::user(&app, "bob").await;
    let case = alice.create(As::draft("alice's")).await.unwrap();
    alice.create(As::draft("alice's second")).await.unwrap();
    let (_, alice_token) = alice
        .list(ListCasesRequest {
            page_size: 1,
            ..list()
        })
        .await
        .unwrap();

    assert_reason(
        &bob.get(&case.name).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
    let edit = Case {
        name: case.name.clone(),
        title: "mine now".into(),
        ..Case::default()
    };
    assert_reason(
        &bob.update(edit, &["title"]).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
    assert_reason(
        &bob.delete(&case.name, "", false).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
    assert_reason(
        &bob.undelete(&case.name).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
    assert!(
        bob.names(ListCasesRequest {
            show_deleted: true,
            ..list()
        })
        .await
        .is_empty()
    );
    let stolen = ListCasesRequest {
        page_size: 1,
        page_token: alice_token,
        ..list()
    };
    assert_bad_fields(&bob.list(stolen).await.unwrap_err(), &["page_token"]);

    // Alice's case is untouched.
    assert_eq!(alice.get(&case.name).await.unwrap(), case);
    // A non-existent case looks exactly the same as bob looking at alice's.
    let missing = format!("cases/{}", uuid_like());
    assert_reason(
        &bob.get(&missing).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
}

fn uuid_like() -> String {
    "0190d6e2-7b5e-7c3a-9f00-123456789abc".into()
}

#[tokio::test]
async fn soft_delete_hides_from_lists_until_undeleted() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let keep = alice.create(As::draft("keep")).await.unwrap();
    let gone = alice.create(As::draft("gone")).await.unwrap();

    alice.delete(&gone.name, "", false).await.unwrap();
    assert_eq!(alice.names(list()).await, vec![keep.name.clone()]);
    let with_deleted = alice
        .names(ListCasesRequest {
            show_deleted: true,
            ..list()
        })
        .await;
    assert_eq!(with_deleted, vec![gone.name.clone(), keep.name.clone()]);

    assert_reason(
        &alice.delete(&gone.name, "", false).await.unwrap_err(),
        Code::NotFound,
        "CASE_NOT_FOUND",
    );
    let again = alice.delete(&gone.name, "", true).await.unwrap();
    assert!(
        again.delete_time.is_some(),
        "allow_missing returns the deleted case"
    );
    let edit = Case {
        name: gone.name.clone(),
        title: "x".into(),
        ..Case::default()
    };
    assert_reason(
        &alice.update(edit, &["title"]).await.unwrap_err(),
        Code::FailedPrecondition,
        "CASE_DELETED",
    );
    assert_reason(
        &alice.undelete(&keep.name).await.unwrap_err(),
        Code::AlreadyExists,
        "CASE_NOT_DELETED",
    );
    let missing = format!("cases/{}", uuid_like());
    assert_eq!(
        alice.delete(&missing, "", true).await.unwrap().name,
        missing
    );

    alice.undelete(&gone.name).await.unwrap();
    assert_eq!(alice.names(list()).await, vec![gone.name, keep.name]);
}

#[tokio::test]
async fn deleted_cases_are_purged_after_the_retention() {
    let app = CaseSvc::start(|c| {
        c.case_retention = Duration::from_secs(1);
        c.case_purge_interval = Duration::from_millis(100);
    })
    .await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create(As::draft("short-lived")).await.unwrap();
    let live = alice.create(As::draft("stays")).await.unwrap();
    alice.delete(&case.name, "", false).await.unwrap();
    assert!(
        alice.get(&case.name).await.is_ok(),
        "still there within the retention"
    );
    let purged = eventually(Duration::from_secs(10), async || {
        alice
            .get(&case.name)
            .await
            .is_err_and(|s| s.code() == Code::NotFound)
    })
    .await;
    assert!(purged, "the purge never removed the case");
    assert!(
        alice.get(&live.name).await.is_ok(),
        "live cases are never purged"
    );
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_concurrent_writers_have_one_winner() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let case = alice.create(As::draft("contended")).await.unwrap();
    let attempt = |title: &str| Case {
        name: case.name.clone(),
        title: title.into(),
        etag: case.etag.clone(),
        ..Case::default()
    };
    let mut writers = Vec::new();
    for i in 0..8 {
        let mut writer = As {
            client: app.client().await,
            token: alice.token.clone(),
        };
        let edit = attempt(&format!("writer {i}"));
        writers.push(tokio::spawn(async move {
            writer.update(edit, &["title"]).await
        }));
    }
    let mut winners = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(_) => winners += 1,
            Err(status) => assert_reason(&status, Code::Aborted, "ETAG_MISMATCH"),
        }
    }
    assert_eq!(winners, 1, "exactly one write with the same etag wins");
    let status = alice.update(attempt("late"), &["title"]).await.unwrap_err();
    assert_reason(&status, Code::Aborted, "ETAG_MISMATCH");
    let status = alice
        .delete(&case.name, &case.etag, false)
        .await
        .unwrap_err();
    assert_reason(&status, Code::Aborted, "ETAG_MISMATCH");
}

#[tokio::test]
async fn concurrent_writers_without_an_etag_all_succeed() {
    let app = CaseSvc::start(|_| {}).await;
    let alice = As::user(&app, "alice").await;
    let mut first = As {
        client: app.client().await,
        token: alice.token.clone(),
    };
    let case = first.create(As::draft("busy")).await.unwrap();
    let mut writers = Vec::new();
    for i in 0..8 {
        let mut writer = As {
            client: app.client().await,
            token: alice.token.clone(),
        };
        let edit = Case {
            name: case.name.clone(),
            title: format!("writer {i}"),
            ..Case::default()
        };
        writers.push(tokio::spawn(async move {
            writer.update(edit, &["title"]).await
        }));
    }
    for writer in writers {
        writer
            .await
            .unwrap()
            .expect("an unconditional update never aborts");
    }
    assert_eq!(
        first.get(&case.name).await.unwrap().etag,
        "v9",
        "eight writes, none lost"
    );
}

#[tokio::test]
async fn a_repeated_request_id_creates_one_case() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let first = alice
        .create_with_id(As::draft("once"), "req-1")
        .await
        .unwrap();
    let again = alice
        .create_with_id(As::draft("once"), "req-1")
        .await
        .unwrap();
    assert_eq!(first, again);

    let mut racers = Vec::new();
    for _ in 0..8 {
        let mut racer = As {
            client: app.client().await,
            token: alice.token.clone(),
        };
        racers.push(tokio::spawn(async move {
            racer.create_with_id(As::draft("race"), "req-2").await
        }));
    }
    let mut names = HashSet::new();
    for racer in racers {
        names.insert(racer.await.unwrap().unwrap().name);
    }
    assert_eq!(
        names.len(),
        1,
        "concurrent creates with one request_id made {names:?}"
    );
    assert_eq!(alice.names(list()).await.len(), 2);

    // The same key from another user is another user's business.
    let mut bob = As::user(&app, "bob").await;
    let bobs = bob.create_with_id(As::draft("bob"), "req-1").await.unwrap();
    assert_ne!(bobs.name, first.name);
}

#[tokio::test]
async fn lists_filter_order_and_page() {
    let app = CaseSvc::start(|_| {}).await;
    let mut alice = As::user(&app, "alice").await;
    let mut make = async |title: &str, kind: Type, status: Status| {
        alice
            .create(Case {
                title: title.into(),
                r#type: kind as i32,
                status: status as i32,
                ..Case::default()
            })
            .await
            .unwrap()
            .name
    };
    let b = make("b question", Type::Question, Status::Open).await;
    let a = make("a incident", Type::Incident, Status::Open).await;
    let c = make("c incident", Type::Incident, Status::Closed).await;

    assert_eq!(
        alice.names(list()).await,
        vec![c.clone(), a.clone(), b.clone()],
        "newest first"
    );
    let by_title = ListCasesRequest {
        order_by: "title".into(),
        ..list()
    };
    assert_eq!(
        alice.names(by_title).await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    let by_title_desc = ListCasesRequest {
        order_by: "title desc".into(),
        ..list()
    };
    assert_eq!(
        alice.names(by_title_desc).await,
        vec![c.clone(), b.clone(), a.clone()]
    );
    let oldest_first = ListCasesRequest {
        order_by: "create_time asc".into(),
        ..list()
    };
    assert_eq!(
        alice.names(oldest_first).await,
        vec![b.clone(), a.clone(), c.clone()]
    );
    let incidents = ListCasesRequest {
        filter: "type = INCIDENT".into(),
        ..list()
    };
    assert_eq!(alice.names(incidents).await, vec![c.clone(), a.clone()]);
    let open_incidents = ListCasesRequest {
        filter: "type = INCIDENT AND status = OPEN".into(),
        ..list()
    };
    assert_eq!(alice.names(open_incidents).await, vec![a.clone()]);

    // Paging by title, one at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request = ListCasesRequest {
            page_size: 1,
            order_by: "title".into(),
            page_token: token,
            ..list()
        };
        let (page, next) = alice.list(request).await.unwrap();
        seen.extend(page.into_iter().map(|c| c.name));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    assert_eq!(seen, vec![a, b, c]);

    // A token only continues the query it came from.
    let (_, token) = alice
        .list(ListCasesRequest {
            page_size: 1,
            ..list()
        })
        .await
        .unwrap();
    let changed = ListCasesRequest {
        page_size: 1,
        filter: "status = OPEN".into(),
        page_token: token.clone(),
        ..list()
    };
    assert_bad_fields(&alice.list(changed).await.unwrap_err(), &["page_token"]);
    let mut tampered = token.into_bytes();
    tampered[3] ^= 1;
    let tampered = ListCasesRequest {
        page_size: 1,
        page_token: String::from_utf8(tampered).unwrap(),
        ..list()
    };
    assert_bad_fields(&alice.list(tampered).await.unwrap_err(), &["page_token"]);
}

#[tokio::test]
async fn paging_through_a_thousand_cases_under_inserts_skips_and_repeats_nothing() {
    let app = CaseSvc::start(|_| {}).await;
    let alice = As::user(&app, "alice").await;
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut writer = As {
            client: app.client().await,
            token: alice.token.clone(),
        };
        workers.push(tokio::spawn(async move {
            let mut names = Vec::new();
            for i in 0..125 {
                names.push(
                    writer
                        .create(As::draft(&format!("case {worker}-{i}")))
                        .await
                        .unwrap()
                        .name,
                );
            }
            names
        }));
    }
    let mut existing = HashSet::new();
    for worker in workers {
        existing.extend(worker.await.unwrap());
    }
    assert_eq!(existing.len(), 1000);

    let mut inserter = As {
        client: app.client().await,
        token: alice.token.clone(),
    };
    let inserts = tokio::spawn(async move {
        for i in 0..100 {
            inserter
                .create(As::draft(&format!("late {i}")))
                .await
                .unwrap();
        }
    });
    let mut reader = As {
        client: app.client().await,
        token: alice.token.clone(),
    };
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        // 500 asks for more than the maximum: pages hold 100.
        let request = ListCasesRequest {
            page_size: 500,
            page_token: token,
            ..list()
        };
        let (page, next) = reader.list(request).await.unwrap();
        assert!(page.len() <= 100);
        seen.extend(page.into_iter().map(|c| c.name));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    inserts.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a case appeared twice");
    assert!(
        existing.is_subset(&unique),
        "{} cases that existed at the start were skipped",
        existing.difference(&unique).count()
    );
}

#[tokio::test]
async fn a_user_removed_from_better_auth_cannot_create_cases() {
    let app = CaseSvc::start(|_| {}).await;
    let mut ghost = As::user(&app, "ghost").await;
    app.db.delete_user("ghost").await;
    let status = ghost.create(As::draft("boo")).await.unwrap_err();
    assert_reason(&status, Code::NotFound, "USER_NOT_FOUND");
}

#[tokio::test]
async fn case_svc_refuses_to_start_without_better_auths_tables() {
    let env = TestEnv::new(common::Issuer::single(casebook::auth::Algorithm::EdDsa)).await;
    env.db
        .execute_script(r#"DROP TABLE "session"; DROP TABLE "account"; DROP TABLE "user""#)
        .await;
    let error = case_svc::build(env.case_config(), &Metrics::new())
        .await
        .err()
        .expect("must refuse to start");
    let message = error.to_string();
    assert!(
        message.contains("Better Auth") && message.contains("\"user\""),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
}

#[tokio::test]
async fn calls_without_a_token_are_unauthenticated() {
    let app = CaseSvc::start(|_| {}).await;
    let status = app.client().await.list_cases(list()).await.unwrap_err();
    assert_reason(&status, Code::Unauthenticated, "MISSING_CREDENTIALS");
}

#[tokio::test]
async fn two_replicas_migrate_the_same_database_at_once() {
    let env = TestEnv::new(common::Issuer::single(casebook::auth::Algorithm::EdDsa)).await;
    let metrics = Metrics::new();
    let (one, two) = tokio::join!(
        case_svc::build(env.case_config(), &metrics),
        case_svc::build(env.case_config(), &metrics)
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    // Both serve the same data, and page tokens from one work on the other.
    let token = env.user("alice").await;
    let client = |addr: std::net::SocketAddr| async move {
        CaseServiceClient::new(
            Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let mut first = As {
        client: client(one.local_addr()).await,
        token: token.clone(),
    };
    let mut second = As {
        client: client(two.local_addr()).await,
        token,
    };
    first.create(As::draft("one")).await.unwrap();
    first.create(As::draft("two")).await.unwrap();
    let (_, next) = first
        .list(ListCasesRequest {
            page_size: 1,
            ..list()
        })
        .await
        .unwrap();
    let (page, _) = second
        .list(ListCasesRequest {
            page_size: 1,
            page_token: next,
            ..list()
        })
        .await
        .unwrap();
    assert_eq!(page[0].title, "one");
}
