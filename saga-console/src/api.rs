//! The JSON admin API, under `/api`: everything [`Admin`](saga_core::Admin) offers.
//!
//! Reads are GETs; actions are POSTs with a JSON body that carries a `reason`, recorded with who
//! acted. Errors are `{"error": {"code", "exit_code", "message"}}` with the CLI's exit codes.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use saga_core::policy::PauseScope;
use saga_core::{
    IdempotencyKey, InterventionId, SagaFilter, SagaId, SagaStatus, SagaType, StepName,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{check_anonymous_origin, check_forgery};
use crate::error::ConsoleError;
use crate::views::{ApprovalView, EventView, InterventionView, PauseView, SagaDetail, SagaView};
use crate::{Console, Session};

type Shared = State<Arc<Console>>;
type ApiResult = Result<Json<Value>, ApiError>;

/// A console error as a JSON response.
pub(crate) struct ApiError(pub(crate) ConsoleError);

impl<E: Into<ConsoleError>> From<E> for ApiError {
    fn from(err: E) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

pub(crate) fn error_response(err: &ConsoleError) -> Response {
    (
        err.status(),
        Json(json!({
            "error": {
                "code": err.code(),
                "exit_code": err.exit_code(),
                "message": err.to_string(),
            }
        })),
    )
        .into_response()
}

/// Query parameters, or a JSON `bad_input` error saying what is wrong with them (axum's own
/// rejection is plain text).
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| Self(value))
            .map_err(|rejection| {
                ApiError(ConsoleError::BadInput(format!(
                    "the query string is not what this endpoint takes: {}",
                    rejection.body_text()
                )))
            })
    }
}

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/sagas", get(sagas))
        .route("/api/sagas/{id}", get(saga))
        .route("/api/sagas/{id}/history", get(history))
        .route("/api/sagas/{id}/cancel", post(cancel_saga))
        .route("/api/sagas/{id}/approve", post(approve))
        .route("/api/sagas/{id}/reject", post(reject))
        .route("/api/interventions", get(interventions))
        .route("/api/interventions/retry", post(retry_batch))
        .route("/api/interventions/{id}", get(intervention))
        .route("/api/interventions/{id}/{action}", post(settle))
        .route("/api/approvals", get(approvals))
        .route("/api/pauses", get(pauses).post(pause))
        .route("/api/pauses/resume", post(resume))
        .route("/api/prune", post(prune))
        .route("/api/{*rest}", axum::routing::any(unknown))
}

async fn unknown(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError(ConsoleError::NotFound(format!(
        "the API has no `{method} {}`; see the README's list of endpoints",
        uri.path()
    )))
}

/// The JSON error of a method the path does not take.
pub(crate) fn method_not_allowed() -> Response {
    let err = ConsoleError::BadInput(
        "this path does not take that method: reads are GETs, actions are POSTs".to_owned(),
    );
    let mut response = error_response(&err);
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

pub(crate) fn parse_id<T: FromStr>(what: &str, text: &str) -> Result<T, ConsoleError> {
    text.trim().parse().map_err(|_| {
        ConsoleError::BadInput(format!(
            "`{text}` is not a {what} id; copy it from a list (ids look like 0190c6e2-...)"
        ))
    })
}

pub(crate) fn parse_age(text: &str) -> Result<Duration, ConsoleError> {
    saga_core::parse_age(text.trim()).map_err(ConsoleError::BadInput)
}

/// The filters of a saga list, as query parameters.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    pub(crate) status: Option<String>,
    #[serde(rename = "type")]
    pub(crate) saga_type: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) older_than: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<u32>,
    pub(crate) waiting_for: Option<String>,
    /// Only the child sagas of this saga.
    pub(crate) parent: Option<String>,
}

fn non_empty(text: &Option<String>) -> Option<&str> {
    text.as_deref().map(str::trim).filter(|t| !t.is_empty())
}

