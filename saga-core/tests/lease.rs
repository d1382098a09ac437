//! Leases under failing heartbeats: a failed renewal is retried at once, well within what is
//! left of the lease.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::store::{CancelOutcome, Created, Settlement};
use saga_core::{
    Change, Config, Error, Event, EventKind, Intervention, InterventionId, Lease, MemoryStore,
    NewSaga, Orchestrator, Result, Saga, SagaDefinition, SagaFilter, SagaId, SagaRecord,
    SagaSnapshot, SagaStatus, Step, StepContext, StepError, Store, Timestamp, WorkerId,
};

/// The memory store, with its first `fail_first` heartbeats failing as if the store were
/// unreachable.
struct FlakyHeartbeats {
    inner: MemoryStore,
    fail_first: u32,
    heartbeats: AtomicU32,
}

impl FlakyHeartbeats {
    fn new(fail_first: u32) -> Self {
        Self {
            inner: MemoryStore::new(),
            fail_first,
            heartbeats: AtomicU32::new(0),
        }
    }
}

#[async_trait]
impl Store for FlakyHeartbeats {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        self.inner.create(saga).await
    }
    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        self.inner.claim(owner, now, lease_for, limit).await
    }
    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease> {
        let n = self.heartbeats.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(Error::StoreUnavailable("injected: heartbeat lost".into()));
        }
        self.inner.heartbeat(lease, expires_at).await
    }
    async fn apply(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        self.inner.apply(lease, changes).await
    }
    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>> {
        self.inner.load(id).await
    }
    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        self.inner.list(filter).await
    }
    async fn count_by_status(&self) -> Result<Vec<(SagaStatus, u64)>> {
        self.inner.count_by_status().await
    }
    async fn overview(
        &self,
        query: &saga_core::store::OverviewQuery,
    ) -> Result<saga_core::store::OverviewParts> {
        self.inner.overview(query).await
    }
    async fn history(&self, id: SagaId) -> Result<Vec<Event>> {
        self.inner.history(id).await
    }
    async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        self.inner.interventions(open_only).await
    }
    async fn intervention(&self, id: InterventionId) -> Result<Option<Intervention>> {
        self.inner.intervention(id).await
    }
    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus> {
        self.inner.settle(settlement).await
    }
    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome> {
        self.inner.request_cancel(id, by, reason, now).await
    }
    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64> {
        self.inner.prune(before, limit).await
    }
    async fn deliver_signal(
        &self,
        delivery: &saga_core::wait::SignalDelivery,
    ) -> Result<saga_core::Delivered> {
        self.inner.deliver_signal(delivery).await
    }

    async fn permit(
        &self,
        request: &saga_core::policy::PermitRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<saga_core::policy::Permit> {
        self.inner.permit(request, now).await
    }

    async fn throttle(&self, name: &str, until: saga_core::Timestamp) -> saga_core::Result<()> {
        self.inner.throttle(name, until).await
    }

    async fn pause(
        &self,
        request: &saga_core::policy::PauseRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<(saga_core::Pause, bool)> {
        self.inner.pause(request, now).await
    }

    async fn resume(
        &self,
        request: &saga_core::policy::PauseRequest,
        now: saga_core::Timestamp,
    ) -> saga_core::Result<Option<(saga_core::Pause, u64)>> {
        self.inner.resume(request, now).await
    }

    async fn pauses(&self, all: bool) -> saga_core::Result<Vec<saga_core::Pause>> {
        self.inner.pauses(all).await
    }
}

/// Two steps; the first takes `work` and counts its calls.
struct Slow {
    work: Duration,
    calls: AtomicU32,
    second: AtomicU32,
}

async fn first(saga: Arc<Slow>, _: StepContext<u64>) -> std::result::Result<(), StepError> {
    saga.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(saga.work).await;
    Ok(())
}

async fn second(saga: Arc<Slow>, _: StepContext<u64>) -> std::result::Result<(), StepError> {
    saga.second.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

impl Saga for Slow {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("slow", 1)
            .step(
                Step::new("first", first)
                    .timeout(Duration::from_secs(10))
                    .irreversible(),
            )
            .step(Step::new("second", second).irreversible())
    }
}

fn orchestrator(store: &Arc<FlakyHeartbeats>, name: &str, ttl: Duration) -> Orchestrator {
    let store: Arc<dyn Store> = store.clone();
    Orchestrator::new(
        store,
        Config::default()
            .worker_id(WorkerId::new(name))
            .lease_ttl(ttl)
            .poll_interval(Duration::from_millis(20)),
    )
}

fn slow(work: Duration) -> Slow {
    Slow {
        work,
        calls: AtomicU32::new(0),
        second: AtomicU32::new(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_heartbeats_are_retried_at_once_so_a_live_lease_is_not_taken_over() {
    let store = Arc::new(FlakyHeartbeats::new(3));
    let ttl = Duration::from_millis(900);
    // A step three leases long: the lease lives only by its heartbeats, the first three of which
    // fail. A second worker polls every 20 ms, ready to take over a lease that lapses.
    let holder = orchestrator(&store, "holder", ttl);
    holder.register(slow(ttl * 3)).unwrap();
    holder.run();
    let id = holder.start::<Slow>(&1).await.unwrap();
    let rival = orchestrator(&store, "rival", ttl);
    rival.register(slow(Duration::ZERO)).unwrap();
    rival.run();
    let record = holder.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let history = store.history(id).await.unwrap();
    assert!(
        !history
            .iter()
            .any(|event| event.kind == EventKind::LeaseTakenOver),
        "the lease was kept alive by retried heartbeats: {}",
        holder.history(id).await.unwrap().render()
    );
    assert!(store.heartbeats.load(Ordering::SeqCst) >= 3);
    holder.shutdown().await;
    rival.shutdown().await;
}
