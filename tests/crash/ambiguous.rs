//! Ambiguous commits, injected at the store boundary: a decorator over the real store whose
//! `apply` commits and then, now and then, reports `StoreUnavailable` — the caller cannot tell
//! whether its write took effect, as when a connection drops between COMMIT and its answer.
//! It can also kill its process right after a permit under a cap was granted (the use is
//! counted, the attempt's `in_progress` not yet written), a dangerous instant the library has
//! no fault point for; it reports that as the fault point `after_permit`, naming the saga and
//! the step.
//!
//! `Store` is an `async_trait` trait; its methods are written here in the desugared form that
//! macro produces (a boxed future), which forwards to the wrapped store. Every method is
//! forwarded, those with a default body too, so that the scenario runs the real store's paths.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga::{
    CancelOutcome, Change, Created, Error, Event, Intervention, InterventionId, Lease, NewSaga,
    Result, SagaFilter, SagaId, SagaRecord, SagaSnapshot, SagaStatus, Settlement, StepTransaction,
    Store, Timestamp, WorkerId,
};

use crate::rng::Rng;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which writes the decorator may answer with an error after they committed, and the label it
/// reports them under: a saga's final transition (to a settled status, with its lease given
/// back), another status change or lease release, or a step completion.
fn target(changes: &[Change]) -> Option<&'static str> {
    let settles = changes.iter().any(|change| match change {
        Change::SetStatus { status, .. } => status.is_settled(),
        Change::Escalate(_) => true,
        _ => false,
    });
    if settles {
        return Some("final");
    }
    if changes
        .iter()
        .any(|change| matches!(change, Change::SetStatus { .. } | Change::Release { .. }))
    {
        return Some("transition");
    }
    changes
        .iter()
        .any(|change| matches!(change, Change::CompleteStep { .. }))
        .then_some("completion")
}

/// A store whose targeted writes commit and then, with probability `odds`, report an error;
/// and whose process dies, with probability `permit_deaths`, once a permit under a cap was
/// granted to a first attempt.
pub(crate) struct AmbiguousStore {
    inner: Arc<dyn Store>,
    odds: f64,
    permit_deaths: f64,
    rng: Mutex<Rng>,
}

impl AmbiguousStore {
    pub(crate) fn new(inner: Arc<dyn Store>, odds: f64, seed: u64) -> Self {
        Self {
            inner,
            odds,
            permit_deaths: 0.0,
            rng: Mutex::new(Rng::new(seed)),
        }
    }

    /// Also aborts the process, with probability `odds`, right after a permit under a cap was
    /// granted to a first attempt and before the worker writes the attempt's `in_progress`.
    pub(crate) fn dying_after_permits(mut self, odds: f64) -> Self {
        self.permit_deaths = odds;
        self
    }

    fn draw(&self, odds: f64) -> bool {
        odds > 0.0
            && self
                .rng
                .lock()
                .map(|mut rng| rng.chance(odds))
                .unwrap_or(false)
    }
}

impl Store for AmbiguousStore {
    fn create<'s, 'a>(&'s self, saga: NewSaga) -> Boxed<'a, Result<Created>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.create(saga)
    }

    fn claim<'s, 'o, 'a>(
        &'s self,
        owner: &'o WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Boxed<'a, Result<Vec<Lease>>>
    where
        's: 'a,
        'o: 'a,
        Self: 'a,
    {
        self.inner.claim(owner, now, lease_for, limit)
    }

    fn claim_loaded<'s, 'o, 'a>(
        &'s self,
        owner: &'o WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Boxed<'a, Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>>>
    where
        's: 'a,
        'o: 'a,
        Self: 'a,
    {
        self.inner.claim_loaded(owner, now, lease_for, limit)
    }

    fn reclaim<'s, 'o, 'a>(
        &'s self,
        owner: &'o WorkerId,
        granted_before: Timestamp,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Boxed<'a, Result<Vec<Lease>>>
    where
        's: 'a,
        'o: 'a,
        Self: 'a,
    {
        self.inner
            .reclaim(owner, granted_before, now, lease_for, limit)
    }

    fn count_open_interventions<'s, 'a>(&'s self) -> Boxed<'a, Result<u64>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.count_open_interventions()
    }

