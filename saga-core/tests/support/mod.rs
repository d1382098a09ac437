//! The memory store with hooks around some of its calls, for tests that hold a call in flight
//! or fail it as an unreachable store would. Everything else goes to the memory store as is.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use async_trait::async_trait;
use saga_core::store::{CancelOutcome, Created, Settlement};
use saga_core::{
    Change, Event, Intervention, InterventionId, Lease, MemoryStore, NewSaga, Result, SagaFilter,
    SagaId, SagaRecord, SagaSnapshot, SagaStatus, Store, Timestamp, WorkerId,
};

/// What runs around the hooked calls (each default does nothing).
#[async_trait]
pub(crate) trait Around: Send + Sync + 'static {
    /// Before `create` reaches the memory store; an error is the call's.
    async fn before_create(&self) -> Result<()> {
        Ok(())
    }
    /// After `create` returned.
    fn after_create(&self) {}
    /// Before `heartbeat` reaches the memory store; an error is the call's.
    fn before_heartbeat(&self) -> Result<()> {
        Ok(())
    }
}

/// The memory store, with `around` run around its hooked calls.
pub(crate) struct Hooked<A> {
    pub(crate) inner: MemoryStore,
    pub(crate) around: A,
}

impl<A> Hooked<A> {
    pub(crate) fn new(around: A) -> Self {
        Self {
            inner: MemoryStore::new(),
            around,
        }
    }
}

#[async_trait]
impl<A: Around> Store for Hooked<A> {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        self.around.before_create().await?;
        let created = self.inner.create(saga).await;
        self.around.after_create();
        created
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
        self.around.before_heartbeat()?;
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
    async fn stop_child(
        &self,
        child: SagaId,
        parent: &saga_core::ParentLink,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.inner.stop_child(child, parent, reason, now).await
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
