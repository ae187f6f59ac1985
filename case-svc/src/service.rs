//! The `CaseService` handlers: parse the request, call the store, convert.

use std::{sync::Arc, time::Duration};

use casebook::{
    auth::Principal,
    pb::casebook::cases::v1::{
        Case, CaseEvent, CreateCaseRequest, DeleteCaseRequest, GetCaseRequest,
        ListCaseEventsRequest, ListCaseEventsResponse, ListCasesRequest, ListCasesResponse,
        UndeleteCaseRequest, UpdateCaseRequest, WatchCasesRequest,
        case_service_server::CaseService,
    },
};
use tonic::{Request, Response, Status};

use crate::{
    error::CaseError,
    feeds::Feeds,
    list_query::PageTokens,
    request::{Caller, Delete, HistoryQuery, ListQuery, NewCase, Target, Update, WatchQuery},
    resource::CaseId,
    store::CaseStore,
    watch::{Watch, WatchStream},
};

/// `casebook.cases.v1.CaseService`.
pub struct CaseApi {
    store: Arc<CaseStore>,
    feeds: Arc<Feeds>,
    tokens: Arc<PageTokens>,
    retention: Duration,
}

impl CaseApi {
    /// Handlers over `store` and `feeds`; deleted cases are kept for
    /// `retention`.
    pub fn new(
        store: Arc<CaseStore>,
        feeds: Arc<Feeds>,
        tokens: PageTokens,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            feeds,
            tokens: Arc::new(tokens),
            retention,
        }
    }
}

fn cases(rows: Vec<crate::store::CaseRow>) -> Result<Vec<Case>, CaseError> {
    rows.into_iter().map(Case::try_from).collect()
}

#[tonic::async_trait]
impl CaseService for CaseApi {
    async fn create_case(
        &self,
        request: Request<CreateCaseRequest>,
    ) -> Result<Response<Case>, Status> {
        let caller = Caller::of(&request)?;
        let new = NewCase::try_from(request.into_inner())?;
        let row = self.store.create(&caller, &new).await?;
        Ok(Response::new(Case::try_from(row)?))
    }

    async fn get_case(&self, request: Request<GetCaseRequest>) -> Result<Response<Case>, Status> {
        let caller = Caller::of(&request)?;
        let id = CaseId::parse_name(&request.get_ref().name, "name")
            .map_err(|v| CaseError::Invalid(vec![v]))?;
        let row = self.store.get(&caller.owner, id).await?;
        Ok(Response::new(Case::try_from(row)?))
    }

    async fn list_cases(
        &self,
        request: Request<ListCasesRequest>,
    ) -> Result<Response<ListCasesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let query = ListQuery::try_from(request.into_inner())?;
        let after = query.cursor(&self.tokens, &caller.owner)?;
        let rows = self
            .store
            .list(
                &caller.owner,
                &query,
                after.as_ref(),
                query.page_size.get() + 1,
            )
            .await?;
        let (rows, next_page_token) = query.page(&self.tokens, &caller.owner, rows);
        Ok(Response::new(ListCasesResponse {
            cases: cases(rows)?,
            next_page_token,
        }))
    }

    async fn update_case(
        &self,
        request: Request<UpdateCaseRequest>,
    ) -> Result<Response<Case>, Status> {
        let caller = Caller::of(&request)?;
        let update = Update::try_from(request.into_inner())?;
        let row = self.store.update(&caller, &update).await?;
        Ok(Response::new(Case::try_from(row)?))
    }

    async fn delete_case(
        &self,
        request: Request<DeleteCaseRequest>,
    ) -> Result<Response<Case>, Status> {
        let caller = Caller::of(&request)?;
        let delete = Delete::try_from(request.into_inner())?;
        let case = match self.store.delete(&caller, &delete, self.retention).await? {
            Some(row) => Case::try_from(row)?,
            // allow_missing, and nothing there: AIP-135 answers with the name alone.
            None => Case {
                name: delete.target.id.name(),
                ..Case::default()
            },
        };
        Ok(Response::new(case))
    }

    async fn undelete_case(
        &self,
        request: Request<UndeleteCaseRequest>,
    ) -> Result<Response<Case>, Status> {
        let caller = Caller::of(&request)?;
        let target = Target::try_from(request.into_inner())?;
        let row = self.store.undelete(&caller, target).await?;
        Ok(Response::new(Case::try_from(row)?))
    }

    async fn list_case_events(
        &self,
        request: Request<ListCaseEventsRequest>,
    ) -> Result<Response<ListCaseEventsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let query = HistoryQuery::try_from(request.into_inner())?;
        // Owner-scoped like every case call: someone else's case is NOT_FOUND.
        self.store.get(&caller.owner, query.case).await?;
        let before = query.before(&self.tokens, &caller.owner)?;
        let rows = self
            .store
            .log()
            .history(&caller.owner, query.case, before, query.page_size.get() + 1)
            .await?;
        let (rows, next_page_token) = query.page(&self.tokens, &caller.owner, rows);
        let events = rows
            .iter()
            .map(CaseEvent::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListCaseEventsResponse {
            events,
            next_page_token,
        }))
    }

    type WatchCasesStream = WatchStream;

    async fn watch_cases(
        &self,
        request: Request<WatchCasesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&request)?;
        let expires_at = Principal::of(&request)?.expires_at;
        let query = WatchQuery::try_from(request.into_inner())?;
        let watch = Watch {
            log: self.store.log().clone(),
            tokens: Arc::clone(&self.tokens),
            caller,
            filter: query.filter,
            heartbeat: self.feeds.settings().heartbeat,
            expires_at,
        };
        let resume_point = match query.resume_token.as_str() {
            "" => None,
            token => Some(watch.resume_point(token)?),
        };
        // Subscribe before reading the head: what commits after the read
        // reaches the subscription.
        let subscription = self.feeds.subscribe(&watch.caller.owner).await?;
        let head = self.store.log().head(&watch.caller.owner).await?;
        let position = match resume_point {
            None => head.seq,
            Some(point) if point < head.trimmed_through || point > head.seq => {
                return Err(CaseError::ResumePointExpired.into());
            }
            Some(point) => point,
        };
        Ok(Response::new(watch.start(subscription, position)))
    }
}
