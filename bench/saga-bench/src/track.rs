//! TrackingStore: forwards every `Store` call to the real store and notices, without touching the
//! database, when a saga reaches a settled status (the write that settles it has committed). It
//! also counts store calls by kind, which tells where the server commits of a saga come from.
//!
//! Keep it a pure forwarder: if `Store` gains a method, forward it here too. A required method
//! breaks the build (loud); a method with a default body does not, and then the benchmark would
//! silently measure the trait's default instead of the backend's implementation (for example
//! `claim_loaded`, whose default is `claim` followed by a separate `load`). Check with
//! `grep -n "async fn" saga-core/src/store.rs` against this file when the trait changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use saga::wait::SignalDelivery;
use saga::{
    CancelOutcome, Change, Created, Delivered, Event, Intervention, InterventionId, Lease, NewSaga,
    Result, SagaFilter, SagaId, SagaRecord, SagaSnapshot, SagaStatus, Settlement, StepTransaction,
    Store, Timestamp, WorkerId,
};
use tokio::sync::oneshot;

enum Slot {
    Waiting(oneshot::Sender<(Instant, SagaStatus)>),
    Done(Instant, SagaStatus),
}

/// Store calls made during a run, by kind.
#[derive(Default)]
pub struct Calls {
    pub create: AtomicU64,
    pub claim: AtomicU64,
    pub claimed: AtomicU64,
    pub heartbeat: AtomicU64,
    pub apply: AtomicU64,
    pub load: AtomicU64,
    pub step_tx: AtomicU64,
    pub signal: AtomicU64,
    pub other: AtomicU64,
}

/// One claim call: when it began, how long it took, how many sagas it claimed.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTiming {
    pub at: Instant,
    pub seconds: f64,
    pub claimed: usize,
}

/// Settled sagas and step timestamps, shared by the store wrapper, the step functions and the
/// benchmark clients.
#[derive(Default)]
pub struct Tracker {
    slots: Mutex<HashMap<SagaId, Slot>>,
    steps: Mutex<HashMap<SagaId, Vec<Instant>>>,
    claims: Mutex<Vec<ClaimTiming>>,
    pub calls: Calls,
}

impl Tracker {
    /// A step function was entered (called from the benchmark's step functions).
    pub fn step_entered(&self, saga: SagaId) {
        let now = Instant::now();
        if let Ok(mut steps) = self.steps.lock() {
            steps.entry(saga).or_default().push(now);
        }
    }

    /// The entry times of the saga's step functions, removed from the tracker.
    pub fn take_steps(&self, saga: SagaId) -> Vec<Instant> {
        self.steps
            .lock()
            .ok()
            .and_then(|mut steps| steps.remove(&saga))
            .unwrap_or_default()
    }

    /// Every claim call's timing so far (what `saga_claim_duration_seconds` records).
    pub fn claims(&self) -> Vec<ClaimTiming> {
        self.claims
            .lock()
            .map(|claims| claims.clone())
            .unwrap_or_default()
    }

    fn claimed(&self, at: Instant, claimed: usize) {
        let seconds = at.elapsed().as_secs_f64();
        self.calls
            .claimed
            .fetch_add(claimed as u64, Ordering::Relaxed);
        if let Ok(mut claims) = self.claims.lock() {
            claims.push(ClaimTiming {
                at,
                seconds,
                claimed,
            });
        }
    }

    fn settled(&self, saga: SagaId, status: SagaStatus) {
        let now = Instant::now();
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        match slots.remove(&saga) {
            Some(Slot::Waiting(sender)) => {
                let _ = sender.send((now, status));
            }
            _ => {
                slots.insert(saga, Slot::Done(now, status));
            }
        }
    }

    /// Waits until `saga` is settled; returns when (the commit returned) and its status.
    pub async fn wait(&self, saga: SagaId, max: Duration) -> Option<(Instant, SagaStatus)> {
        let receiver = {
            let mut slots = self.slots.lock().ok()?;
            match slots.remove(&saga) {
                Some(Slot::Done(at, status)) => return Some((at, status)),
                _ => {
                    let (sender, receiver) = oneshot::channel();
                    slots.insert(saga, Slot::Waiting(sender));
                    receiver
                }
            }
        };
        tokio::time::timeout(max, receiver).await.ok()?.ok()
    }
}

pub struct TrackingStore {
    inner: Arc<dyn Store>,
    tracker: Arc<Tracker>,
}

impl TrackingStore {
    pub fn new(inner: Arc<dyn Store>, tracker: Arc<Tracker>) -> Self {
        Self { inner, tracker }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn note_settled(&self, lease: &Lease, changes: &[Change]) {
        let settled = changes.iter().rev().find_map(|change| match change {
            Change::SetStatus { status, .. } if status.is_settled() => Some(*status),
            Change::Escalate(_) => Some(SagaStatus::NeedsIntervention),
            _ => None,
        });
        if let Some(status) = settled {
            self.tracker.settled(lease.saga, status);
        }
    }
}

#[async_trait]
impl Store for TrackingStore {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        Self::count(&self.tracker.calls.create);
        self.inner.create(saga).await
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        Self::count(&self.tracker.calls.claim);
        let at = Instant::now();
        let leases = self.inner.claim(owner, now, lease_for, limit).await?;
        self.tracker.claimed(at, leases.len());
        Ok(leases)
    }

