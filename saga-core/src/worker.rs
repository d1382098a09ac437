//! Workers: claim -> plan -> persist intent -> execute -> persist result, until the saga waits,
//! finishes or escalates.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::clock;
use crate::definition::StepSpec;
use crate::error::{Error, Result};
use crate::id::{Attempt, IdempotencyKey, StepIndex, StepName};
use crate::orchestrator::{Inner, Lookup};
use crate::plan::{self, Action};
use crate::saga::{DecodedInput, ErasedSaga, RawContext};
use crate::slots::Slot;
use crate::status::{Phase, StepStatus};
use crate::step::StepError;
use crate::store::{Change, Lease, ParentLink, Refusal, SagaSnapshot};
use crate::telemetry::{names, TraceContext};

/// The claim loop: keeps up to `concurrency` sagas in flight until shutdown.
/// A saga started in this process, created already leased to it: driven at once, unclaimed.
pub(crate) struct Direct {
    pub(crate) lease: Lease,
    pub(crate) snapshot: SagaSnapshot,
    /// The step attempt recorded `in_progress` with the creation: run it first, unplanned.
    pub(crate) begun: Option<plan::Attempted>,
    pub(crate) slot: Slot,
}

/// How much earlier than `run()` a lease must have been granted to be taken back as an earlier
/// run's (see `dispatch`).
const RECLAIM_MARGIN: Duration = Duration::from_millis(20);

/// How often a dispatcher measures its offset to the store's clock again.
const CLOCK_SYNC_EVERY: Duration = Duration::from_secs(30);

/// The claim loop: keeps up to `concurrency` sagas in flight (one slot each) until shutdown,
/// driving sagas started in this process at once and claiming due ones from the store.
pub(crate) async fn dispatch(
    inner: Arc<Inner>,
    mut direct: mpsc::UnboundedReceiver<Direct>,
    run_at: std::time::Instant,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut drives = JoinSet::new();
    let mut failures: u32 = 0;
    let mut stuck_reported = std::collections::HashSet::new();
    let mut last_sample = std::time::Instant::now()
        .checked_sub(inner.config.metrics_interval)
        .unwrap_or_else(std::time::Instant::now);
    let start = |drives: &mut JoinSet<()>, work: Direct| {
        drives.spawn(drive(
            Arc::clone(&inner),
            work.lease,
            Some(Ok(work.snapshot)),
            work.begun,
            Some(work.slot),
        ));
    };
    // Claim when something may be due: at start, when woken (a saga was started or released,
    // here or — on Postgres — in any process), and at least every poll interval; again at once
    // (or as soon as a slot frees up) only while the last claim filled its batch, since more
    // may be due then. Wake-ups that arrive while every slot is taken are kept until a slot
    // frees. Sagas started here arrive on `direct` and cost no claim.
    // Schedule by the store's clock from the first claim on (a start may have measured it
    // already); measured again every so often.
    let store_now = inner.synced_now().await;
    let mut last_clock_sync = std::time::Instant::now();
    // The store's time when `run` was called, plus a lease, less a margin: every lease granted
    // since (by this process's reckoning of the store's clock, the one it grants leases by)
    // expires after it. The margin covers the reckoning moving between the two readings; kept
    // small, so that a process restarted a fraction of a second after it was killed still takes
    // back the leases its earlier run granted just before (see `reclaim`).
    let since_run = run_at.elapsed().saturating_add(RECLAIM_MARGIN);
    let reclaim_before = clock::after(clock::before(store_now, since_run), inner.config.lease_ttl);
    // Sagas this worker id held before a restart: taken back as slots allow, now and whenever
    // slots free up, until none is left (the rest would otherwise wait for their leases).
    let mut reclaiming = reclaim(&inner, &mut drives, reclaim_before).await;
    let mut claim_now = true;
    let mut backlog = false;
    let mut next_poll = tokio::time::Instant::now();
    // Set when a poll falls due while every slot is taken: the next claim takes one saga even
    // without a free slot. Sagas started here take slots as they free, so under sustained load
    // a saga waiting in the store (a retry, a takeover, a saga started while every slot was
    // taken) would otherwise wait for as long as starts keep coming; this way it waits at most
    // about a poll interval, at the cost of one saga driven above the limit now and then.
    let mut overdue = false;
    loop {
        while drives.try_join_next().is_some() {}
        while let Ok(work) = direct.try_recv() {
            start(&mut drives, work);
        }
        if *shutdown.borrow() {
            break;
        }
        let free = inner.slots.free();
        if free == 0 && !overdue {
            // Every slot is taken: by running drives, or by starts in progress (which give
            // their slot back when the saga existed already or the store failed). Wait for any
            // slot to come free, whoever held it, or for the poll.
            tokio::select! {
                () = inner.slots.given_back() => {
                    claim_now |= backlog || reclaiming || tokio::time::Instant::now() >= next_poll;
                }
                () = tokio::time::sleep_until(next_poll) => overdue = true,
                Some(work) = direct.recv() => start(&mut drives, work),
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if reclaiming {
            reclaiming = reclaim(&inner, &mut drives, reclaim_before).await;
        }
        if claim_now || tokio::time::Instant::now() >= next_poll {
            claim_now = false;
            next_poll = clock::instant_after(inner.config.poll_interval);
            // Claim in bounded batches: a large `concurrency` fills up over a few claims
            // instead of one huge transaction.
            let wanted = free
                .max(usize::from(overdue))
                .min(inner.config.claim_batch.max(1));
            let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
            overdue = false;
            let claim_started = std::time::Instant::now();
            let claimed = inner
                .store
                .claim_loaded(
                    &inner.config.worker_id,
                    inner.now(),
                    inner.config.lease_ttl,
                    limit,
                )
                .await;
            metrics::histogram!(names::CLAIM_DURATION)
                .record(claim_started.elapsed().as_secs_f64());
            if last_clock_sync.elapsed() >= CLOCK_SYNC_EVERY {
                last_clock_sync = std::time::Instant::now();
                inner.sync_clock().await;
            }
            if last_sample.elapsed() >= inner.config.metrics_interval {
                last_sample = std::time::Instant::now();
                sample_queues(&inner, &mut stuck_reported).await;
            }
            match claimed {
                Ok(leases) => {
                    failures = 0;
                    metrics::counter!(names::CLAIMED).increment(leases.len() as u64);
                    backlog = leases.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
                    if !leases.is_empty() {
                        for (lease, snapshot) in leases {
                            // A saga started here may have taken the slot meanwhile; the claimed
                            // one is driven all the same (it is ours now), briefly above the limit.
                            let slot = inner.slots.try_take();
                            drives.spawn(drive(Arc::clone(&inner), lease, snapshot, None, slot));
                        }
                        claim_now = backlog;
                        continue;
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let pause = inner
                        .config
                        .poll_interval
                        .saturating_mul(1 << failures.min(4))
                        .min(Duration::from_secs(5));
                    tracing::warn!(error = %err, retry_in = ?pause, "claiming sagas failed");
                    next_poll = clock::instant_after(pause);
                }
            }
        }
        let until_poll = next_poll.saturating_duration_since(tokio::time::Instant::now());
        tokio::select! {
            () = inner.wake.notified() => claim_now = true,
            () = inner.store.wait_for_work(until_poll) => claim_now = failures == 0,
            Some(work) = direct.recv() => start(&mut drives, work),
            _ = shutdown.changed() => {}
        }
    }
    // Sagas started here during shutdown: each runs the first step it was created with (it is
    // recorded begun), within the grace period, then sees the shutdown and releases the saga.
    direct.close();
    while let Ok(work) = direct.try_recv() {
        start(&mut drives, work);
    }
    let drain = async { while drives.join_next().await.is_some() {} };
    if tokio::time::timeout(inner.config.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown grace period over; abandoning running steps (their leases will expire)"
        );
        drives.abort_all();
    }
}

/// Takes back the sagas an earlier run of this worker id still holds (killed or crashed,
/// restarted under the same id): they resume now, not when their leases expire. As many as
/// there are free slots; returns whether more may be left (then it is called again as slots
/// free up).
/// Sets the queue's and the stuck steps' gauges from one store read; a step reported stuck
/// before and no longer stuck falls back to 0.
async fn sample_queues(
    inner: &Inner,
    reported: &mut std::collections::HashSet<(String, String, &'static str)>,
) {
    use crate::store::OverviewQuery;
    let now = inner.now();
    let Ok(parts) = inner
        .store
        .overview(&OverviewQuery::queues(now, inner.config.stuck_after))
        .await
    else {
        return;
    };
    metrics::gauge!(names::INTERVENTIONS_OPEN).set(parts.open_interventions as f64);
    let oldest = parts.oldest_open_intervention.map_or(0.0, |at| {
        (now - at).num_milliseconds().max(0) as f64 / 1_000.0
    });
    metrics::gauge!(names::INTERVENTION_OLDEST_AGE).set(oldest);
    let mut current = std::collections::HashSet::new();
    for stuck in parts.stuck {
        let key = (
            stuck.saga_type.as_str().to_owned(),
            stuck.step.as_str().to_owned(),
            stuck.phase.as_str(),
        );
        metrics::gauge!(names::STUCK_SAGAS, "saga_type" => key.0.clone(), "step" => key.1.clone(), "phase" => key.2)
            .set(stuck.sagas as f64);
        current.insert(key);
    }
    for (saga_type, step, phase) in reported.difference(&current) {
        metrics::gauge!(names::STUCK_SAGAS, "saga_type" => saga_type.clone(), "step" => step.clone(), "phase" => *phase)
            .set(0.0);
    }
    *reported = current;
}

async fn reclaim(
    inner: &Arc<Inner>,
    drives: &mut JoinSet<()>,
    granted_before: clock::Timestamp,
) -> bool {
    loop {
        let free = inner.slots.free();
        if free == 0 {
            return true;
        }
        let limit = u32::try_from(free.min(inner.config.claim_batch.max(1))).unwrap_or(u32::MAX);
        let leases = match inner
            .store
            .reclaim(
                &inner.config.worker_id,
                granted_before,
                inner.now(),
                inner.config.lease_ttl,
                limit,
            )
            .await
        {
            Ok(leases) => leases,
            Err(err) => {
                tracing::warn!(error = %err, "taking back this worker's leases from before a restart failed; they resume when they expire");
                return false;
            }
        };
        let full = leases.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
        if !leases.is_empty() {
            tracing::info!(
                sagas = leases.len(),
                worker = %inner.config.worker_id,
                "took back sagas this worker id held before a restart"
            );
        }
        for lease in leases {
            let slot = inner.slots.try_take();
            drives.spawn(drive(Arc::clone(inner), lease, None, None, slot));
        }
        if !full {
            return false;
        }
    }
}

/// Drives one claimed saga, renewing the lease alongside; stops writing if the lease is lost.
async fn drive(
    inner: Arc<Inner>,
    lease: Lease,
    snapshot: Option<Result<SagaSnapshot>>,
    begun: Option<plan::Attempted>,
    slot: Option<Slot>,
) {
    let _slot = slot;
    if let Some(previous) = &lease.taken_over_from {
        metrics::counter!(names::TAKEOVERS).increment(1);
        if *previous == lease.owner {
            tracing::info!(saga.id = %lease.saga, "took back a lease this worker id held before a restart");
        } else {
            tracing::info!(saga.id = %lease.saga, previous_owner = %previous, "took over an expired lease");
        }
    }
    let clock = LeaseClock::new(&lease, inner.now());
    let outcome = tokio::select! {
        result = drive_saga(&inner, &lease, &clock, snapshot, begun) => result,
        lost = keep_lease(&inner, &lease, &clock) => Err(lost),
    };
    match outcome {
        Ok(()) => {}
        Err(Error::LeaseLost(saga)) => {
            tracing::warn!(saga.id = %saga, "lease lost; another worker continues this saga");
        }
        Err(err) => {
            tracing::error!(saga.id = %lease.saga, error = %err, "driving saga failed; it resumes when its lease expires");
        }
    }
    inner.progress.notify_waiters();
}

/// When the lease runs out by this worker's own (monotonic) reckoning: the time a renewal was
/// sent plus the lease's duration. A step never begins after it.
pub(crate) struct LeaseClock {
    expires: std::sync::Mutex<tokio::time::Instant>,
}

impl LeaseClock {
    fn new(lease: &Lease, now: clock::Timestamp) -> Self {
        let left = (lease.expires_at - now).to_std().unwrap_or(Duration::ZERO);
        Self {
            expires: std::sync::Mutex::new(clock::instant_after(left)),
        }
    }

    fn renewed(&self, sent: tokio::time::Instant, ttl: Duration) {
        if let Ok(mut expires) = self.expires.lock() {
            *expires = sent
                .checked_add(ttl)
                .unwrap_or_else(|| clock::instant_after(ttl));
        }
    }

    /// The lease's time left, by this worker's reckoning.
    pub(crate) fn left(&self) -> Duration {
        self.expires.lock().map_or(Duration::ZERO, |expires| {
            expires.saturating_duration_since(tokio::time::Instant::now())
        })
    }
}

/// Renews the lease every third of its duration; a renewal that fails is retried at once with
/// a short backoff while the lease has time left. Returns only when the lease is lost: refused
/// by the store, or run out by this worker's reckoning before a renewal went through.
async fn keep_lease(inner: &Inner, lease: &Lease, lease_clock: &LeaseClock) -> Error {
    let ttl = inner.config.lease_ttl;
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut pause = every;
    loop {
        tokio::time::sleep(pause.min(lease_clock.left())).await;
        if lease_clock.left().is_zero() {
            tracing::warn!(saga.id = %lease.saga, "lease ran out before a heartbeat went through; stopping this drive");
            return Error::LeaseLost(lease.saga);
        }
        let sent = tokio::time::Instant::now();
        let expires_at = clock::after(inner.now(), ttl);
        // A renewal that hangs (a dead connection) must not outlive the lease it renews.
        let renewal =
            tokio::time::timeout(lease_clock.left(), inner.store.heartbeat(lease, expires_at))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::StoreUnavailable(
                        "the heartbeat did not answer before the lease ran out".into(),
                    ))
                });
        match renewal {
            Ok(_) => {
                lease_clock.renewed(sent, ttl);
                pause = every;
            }
            Err(err @ Error::LeaseLost(_)) => return err,
            Err(err) => {
                // Again soon, well within what is left of the lease.
                pause = (lease_clock.left() / 4)
                    .clamp(Duration::from_millis(5), Duration::from_millis(250));
                tracing::warn!(error = %err, retry_in = ?pause, "lease heartbeat failed; retrying");
            }
        }
    }
}

