//! Operating sagas: find and read them, and settle the manual-intervention queue.

use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::error::{Error, Result};
use crate::history::History;
use crate::id::{InterventionId, SagaId, StepName};
use crate::policy::{Pause, PauseRequest, PauseScope};
use crate::status::{Phase, SagaStatus};
use crate::store::overview::{Overview, OverviewQuery};
use crate::store::{
    CancelOutcome, Intervention, InterventionKind, SagaFilter, SagaRecord, SagaSnapshot,
    SettleAction, Settlement, Store,
};
use crate::wait::{
    approval_signal, Approval, ApprovalPolicy, Delivered, SignalDelivery, SignalKey,
    WAITING_FOR_APPROVAL,
};

/// Operator actions over a store: needs no registered sagas and no workers, so a CLI or an admin
/// API can use it on its own. Every action is recorded in the saga's history with who did it,
/// when and why.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use saga_core::{Admin, CancelOutcome, Config, Error, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaFilter, SagaStatus, Step, StepContext, StepError, Store};
/// # struct Order;
/// # async fn reserve(_: Arc<Order>, _: StepContext<u32>) -> Result<(), StepError> { Ok(()) }
/// # async fn release(_: Arc<Order>, _: StepContext<u32>, _: ()) -> Result<(), StepError> { Ok(()) }
/// # impl Saga for Order {
/// #     type Input = u32;
/// #     fn definition() -> SagaDefinition<Self> {
/// #         SagaDefinition::new("order", 1).step(Step::new("reserve", reserve).compensate(release))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// let orchestrator = Orchestrator::new(Arc::clone(&store), Config::default());
/// orchestrator.register(Order)?;
/// let id = orchestrator.start::<Order>(&7).await?; // stored; no worker runs yet
///
/// let admin = Admin::new(store); // on the same store, from anywhere
/// assert_eq!(admin.list(&SagaFilter::default()).await?.len(), 1);
/// // Nobody holds it: it moves to compensating at once.
/// assert_eq!(admin.cancel_saga(id, "alice", "customer withdrew").await?, CancelOutcome::Compensating);
/// assert!(admin.history(id).await?.render().contains("cancel requested by alice"));
/// // Who and why are required.
/// assert!(matches!(admin.cancel_saga(id, "", "no name").await, Err(Error::InvalidAction(_))));
///
/// orchestrator.run();
/// assert_eq!(orchestrator.wait(id, Duration::from_secs(10)).await?.status, SagaStatus::Compensated);
/// assert!(admin.interventions(true).await?.is_empty());
/// orchestrator.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Admin {
    store: Arc<dyn Store>,
    approvals: Option<Arc<dyn ApprovalPolicy>>,
    /// The workers of the orchestrator this handle came from, woken when an action makes a saga
    /// due now (other processes are woken by the store, or poll).
    wake: Option<Arc<tokio::sync::Notify>>,
    /// Tells the orchestrator this handle came from that the pauses changed, so its workers read
    /// them again before their next step instead of at the next poll.
    pauses_changed: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// The result of one item of a batch retry.
#[derive(Debug)]
pub struct BatchResult {
    /// The item.
    pub intervention: InterventionId,
    /// The saga.
    pub saga: SagaId,
    /// The saga's new status, or why the retry was refused.
    pub outcome: Result<SagaStatus>,
}