    async fn claim_loaded(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        Self::count(&self.tracker.calls.claim);
        let at = Instant::now();
        let claimed = self
            .inner
            .claim_loaded(owner, now, lease_for, limit)
            .await?;
        self.tracker.claimed(at, claimed.len());
        Ok(claimed)
    }

    async fn reclaim(
        &self,
        owner: &WorkerId,
        granted_before: Timestamp,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        Self::count(&self.tracker.calls.claim);
        self.inner
            .reclaim(owner, granted_before, now, lease_for, limit)
            .await
    }

    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease> {
        Self::count(&self.tracker.calls.heartbeat);
        self.inner.heartbeat(lease, expires_at).await
    }

    async fn apply(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        Self::count(&self.tracker.calls.apply);
        self.inner.apply(lease, changes).await?;
        self.note_settled(lease, changes);
        Ok(())
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>> {
        Self::count(&self.tracker.calls.load);
        self.inner.load(id).await
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        Self::count(&self.tracker.calls.other);
        self.inner.list(filter).await
    }

    async fn count_by_status(&self) -> Result<Vec<(SagaStatus, u64)>> {
        Self::count(&self.tracker.calls.other);
        self.inner.count_by_status().await
    }

    async fn overview(
        &self,
        query: &saga::store::OverviewQuery,
    ) -> Result<saga::store::OverviewParts> {
        Self::count(&self.tracker.calls.other);
        self.inner.overview(query).await
    }

    async fn history(&self, id: SagaId) -> Result<Vec<Event>> {
        Self::count(&self.tracker.calls.other);
        self.inner.history(id).await
    }

    async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        Self::count(&self.tracker.calls.other);
        self.inner.interventions(open_only).await
    }

    async fn intervention(&self, id: InterventionId) -> Result<Option<Intervention>> {
        Self::count(&self.tracker.calls.other);
        self.inner.intervention(id).await
    }

    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus> {
        Self::count(&self.tracker.calls.other);
        self.inner.settle(settlement).await
    }

    async fn deliver_signal(&self, delivery: &SignalDelivery) -> Result<Delivered> {
        Self::count(&self.tracker.calls.signal);
        self.inner.deliver_signal(delivery).await
    }

    async fn permit(
        &self,
        request: &saga::policy::PermitRequest,
        now: saga::Timestamp,
    ) -> saga::Result<saga::policy::Permit> {
        self.inner.permit(request, now).await
    }

    async fn throttle(&self, name: &str, until: saga::Timestamp) -> saga::Result<()> {
        self.inner.throttle(name, until).await
    }

    async fn pause(
        &self,
        request: &saga::policy::PauseRequest,
        now: saga::Timestamp,
    ) -> saga::Result<(saga::Pause, bool)> {
        self.inner.pause(request, now).await
    }

    async fn resume(
        &self,
        request: &saga::policy::PauseRequest,
        now: saga::Timestamp,
    ) -> saga::Result<Option<(saga::Pause, u64)>> {
        self.inner.resume(request, now).await
    }

    async fn pauses(&self, all: bool) -> saga::Result<Vec<saga::Pause>> {
        self.inner.pauses(all).await
    }

    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome> {
        Self::count(&self.tracker.calls.other);
        self.inner.request_cancel(id, by, reason, now).await
    }

    async fn stop_child(
        &self,
        child: SagaId,
        parent: &saga::ParentLink,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        Self::count(&self.tracker.calls.other);
        self.inner.stop_child(child, parent, reason, now).await
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64> {
        Self::count(&self.tracker.calls.other);
        self.inner.prune(before, limit).await
    }

    async fn count_open_interventions(&self) -> Result<u64> {
        Self::count(&self.tracker.calls.other);
        self.inner.count_open_interventions().await
    }

    async fn begin_step_transaction(
        &self,
        lease: &Lease,
    ) -> Result<Option<Box<dyn StepTransaction>>> {
        self.inner.begin_step_transaction(lease).await
    }

    async fn commit_step_transaction(
        &self,
        transaction: Box<dyn StepTransaction>,
        lease: &Lease,
        changes: &[Change],
    ) -> Result<()> {
        Self::count(&self.tracker.calls.step_tx);
        self.inner
            .commit_step_transaction(transaction, lease, changes)
            .await?;
        self.note_settled(lease, changes);
        Ok(())
    }

    async fn wait_for_work(&self, max: Duration) {
        self.inner.wait_for_work(max).await;
    }

    async fn clock(&self) -> Result<Timestamp> {
        Self::count(&self.tracker.calls.other);
        self.inner.clock().await
    }

    fn step_transaction_holds_the_write_lock(&self) -> bool {
        self.inner.step_transaction_holds_the_write_lock()
    }
}