async fn drive_saga(
    inner: &Inner,
    lease: &Lease,
    lease_clock: &LeaseClock,
    claimed: Option<Result<SagaSnapshot>>,
    begun: Option<plan::Attempted>,
) -> Result<()> {
    let loaded = match claimed {
        Some(snapshot) => snapshot.map(Some),
        None => inner.store.load(lease.saga).await,
    };
    let snapshot = match loaded {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return Ok(()),
        Err(Error::CorruptRecord { reason, .. }) => {
            return park(
                inner,
                lease,
                None,
                format!("stored data is unreadable: {reason}"),
            )
            .await;
        }
        Err(err) => return Err(err),
    };
    let span = saga_span(inner, lease, &snapshot.record);
    async move { resume(inner, lease, lease_clock, snapshot, begun).await }
        .instrument(span)
        .await
}

/// The span of one drive of one saga, in the trace the saga started in.
fn saga_span(inner: &Inner, lease: &Lease, record: &crate::store::SagaRecord) -> tracing::Span {
    let trace = record
        .trace_context
        .as_deref()
        .and_then(TraceContext::parse);
    let span = tracing::info_span!(
        "saga",
        saga.id = %record.id,
        saga.r#type = %record.saga_type,
        trace_id = trace.as_ref().map(|t| t.trace_id().to_owned()).unwrap_or_default(),
        traceparent = trace.as_ref().map(ToString::to_string).unwrap_or_default(),
        fencing_token = lease.token.0,
        status = %record.status,
        input = tracing::field::Empty,
    );
    if let Some(input) = inner.config.telemetry.loggable(&record.input) {
        span.record("input", input);
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(trace) = &trace {
        crate::telemetry::otel::set_parent(&span, trace);
    }
    span
}

/// Checks that this process can run the saga, then drives it.
async fn resume(
    inner: &Inner,
    lease: &Lease,
    lease_clock: &LeaseClock,
    snapshot: SagaSnapshot,
    begun: Option<plan::Attempted>,
) -> Result<()> {
    let record = &snapshot.record;
    let definition = match inner.definition(&record.saga_type, record.version) {
        Lookup::Found(definition) => definition,
        Lookup::Missing(versions) => {
            let reason = if versions.is_empty() {
                format!(
                    "saga type `{}` is not registered in this process; register it and re-drive the saga",
                    record.saga_type
                )
            } else {
                format!(
                    "saga type `{}` version {} is not registered (registered: {versions:?}); keep registering the version sagas started on until they finish, then re-drive the saga",
                    record.saga_type, record.version
                )
            };
            return park(inner, lease, Some(&snapshot), reason).await;
        }
    };
    if definition.fingerprint() != record.fingerprint {
        let reason = format!(
            "definition of `{}` v{} changed since the saga started (fingerprint {} is now {}): steps were added, removed, renamed or reordered without a version bump; register the old steps under version {} and give the new ones a new version, then re-drive the saga",
            record.saga_type,
            record.version,
            record.fingerprint,
            definition.fingerprint(),
            record.version
        );
        return park(inner, lease, Some(&snapshot), reason).await;
    }
    let input = match definition.decode_input(&record.input) {
        Ok(input) => input,
        Err(reason) => return park(inner, lease, Some(&snapshot), reason).await,
    };
    let trace_id = record
        .trace_context
        .as_deref()
        .and_then(TraceContext::parse)
        .map(|trace| trace.trace_id().to_owned())
        .unwrap_or_default();
    Driver {
        trace_id,
        inner,
        lease,
        lease_clock,
        definition,
        input,
        compensating_since: crate::telemetry::compensation_began(&snapshot),
        snapshot,
        pending: Vec::new(),
    }
    .run(begun)
    .await
}

async fn park(
    inner: &Inner,
    lease: &Lease,
    snapshot: Option<&SagaSnapshot>,
    reason: String,
) -> Result<()> {
    tracing::warn!(saga.id = %lease.saga, reason = %reason, "saga parked for an operator");
    let saga_type = snapshot.map_or("unknown", |snapshot| snapshot.record.saga_type.as_str());
    let compensating_since = snapshot.and_then(crate::telemetry::compensation_began);
    let changes = plan::park(snapshot, reason);
    write(inner, lease, saga_type, &changes, compensating_since).await
}

/// The state of one drive: the local copy of the saga and the changes not yet written.
struct Driver<'a> {
    /// The trace id of the saga, recorded on every step span.
    trace_id: String,
    inner: &'a Inner,
    lease: &'a Lease,
    /// When the lease runs out by this worker's reckoning.
    lease_clock: &'a LeaseClock,
    definition: Arc<dyn ErasedSaga>,
    input: DecodedInput,
    snapshot: SagaSnapshot,
    /// Changes recorded locally but not yet written: folded into the next write, which always
    /// comes before the next step runs.
    pending: Vec<Change>,
    /// When the saga began compensating, once it is (for the compensation's duration).
    compensating_since: Option<clock::Timestamp>,
}