impl Admin {
    /// An operator handle over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            approvals: None,
            wake: None,
            pauses_changed: None,
        }
    }

    /// Wakes `wake`'s waiters whenever an action makes a saga due now: how
    /// [`Orchestrator::admin`](crate::Orchestrator::admin) has this process's workers go on at once.
    pub(crate) fn waking(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    pub(crate) fn on_pauses_changed(mut self, changed: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.pauses_changed = Some(changed);
        self
    }

    fn pauses_changed(&self) {
        if let Some(changed) = &self.pauses_changed {
            changed();
        }
    }

    fn woken(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
    }

    /// Sets who may approve or reject which saga type's approval steps (an [`Approvers`]
    /// table, or any [`ApprovalPolicy`]). Without one, [`Admin::approve`] and
    /// [`Admin::reject`] refuse everyone.
    ///
    /// [`Approvers`]: crate::Approvers
    #[must_use]
    pub fn with_approvals(mut self, policy: Arc<dyn ApprovalPolicy>) -> Self {
        self.approvals = Some(policy);
        self
    }

    /// Sagas waiting for a person's approval (oldest first), within `filter` (its type, key,
    /// age, paging), with the step and until when.
    ///
    /// # Errors
    /// Store errors.
    pub async fn approvals(&self, filter: &SagaFilter) -> Result<Vec<PendingApproval>> {
        let records = self
            .store
            .list(&SagaFilter {
                waiting_for: Some(WAITING_FOR_APPROVAL.to_owned()),
                ..filter.clone()
            })
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|saga| {
                let step = saga
                    .waiting_for
                    .as_deref()?
                    .strip_prefix(WAITING_FOR_APPROVAL)?;
                Some(PendingApproval {
                    step: StepName::new(step),
                    until: saga.next_run_at,
                    saga,
                })
            })
            .collect())
    }

    /// Approves the approval step saga `id` waits at, as `by` (whom the approval policy must
    /// allow), for `reason`: the step completes with the [`Approval`] (who and why), recorded in
    /// the history, and the saga goes on. Approving twice as the same person is a duplicate.
    ///
    /// # Errors
    /// [`Error::NotAuthorized`] (no policy, or the policy refuses `by`);
    /// [`Error::InvalidAction`] (no reason, or the saga does not wait for an approval);
    /// [`Error::SignalRefused`] (someone else decided first); [`Error::SagaNotFound`]; store
    /// errors.
    pub async fn approve(&self, id: SagaId, by: &str, reason: &str) -> Result<Delivered> {
        self.decide(id, true, by, reason).await
    }

    /// Rejects the approval step saga `id` waits at: the step fails permanently with who and
    /// why, and the saga compensates. As [`Admin::approve`] otherwise.
    ///
    /// # Errors
    /// As [`Admin::approve`].
    pub async fn reject(&self, id: SagaId, by: &str, reason: &str) -> Result<Delivered> {
        self.decide(id, false, by, reason).await
    }

    /// Approves every saga waiting for an approval within `filter`, oldest first, provided
    /// there are at most `max` of them: with more, nothing is approved and the error says how
    /// many wait (narrow the filter or raise the bound). Each saga's outcome is reported on its
    /// own.
    ///
    /// # Errors
    /// [`Error::InvalidAction`] (over the bound, no reason); [`Error::NotAuthorized`] when no
    /// policy is set; store errors.
    pub async fn approve_all(
        &self,
        filter: &SagaFilter,
        max: usize,
        by: &str,
        reason: &str,
    ) -> Result<Vec<(SagaId, Result<Delivered>)>> {
        checked(by, reason)?;
        if self.approvals.is_none() {
            return Err(not_authorized(by, "approve sagas", true));
        }
        let bound = u32::try_from(max.saturating_add(1)).unwrap_or(u32::MAX);
        let pending = self
            .approvals(&SagaFilter {
                limit: Some(bound),
                ..filter.clone()
            })
            .await?;
        if pending.len() > max {
            return Err(Error::InvalidAction(format!(
                "more than {max} sagas wait for an approval within this filter, over the bound you gave; nothing was approved: narrow the filter (saga type, start key) or raise the bound"
            )));
        }
        let mut results = Vec::with_capacity(pending.len());
        for approval in pending {
            let id = approval.saga.id;
            results.push((id, self.approve(id, by, reason).await));
        }
        Ok(results)
    }

    async fn decide(
        &self,
        id: SagaId,
        approved: bool,
        by: &str,
        reason: &str,
    ) -> Result<Delivered> {
        let (by, reason) = checked(by, reason)?;
        let verb = if approved { "approve" } else { "reject" };
        let Some(policy) = &self.approvals else {
            return Err(not_authorized(&by, &format!("{verb} saga {id}"), true));
        };
        let saga = self.store.load(id).await?.ok_or(Error::SagaNotFound(id))?;
        let Some(step) = saga
            .record
            .waiting_for
            .as_deref()
            .and_then(|waiting| waiting.strip_prefix(WAITING_FOR_APPROVAL))
        else {
            return Err(Error::InvalidAction(format!(
                "saga {id} does not wait for an approval (it is {}{}); list pending approvals to find one",
                saga.record.status,
                saga.record
                    .waiting_for
                    .as_deref()
                    .map(|waiting| format!(", waiting for {waiting}"))
                    .unwrap_or_default()
            )));
        };
        let step = StepName::new(step);
        if !policy.may_decide(&by, &saga.record.saga_type, &step) {
            return Err(not_authorized(
                &by,
                &format!(
                    "{verb} step `{step}` of saga {id} (type `{}`)",
                    saga.record.saga_type
                ),
                false,
            ));
        }
        let decision = Approval {
            approved,
            by: by.clone(),
            reason,
        };
        let payload = serde_json::to_value(&decision).map_err(|source| Error::Serialization {
            what: "an approval".into(),
            source,
        })?;
        let delivered = self
            .store
            .deliver_signal(&SignalDelivery {
                saga: id,
                name: approval_signal(&step),
                key: SignalKey::new(format!("{verb}:{by}")),
                payload,
            })
            .await?;
        self.woken();
        Ok(delivered)
    }

    /// Sagas matching `filter`, in creation order.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        self.store.list(filter).await
    }

    /// Sagas created more than `age` ago (and matching `filter`).
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_older_than(
        &self,
        age: Duration,
        filter: &SagaFilter,
    ) -> Result<Vec<SagaRecord>> {
        let cutoff = clock::before(clock::now(), age);
        self.store
            .list(&SagaFilter {
                created_before: Some(cutoff),
                ..filter.clone()
            })
            .await
    }

    /// The overview of the store over the last `window` in buckets of `bucket`: sagas per type
    /// and status, sagas started, completed, compensated and escalated per bucket, step phases
    /// begun longer than `stuck_after` ago in running or compensating sagas, and the
    /// intervention queue's depth and oldest item. Reads every saga row for the counts: on a
    /// store with millions of sagas, ask for it at a human pace, not in a tight loop.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a window or bucket the overview refuses (see
    /// [`OverviewQuery::new`]); store errors.
    pub async fn overview(
        &self,
        window: Duration,
        bucket: Duration,
        stuck_after: Duration,
    ) -> Result<Overview> {
        let now = self.store.clock().await?;
        let query = OverviewQuery::new(now, window, bucket, stuck_after)?;
        let parts = self.store.overview(&query).await?;
        Ok(Overview::assemble(&query, parts))
    }

    /// One saga with its steps (status, attempts, keys, outputs, last errors).
    ///
    /// # Errors
    /// [`Error::SagaNotFound`]; store errors.
    pub async fn show(&self, id: SagaId) -> Result<SagaSnapshot> {
        self.store.load(id).await?.ok_or(Error::SagaNotFound(id))
    }

    /// One saga's full history.
    ///
    /// # Errors
    /// [`Error::SagaNotFound`]; store errors.
    pub async fn history(&self, id: SagaId) -> Result<History> {
        let events = self.store.history(id).await?;
        if events.is_empty() && self.store.load(id).await?.is_none() {
            return Err(Error::SagaNotFound(id));
        }
        Ok(History { events })
    }

    /// Intervention items, oldest first; only open ones when `open_only`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        self.store.interventions(open_only).await
    }

    /// One intervention item.
    ///
    /// # Errors
    /// [`Error::InterventionNotFound`]; store errors.
    pub async fn intervention(&self, id: InterventionId) -> Result<Intervention> {
        self.store
            .intervention(id)
            .await?
            .ok_or(Error::InterventionNotFound(id))
    }

    /// Runs the failed compensation again with the same idempotency key, then continues
    /// compensating; for a parked saga, re-drives it (after the code was fixed).
    ///
    /// # Errors
    /// As [`Store::settle`]; [`Error::InvalidAction`] without a reason.
    pub async fn retry(&self, id: InterventionId, by: &str, reason: &str) -> Result<SagaStatus> {
        self.settle(id, SettleAction::Retry, by, reason).await
    }

    /// Records that the operator undid the step by hand: the compensation counts as done and
    /// compensation continues.
    ///
    /// # Errors
    /// As [`Store::settle`]; [`Error::InvalidAction`] without a reason.
    pub async fn resolve(&self, id: InterventionId, by: &str, reason: &str) -> Result<SagaStatus> {
        self.settle(id, SettleAction::Resolve, by, reason).await
    }

    /// Stops the saga where it is (`cancelled`) and closes the item.
    ///
    /// # Errors
    /// As [`Store::settle`]; [`Error::InvalidAction`] without a reason.
    pub async fn cancel(&self, id: InterventionId, by: &str, reason: &str) -> Result<SagaStatus> {
        self.settle(id, SettleAction::Cancel, by, reason).await
    }

    async fn settle(
        &self,
        id: InterventionId,
        action: SettleAction,
        by: &str,
        reason: &str,
    ) -> Result<SagaStatus> {
        let (by, reason) = checked(by, reason)?;
        let status = self
            .store
            .settle(&Settlement {
                intervention: id,
                action,
                by,
                reason,
            })
            .await?;
        self.woken();
        if status == SagaStatus::Compensating && action == SettleAction::Resolve {
            // An action whose outcome was unknown, resolved as not applied, starts compensation
            // (a failed compensation sent back to compensating was counted when it started).
            if let Ok(Some(item)) = self.store.intervention(id).await {
                if item.item.kind == InterventionKind::UnknownOutcome
                    && item.item.phase == Some(Phase::Action)
                {
                    self.count_compensation_start(item.saga_id).await;
                }
            }
        }
        Ok(status)
    }

    /// Counts a saga this handle moved to `compensating` (in this process's metrics recorder):
    /// the store made the move, so no worker's write did.
    async fn count_compensation_start(&self, saga: SagaId) {
        if let Ok(Some(snapshot)) = self.store.load(saga).await {
            crate::telemetry::count_compensation_start(snapshot.record.saga_type.as_str());
        }
    }

    /// Retries at most `max` open items, oldest first, and reports each result; one refusal does
    /// not stop the batch.
    ///
    /// # Errors
    /// [`Error::InvalidAction`] without a reason; store errors while listing.
    pub async fn retry_batch(
        &self,
        max: usize,
        by: &str,
        reason: &str,
    ) -> Result<Vec<BatchResult>> {
        checked(by, reason)?;
        let mut results = Vec::new();
        for item in self.store.interventions(true).await?.into_iter().take(max) {
            let outcome = self.retry(item.item.id, by, reason).await;
            results.push(BatchResult {
                intervention: item.item.id,
                saga: item.saga_id,
                outcome,
            });
        }
        Ok(results)
    }

    /// Cancels a running saga: no further step begins, and what completed is compensated.
    ///
    /// # Errors
    /// As [`Store::request_cancel`]; [`Error::InvalidAction`] without a reason.
    pub async fn cancel_saga(&self, id: SagaId, by: &str, reason: &str) -> Result<CancelOutcome> {
        let (by, reason) = checked(by, reason)?;
        let outcome = self
            .store
            .request_cancel(id, &by, &reason, clock::now())
            .await?;
        self.woken();
        if outcome == CancelOutcome::Compensating {
            self.count_compensation_start(id).await;
        }
        Ok(outcome)
    }

    /// Pauses a saga type (`step: None`) or one of its steps: no new attempt of it begins in any
    /// process (each reads the pauses at least once per poll interval); sagas that reach it wait,
    /// holding no worker, until [`Admin::resume`]. Who and why are recorded with the pause.
    /// Returns the pause in force and whether this call made it (pausing twice keeps the first).
    ///
    /// # Errors
    /// [`Error::InvalidAction`] without who, why or a type; store errors.
    pub async fn pause(&self, scope: PauseScope, by: &str, reason: &str) -> Result<(Pause, bool)> {
        let request = pause_request(scope, by, reason)?;
        let paused = self.store.pause(&request, clock::now()).await?;
        self.pauses_changed();
        Ok(paused)
    }

    /// Lifts the pause on a saga type or step, recording who and why, and makes the sagas it
    /// held due at once. Returns the lifted pause and how many sagas were woken.
    ///
    /// # Errors
    /// [`Error::InvalidAction`] without who or why, or when nothing is paused there; store
    /// errors.
    pub async fn resume(&self, scope: PauseScope, by: &str, reason: &str) -> Result<(Pause, u64)> {
        let request = pause_request(scope, by, reason)?;
        let resumed = self
            .store
            .resume(&request, clock::now())
            .await?
            .ok_or_else(|| {
                Error::InvalidAction(format!(
                    "{} is not paused; list the pauses in force with `saga pauses`",
                    request.scope
                ))
            })?;
        self.pauses_changed();
        self.woken();
        Ok(resumed)
    }

    /// The pauses in force, or (`all`) also the lifted ones, with who paused and resumed, and why.
    ///
    /// # Errors
    /// Store errors.
    pub async fn pauses(&self, all: bool) -> Result<Vec<Pause>> {
        self.store.pauses(all).await
    }

    /// Deletes finished sagas (completed, compensated, cancelled) unchanged for `age`, at most
    /// `limit`; never running sagas nor open interventions. Returns how many were deleted.
    ///
    /// # Errors
    /// Store errors.
    pub async fn prune(&self, age: Duration, limit: u32) -> Result<u64> {
        let cutoff = clock::before(clock::now(), age);
        self.store.prune(cutoff, limit).await
    }
}

