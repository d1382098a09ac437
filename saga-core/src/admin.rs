//! Operating sagas: find and read them, and settle the manual-intervention queue.

use std::sync::Arc;
use std::time::Duration;

use crate::clock;
use crate::error::{Error, Result};
use crate::history::History;
use crate::id::{InterventionId, SagaId};
use crate::status::SagaStatus;
use crate::store::{
    CancelOutcome, Intervention, SagaFilter, SagaRecord, SagaSnapshot, SettleAction, Settlement,
    Store,
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
        Self { store }
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
        self.store
            .settle(&Settlement {
                intervention: id,
                action,
                by,
                reason,
            })
            .await
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
        self.store
            .request_cancel(id, &by, &reason, clock::now())
            .await
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

/// Who and why, trimmed; both required.
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