impl Driver<'_> {
    async fn run(mut self, begun: Option<plan::Attempted>) -> Result<()> {
        if let Some(begun) = begun {
            self.execute_begun(begun, None).await?;
        }
        loop {
            let now = self.inner.now();
            let specs = self.definition.specs();
            let deadline =
                plan::applicable_deadline(&self.snapshot, specs, self.definition.deadline());
            match plan::next_action_within(&self.snapshot, specs, deadline, now) {
                Action::Run {
                    index,
                    phase,
                    attempt,
                } => {
                    if *self.inner.shutdown.borrow() {
                        self.record(vec![Change::Release {
                            next_run_at: Some(now),
                        }])?;
                        return self.flush().await;
                    }
                    if !self.run_step(index, phase, attempt).await? {
                        return Ok(());
                    }
                }
                Action::RunGroup { first, phase } => {
                    if *self.inner.shutdown.borrow() {
                        self.record(vec![Change::Release {
                            next_run_at: Some(now),
                        }])?;
                        return self.flush().await;
                    }
                    if !Box::pin(self.run_group(first, phase)).await? {
                        return Ok(());
                    }
                }
                Action::Probe(probing) => {
                    if *self.inner.shutdown.borrow() {
                        self.record(vec![Change::Release {
                            next_run_at: Some(now),
                        }])?;
                        return self.flush().await;
                    }
                    Box::pin(self.probe_step(probing)).await?;
                }
                Action::Wait(waiting) => {
                    if !Box::pin(self.wait_step(waiting, deadline)).await? {
                        return Ok(());
                    }
                }
                Action::Child(step) => {
                    if *self.inner.shutdown.borrow() {
                        self.record(vec![Change::Release {
                            next_run_at: Some(now),
                        }])?;
                        return self.flush().await;
                    }
                    if !Box::pin(self.child_step(step, deadline)).await? {
                        return Ok(());
                    }
                }
                Action::Record(changes) => {
                    // A decision made for want of a signal is written at once: should a signal
                    // have come since the saga was read, it is refused, and the saga is read
                    // again and planned anew.
                    let guarded = changes
                        .iter()
                        .any(|change| matches!(change, Change::NoSignalSince { .. }));
                    if guarded {
                        // What was queued before (a step's outcome) is written first, on its
                        // own: only the guarded decision may be refused and decided again.
                        self.flush().await?;
                    }
                    self.record(changes)?;
                    if guarded {
                        match self.flush().await {
                            Ok(()) => {}
                            Err(Error::Refused {
                                refusal: Refusal::SignalArrived,
                                ..
                            }) => self.reload().await?,
                            Err(err) => return Err(err),
                        }
                    }
                }
                Action::WaitUntil(at) => {
                    self.record(vec![Change::Release {
                        next_run_at: Some(at),
                    }])?;
                    self.flush().await?;
                    self.wake_at(at);
                    return Ok(());
                }
                Action::Finish(status) => {
                    self.record(vec![
                        Change::SetStatus {
                            status,
                            reason: None,
                        },
                        Change::Release { next_run_at: None },
                    ])?;
                    return self.flush().await;
                }
                Action::Idle => {
                    self.record(vec![Change::Release { next_run_at: None }])?;
                    return self.flush().await;
                }
            }
        }
    }

    /// Refuses to begin a step (or ask a probe) once the lease has run out by this worker's own
    /// reckoning: another worker may be taking the saga over, and both would run the step.
    fn check_lease_left(&self) -> Result<()> {
        if self.lease_clock.left().is_zero() {
            tracing::warn!(saga.id = %self.lease.saga, "the lease ran out before the next step; it is not begun here");
            return Err(Error::LeaseLost(self.lease.saga));
        }
        Ok(())
    }

    /// Records the step phase `in_progress`, runs it and records its outcome. Returns `false`
    /// when it did not run and the saga was handed back (its transaction could not be opened).
    async fn run_step(&mut self, index: StepIndex, phase: Phase, attempt: Attempt) -> Result<bool> {
        self.check_lease_left()?;
        let position = usize::try_from(index.0).unwrap_or(usize::MAX);
        let Some(spec) = self.definition.specs().get(position).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!("plan chose step {index}, which the definition lacks"),
            });
        };
        if let Some(planned) = Box::pin(self.gate(&spec, index, phase, attempt)).await? {
            return Ok(planned);
        }
        // A transactional step's transaction is opened before `in_progress` is written: when
        // no connection can be had (every one busy with other steps), the step has not run
        // and no attempt is spent; the saga is handed back and tried again shortly. Where the
        // transaction holds the only write lock (SQLite), it is opened after instead.
        let open_first =
            spec.transactional && !self.inner.store.step_transaction_holds_the_write_lock();
        let mut transaction = if open_first {
            match self.inner.store.begin_step_transaction(self.lease).await {
                Ok(transaction) => transaction,
                Err(Error::StoreUnavailable(err)) => {
                    let pause = self
                        .inner
                        .config
                        .poll_interval
                        .max(Duration::from_millis(100));
                    tracing::warn!(step = %spec.name, error = %err, retry_in = ?pause, "no transaction for a transactional step; not run, the saga is handed back");
                    self.record(vec![Change::Release {
                        next_run_at: Some(clock::after(self.inner.now(), pause)),
                    }])?;
                    self.flush().await?;
                    return Ok(false);
                }
                Err(err) => return Err(err),
            }
        } else {
            None
        };
        let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, phase);
        self.record(vec![Change::BeginStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            key: key.clone(),
        }])?;
        // Durable before acting: `in_progress` (and whatever came before it) is written first.
        match self.flush().await {
            Ok(()) => {}
            Err(Error::CancelRequested { reason, .. }) if phase == Phase::Action => {
                return Box::pin(self.honour_cancel(reason)).await.map(|()| true);
            }
            Err(err) => return Err(err),
        }
        // Paused while `in_progress` was being written (a write can take a while under load):
        // the step is not called; the attempt is recorded as not run, and the saga is held.
        let pauses = self.inner.pauses().await?;
        if let Some(pause) =
            crate::policy::pause_covering(&pauses, self.definition.saga_type(), &spec.name)
        {
            let until = clock::after(self.inner.now(), crate::policy::PAUSE_RECHECK);
            let reason = format!(
                "{} paused by {}: {}",
                pause.scope, pause.paused_by, pause.reason
            );
            let not_run = self.not_run(&spec, index, phase, attempt, &reason);
            self.record(vec![not_run])?;
            let waiting_for = pause.scope.waiting_for();
            Box::pin(self.hold(&spec, "paused", waiting_for, reason, until)).await?;
            return Ok(false);
        }
        if spec.transactional && !open_first {
            transaction = self.inner.store.begin_step_transaction(self.lease).await?;
        }
        self.execute_begun(
            plan::Attempted {
                index,
                phase,
                attempt,
            },
            transaction,
        )
        .await
        .map(|()| true)
    }

    /// Records an attempt whose `in_progress` was written as not run (a pause came meanwhile),
    /// due again as soon as the saga is. Not run says nothing of an earlier attempt whose
    /// outcome is unknown: it stays so.
    fn not_run(
        &self,
        spec: &StepSpec,
        index: StepIndex,
        phase: Phase,
        attempt: Attempt,
        reason: &str,
    ) -> Change {
        let earlier_unknown = plan::earlier_attempt_unknown(&self.snapshot, index, phase);
        let not_run = format!("not run: {reason}");
        Change::FailStep {
            index,
            name: spec.name.clone(),
            phase,
            attempt,
            error: if earlier_unknown {
                StepError::unknown(format!(
                    "{not_run} (an earlier attempt's outcome is unknown)"
                ))
            } else {
                StepError::transient(not_run)
            },
            // Due as soon as the saga is: a resume makes it due at once.
            retry_at: Some(self.inner.now()),
        }
    }

    /// The policies before an attempt begins: a pause of the saga type or the step holds the
    /// saga (either phase); for an action, the store's permit under the step's policies grants
    /// the attempt, holds the saga (a rate limit, a concurrency slot), skips the step (a cap)
    /// or fails it (a spent retry budget). `None`: the attempt begins. `Some(true)`: something
    /// was recorded instead and planning goes on; `Some(false)`: the saga was handed back.
    async fn gate(
        &mut self,
        spec: &StepSpec,
        index: StepIndex,
        phase: Phase,
        attempt: Attempt,
    ) -> Result<Option<bool>> {
        // A cancel asked for meanwhile comes first: a saga held back (a pause, a limit) would
        // otherwise give its lease back each time without acting on it.
        if phase == Phase::Action {
            if let Some(reason) = self.snapshot.record.cancel_requested.clone() {
                self.honour_cancel(reason).await?;
                return Ok(Some(true));
            }
        }
        let saga_type = self.definition.saga_type().clone();
        let mut pauses = self.inner.pauses().await?;
        if crate::policy::pause_covering(&pauses, &saga_type, &spec.name).is_some() {
            // Held for a while on what this process read up to a poll interval ago: read again,
            // so that a saga a resume just woke is not held anew on a pause already lifted.
            pauses = self.inner.pauses_now().await?;
        }
        if let Some(pause) = crate::policy::pause_covering(&pauses, &saga_type, &spec.name) {
            let until = clock::after(self.inner.now(), crate::policy::PAUSE_RECHECK);
            let reason = format!(
                "{} paused by {} at {}: {}",
                pause.scope,
                pause.paused_by,
                pause
                    .paused_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                pause.reason
            );
            return self
                .hold(spec, "paused", pause.scope.waiting_for(), reason, until)
                .await
                .map(Some);
        }
        if phase != Phase::Action || spec.policies.is_empty() {
            return Ok(None);
        }
        let position = usize::try_from(index.0).unwrap_or(usize::MAX);
        let keys = match self.definition.policy_keys(position, &self.input) {
            Ok(keys) => keys,
            Err(error) if self.snapshot.step(index, phase).is_some() => {
                // No key, no count, no call; after an earlier attempt, as a policy's refusal
                // (which keeps an unknown outcome unknown).
                return self.refused(
                    spec,
                    index,
                    phase,
                    attempt,
                    plan::PolicyRefusal::Fail(format!(
                        "the policies' keys could not be computed: {}",
                        error.message()
                    )),
                );
            }
            Err(error) => {
                // No key, no count: a known failure, nothing was called.
                let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, phase);
                self.record(vec![
                    Change::BeginStep {
                        index,
                        name: spec.name.clone(),
                        phase,
                        attempt,
                        key,
                    },
                    Change::FailStep {
                        index,
                        name: spec.name.clone(),
                        phase,
                        attempt,
                        error,
                        retry_at: None,
                    },
                ])?;
                return Ok(Some(true));
            }
        };
        let request = crate::policy::PermitRequest {
            saga: self.lease.saga,
            saga_type,
            index,
            step: spec.name.clone(),
            attempt,
            uses: spec
                .policies
                .iter()
                .zip(keys.into_iter().chain(std::iter::repeat(String::new())))
                .map(|(policy, key)| crate::policy::PolicyUse {
                    policy: policy.clone(),
                    key,
                })
                .collect(),
        };
        let now = self.inner.now();
        let labels = |policy: &str| {
            [
                ("saga_type", self.definition.saga_type().as_str().to_owned()),
                ("step", spec.name.as_str().to_owned()),
                ("policy", policy.to_owned()),
            ]
        };
        match self.inner.store.permit(&request, now).await? {
            crate::policy::Permit::Granted => Ok(None),
            crate::policy::Permit::Wait {
                until,
                waiting_for,
                reason,
            } => {
                let kind = waiting_for
                    .strip_prefix("policy:")
                    .and_then(|rest| rest.split(':').next())
                    .unwrap_or("policy")
                    .to_owned();
                self.hold(spec, &kind, waiting_for, reason, until)
                    .await
                    .map(Some)
            }
            crate::policy::Permit::Skip { reason } => {
                metrics::counter!(names::POLICY_SKIPS, &labels(cap_name(&reason))).increment(1);
                tracing::info!(saga.id = %self.lease.saga, step = %spec.name, %reason, "step skipped by a policy");
                self.refused(
                    spec,
                    index,
                    phase,
                    attempt,
                    plan::PolicyRefusal::Skip(reason),
                )
            }
            crate::policy::Permit::Fail { reason } => {
                metrics::counter!(names::POLICY_BUDGET_EXHAUSTED, &labels(cap_name(&reason)))
                    .increment(1);
                tracing::warn!(saga.id = %self.lease.saga, step = %spec.name, %reason, "retry budget spent; the step fails for good");
                self.refused(
                    spec,
                    index,
                    phase,
                    attempt,
                    plan::PolicyRefusal::Fail(reason),
                )
            }
        }
    }

    /// Records a policy's refusal of an attempt (see [`plan::on_policy_refusal`]); planning goes on.
    fn refused(
        &mut self,
        spec: &StepSpec,
        index: StepIndex,
        phase: Phase,
        attempt: Attempt,
        refusal: plan::PolicyRefusal,
    ) -> Result<Option<bool>> {
        let attempted = plan::Attempted {
            index,
            phase,
            attempt,
        };
        self.record(plan::on_policy_refusal(
            &self.snapshot,
            spec,
            attempted,
            refusal,
        ))?;
        Ok(Some(true))
    }

    /// Holds the saga back before step `spec` until `until`, holding no worker: records what it
    /// waits for (and why, unless it waited for the same already) and gives the lease back.
    async fn hold(
        &mut self,
        spec: &StepSpec,
        kind: &str,
        waiting_for: String,
        reason: String,
        until: clock::Timestamp,
    ) -> Result<bool> {
        // Back when the saga's deadline passes, if that comes first: it then compensates.
        let deadline = plan::applicable_deadline(
            &self.snapshot,
            self.definition.specs(),
            self.definition.deadline(),
        );
        let until = deadline.map_or(until, |deadline| until.min(deadline));
        let again = self.snapshot.record.waiting_for.as_deref() == Some(waiting_for.as_str());
        metrics::counter!(
            names::POLICY_HELD,
            &[
                ("saga_type", self.definition.saga_type().as_str().to_owned()),
                ("step", spec.name.as_str().to_owned()),
                ("policy", kind.to_owned()),
            ]
        )
        .increment(1);
        tracing::debug!(saga.id = %self.lease.saga, step = %spec.name, %reason, "held before the step");
        self.record(vec![
            Change::Hold {
                waiting_for,
                step: Some(spec.name.clone()),
                reason: (!again).then_some(reason),
            },
            Change::Release {
                next_run_at: Some(until),
            },
        ])?;
        self.flush().await?;
        self.wake_at(until);
        Ok(false)
    }

    /// Records a waiting step waiting (its wait begun now, with its end computed, or resumed)
    /// and gives the saga back until the wait ends, the saga's deadline, or a signal. Returns
    /// `true` when it did not wait and planning goes on (the wait's end could not be computed, or
    /// a cancel came first).
    async fn wait_step(
        &mut self,
        waiting: plan::Waiting,
        deadline: Option<clock::Timestamp>,
    ) -> Result<bool> {
        let position = usize::try_from(waiting.index.0).unwrap_or(usize::MAX);
        let Some(spec) = self.definition.specs().get(position).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!(
                    "plan chose step {}, which the definition lacks",
                    waiting.index
                ),
            });
        };
        let now = self.inner.now();
        let until = if waiting.begins {
            let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, Phase::Action);
            let ctx = RawContext {
                saga_id: self.lease.saga,
                step: spec.name.clone(),
                phase: Phase::Action,
                attempt: Attempt::FIRST,
                key: key.clone(),
                input: self.input.clone(),
                outputs: Arc::new(self.completed_outputs()),
                deadline: now,
                transaction: None,
            };
            match self.definition.wake_at(position, ctx) {
                Some(Ok(at)) => Some(at),
                Some(Err(error)) => {
                    // The end could not be computed: a known failure, nothing waited.
                    self.record(vec![
                        Change::BeginStep {
                            index: waiting.index,
                            name: spec.name.clone(),
                            phase: Phase::Action,
                            attempt: Attempt::FIRST,
                            key,
                        },
                        Change::FailStep {
                            index: waiting.index,
                            name: spec.name.clone(),
                            phase: Phase::Action,
                            attempt: Attempt::FIRST,
                            error: StepError::permanent(format!(
                                "the wake time could not be computed: {}",
                                error.message()
                            )),
                            retry_at: None,
                        },
                    ])?;
                    return Ok(true);
                }
                None => spec.kind.limit().map(|limit| clock::after(now, limit)),
            }
        } else {
            waiting.until
        };
        let changes = plan::wait(&self.snapshot, &spec, waiting, until, deadline);
        let wake = changes.iter().find_map(|change| match change {
            Change::Release { next_run_at } => *next_run_at,
            _ => None,
        });
        self.record(changes)?;
        if !self.flush_unless_cancelled().await? {
            // Asked to stop: no wait is recorded; plan again, compensating.
            return Ok(true);
        }
        if let Some(at) = wake {
            self.wake_at(at);
        }
        Ok(false)
    }

    /// Acts on a child step ([`plan::Action::Child`]): starts its child with the step's
    /// `in_progress` (forward), or reads the child and does what it decides
    /// ([`crate::child::decide`]): record the step's outcome, ask the child to stop, or wait for
    /// it holding nothing. Returns `true` when planning goes on here, `false` when the saga was
    /// given back to wait.
    async fn child_step(
        &mut self,
        step: plan::ChildStep,
        deadline: Option<clock::Timestamp>,
    ) -> Result<bool> {
        self.check_lease_left()?;
        let position = usize::try_from(step.index.0).unwrap_or(usize::MAX);
        let Some(spec) = self.definition.specs().get(position).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!("plan chose step {}, which the definition lacks", step.index),
            });
        };
        let parent = ParentLink {
            saga: self.lease.saga,
            step: spec.name.clone(),
        };
        if let (Some(_), Phase::Action, Some(request)) = (
            step.begins,
            step.phase,
            self.snapshot.record.cancel_requested.clone(),
        ) {
            // Asked to stop before the child step began: it starts nothing.
            Box::pin(self.honour_cancel(request)).await?;
            return Ok(true);
        }
        let key = crate::child::child_key(self.lease.saga, &spec.name);
        let mut child = self.find_child(&key).await?;
        if let Some(attempt) = step.begins {
            let begin = Change::BeginStep {
                index: step.index,
                name: spec.name.clone(),
                phase: step.phase,
                attempt,
                key: IdempotencyKey::for_step(self.lease.saga, &spec.name, step.phase),
            };
            if step.phase == Phase::Action && child.is_none() {
                // The child is started with the step's `in_progress`, in one fenced write.
                return Box::pin(self.start_child(&spec, step, attempt, begin, deadline)).await;
            }
            self.record(vec![begin])?;
            // Durable before acting: the child is asked to stop only once this is written.
            if !self.flush_unless_cancelled().await? {
                return Ok(true);
            }
        }
        let Some(record) = self.snapshot.step(step.index, step.phase).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!("child step {} was not begun", spec.name),
            });
        };
        // Asked to stop, the child is read again once: what the request did decides.
        for asked in [false, true] {
            match crate::child::decide(&self.snapshot, &spec, &record, child.as_ref()) {
                crate::child::ChildDecision::Record(changes) => {
                    self.record(changes)?;
                    return Ok(true);
                }
                crate::child::ChildDecision::Stop(id, _) if !asked => {
                    let reason = match step.phase {
                        Phase::Action => format!(
                            "the parent is compensating: {}",
                            self.snapshot
                                .record
                                .status_reason
                                .as_deref()
                                .unwrap_or("no reason recorded")
                        ),
                        Phase::Compensation => {
                            format!("the parent compensates its step `{}`", spec.name)
                        }
                    };
                    self.check_lease_left()?;
                    let now = self.inner.now();
                    self.inner
                        .store
                        .stop_child(id, &parent, &reason, now)
                        .await?;
                    self.inner.wake.notify_one();
                    child = self.find_child(&key).await?;
                }
                crate::child::ChildDecision::Stop(id, status)
                | crate::child::ChildDecision::Await(id, status) => {
                    return self.await_child(&spec, &record, id, status, deadline).await;
                }
            }
        }
        Ok(true)
    }

    /// The child that holds `key`, read whole.
    async fn find_child(&self, key: &IdempotencyKey) -> Result<Option<SagaSnapshot>> {
        let filter = crate::store::SagaFilter {
            idempotency_key: Some(key.clone()),
            limit: Some(1),
            ..crate::store::SagaFilter::default()
        };
        let Some(found) = self.inner.store.list(&filter).await?.into_iter().next() else {
            return Ok(None);
        };
        self.inner.store.load(found.id).await
    }

    /// Begins child step `spec` with `begin` and starts its child in the same write, then gives
    /// the saga back to wait for it. An input that cannot be computed, or a child type this
    /// process does not know, fails the step for good with nothing started.
    async fn start_child(
        &mut self,
        spec: &StepSpec,
        step: plan::ChildStep,
        attempt: Attempt,
        begin: Change,
        deadline: Option<clock::Timestamp>,
    ) -> Result<bool> {
        let position = usize::try_from(step.index.0).unwrap_or(usize::MAX);
        let now = self.inner.now();
        let ctx = RawContext {
            saga_id: self.lease.saga,
            step: spec.name.clone(),
            phase: Phase::Action,
            attempt,
            key: IdempotencyKey::for_step(self.lease.saga, &spec.name, Phase::Action),
            input: self.input.clone(),
            outputs: Arc::new(self.completed_outputs()),
            deadline: now,
            transaction: None,
        };
        let new = match self.definition.child_input(position, ctx) {
            Some((type_id, Ok(input))) => self.new_child(spec, type_id, input),
            Some((_, Err(error))) => Err(error),
            None => Err(StepError::permanent(format!(
                "step `{}` declares no child; it cannot start one",
                spec.name
            ))),
        };
        let child = match new {
            Ok(child) => child,
            Err(error) => {
                // Known: no child was started.
                self.record(vec![
                    begin,
                    Change::FailStep {
                        index: step.index,
                        name: spec.name.clone(),
                        phase: Phase::Action,
                        attempt,
                        error: StepError::permanent(format!(
                            "no child saga was started: {}",
                            error.message()
                        )),
                        retry_at: None,
                    },
                ])?;
                return Ok(true);
            }
        };
        let id = child.id;
        self.record(vec![
            begin,
            Change::StartChild(Box::new(child)),
            Change::AwaitChild {
                index: step.index,
                name: spec.name.clone(),
                phase: Phase::Action,
                child: id,
                child_status: crate::status::SagaStatus::Running,
                signals_seen: self.snapshot.record.signals_received,
            },
            Change::Release {
                next_run_at: deadline,
            },
        ])?;
        if !self.flush_unless_cancelled().await? {
            // Asked to stop first: no child was started; plan again, compensating.
            return Ok(true);
        }
        // The child is due now: this process's workers may take it at once.
        self.inner.wake.notify_one();
        if let Some(at) = deadline {
            self.wake_at(at);
        }
        Ok(false)
    }

    /// The child saga step `spec` starts: of the registered type `type_id`, with `input`, its
    /// start key derived from the step's.
    fn new_child(
        &self,
        spec: &StepSpec,
        type_id: std::any::TypeId,
        input: Value,
    ) -> std::result::Result<crate::store::NewSaga, StepError> {
        let Some(definition) = self.inner.definition_of(type_id) else {
            let saga_type = match &spec.kind {
                crate::wait::StepKind::Child { saga_type } => saga_type.as_str().to_owned(),
                _ => String::new(),
            };
            return Err(StepError::permanent(format!(
                "saga type `{saga_type}` is not registered in this process; register it with the orchestrator that runs `{}`",
                self.definition.saga_type()
            )));
        };
        let size = input.to_string().len();
        let limit = self.inner.config.max_payload_bytes;
        if size > limit {
            return Err(StepError::permanent(format!(
                "the child's input is {size} bytes, over the limit of {limit} (Config::max_payload_bytes)"
            )));
        }
        if crate::step::holds_nul(&input) {
            return Err(StepError::permanent(
                "the child's input contains a NUL character (\\u0000), which stores cannot keep",
            ));
        }
        Ok(crate::store::NewSaga {
            id: crate::id::SagaId::new(),
            saga_type: definition.saga_type().clone(),
            version: definition.version(),
            fingerprint: definition.fingerprint().to_owned(),
            input_hash: crate::orchestrator::input_hash(definition.saga_type(), &input),
            input,
            idempotency_key: Some(crate::child::child_key(self.lease.saga, &spec.name)),
            // The child continues the parent's trace.
            trace_context: self.snapshot.record.trace_context.clone(),
            lease: None,
            changes: Vec::new(),
            deadline: None,
            dedup_window: None,
            parent: Some(ParentLink {
                saga: self.lease.saga,
                step: spec.name.clone(),
            }),
        })
    }

    /// Records the saga waiting for its child `id` (seen in `status`) and gives it back: the
    /// child's end wakes it. Forward, the saga's deadline wakes it too.
    async fn await_child(
        &mut self,
        spec: &StepSpec,
        record: &crate::store::StepRecord,
        id: crate::id::SagaId,
        status: crate::status::SagaStatus,
        deadline: Option<clock::Timestamp>,
    ) -> Result<bool> {
        let forward = record.phase == Phase::Action
            && self.snapshot.record.status == crate::status::SagaStatus::Running;
        let until = deadline.filter(|_| forward);
        self.record(vec![
            Change::AwaitChild {
                index: record.index,
                name: spec.name.clone(),
                phase: record.phase,
                child: id,
                child_status: status,
                signals_seen: self.snapshot.record.signals_received,
            },
            Change::Release { next_run_at: until },
        ])?;
        if !self.flush_unless_cancelled().await? {
            return Ok(true);
        }
        if let Some(at) = until {
            self.wake_at(at);
        }
        Ok(false)
    }

    /// Runs a step attempt whose `in_progress` record is durable, and records its outcome. A
    /// transactional step runs in `transaction`, which its caller opened (`None`: the store lends
    /// none, and the step fails permanently saying so).
    async fn execute_begun(
        &mut self,
        begun: plan::Attempted,
        transaction: Option<Box<dyn crate::store::StepTransaction>>,
    ) -> Result<()> {
        let plan::Attempted {
            index,
            phase,
            attempt,
        } = begun;
        let position = usize::try_from(index.0).unwrap_or(usize::MAX);
        let Some(spec) = self.definition.specs().get(position).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!("step {index} was begun, but the definition lacks it"),
            });
        };
        let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, phase);
        crate::faults::hit(crate::faults::FaultPoint::AfterBeginStep);

        let span = self.step_span(&spec, phase, attempt, &key);
        let started = std::time::Instant::now();
        let transaction = transaction
            .filter(|_| spec.transactional)
            .map(|tx| Arc::new(tokio::sync::Mutex::new(tx)));
        let outcome = if spec.transactional && transaction.is_none() {
            Err(Intercepted::Outcome(StepError::permanent(format!(
                "step `{}` is transactional, but this store lends no transactions; run it on Postgres or drop `.transactional()`",
                spec.name
            ))))
        } else {
            self.execute(
                &spec,
                plan::Attempted {
                    index,
                    phase,
                    attempt,
                },
                key,
                transaction.clone(),
            )
            .instrument(span.clone())
            .await
        };
        let mut outcome = self.ended(&spec.name, phase, outcome)?;
        // The step's own writes commit with its outcome, or are rolled back with it.
        let transaction = match (transaction, outcome.is_ok()) {
            (Some(slot), true) => match Arc::try_unwrap(slot) {
                Ok(mutex) => Some(mutex.into_inner()),
                Err(_) => {
                    outcome = Err(StepError::transient(format!(
                        "step `{}` kept its transaction after returning; its writes were rolled back",
                        spec.name
                    )));
                    None
                }
            },
            _ => None,
        };
        let changes = self
            .conclude(
                &spec,
                plan::Attempted {
                    index,
                    phase,
                    attempt,
                },
                outcome,
                &span,
                started.elapsed(),
            )
            .await;
        match transaction {
            Some(transaction) => {
                self.snapshot.apply_all(&changes, self.inner.now())?;
                self.inner
                    .store
                    .commit_step_transaction(transaction, self.lease, &changes)
                    .await
            }
            None => self.record(changes),
        }
    }

    /// The span of one step attempt.
    fn step_span(
        &self,
        spec: &StepSpec,
        phase: Phase,
        attempt: Attempt,
        key: &IdempotencyKey,
    ) -> tracing::Span {
        tracing::info_span!(
            "step",
            step.name = %spec.name,
            step.phase = %phase,
            attempt = attempt.0,
            idempotency_key = %key,
            trace_id = self.trace_id.as_str(),
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
            output = tracing::field::Empty,
        )
    }

    /// Runs the steps of the parallel group that begins at `first`, in `phase`, side by side (at
    /// most the group's limit at once): the steps that may begin are recorded `in_progress`
    /// together, in one write, before any of them runs; the outcomes of attempts that end
    /// together are written together. A retry comes due beside the attempts still running.
    /// Once a step fails for good (or a cancel is asked for, or the worker shuts down), none
    /// begins anew: the attempts in flight end (or time out) and are recorded, then planning
    /// goes on (compensating the group, or handing the saga back). Returns `false` when the
    /// saga was handed back (a pause holds a step of the group).
    async fn run_group(&mut self, first: StepIndex, phase: Phase) -> Result<bool> {
        let definition = Arc::clone(&self.definition);
        let specs = definition.specs();
        let position = usize::try_from(first.0).unwrap_or(usize::MAX);
        let Some(members) = plan::group_range(specs, position) else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!("plan chose the group at step {first}, which the definition lacks"),
            });
        };
        let limit = specs
            .get(position)
            .and_then(|spec| spec.group.as_ref())
            .map_or(1, |group| {
                usize::try_from(group.limit.max(1)).unwrap_or(usize::MAX)
            });
        let inner = self.inner;
        let mut flight = futures::stream::FuturesUnordered::new();
        let mut running: Vec<StepIndex> = Vec::new();
        let mut cancel: Option<String> = None;
        let mut stop = false;
        loop {
            let mut next_due = None;
            if !stop {
                if phase == Phase::Action && cancel.is_none() {
                    cancel.clone_from(&self.snapshot.record.cancel_requested);
                }
                let round = plan::group_round(
                    &self.snapshot,
                    specs,
                    members.clone(),
                    phase,
                    inner.now(),
                    &running,
                );
                // Past the saga's deadline no step begins: planning then compensates.
                let overdue = phase == Phase::Action
                    && plan::applicable_deadline(&self.snapshot, specs, definition.deadline())
                        .is_some_and(|deadline| deadline <= inner.now());
                // A failed compensation stops nothing: the group's other compensations run.
                stop = (phase == Phase::Action && round.failed.is_some())
                    || cancel.is_some()
                    || overdue
                    || *inner.shutdown.borrow();
                next_due = round.next_due;
                let pauses = if stop || round.due.is_empty() {
                    Arc::default()
                } else {
                    match inner.pauses().await {
                        Ok(pauses) => pauses,
                        Err(err) => {
                            drain(&mut flight, &err).await;
                            return Err(err);
                        }
                    }
                };
                let (held, due): (Vec<_>, Vec<_>) = round.due.into_iter().partition(|attempted| {
                    specs
                        .get(usize::try_from(attempted.index.0).unwrap_or(usize::MAX))
                        .is_some_and(|spec| {
                            crate::policy::pause_covering(
                                &pauses,
                                definition.saga_type(),
                                &spec.name,
                            )
                            .is_some()
                        })
                });
                let launch: Vec<plan::Attempted> = if stop {
                    Vec::new()
                } else {
                    due.into_iter()
                        .take(limit.saturating_sub(running.len()))
                        .collect()
                };
                if launch.is_empty() && running.is_empty() && !stop {
                    if let Some(attempted) = held.first() {
                        // Nothing runs and a pause holds a step: the saga is held (`gate`).
                        let spec = specs
                            .get(usize::try_from(attempted.index.0).unwrap_or(usize::MAX))
                            .cloned();
                        if let Some(spec) = spec {
                            let planned = self
                                .gate(&spec, attempted.index, phase, attempted.attempt)
                                .await?;
                            return Ok(planned.unwrap_or(true));
                        }
                    }
                    // Nothing runs and nothing may begin now: planning goes on (a retry's wait,
                    // an unknown outcome to settle alone, or the group is through).
                    return Ok(true);
                }
                if !launch.is_empty() {
                    self.check_lease_left()?;
                    let mut begun = Vec::with_capacity(launch.len());
                    for attempted in &launch {
                        let Some(spec) =
                            specs.get(usize::try_from(attempted.index.0).unwrap_or(usize::MAX))
                        else {
                            continue;
                        };
                        let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, phase);
                        begun.push(Change::BeginStep {
                            index: attempted.index,
                            name: spec.name.clone(),
                            phase,
                            attempt: attempted.attempt,
                            key,
                        });
                    }
                    self.record(begun)?;
                    // Durable before acting: every `in_progress` of the batch, in one write.
                    match self.flush().await {
                        Ok(()) => {
                            crate::faults::hit(crate::faults::FaultPoint::AfterBeginStep);
                            // Paused while `in_progress` was being written: not called.
                            let pauses = match inner.pauses().await {
                                Ok(pauses) => pauses,
                                Err(err) => {
                                    drain(&mut flight, &err).await;
                                    return Err(err);
                                }
                            };
                            for attempted in launch {
                                let Some(spec) = specs
                                    .get(usize::try_from(attempted.index.0).unwrap_or(usize::MAX))
                                else {
                                    continue;
                                };
                                if let Some(pause) = crate::policy::pause_covering(
                                    &pauses,
                                    definition.saga_type(),
                                    &spec.name,
                                ) {
                                    let reason = format!(
                                        "{} paused by {}: {}",
                                        pause.scope, pause.paused_by, pause.reason
                                    );
                                    let not_run = self.not_run(
                                        spec,
                                        attempted.index,
                                        phase,
                                        attempted.attempt,
                                        &reason,
                                    );
                                    self.record(vec![not_run])?;
                                    continue;
                                }
                                let key =
                                    IdempotencyKey::for_step(self.lease.saga, &spec.name, phase);
                                let span = self.step_span(spec, phase, attempted.attempt, &key);
                                let prepared = self.prepare(spec, attempted, key, None);
                                let started = std::time::Instant::now();
                                let attempt = call(inner, Arc::clone(&definition), prepared)
                                    .instrument(span.clone());
                                running.push(attempted.index);
                                flight.push(async move {
                                    let outcome = attempt.await;
                                    (attempted, outcome, span, started.elapsed())
                                });
                            }
                        }
                        Err(Error::CancelRequested { reason, .. }) if phase == Phase::Action => {
                            // The write was refused whole, so none of the batch began. What was
                            // queued with it (the outcome of the step before, of steps that
                            // ended) is written without the batch; then the saga is read again
                            // (what runs still runs), and nothing more begins.
                            self.pending.retain(|change| {
                                !matches!(
                                    change,
                                    Change::BeginStep {
                                        phase: Phase::Action,
                                        ..
                                    }
                                )
                            });
                            if let Err(err) = self.flush().await {
                                drain(&mut flight, &err).await;
                                return Err(err);
                            }
                            match inner.store.load(self.lease.saga).await {
                                Ok(Some(snapshot)) => self.snapshot = snapshot,
                                Ok(None) => return Err(Error::SagaNotFound(self.lease.saga)),
                                Err(err) => {
                                    drain(&mut flight, &err).await;
                                    return Err(err);
                                }
                            }
                            cancel = Some(reason);
                            stop = true;
                        }
                        Err(err) => {
                            drain(&mut flight, &err).await;
                            return Err(err);
                        }
                    }
                }
            }
            if flight.is_empty() {
                break;
            }
            // The next attempt to end, or the next retry to come due (to begin it beside them).
            let first_ended = match next_due.filter(|_| !stop) {
                Some(at) => {
                    let wait = (at - inner.now()).to_std().unwrap_or(Duration::ZERO);
                    tokio::select! {
                        ended = futures::StreamExt::next(&mut flight) => ended,
                        () = tokio::time::sleep(wait) => None,
                    }
                }
                None => futures::StreamExt::next(&mut flight).await,
            };
            let mut ended: Vec<_> = first_ended.into_iter().collect();
            while let Some(Some(more)) = futures::StreamExt::next(&mut flight).now_or_never() {
                ended.push(more);
            }
            for (attempted, outcome, span, took) in ended {
                running.retain(|index| *index != attempted.index);
                let Some(spec) = specs
                    .get(usize::try_from(attempted.index.0).unwrap_or(usize::MAX))
                    .cloned()
                else {
                    continue;
                };
                let outcome = self.ended(&spec.name, phase, outcome)?;
                let changes = self.conclude(&spec, attempted, outcome, &span, took).await;
                self.record(changes)?;
            }
            if let Err(err) = self.flush().await {
                // The store refuses or cannot take the outcomes: the others' calls are let
                // finish (each within its timeout) rather than cut off mid-call; their
                // outcomes stay unknown for whoever settles the saga.
                drain(&mut flight, &err).await;
                return Err(err);
            }
        }
        if let Some(reason) = cancel {
            self.honour_cancel(reason).await?;
        }
        Ok(true)
    }

    /// What an attempt's outcome changes (see [`plan::on_outcome`]), once observed on its span
    /// and in the metrics; a partner's request to slow down backs its whole integration off.
    async fn conclude(
        &self,
        spec: &StepSpec,
        attempted: plan::Attempted,
        outcome: std::result::Result<Option<Value>, StepError>,
        span: &tracing::Span,
        took: Duration,
    ) -> Vec<Change> {
        let decide = if spec.group.is_some() {
            plan::on_group_outcome
        } else {
            plan::on_outcome
        };
        self.observe(span, spec, attempted.phase, &outcome, took);
        if let (Err(error), Some(limit)) = (&outcome, rate_limit(spec)) {
            if let Some(wait) = error.retry_after() {
                // The partner asked everyone to slow down: the whole integration backs off.
                metrics::counter!(names::POLICY_THROTTLED, "integration" => limit.to_owned())
                    .increment(1);
                let until = clock::after(self.inner.now(), wait);
                if let Err(err) = self.inner.store.throttle(limit, until).await {
                    tracing::warn!(integration = limit, error = %err, "the integration's back-off could not be recorded; this saga still waits it out");
                }
            }
        }
        decide(
            &self.snapshot,
            spec,
            attempted,
            outcome,
            self.inner.now(),
            rand::random::<f64>(),
        )
    }

    async fn execute(
        &self,
        spec: &StepSpec,
        attempted: plan::Attempted,
        key: IdempotencyKey,
        transaction: Option<crate::context::TransactionSlot>,
    ) -> std::result::Result<Option<Value>, Intercepted> {
        let prepared = self.prepare(spec, attempted, key, transaction);
        // Boxed: a drive's future keeps room for its largest state, and a call is short-lived
        // next to the writes a drive mostly waits for (see `Driver::run`).
        Box::pin(call(self.inner, Arc::clone(&self.definition), prepared)).await
    }

    /// What an attempt of `spec` needs, taken from this drive's copy of the saga, so that it can
    /// run while the driver records other steps' outcomes (see [`call`]).
    fn prepare(
        &self,
        spec: &StepSpec,
        attempted: plan::Attempted,
        key: IdempotencyKey,
        transaction: Option<crate::context::TransactionSlot>,
    ) -> Prepared {
        let plan::Attempted {
            index,
            phase,
            attempt,
        } = attempted;
        let name = &spec.name;
        let timeout = plan::timeout_for(spec, phase);
        let ctx = RawContext {
            saga_id: self.lease.saga,
            step: name.clone(),
            phase,
            attempt,
            key,
            input: self.input.clone(),
            outputs: Arc::new(self.completed_outputs()),
            // From the attempt's start as this worker recorded it, on the store's clock: whoever
            // settles the attempt later waits for this deadline before believing a probe that
            // finds nothing (plan::CLOCK_MARGIN covers the clocks' differences).
            deadline: clock::after(
                self.snapshot
                    .step(index, phase)
                    .and_then(|step| step.started_at)
                    .unwrap_or_else(|| self.inner.now()),
                timeout,
            ),
            transaction,
        };
        let action_output = match phase {
            Phase::Action => None,
            Phase::Compensation => self
                .snapshot
                .step(index, Phase::Action)
                .and_then(|step| step.output.clone()),
        };
        let call = self
            .inner
            .config
            .intercept
            .as_ref()
            .map(|_| crate::intercept::Call {
                saga: self.lease.saga,
                saga_type: self.definition.saga_type().clone(),
                step: name.clone(),
                phase,
                attempt,
                key: ctx.key.clone(),
            });
        Prepared {
            position: usize::try_from(index.0).unwrap_or(usize::MAX),
            phase,
            timeout,
            ctx,
            action_output,
            call,
        }
    }

    /// The outcome of an attempt that ended, as the planner takes it: the interception hook's
    /// abandon (a simulated crash) ends the drive; the fault point after an action or a
    /// compensation fires; an output no store can keep becomes an unknown outcome.
    fn ended(
        &self,
        name: &StepName,
        phase: Phase,
        executed: std::result::Result<Option<Value>, Intercepted>,
    ) -> Result<std::result::Result<Option<Value>, StepError>> {
        let outcome = match executed {
            Ok(output) => Ok(output),
            Err(Intercepted::Outcome(error)) => Err(error),
            Err(Intercepted::Abandoned) => return Err(Error::Abandoned(self.lease.saga)),
        };
        crate::faults::hit(match phase {
            Phase::Action => crate::faults::FaultPoint::AfterAction,
            Phase::Compensation => crate::faults::FaultPoint::MidCompensation,
        });
        Ok(self.check_output(name, outcome))
    }

    /// Refuses an output that no store can keep (over the payload limit, or holding a NUL
    /// character, which Postgres refuses), alike on every backend. The step returned `Ok`, so
    /// its effect happened but cannot be recorded: an unknown outcome, never a clean failure.
    fn check_output(
        &self,
        name: &StepName,
        outcome: std::result::Result<Option<Value>, StepError>,
    ) -> std::result::Result<Option<Value>, StepError> {
        let limit = self.inner.config.max_payload_bytes;
        match outcome {
            Ok(Some(value)) => {
                let text = value.to_string();
                if text.len() > limit {
                    Err(StepError::unknown(format!(
                        "output of step `{name}` is {} bytes, over the limit of {limit} bytes, so it cannot be recorded though the step took effect; return a reference instead of the data",
                        text.len()
                    )))
                } else if crate::step::holds_nul(&value) {
                    Err(StepError::unknown(format!(
                        "output of step `{name}` contains a NUL character (\\u0000), which stores cannot keep, so it cannot be recorded though the step took effect; encode binary data (base64) instead"
                    )))
                } else {
                    Ok(Some(value))
                }
            }
            other => other,
        }
    }

    /// Asks the step's probe whether an attempt with an unknown outcome took effect (retrying
    /// the probe per the step's retry policy while it errors), and records the answer.
    async fn probe_step(&mut self, probing: plan::Probing) -> Result<()> {
        self.check_lease_left()?;
        // What led here (the unknown outcome) is durable before anyone is asked.
        self.flush().await?;
        let position = usize::try_from(probing.index.0).unwrap_or(usize::MAX);
        let Some(spec) = self.definition.specs().get(position).cloned() else {
            return Err(Error::CorruptRecord {
                saga: self.lease.saga,
                reason: format!(
                    "plan chose step {}, which the definition lacks",
                    probing.index
                ),
            });
        };
        let key = IdempotencyKey::for_step(self.lease.saga, &spec.name, Phase::Action);
        let mut tries = Attempt::FIRST;
        let answer = loop {
            let ctx = RawContext {
                saga_id: self.lease.saga,
                step: spec.name.clone(),
                phase: Phase::Action,
                attempt: probing.attempt,
                key: key.clone(),
                input: self.input.clone(),
                outputs: Arc::new(self.completed_outputs()),
                deadline: clock::after(self.inner.now(), spec.timeout),
                transaction: None,
            };
            let answer = guarded("probe", "probe timed out", "", spec.timeout, || {
                self.definition.probe(position, ctx)
            })
            .await;
            let answer = match answer {
                Ok(Some(output)) => self.check_output(&spec.name, Ok(Some(output))),
                other => other,
            };
            match answer {
                Err(error) if !error.is_permanent() && spec.retry.allows_retry_after(tries) => {
                    tracing::info!(step = %spec.name, error = %error, "probe failed; retrying");
                    tokio::time::sleep(spec.retry.backoff(tries, rand::random::<f64>())).await;
                    tries = tries.next();
                }
                answer => break answer,
            }
        };
        let changes = plan::on_probe(
            &self.snapshot,
            &spec,
            probing,
            answer,
            self.inner.now(),
            rand::random::<f64>(),
        );
        self.record(changes)
    }

    fn completed_outputs(&self) -> BTreeMap<StepName, Value> {
        self.snapshot
            .steps
            .iter()
            .filter(|step| step.phase == Phase::Action && step.status == StepStatus::Completed)
            .filter_map(|step| {
                step.output
                    .clone()
                    .map(|output| (step.name.clone(), output))
            })
            .collect()
    }

    /// Applies changes to the local copy and queues them for the next write.
    fn record(&mut self, mut changes: Vec<Change>) -> Result<()> {
        let now = self.inner.now();
        // A child that ends (or calls a person) wakes its parent in the same write.
        if let Some(notify) = plan::notify_parent(self.snapshot.record.parent.as_deref(), &changes)
        {
            changes.push(notify);
        }
        self.snapshot.apply_all(&changes, now)?;
        self.note_compensation(&changes, now);
        self.pending.extend(changes);
        Ok(())
    }

    /// Remembers when the saga began compensating, if `changes` (applied at `now`) move it there.
    fn note_compensation(&mut self, changes: &[Change], now: clock::Timestamp) {
        let compensates = changes.iter().any(|change| {
            matches!(
                change,
                Change::SetStatus {
                    status: crate::status::SagaStatus::Compensating,
                    ..
                }
            )
        });
        if compensates && self.compensating_since.is_none() {
            self.compensating_since = Some(now);
        }
    }

    /// Records the outcome of one attempt on its span and in the metrics.
    fn observe(
        &self,
        span: &tracing::Span,
        spec: &StepSpec,
        phase: Phase,
        outcome: &std::result::Result<Option<Value>, StepError>,
        took: Duration,
    ) {
        let labels = [
            ("saga_type", self.definition.saga_type().as_str().to_owned()),
            ("step", spec.name.as_str().to_owned()),
            ("phase", phase.as_str().to_owned()),
        ];
        metrics::histogram!(names::STEP_DURATION, &labels).record(took.as_secs_f64());
        if let (Phase::Action, Some(limit)) = (phase, rate_limit(spec)) {
            metrics::histogram!(names::INTEGRATION_DURATION, "integration" => limit.to_owned())
                .record(took.as_secs_f64());
        }
        let result = match outcome {
            Ok(output) => {
                if let Some(output) = output
                    .as_ref()
                    .and_then(|output| self.inner.config.telemetry.loggable(output))
                {
                    span.record("output", output);
                }
                "ok"
            }
            Err(error) => {
                span.record("error", error.to_string());
                let _entered = span.enter();
                tracing::info!(error = %error, "step attempt failed");
                error.kind().as_str()
            }
        };
        span.record("outcome", result);
        let [saga_type, step, phase] = labels;
        metrics::counter!(
            names::STEP_ATTEMPTS,
            &[saga_type, step, phase, ("outcome", result.to_owned())]
        )
        .increment(1);
    }

    /// An operator asked to cancel: the step about to begin never runs; what was queued before
    /// it is written with the move to `compensating`, and planning continues from there.
    async fn honour_cancel(&mut self, reason: String) -> Result<()> {
        // Nothing forward is written: no action begins, no wait, no child starts or is
        // awaited; and an outcome queued after an action's dropped begin goes with it.
        let mut dropped = std::collections::HashSet::new();
        let changes: Vec<Change> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|change| match change {
                Change::BeginStep {
                    index,
                    phase: Phase::Action,
                    ..
                } => {
                    dropped.insert(*index);
                    false
                }
                Change::CompleteStep {
                    index,
                    phase: Phase::Action,
                    ..
                }
                | Change::FailStep {
                    index,
                    phase: Phase::Action,
                    ..
                }
                | Change::SkipStep { index, .. } => !dropped.contains(index),
                Change::Wait { .. }
                | Change::Release { .. }
                | Change::StartChild(_)
                | Change::AwaitChild { .. } => false,
                _ => true,
            })
            .collect();
        let mut changes = changes;
        changes.push(Change::SetStatus {
            status: crate::status::SagaStatus::Compensating,
            reason: Some(reason),
        });
        let mut snapshot = self
            .inner
            .store
            .load(self.lease.saga)
            .await?
            .ok_or(Error::SagaNotFound(self.lease.saga))?;
        let now = self.inner.now();
        snapshot.apply_all(&changes, now)?;
        write(
            self.inner,
            self.lease,
            self.definition.saga_type().as_str(),
            &changes,
            self.compensating_since,
        )
        .await?;
        self.snapshot = snapshot;
        self.note_compensation(&changes, now);
        Ok(())
    }

    /// Reads the saga again, dropping what was queued (decided on the copy read before).
    async fn reload(&mut self) -> Result<()> {
        tracing::info!(saga.id = %self.lease.saga, "a signal arrived meanwhile; reading the saga again");
        self.pending.clear();
        self.snapshot = self
            .inner
            .store
            .load(self.lease.saga)
            .await?
            .ok_or(Error::SagaNotFound(self.lease.saga))?;
        // What was noted of the dropped changes goes with them.
        self.compensating_since = crate::telemetry::compensation_began(&self.snapshot);
        Ok(())
    }

    /// [`flush`](Self::flush), but a write refused because a cancel was requested (it went
    /// forward) is replaced by the cancel: the saga moves to compensating. `Ok(false)`: it was.
    async fn flush_unless_cancelled(&mut self) -> Result<bool> {
        match self.flush().await {
            Ok(()) => Ok(true),
            Err(Error::CancelRequested { reason, .. }) => {
                Box::pin(self.honour_cancel(reason)).await?;
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Writes the queued changes in one fenced, atomic store call.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        write(
            self.inner,
            self.lease,
            self.definition.saga_type().as_str(),
            &self.pending,
            self.compensating_since,
        )
        .await?;
        self.pending.clear();
        Ok(())
    }

    /// Wakes this process's dispatcher when a released saga becomes due, so that short retry
    /// delays do not wait for the next poll.
    fn wake_at(&self, at: clock::Timestamp) {
        let delay = (at - self.inner.now()).to_std().unwrap_or(Duration::ZERO);
        if delay > Duration::from_secs(60) {
            return;
        }
        let inner_wake = Arc::clone(&self.inner.wake);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner_wake.notify_one();
        });
    }
}