impl ListQuery {
    pub(crate) fn filter(&self) -> Result<(SagaFilter, Option<Duration>), ConsoleError> {
        let status = non_empty(&self.status)
            .map(|text| {
                text.parse::<SagaStatus>().map_err(|_| {
                    ConsoleError::BadInput(format!(
                        "`{text}` is not a saga status; use one of: running, compensating, completed, compensated, needs_intervention, cancelled"
                    ))
                })
            })
            .transpose()?;
        let limit = self.limit.unwrap_or(50);
        if limit == 0 || limit > 500 {
            return Err(ConsoleError::BadInput(format!(
                "a page of {limit} sagas is out of bounds; ask for 1 to 500"
            )));
        }
        let filter = SagaFilter {
            status,
            saga_type: non_empty(&self.saga_type).map(SagaType::new),
            idempotency_key: non_empty(&self.key).map(IdempotencyKey::new),
            after: non_empty(&self.after)
                .map(|text| parse_id::<SagaId>("saga", text))
                .transpose()?,
            limit: Some(limit),
            waiting_for: self.waiting_for.clone(),
            parent: non_empty(&self.parent)
                .map(|text| parse_id::<SagaId>("parent saga", text))
                .transpose()?,
            ..SagaFilter::default()
        };
        let older_than = non_empty(&self.older_than).map(parse_age).transpose()?;
        Ok((filter, older_than))
    }
}

/// A JSON body, or a clear refusal of a malformed one.
fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ConsoleError> {
    serde_json::from_slice(bytes).map_err(|err| {
        ConsoleError::BadInput(format!(
            "the request body is not the JSON this action takes ({err}); send for example {{\"reason\": \"why\"}}"
        ))
    })
}

/// Refuses viewers and forged requests; returns who acts.
fn acting<'s>(
    session: &'s Session,
    method: &Method,
    headers: &HeaderMap,
) -> Result<&'s str, ConsoleError> {
    let csrf = headers
        .get("x-csrf-token")
        .and_then(|value| value.to_str().ok());
    check_forgery(
        method,
        headers,
        &session.credentials,
        csrf,
        session.public_origin.as_deref(),
    )?;
    check_anonymous_origin(headers, &session.credentials)?;
    // A page of another site can post a form as `text/plain` without asking first; JSON it
    // cannot.
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if !json {
        return Err(ConsoleError::BadInput(
            "send the action's body as JSON, with `Content-Type: application/json`: for example {\"reason\": \"why\"}".to_owned(),
        ));
    }
    Ok(&session.operator()?.name)
}

#[derive(Debug, Deserialize)]
struct Reason {
    reason: String,
}

/// Refuses a blank reason as malformed input, as the pages and the CLI do (the store would
/// refuse it too, but as an action not applicable now).
fn required(reason: &str) -> Result<&str, ConsoleError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ConsoleError::BadInput(
            "give a reason; it is recorded with your name in the saga's history".to_owned(),
        ));
    }
    Ok(reason)
}

#[derive(Debug, Deserialize)]
struct OverviewQuery {
    window: Option<String>,
    bucket: Option<String>,
    stuck_after: Option<String>,
}

async fn overview(State(console): Shared, ApiQuery(query): ApiQuery<OverviewQuery>) -> ApiResult {
    let options = &console.options;
    let window = non_empty(&query.window)
        .map(parse_age)
        .transpose()?
        .unwrap_or(options.window);
    let bucket = non_empty(&query.bucket)
        .map(parse_age)
        .transpose()?
        .unwrap_or(options.bucket);
    let stuck_after = non_empty(&query.stuck_after)
        .map(parse_age)
        .transpose()?
        .unwrap_or(options.stuck_after);
    let overview = console.admin.overview(window, bucket, stuck_after).await?;
    Ok(Json(serde_json::to_value(&overview).map_err(|err| {
        ConsoleError::Internal(format!("the overview could not be written as JSON: {err}"))
    })?))
}

async fn sagas(State(console): Shared, ApiQuery(query): ApiQuery<ListQuery>) -> ApiResult {
    let (filter, older_than) = query.filter()?;
    let records = match older_than {
        Some(age) => console.admin.list_older_than(age, &filter).await?,
        None => console.admin.list(&filter).await?,
    };
    let next = (records.len() == filter.limit_or_default() as usize)
        .then(|| records.last().map(|r| r.id.to_string()))
        .flatten();
    let sagas: Vec<SagaView> = records
        .iter()
        .map(|record| SagaView::new(record, console.redactor()))
        .collect();
    Ok(Json(json!({ "sagas": sagas, "next_after": next })))
}