    fn begin_step_transaction<'s, 'l, 'a>(
        &'s self,
        lease: &'l Lease,
    ) -> Boxed<'a, Result<Option<Box<dyn StepTransaction>>>>
    where
        's: 'a,
        'l: 'a,
        Self: 'a,
    {
        self.inner.begin_step_transaction(lease)
    }

    fn commit_step_transaction<'s, 'l, 'c, 'a>(
        &'s self,
        transaction: Box<dyn StepTransaction>,
        lease: &'l Lease,
        changes: &'c [Change],
    ) -> Boxed<'a, Result<()>>
    where
        's: 'a,
        'l: 'a,
        'c: 'a,
        Self: 'a,
    {
        self.inner
            .commit_step_transaction(transaction, lease, changes)
    }

    fn heartbeat<'s, 'l, 'a>(
        &'s self,
        lease: &'l Lease,
        expires_at: Timestamp,
    ) -> Boxed<'a, Result<Lease>>
    where
        's: 'a,
        'l: 'a,
        Self: 'a,
    {
        self.inner.heartbeat(lease, expires_at)
    }

    fn apply<'s, 'l, 'c, 'a>(
        &'s self,
        lease: &'l Lease,
        changes: &'c [Change],
    ) -> Boxed<'a, Result<()>>
    where
        's: 'a,
        'l: 'a,
        'c: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            self.inner.apply(lease, changes).await?;
            match target(changes) {
                Some(what) if self.draw(self.odds) => {
                    eprintln!("CRASH-HARNESS ambiguous {what}");
                    Err(Error::StoreUnavailable(
                        format!("injected: the {what} committed, but its answer was lost").into(),
                    ))
                }
                _ => Ok(()),
            }
        })
    }

    fn load<'s, 'a>(&'s self, id: SagaId) -> Boxed<'a, Result<Option<SagaSnapshot>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.load(id)
    }

    fn list<'s, 'f, 'a>(&'s self, filter: &'f SagaFilter) -> Boxed<'a, Result<Vec<SagaRecord>>>
    where
        's: 'a,
        'f: 'a,
        Self: 'a,
    {
        self.inner.list(filter)
    }

    fn count_by_status<'s, 'a>(&'s self) -> Boxed<'a, Result<Vec<(SagaStatus, u64)>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.count_by_status()
    }

    fn overview<'s, 'q, 'a>(
        &'s self,
        query: &'q saga::store::OverviewQuery,
    ) -> Boxed<'a, Result<saga::store::OverviewParts>>
    where
        's: 'a,
        'q: 'a,
        Self: 'a,
    {
        self.inner.overview(query)
    }

    fn history<'s, 'a>(&'s self, id: SagaId) -> Boxed<'a, Result<Vec<Event>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.history(id)
    }

    fn interventions<'s, 'a>(&'s self, open_only: bool) -> Boxed<'a, Result<Vec<Intervention>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.interventions(open_only)
    }

    fn intervention<'s, 'a>(&'s self, id: InterventionId) -> Boxed<'a, Result<Option<Intervention>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.intervention(id)
    }

    fn settle<'s, 'x, 'a>(&'s self, settlement: &'x Settlement) -> Boxed<'a, Result<SagaStatus>>
    where
        's: 'a,
        'x: 'a,
        Self: 'a,
    {
        self.inner.settle(settlement)
    }

    fn request_cancel<'s, 'b, 'r, 'a>(
        &'s self,
        id: SagaId,
        by: &'b str,
        reason: &'r str,
        now: Timestamp,
    ) -> Boxed<'a, Result<CancelOutcome>>
    where
        's: 'a,
        'b: 'a,
        'r: 'a,
        Self: 'a,
    {
        self.inner.request_cancel(id, by, reason, now)
    }

    fn stop_child<'s, 'p, 'r, 'a>(
        &'s self,
        child: SagaId,
        parent: &'p saga::ParentLink,
        reason: &'r str,
        now: Timestamp,
    ) -> Boxed<'a, Result<()>>
    where
        's: 'a,
        'p: 'a,
        'r: 'a,
        Self: 'a,
    {
        self.inner.stop_child(child, parent, reason, now)
    }

    fn prune<'s, 'a>(&'s self, before: Timestamp, limit: u32) -> Boxed<'a, Result<u64>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.prune(before, limit)
    }

    fn deliver_signal<'s, 'd, 'a>(
        &'s self,
        delivery: &'d saga::wait::SignalDelivery,
    ) -> Boxed<'a, Result<saga::Delivered>>
    where
        's: 'a,
        'd: 'a,
        Self: 'a,
    {
        self.inner.deliver_signal(delivery)
    }

    fn permit<'s, 'r, 'a>(
        &'s self,
        request: &'r saga::policy::PermitRequest,
        now: saga::Timestamp,
    ) -> Boxed<'a, Result<saga::policy::Permit>>
    where
        's: 'a,
        'r: 'a,
        Self: 'a,
    {
        Box::pin(async move {
            let permit = self.inner.permit(request, now).await?;
            // A first attempt's permit (the attempt of a permit whose worker died is still the
            // first), so that one saga's retries do not die over and over.
            let capped = request.attempt.0 == 1
                && request
                    .uses
                    .iter()
                    .any(|wanted| wanted.policy.kind == saga::policy::PolicyKind::Cap);
            if permit == saga::policy::Permit::Granted && capped && self.draw(self.permit_deaths) {
                // As a SIGKILL would stop it: no destructor runs, nothing more is written.
                eprintln!(
                    "CRASH-HARNESS permit death {} {}",
                    request.saga, request.step
                );
                eprintln!("fault injected at after_permit: aborting");
                std::process::abort();
            }
            Ok(permit)
        })
    }

    fn throttle<'s, 'n, 'a>(
        &'s self,
        name: &'n str,
        until: saga::Timestamp,
    ) -> Boxed<'a, Result<()>>
    where
        's: 'a,
        'n: 'a,
        Self: 'a,
    {
        self.inner.throttle(name, until)
    }

    fn pause<'s, 'r, 'a>(
        &'s self,
        request: &'r saga::policy::PauseRequest,
        now: saga::Timestamp,
    ) -> Boxed<'a, Result<(saga::Pause, bool)>>
    where
        's: 'a,
        'r: 'a,
        Self: 'a,
    {
        self.inner.pause(request, now)
    }

    fn resume<'s, 'r, 'a>(
        &'s self,
        request: &'r saga::policy::PauseRequest,
        now: saga::Timestamp,
    ) -> Boxed<'a, Result<Option<(saga::Pause, u64)>>>
    where
        's: 'a,
        'r: 'a,
        Self: 'a,
    {
        self.inner.resume(request, now)
    }

    fn pauses<'s, 'a>(&'s self, all: bool) -> Boxed<'a, Result<Vec<saga::Pause>>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.pauses(all)
    }

    fn wait_for_work<'s, 'a>(&'s self, max: Duration) -> Boxed<'a, ()>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.wait_for_work(max)
    }

    fn clock<'s, 'a>(&'s self) -> Boxed<'a, Result<Timestamp>>
    where
        's: 'a,
        Self: 'a,
    {
        self.inner.clock()
    }

    fn step_transaction_holds_the_write_lock(&self) -> bool {
        self.inner.step_transaction_holds_the_write_lock()
    }
}