/// One fenced write, retried while the store is unavailable: every write is keyed and fenced,
/// so repeating one that did commit changes nothing a second time. `compensating_since` (when
/// the saga began compensating, if it has) times a compensation that `changes` end.
async fn write(
    inner: &Inner,
    lease: &Lease,
    saga_type: &str,
    changes: &[Change],
    compensating_since: Option<clock::Timestamp>,
) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match inner.store.apply(lease, changes).await {
            Err(Error::StoreUnavailable(err)) if tries < 6 => {
                tries += 1;
                tracing::warn!(error = %err, retry_in = ?pause, "store unavailable; retrying write");
                tokio::time::sleep(pause).await;
                pause = pause.saturating_mul(2);
                // The write may have committed with only its answer lost: if the saga shows it
                // already, writing it again would repeat its history (or, after a release, look
                // like a lost lease).
                if let Ok(Some(stored)) = inner.store.load(lease.saga).await {
                    if stored.reflects(lease, changes) {
                        inner.notify_lifecycle(lease.saga, saga_type, changes, compensating_since);
                        return Ok(());
                    }
                }
            }
            Ok(()) => {
                inner.notify_lifecycle(lease.saga, saga_type, changes, compensating_since);
                return Ok(());
            }
            other => return other,
        }
    }
}