async fn saga(State(console): Shared, Path(id): Path<String>) -> ApiResult {
    let snapshot = console.admin.show(parse_id("saga", &id)?).await?;
    Ok(Json(json!(SagaDetail::new(&snapshot, console.redactor()))))
}

async fn history(State(console): Shared, Path(id): Path<String>) -> ApiResult {
    let history = console.admin.history(parse_id("saga", &id)?).await?;
    let events: Vec<EventView> = history
        .events
        .iter()
        .map(|event| EventView::new(event, console.redactor()))
        .collect();
    Ok(Json(json!({ "events": events })))
}

async fn cancel_saga(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?;
    let id: SagaId = parse_id("saga", &id)?;
    let Reason { reason } = body(&bytes)?;
    let outcome = console
        .admin
        .cancel_saga(id, by, required(&reason)?)
        .await?;
    Ok(Json(
        json!({ "saga_id": id.to_string(), "outcome": match outcome {
            saga_core::CancelOutcome::Compensating => "compensating",
            saga_core::CancelOutcome::Requested => "requested",
            saga_core::CancelOutcome::AlreadyCompensating => "already_compensating",
        } }),
    ))
}

async fn decide(
    console: &Console,
    session: &Session,
    method: &Method,
    headers: &HeaderMap,
    id: &str,
    bytes: &Bytes,
    approve: bool,
) -> ApiResult {
    let by = acting(session, method, headers)?;
    let id: SagaId = parse_id("saga", id)?;
    let Reason { reason } = body(bytes)?;
    let reason = required(&reason)?;
    let delivered = if approve {
        console.admin.approve(id, by, reason).await?
    } else {
        console.admin.reject(id, by, reason).await?
    };
    Ok(Json(json!({
        "saga_id": id.to_string(),
        "decision": if approve { "approved" } else { "rejected" },
        "delivered": match delivered {
            saga_core::wait::Delivered::New(_) => "new",
            saga_core::wait::Delivered::Duplicate(_) => "duplicate",
        },
    })))
}

async fn approve(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&console, &session, &method, &headers, &id, &bytes, true).await
}

async fn reject(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&console, &session, &method, &headers, &id, &bytes, false).await
}

#[derive(Debug, Deserialize)]
struct InterventionsQuery {
    all: Option<bool>,
}

async fn interventions(
    State(console): Shared,
    ApiQuery(query): ApiQuery<InterventionsQuery>,
) -> ApiResult {
    let items = console
        .admin
        .interventions(!query.all.unwrap_or(false))
        .await?;
    let mut views = Vec::with_capacity(items.len());
    for item in &items {
        let saga = console.admin.show(item.saga_id).await.ok();
        views.push(InterventionView::new(
            item,
            saga.as_ref(),
            console.redactor(),
        ));
    }
    Ok(Json(json!({ "interventions": views })))
}

async fn intervention(State(console): Shared, Path(id): Path<String>) -> ApiResult {
    let item = console
        .admin
        .intervention(parse_id::<InterventionId>("intervention", &id)?)
        .await?;
    let saga = console.admin.show(item.saga_id).await.ok();
    Ok(Json(json!(InterventionView::new(
        &item,
        saga.as_ref(),
        console.redactor()
    ))))
}

/// Settles one item: `retry`, `resolve` or `cancel`.
pub(crate) async fn settle_item(
    console: &Console,
    id: InterventionId,
    action: &str,
    by: &str,
    reason: &str,
) -> Result<SagaStatus, ConsoleError> {
    Ok(match action {
        "retry" => console.admin.retry(id, by, reason).await?,
        "resolve" => console.admin.resolve(id, by, reason).await?,
        "cancel" => console.admin.cancel(id, by, reason).await?,
        other => {
            return Err(ConsoleError::NotFound(format!(
                "`{other}` is not an action on an item; use retry, resolve or cancel"
            )))
        }
    })
}

async fn settle(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?;
    let id: InterventionId = parse_id("intervention", &id)?;
    let Reason { reason } = body(&bytes)?;
    let status = settle_item(&console, id, &action, by, required(&reason)?).await?;
    Ok(Json(json!({
        "intervention_id": id.to_string(),
        "action": action,
        "saga_status": status.as_str(),
    })))
}

#[derive(Debug, Deserialize)]
struct Batch {
    max: usize,
    reason: String,
}