/// A pause request with who and why checked, and a type named.
fn pause_request(scope: PauseScope, by: &str, reason: &str) -> Result<PauseRequest> {
    let (by, reason) = checked(by, reason)?;
    if scope.saga_type.as_str().trim().is_empty()
        || scope
            .step
            .as_ref()
            .is_some_and(|step| step.as_str().trim().is_empty())
    {
        return Err(Error::InvalidAction(
            "name the saga type to pause (and the step, if only one step)".into(),
        ));
    }
    Ok(PauseRequest { scope, by, reason })
}

/// Who and why, trimmed; both required.
fn not_authorized(who: &str, action: &str, no_policy: bool) -> Error {
    Error::NotAuthorized {
        who: who.to_owned(),
        action: if no_policy {
            format!("{action}: no approval policy is configured (Admin::with_approvals; the CLI reads SAGA_APPROVERS)")
        } else {
            action.to_owned()
        },
    }
}

/// A saga waiting for a person's approval.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingApproval {
    /// The saga.
    pub saga: SagaRecord,
    /// Its approval step.
    pub step: StepName,
    /// When the wait ends (its timeout, or the saga's deadline), if it does.
    pub until: Option<crate::clock::Timestamp>,
}

fn checked(by: &str, reason: &str) -> Result<(String, String)> {
    let (by, reason) = (by.trim(), reason.trim());
    if by.is_empty() {
        return Err(Error::InvalidAction(
            "say who is acting (an operator name); it is recorded in the saga's history".into(),
        ));
    }
    if reason.is_empty() {
        return Err(Error::InvalidAction(
            "give a reason; it is recorded in the saga's history for whoever looks next".into(),
        ));
    }
    // Kept as given, but bounded and without NUL characters, alike on every backend.
    Ok((
        crate::step::bounded_text(by, crate::store::MAX_REASON_BYTES),
        crate::step::bounded_text(reason, crate::store::MAX_REASON_BYTES),
    ))
}