/// A step call's outcome, or an interceptor's simulated crash.
/// Lets the attempts still running end (each within its timeout), dropping their outcomes,
/// before a write's error is returned; a lost lease returns at once (another worker may be
/// taking the saga over: nothing more is done for it here).
async fn drain<F: std::future::Future>(
    flight: &mut futures::stream::FuturesUnordered<F>,
    error: &Error,
) {
    if matches!(error, Error::LeaseLost(_)) {
        return;
    }
    while futures::StreamExt::next(flight).await.is_some() {}
}

/// One attempt ready to run (see `Driver::prepare`).
struct Prepared {
    position: usize,
    phase: Phase,
    timeout: Duration,
    ctx: RawContext,
    action_output: Option<Value>,
    /// What the interception hook is told of the call, when one is set.
    call: Option<crate::intercept::Call>,
}

/// Runs one prepared attempt under its timeout (and the interception hook, when one is set). It
/// borrows nothing of the driver, so attempts of a parallel group run side by side while the
/// driver records the outcomes of those that ended.
async fn call(
    inner: &Inner,
    definition: Arc<dyn ErasedSaga>,
    prepared: Prepared,
) -> std::result::Result<Option<Value>, Intercepted> {
    let Prepared {
        position,
        phase,
        timeout,
        ctx,
        action_output,
        call,
    } = prepared;
    let run = |ctx: RawContext, action_output: Option<Value>| {
        let definition = Arc::clone(&definition);
        async move {
            // The request may have gone out: a timeout is an unknown outcome, never "not done".
            let value = guarded(
                "step",
                "attempt timed out",
                "; it may have taken effect",
                timeout,
                || definition.run(position, ctx, action_output),
            )
            .await?;
            Ok(match phase {
                Phase::Action => Some(value),
                Phase::Compensation => None,
            })
        }
    };
    let hooked = inner.config.intercept.as_ref().zip(call);
    // Without a hook (production), the call takes the context and the action's output as they
    // are: no copy on the step path.
    let Some((hook, call)) = hooked else {
        return run(ctx, action_output).await.map_err(Intercepted::Outcome);
    };
    if let crate::intercept::Before::Fail(error) = hook.before(&call) {
        return Err(Intercepted::Outcome(error));
    }
    let outcome = run(ctx.clone(), action_output.clone()).await;
    let (outcome, decision) = match hook.after(&call, &outcome) {
        crate::intercept::After::CallAgain => {
            let again = run(ctx, action_output).await;
            let decision = hook.after(&call, &again);
            (again, decision)
        }
        decision => (outcome, decision),
    };
    match decision {
        crate::intercept::After::Keep | crate::intercept::After::CallAgain => {
            outcome.map_err(Intercepted::Outcome)
        }
        crate::intercept::After::Replace(error) => Err(Intercepted::Outcome(error)),
        crate::intercept::After::Abandon => Err(Intercepted::Abandoned),
    }
}