/// A bulk retry's bound, checked against the console's limit.
pub(crate) fn batch_bound(console: &Console, max: usize) -> Result<usize, ConsoleError> {
    let limit = console.options.max_batch;
    if max == 0 || max > limit {
        return Err(ConsoleError::BadInput(format!(
            "a bulk retry of {max} items is out of bounds; give a bound from 1 to {limit}"
        )));
    }
    Ok(max)
}

async fn retry_batch(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?;
    let Batch { max, reason } = body(&bytes)?;
    let reason = required(&reason)?;
    let results = console
        .admin
        .retry_batch(batch_bound(&console, max)?, by, reason)
        .await?;
    let items: Vec<Value> = results
        .iter()
        .map(|result| match &result.outcome {
            Ok(status) => json!({
                "intervention_id": result.intervention.to_string(),
                "saga_id": result.saga.to_string(),
                "saga_status": status.as_str(),
            }),
            Err(err) => json!({
                "intervention_id": result.intervention.to_string(),
                "saga_id": result.saga.to_string(),
                "refused": err.to_string(),
            }),
        })
        .collect();
    Ok(Json(json!({ "retried": items })))
}

#[derive(Debug, Deserialize)]
struct ApprovalsQuery {
    #[serde(rename = "type")]
    saga_type: Option<String>,
}

async fn approvals(State(console): Shared, ApiQuery(query): ApiQuery<ApprovalsQuery>) -> ApiResult {
    let filter = SagaFilter {
        saga_type: non_empty(&query.saga_type).map(SagaType::new),
        ..SagaFilter::default()
    };
    let pending = console.admin.approvals(&filter).await?;
    let views: Vec<ApprovalView> = pending
        .iter()
        .map(|approval| ApprovalView::new(approval, console.redactor()))
        .collect();
    Ok(Json(json!({ "approvals": views })))
}

#[derive(Debug, Deserialize)]
struct PausesQuery {
    all: Option<bool>,
}

async fn pauses(State(console): Shared, ApiQuery(query): ApiQuery<PausesQuery>) -> ApiResult {
    let pauses = console.admin.pauses(query.all.unwrap_or(false)).await?;
    let views: Vec<PauseView> = pauses.iter().map(PauseView::new).collect();
    Ok(Json(json!({ "pauses": views })))
}

#[derive(Debug, Deserialize)]
struct PauseBody {
    saga_type: String,
    step: Option<String>,
    reason: String,
}

impl PauseBody {
    fn scope(&self) -> Result<PauseScope, ConsoleError> {
        if self.saga_type.trim().is_empty() {
            return Err(ConsoleError::BadInput(
                "name the saga type to pause or resume (`saga_type`)".to_owned(),
            ));
        }
        Ok(PauseScope {
            saga_type: SagaType::new(self.saga_type.trim()),
            step: non_empty(&self.step).map(StepName::new),
        })
    }
}

async fn pause(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?;
    let request: PauseBody = body(&bytes)?;
    let (pause, new) = console
        .admin
        .pause(request.scope()?, by, required(&request.reason)?)
        .await?;
    Ok(Json(
        json!({ "pause": PauseView::new(&pause), "already_paused": !new }),
    ))
}

async fn resume(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?;
    let request: PauseBody = body(&bytes)?;
    let (pause, woken) = console
        .admin
        .resume(request.scope()?, by, required(&request.reason)?)
        .await?;
    Ok(Json(
        json!({ "pause": PauseView::new(&pause), "woken": woken }),
    ))
}

#[derive(Debug, Deserialize)]
struct PruneBody {
    older_than: String,
    limit: u32,
    reason: String,
}

async fn prune(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult {
    let by = acting(&session, &method, &headers)?.to_owned();
    let request: PruneBody = body(&bytes)?;
    required(&request.reason)?;
    if request.limit == 0 || request.limit > 100_000 {
        return Err(ConsoleError::BadInput(format!(
            "a prune of {} sagas is out of bounds; give a limit from 1 to 100000",
            request.limit
        ))
        .into());
    }
    let age = parse_age(&request.older_than)?;
    let deleted = console.admin.prune(age, request.limit).await?;
    tracing::info!(
        by = %by,
        reason = %request.reason,
        older_than = %request.older_than,
        deleted,
        "finished sagas pruned from the console"
    );
    Ok(Json(json!({ "deleted": deleted })))
}