enum Intercepted {
    Outcome(StepError),
    Abandoned,
}

/// Calls user code (a step or a probe) under `timeout`, catching a panic whether it comes while
/// the future is made or while it runs. Each of these is an unknown outcome: the call may have
/// reached the outside world.
async fn guarded<T>(
    who: &str,
    timed_out: &str,
    note: &str,
    timeout: Duration,
    make: impl FnOnce() -> futures::future::BoxFuture<'static, std::result::Result<T, StepError>>,
) -> std::result::Result<T, StepError> {
    let panicked = |panic: Box<dyn std::any::Any + Send>| {
        StepError::unknown(format!("{who} panicked: {}", panic_message(panic.as_ref())))
    };
    let future = std::panic::catch_unwind(AssertUnwindSafe(make)).map_err(panicked)?;
    match tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Err(_) => Err(StepError::unknown(format!(
            "{timed_out} after {timeout:?}{note}"
        ))),
        Ok(Err(panic)) => Err(panicked(panic)),
        Ok(Ok(result)) => result,
    }
}

/// The name of the step's rate limit (its integration), if it declares one.
fn rate_limit(spec: &StepSpec) -> Option<&str> {
    spec.policies
        .iter()
        .find(|policy| policy.kind == crate::policy::PolicyKind::RateLimit)
        .map(|policy| policy.name.as_str())
}

/// The policy name quoted first in a permit's reason ("cap `email`: …" gives `email`).
fn cap_name(reason: &str) -> &str {
    reason.split('`').nth(1).unwrap_or("policy")
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}
