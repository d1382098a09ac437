//! The Orchestrator: register saga types, start sagas, run workers, wait, read history.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::clock::{self, Timestamp};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::history::History;
use crate::id::{Attempt, IdempotencyKey, SagaId, SagaType, StepName};
use crate::saga::{ErasedSaga, Registered, Saga};
use crate::slots::{Slot, Slots};
use crate::status::{Phase, SagaStatus};
use crate::step::StepError;
use crate::store::{
    write::CreationPlan, Created, Intervention, NewSaga, SagaFilter, SagaRecord, SagaSnapshot,
    Store,
};
use crate::store::{Change, InterventionKind, Lease, NewIntervention};
use crate::telemetry::TraceContext;
use crate::wait::{
    check_signal_key, check_signal_name, Delivered, Signal, SignalDelivery, SignalKey,
    SignalRefusal, SignalTarget,
};
use crate::worker;
use crate::worker::Direct;

/// Runs sagas on a [`Store`]: embed one per process; any number may share one database.
///
/// ```
/// # use std::sync::Arc;
/// # use saga_core::{Config, MemoryStore, Orchestrator};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), saga_core::Error> {
/// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
/// orchestrator.run();
/// orchestrator.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    registry: RwLock<Registry>,
    /// Wakes the dispatcher: a saga was started or became due.
    pub(crate) wake: Arc<Notify>,
    /// Wakes waiters: a drive ended.
    pub(crate) progress: Notify,
    pub(crate) shutdown: watch::Sender<bool>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    /// One per saga in flight in this process (`Config::concurrency`).
    pub(crate) slots: Slots,
    /// Hands sagas started here to the running dispatcher.
    direct: Mutex<Option<mpsc::UnboundedSender<Direct>>>,
    hooks: RwLock<Vec<Hook>>,
    /// This process's offset to the store's clock, in milliseconds (see [`Store::clock`]).
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Whether the offset was measured at least once.
    clock_synced: std::sync::atomic::AtomicBool,
    /// The pauses in force as last read from the store, and when (read again after a poll
    /// interval, so a pause stops new attempts in every process within one).
    pauses: Mutex<Option<(tokio::time::Instant, Arc<Vec<crate::policy::Pause>>)>>,
    /// Held by the step of this process that reads the pauses again.
    pauses_reading: tokio::sync::Mutex<()>,
    /// One per start in progress (`Config::max_starts_in_progress`).
    starts: tokio::sync::Semaphore,
}

/// A subscriber to lifecycle events.
type Hook = Arc<dyn Fn(&LifecycleEvent) + Send + Sync>;

/// Something a person may need to hear about, delivered once per event by the worker that
/// recorded it (not once per worker or per retry).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LifecycleEvent {
    /// A compensation failed for good: the saga waits in the manual-intervention queue.
    Escalated {
        /// The saga.
        saga: SagaId,
        /// The item opened.
        item: NewIntervention,
    },
    /// The saga cannot be resumed (unknown type, changed definition, unreadable data) and was
    /// parked for an operator.
    Parked {
        /// The saga.
        saga: SagaId,
        /// The item opened, with the reason.
        item: NewIntervention,
    },
    /// A step phase used up its attempts on transient failures.
    RetriesExhausted {
        /// The saga.
        saga: SagaId,
        /// The step.
        step: StepName,
        /// Action or compensation.
        phase: Phase,
        /// The last attempt.
        attempt: Attempt,
        /// The last failure.
        error: StepError,
    },
}

#[derive(Default)]
struct Registry {
    by_type: HashMap<TypeId, Arc<dyn ErasedSaga>>,
    by_version: HashMap<(SagaType, u32), Arc<dyn ErasedSaga>>,
}

/// Counts finishes, escalations, retries and starts of compensation in `changes`, and times
/// the end of a compensation: `compensating_for` is how long the saga has been compensating,
/// when it was before `changes` or they move it there.
fn record_metrics(saga_type: &str, changes: &[Change], compensating_for: Option<Duration>) {
    use crate::telemetry::names;
    let compensation_ended = |outcome: &'static str| {
        if let Some(took) = compensating_for {
            metrics::histogram!(
                names::COMPENSATION_DURATION,
                "saga_type" => saga_type.to_owned(),
                "outcome" => outcome
            )
            .record(took.as_secs_f64());
        }
    };
    for change in changes {
        match change {
            // Written only by the batch that moves a running saga (a saga sent back to
            // compensating by an operator is moved by the store, not by a worker's batch).
            Change::SetStatus {
                status: SagaStatus::Compensating,
                ..
            } => crate::telemetry::count_compensation_start(saga_type),
            Change::SetStatus { status, .. } if status.is_terminal() => {
                metrics::counter!(
                    names::FINISHED,
                    "saga_type" => saga_type.to_owned(),
                    "status" => status.as_str()
                )
                .increment(1);
                if *status == SagaStatus::Compensated {
                    compensation_ended(SagaStatus::Compensated.as_str());
                }
            }
            Change::Escalate(item) => {
                metrics::counter!(
                    names::ESCALATED,
                    "saga_type" => saga_type.to_owned(),
                    "kind" => item.kind.as_str()
                )
                .increment(1);
                compensation_ended(SagaStatus::NeedsIntervention.as_str());
            }
            Change::FailStep {
                name,
                phase,
                error,
                retry_at,
                ..
            } => {
                let labels = [
                    ("saga_type", saga_type.to_owned()),
                    ("step", name.as_str().to_owned()),
                    ("phase", phase.as_str().to_owned()),
                ];
                if retry_at.is_some() {
                    metrics::counter!(names::STEP_RETRIES, &labels).increment(1);
                } else if !error.is_permanent() {
                    metrics::counter!(names::STEP_EXHAUSTED, &labels).increment(1);
                }
            }
            _ => {}
        }
    }
}

impl Inner {
    /// This process's clock (with its simulated skew, in tests).
    fn local_now(&self) -> Timestamp {
        clock::now()
            .checked_add_signed(self.config.simulated_clock_skew)
            .unwrap_or_else(clock::now)
    }

    /// The time by the store's clock, as last measured: what leases, due times and retry times
    /// are computed from.
    /// The pauses in force, read from the store at most once per poll interval.
    pub(crate) async fn pauses(&self) -> Result<Arc<Vec<crate::policy::Pause>>> {
        let fresh = self.config.poll_interval.min(Duration::from_secs(1));
        let cached = || -> Option<Arc<Vec<crate::policy::Pause>>> {
            let cached = self.pauses.lock().ok()?;
            let (at, pauses) = cached.as_ref()?;
            (at.elapsed() < fresh).then(|| Arc::clone(pauses))
        };
        if let Some(pauses) = cached() {
            return Ok(pauses);
        }
        // One step of this process reads them again; the others wait for that read.
        let _reading = self.pauses_reading.lock().await;
        if let Some(pauses) = cached() {
            return Ok(pauses);
        }
        self.pauses_now().await
    }

    /// The pauses in force, read from the store now (and kept for the next poll interval).
    pub(crate) async fn pauses_now(&self) -> Result<Arc<Vec<crate::policy::Pause>>> {
        let pauses = Arc::new(self.store.pauses(false).await?);
        if let Ok(mut cached) = self.pauses.lock() {
            *cached = Some((tokio::time::Instant::now(), Arc::clone(&pauses)));
        }
        Ok(pauses)
    }

    /// Forgets the pauses read, so the next step reads them again (after this process paused
    /// or resumed something).
    pub(crate) fn forget_pauses(&self) {
        if let Ok(mut cached) = self.pauses.lock() {
            *cached = None;
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        let offset = self
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.local_now()
            .checked_add_signed(chrono::Duration::milliseconds(offset))
            .unwrap_or_else(clock::now)
    }

    /// The time by the store's clock, measuring the offset first if it never was.
    pub(crate) async fn synced_now(&self) -> Timestamp {
        if !self.clock_synced.load(std::sync::atomic::Ordering::Relaxed) {
            self.sync_clock().await;
        }
        self.now()
    }

    /// Measures this process's offset to the store's clock (half the round trip either side).
    /// Offsets of a few milliseconds are noise and count as none. On failure the last
    /// measurement stands.
    pub(crate) async fn sync_clock(&self) {
        let before = self.local_now();
        match self.store.clock().await {
            Ok(store_now) => {
                let after = self.local_now();
                let middle = before + (after - before) / 2;
                let offset = (store_now - middle).num_milliseconds();
                let offset = if offset.abs() <= 5 { 0 } else { offset };
                let previous = self
                    .clock_offset_ms
                    .swap(offset, std::sync::atomic::Ordering::Relaxed);
                self.clock_synced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if offset.abs() > 1_000 && (offset - previous).abs() > 1_000 {
                    tracing::warn!(
                        offset_ms = offset,
                        "this process's clock is off from the store's; scheduling by the store's clock"
                    );
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "reading the store's clock failed; keeping the last offset");
            }
        }
    }

    /// Tells the metrics and the subscribers what `changes`, just written for a saga of type
    /// `saga_type`, mean. `compensating_since` is when the saga began compensating, if it was
    /// compensating before `changes` or they move it there.
    pub(crate) fn notify_lifecycle(
        &self,
        saga: SagaId,
        saga_type: &str,
        changes: &[Change],
        compensating_since: Option<Timestamp>,
    ) {
        let compensating_for =
            compensating_since.map(|since| (self.now() - since).to_std().unwrap_or(Duration::ZERO));
        record_metrics(saga_type, changes, compensating_for);
        let Ok(hooks) = self.hooks.read() else {
            return;
        };
        if hooks.is_empty() {
            return;
        }
        for change in changes {
            let event = match change {
                Change::Escalate(item) if item.kind == InterventionKind::Unresumable => {
                    LifecycleEvent::Parked {
                        saga,
                        item: item.clone(),
                    }
                }
                Change::Escalate(item) => LifecycleEvent::Escalated {
                    saga,
                    item: item.clone(),
                },
                Change::FailStep {
                    name,
                    phase,
                    attempt,
                    error,
                    retry_at: None,
                    ..
                } if !error.is_permanent() => LifecycleEvent::RetriesExhausted {
                    saga,
                    step: name.clone(),
                    phase: *phase,
                    attempt: *attempt,
                    error: error.clone(),
                },
                _ => continue,
            };
            for hook in hooks.iter() {
                let call = std::panic::AssertUnwindSafe(|| hook(&event));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!(saga.id = %saga, "a lifecycle hook panicked; the worker carries on");
                }
            }
        }
    }

    /// The definition a stored saga runs on, if this process registered it.
    pub(crate) fn definition(&self, saga_type: &SagaType, version: u32) -> Lookup {
        let Ok(registry) = self.registry.read() else {
            return Lookup::Missing(Vec::new());
        };
        match registry.by_version.get(&(saga_type.clone(), version)) {
            Some(definition) => Lookup::Found(Arc::clone(definition)),
            None => {
                let mut versions: Vec<u32> = registry
                    .by_version
                    .keys()
                    .filter(|(name, _)| name == saga_type)
                    .map(|(_, version)| *version)
                    .collect();
                versions.sort_unstable();
                Lookup::Missing(versions)
            }
        }
    }
}

impl Inner {
    /// The definition registered here for the saga type with this Rust type id.
    pub(crate) fn definition_of(&self, type_id: TypeId) -> Option<Arc<dyn ErasedSaga>> {
        self.registry.read().ok()?.by_type.get(&type_id).cloned()
    }
}

pub(crate) enum Lookup {
    Found(Arc<dyn ErasedSaga>),
    /// Not registered; the versions of that type that are.
    Missing(Vec<u32>),
}

impl Orchestrator {
    /// An orchestrator over `store`. Register saga types, then call [`Orchestrator::run`].
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                store,
                config: config.clone(),
                registry: RwLock::new(Registry::default()),
                wake: Arc::new(Notify::new()),
                progress: Notify::new(),
                shutdown,
                dispatcher: Mutex::new(None),
                hooks: RwLock::new(Vec::new()),
                slots: Slots::new(config.concurrency),
                direct: Mutex::new(None),
                clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
                clock_synced: std::sync::atomic::AtomicBool::new(false),
                pauses: Mutex::new(None),
                pauses_reading: tokio::sync::Mutex::new(()),
                starts: tokio::sync::Semaphore::new(
                    config
                        .max_starts_in_progress
                        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
                ),
            }),
        }
    }

    /// Registers a saga type. `saga` is shared by all its step functions (put clients of
    /// downstream services in it). Several versions of one saga type may be registered at once,
    /// so that sagas started on an older version finish on it; new sagas start on the version
    /// of `S`.
    ///
    /// # Errors
    /// [`Error::InvalidDefinition`] when the definition is malformed.
    pub fn register<S: Saga>(&self, saga: S) -> Result<()> {
        let definition = S::definition();
        definition.validate()?;
        let key = (definition.name().clone(), definition.version());
        let registered: Arc<dyn ErasedSaga> = Arc::new(Registered::new(Arc::new(saga), definition));
        let mut registry = self
            .inner
            .registry
            .write()
            .map_err(|_| Error::Store("saga registry lock poisoned".into()))?;
        registry
            .by_type
            .insert(TypeId::of::<S>(), Arc::clone(&registered));
        registry.by_version.insert(key, registered);
        Ok(())
    }

    /// The definitions registered here (every version of every type), for the upgrade check:
    /// [`upgrade::check`](crate::upgrade::check) tells which sagas in flight they could not
    /// resume.
    ///
    /// # Errors
    /// [`Error::Store`] when the registry's lock is poisoned (a registration panicked).
    pub fn definitions(&self) -> Result<crate::upgrade::Definitions> {
        let registry = self
            .inner
            .registry
            .read()
            .map_err(|_| Error::Store("saga registry lock poisoned".into()))?;
        Ok(crate::upgrade::Definitions::of_registered(
            registry.by_version.values(),
        ))
    }

    fn registered<S: Saga>(&self) -> Result<Arc<dyn ErasedSaga>> {
        let registry = self
            .inner
            .registry
            .read()
            .map_err(|_| Error::Store("saga registry lock poisoned".into()))?;
        registry
            .by_type
            .get(&TypeId::of::<S>())
            .cloned()
            .ok_or_else(|| Error::UnknownSagaType(S::definition().name().clone()))
    }

    /// Starts a saga of type `S` with no start key: every call starts a new saga.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use saga_core::{Config, MemoryStore, Orchestrator, Saga, SagaDefinition, Step, StepContext, StepError};
    /// struct Greet;
    /// async fn hello(_: Arc<Greet>, ctx: StepContext<String>) -> Result<String, StepError> {
    ///     Ok(format!("hello {}", ctx.input()))
    /// }
    /// impl Saga for Greet {
    ///     type Input = String;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("greet", 1).step(Step::new("hello", hello).irreversible())
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), saga_core::Error> {
    /// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
    /// orchestrator.register(Greet)?;
    /// // Stored before it returns: the saga runs once workers run, here or in another process.
    /// let first = orchestrator.start::<Greet>(&"ada".to_owned()).await?;
    /// let second = orchestrator.start::<Greet>(&"ada".to_owned()).await?;
    /// assert_ne!(first, second, "no start key: two sagas");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownSagaType`], [`Error::PayloadTooLarge`], [`Error::Serialization`], store errors.
    pub async fn start<S: Saga>(&self, input: &S::Input) -> Result<SagaId> {
        self.create::<S>(input, None, TraceContext::current_or_new(), None, None)
            .await
            .map(Created::id)
    }

    /// Starts a saga of type `S` that must finish `within` this long (from now, on the store's
    /// clock): past it no new forward step begins, a waiting step stops waiting and the saga
    /// compensates, as for a deadline its type sets (the earlier of the two applies). With a
    /// `key`, as [`Orchestrator::start_with_key`].
    ///
    /// # Errors
    /// As [`Orchestrator::start_with_key`].
    pub async fn start_within<S: Saga>(
        &self,
        key: Option<IdempotencyKey>,
        input: &S::Input,
        within: Duration,
    ) -> Result<Created> {
        let deadline = clock::after(self.inner.synced_now().await, within);
        self.create::<S>(
            input,
            key,
            TraceContext::current_or_new(),
            Some(deadline),
            None,
        )
        .await
    }

    /// Starts a saga of type `S` once per `key`: a repeated call with the same key and input
    /// returns the existing saga ([`Created::Existing`]).
    ///
    /// # Errors
    /// [`Error::Conflict`] when `key` already started a saga with a different input; otherwise
    /// as [`Orchestrator::start`].
    pub async fn start_with_key<S: Saga>(
        &self,
        key: IdempotencyKey,
        input: &S::Input,
    ) -> Result<Created> {
        self.create::<S>(input, Some(key), TraceContext::current_or_new(), None, None)
            .await
    }

    /// Starts a saga of type `S` once per `key` within `window`: a repeat with the key inside
    /// the window (from the creation of the saga holding it) returns that saga; after it, the
    /// key starts a new saga. It overrides the type's [dedup
    /// window](crate::SagaDefinition::dedup_window) for this start.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use saga_core::{Config, Created, MemoryStore, Orchestrator, Saga, SagaDefinition, Step, StepContext, StepError, IdempotencyKey};
    /// # struct Nudge;
    /// # impl Saga for Nudge {
    /// #     type Input = String;
    /// #     fn definition() -> SagaDefinition<Self> {
    /// #         SagaDefinition::new("nudge", 1).step(Step::new("send", |_: Arc<Nudge>, _: StepContext<String>| async { Ok::<_, StepError>(()) }).irreversible())
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> saga_core::Result<()> {
    /// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
    /// orchestrator.register(Nudge)?;
    /// // One nudge per customer and store per five minutes.
    /// let key = IdempotencyKey::new("nudge:ann:store-7");
    /// let window = Duration::from_secs(300);
    /// let first = orchestrator.start_within_window::<Nudge>(key.clone(), &"ann".into(), window).await?;
    /// let again = orchestrator.start_within_window::<Nudge>(key, &"ann".into(), window).await?;
    /// assert_eq!(again, Created::Existing(first.id()));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`Orchestrator::start_with_key`].
    pub async fn start_within_window<S: Saga>(
        &self,
        key: IdempotencyKey,
        input: &S::Input,
        window: Duration,
    ) -> Result<Created> {
        self.create::<S>(
            input,
            Some(key),
            TraceContext::current_or_new(),
            None,
            Some(window),
        )
        .await
    }

    /// Starts a saga of type `S` in the caller's trace (for example the `traceparent` header of
    /// the request that starts it): every step attempt, on any worker and after any restart,
    /// continues that trace. With a `key`, as [`Orchestrator::start_with_key`].
    ///
    /// # Errors
    /// As [`Orchestrator::start_with_key`].
    pub async fn start_traced<S: Saga>(
        &self,
        key: Option<IdempotencyKey>,
        input: &S::Input,
        trace: TraceContext,
    ) -> Result<Created> {
        self.create::<S>(input, key, trace, None, None).await
    }

    /// Creates a saga once a start may be in progress (`Config::max_starts_in_progress`):
    /// until then the caller holds only this small future, not the creation's.
    async fn create<S: Saga>(
        &self,
        input: &S::Input,
        key: Option<IdempotencyKey>,
        trace: TraceContext,
        deadline: Option<Timestamp>,
        dedup_window: Option<Duration>,
    ) -> Result<Created> {
        // The semaphore is never closed; were it, the start would go on without a turn.
        let _turn = self.inner.starts.acquire().await.ok();
        Box::pin(self.create_now::<S>(input, key, trace, deadline, dedup_window)).await
    }

    async fn create_now<S: Saga>(
        &self,
        input: &S::Input,
        key: Option<IdempotencyKey>,
        trace: TraceContext,
        deadline: Option<Timestamp>,
        dedup_window: Option<Duration>,
    ) -> Result<Created> {
        let definition = self.registered::<S>()?;
        let text = serde_json::to_string(input).map_err(|source| Error::Serialization {
            what: format!("input of saga type `{}`", definition.saga_type()),
            source,
        })?;
        let limit = self.inner.config.max_payload_bytes;
        if text.len() > limit {
            return Err(Error::PayloadTooLarge {
                what: format!("input of saga type `{}`", definition.saga_type()),
                size: text.len(),
                limit,
            });
        }
        let input: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Serialization {
                what: format!("input of saga type `{}`", definition.saga_type()),
                source,
            })?;
        if crate::step::holds_nul(&input) {
            return Err(Error::Unstorable {
                what: format!("input of saga type `{}`", definition.saga_type()),
                reason: "it contains a NUL character (\\u0000), which stores cannot keep; encode binary data (base64) or drop the character".into(),
            });
        }
        let direct = self.direct_slot();
        let lease = match direct {
            Some(_) => Some((
                self.inner.config.worker_id.clone(),
                clock::after(self.inner.synced_now().await, self.inner.config.lease_ttl),
            )),
            None => None,
        };
        let mut new = NewSaga {
            id: SagaId::new(),
            saga_type: definition.saga_type().clone(),
            version: definition.version(),
            fingerprint: definition.fingerprint().to_owned(),
            input_hash: input_hash(definition.saga_type(), &input),
            input,
            idempotency_key: key,
            trace_context: Some(trace.to_string()),
            lease: lease.clone(),
            changes: Vec::new(),
            deadline,
            dedup_window: dedup_window.or_else(|| definition.dedup_window()),
            parent: None,
        };
        // A saga driven by its starter begins its first step in the same write that creates
        // it: one commit less, and the step runs as soon as the creation returns.
        let mut begun = None;
        let snapshot = match &lease {
            Some(_) => {
                let pauses = self.inner.pauses().await?;
                let now = self.inner.now();
                let mut snapshot = CreationPlan::compile(&new)?.snapshot(&new, now);
                if let Some((change, attempted)) =
                    first_step(&snapshot, definition.as_ref(), new.id, now, &pauses)
                {
                    snapshot.apply(&change, self.inner.now())?;
                    new.changes.push(change);
                    begun = Some(attempted);
                }
                Some(snapshot)
            }
            None => None,
        };
        let created = self.inner.store.create(new).await?;
        let saga_type = definition.saga_type().as_str().to_owned();
        match created {
            Created::New(id) => {
                tracing::debug!(saga.id = %id, saga.r#type = %saga_type, trace_id = trace.trace_id(), "saga started");
                metrics::counter!(crate::telemetry::names::STARTED, "saga_type" => saga_type)
                    .increment(1);
                match (direct, snapshot) {
                    (Some((sender, slot)), Some(snapshot)) => {
                        let lease = Lease {
                            saga: id,
                            owner: self.inner.config.worker_id.clone(),
                            token: snapshot.record.fencing_token,
                            expires_at: snapshot.record.lease_expires_at.unwrap_or_else(clock::now),
                            taken_over_from: None,
                        };
                        if let Err(unsent) = sender.send(Direct {
                            lease,
                            snapshot,
                            begun,
                            slot,
                        }) {
                            // The dispatcher stopped meanwhile: hand the saga back now rather
                            // than when the lease expires. Its first step was recorded begun
                            // but never ran: record that attempt as not run, due again now,
                            // so that the next worker runs the step with the same key.
                            let work = unsent.0;
                            let now = self.inner.now();
                            let mut changes = Vec::new();
                            if let Some(begun) = work.begun {
                                if let Some(step) = work.snapshot.step(begun.index, begun.phase) {
                                    changes.push(Change::FailStep {
                                        index: begun.index,
                                        name: step.name.clone(),
                                        phase: begun.phase,
                                        attempt: begun.attempt,
                                        error: StepError::transient(
                                            "not run: the orchestrator stopped before the step started",
                                        ),
                                        retry_at: Some(now),
                                    });
                                }
                            }
                            changes.push(Change::Release {
                                next_run_at: Some(now),
                            });
                            // The saga exists whatever happens here: failing the start
                            // would have the caller start it again. If this write fails, the
                            // saga resumes when its lease expires.
                            if let Err(err) = self.inner.store.apply(&work.lease, &changes).await {
                                tracing::warn!(saga.id = %id, error = %err, "handing back a saga started during shutdown failed; it resumes when its lease expires");
                            }
                        }
                    }
                    _ => self.inner.wake.notify_one(),
                }
            }
            Created::Existing(_) => {
                metrics::counter!(crate::telemetry::names::START_DEDUP, "saga_type" => saga_type)
                    .increment(1);
            }
        }
        Ok(created)
    }

    /// Subscribes `hook` to lifecycle events (escalations, parked sagas, exhausted retries), for
    /// example to page a person. Each event reaches the hooks of the orchestrator whose worker
    /// recorded it, once. Hooks run on the worker: keep them quick (spawn for I/O). A panicking
    /// hook is logged and ignored.
    pub fn on_lifecycle(&self, hook: impl Fn(&LifecycleEvent) + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.inner.hooks.write() {
            hooks.push(Arc::new(hook));
        }
    }

    /// Sends the signal `T` to a saga (by id or start key), from any process: it is stored with
    /// the saga once per `key` (a webhook delivered twice is one signal), kept if the saga has
    /// not reached the step waiting for it yet, and wakes the saga if it waits for it now (on
    /// Postgres through `NOTIFY`, in every process; here at once).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use saga_core::*;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct Paid { charge: String }
    /// impl Signal for Paid { const NAME: &'static str = "paid"; }
    ///
    /// struct Order;
    /// impl Saga for Order {
    ///     type Input = u64;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("order", 1)
    ///             .step(Step::signal::<Paid>("payment").timeout(Duration::from_secs(60)))
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
    /// orchestrator.register(Order)?;
    /// orchestrator.run();
    /// let id = orchestrator.start_with_key::<Order>(IdempotencyKey::new("order-7"), &7).await?.id();
    /// let paid = Paid { charge: "ch_1".into() };
    /// let key = SignalKey::new("evt_1");
    /// assert_eq!(orchestrator.signal(IdempotencyKey::new("order-7"), &paid, key.clone()).await?, Delivered::New(id));
    /// assert_eq!(orchestrator.signal(id, &paid, key).await?, Delivered::Duplicate(id));
    /// let done = orchestrator.wait(id, Duration::from_secs(10)).await?;
    /// assert_eq!(done.status, SagaStatus::Completed);
    /// # orchestrator.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::SignalRefused`] (the start key started no saga, the saga is finished or
    /// compensating, no step of its type waits for `T`, the name was delivered with another key);
    /// [`Error::SagaNotFound`]; store errors.
    pub async fn signal<T: Signal>(
        &self,
        target: impl Into<SignalTarget>,
        payload: &T,
        key: SignalKey,
    ) -> Result<Delivered> {
        let value = serde_json::to_value(payload).map_err(|source| Error::Serialization {
            what: format!("signal `{}`", T::NAME),
            source,
        })?;
        self.signal_json(target, T::NAME, value, key).await
    }

    /// Sends a signal given as JSON (a webhook's body, say), as [`Orchestrator::signal`]. When
    /// this process registered the saga's type, the payload is checked against the waiting
    /// step's signal type before anything is stored.
    ///
    /// # Errors
    /// As [`Orchestrator::signal`]; also [`Error::SignalRefused`] with
    /// [`SignalRefusal::Payload`] when the payload does not decode, or
    /// [`SignalRefusal::BadName`]; [`Error::PayloadTooLarge`] and [`Error::Unstorable`] as for
    /// inputs.
    pub async fn signal_json(
        &self,
        target: impl Into<SignalTarget>,
        name: &str,
        payload: serde_json::Value,
        key: SignalKey,
    ) -> Result<Delivered> {
        let target = target.into();
        let refused = |refusal| Error::SignalRefused {
            target: target.to_string(),
            name: name.to_owned(),
            refusal,
        };
        check_signal_name(name).map_err(|reason| refused(SignalRefusal::BadName(reason)))?;
        check_signal_key(&key).map_err(|reason| refused(SignalRefusal::BadKey(reason)))?;
        check_storable(
            &format!("signal `{name}`"),
            &payload,
            self.inner.config.max_payload_bytes,
        )?;
        let id = resolve_target(self.inner.store.as_ref(), &target, name).await?;
        let snapshot = self
            .inner
            .store
            .load(id)
            .await?
            .ok_or(Error::SagaNotFound(id))?;
        let record = &snapshot.record;
        if let Lookup::Found(definition) = self.inner.definition(&record.saga_type, record.version)
        {
            let waiting = definition
                .specs()
                .iter()
                .enumerate()
                .find(|(_, spec)| spec.kind.signal_name(&spec.name).as_deref() == Some(name))
                .map(|(position, spec)| (position, spec.name.clone()));
            let Some((position, step)) = waiting else {
                return Err(refused(SignalRefusal::NotAwaited {
                    saga_type: record.saga_type.clone(),
                    name: name.to_owned(),
                }));
            };
            definition
                .check_signal(position, &payload)
                .map_err(|reason| refused(SignalRefusal::Payload(reason)))?;
            // A wait that ended already (a default at its timeout, a failure) takes nothing
            // more: say so, rather than store a signal nothing will read. A repeat of the
            // signal that step took is still told it is a duplicate (by the store, below).
            let index = crate::id::StepIndex(u32::try_from(position).unwrap_or(u32::MAX));
            let settled = snapshot
                .step(index, crate::status::Phase::Action)
                .is_some_and(|step| {
                    matches!(
                        step.status,
                        crate::status::StepStatus::Completed | crate::status::StepStatus::Failed
                    )
                });
            let same = snapshot
                .signal(name)
                .is_some_and(|signal| signal.key == key);
            // A finished or compensating saga is told so by the store.
            let active = matches!(
                record.status,
                crate::status::SagaStatus::Running | crate::status::SagaStatus::NeedsIntervention
            );
            if settled && !same && active {
                return Err(refused(SignalRefusal::TooLate { step }));
            }
        }
        let delivered = self
            .inner
            .store
            .deliver_signal(&SignalDelivery {
                saga: id,
                name: name.to_owned(),
                key,
                payload,
            })
            .await?;
        if matches!(delivered, Delivered::New(_)) {
            self.inner.wake.notify_one();
        }
        Ok(delivered)
    }

    /// The operator handle over this orchestrator's store. Its actions that make a saga due now
    /// (an approval, a settlement, a cancel) wake this process's workers at once.
    pub fn admin(&self) -> crate::admin::Admin {
        let inner = Arc::downgrade(&self.inner);
        crate::admin::Admin::new(Arc::clone(&self.inner.store))
            .waking(Arc::clone(&self.inner.wake))
            .on_pauses_changed(Arc::new(move || {
                if let Some(inner) = inner.upgrade() {
                    inner.forget_pauses();
                }
            }))
    }

    /// Starts the workers in the background (on the current tokio runtime): they claim due
    /// sagas, including those whose lease expired after a crash, and drive them. Calling it
    /// again while they run does nothing.
    pub fn run(&self) {
        let Ok(mut dispatcher) = self.inner.dispatcher.lock() else {
            return;
        };
        if dispatcher
            .as_ref()
            .is_some_and(|handle| !handle.is_finished())
        {
            return;
        }
        self.inner.shutdown.send_replace(false);
        // Every lease this run grants (from here on) expires after the store's time now plus a
        // lease; leases held under this worker id that expire before that belong to an earlier
        // run. The dispatcher works that time out once it has measured the store's clock.
        let run_at = std::time::Instant::now();
        let (direct, receiver) = mpsc::unbounded_channel();
        if let Ok(mut sender) = self.inner.direct.lock() {
            *sender = Some(direct);
        }
        *dispatcher = Some(tokio::spawn(worker::dispatch(
            Arc::clone(&self.inner),
            receiver,
            run_at,
        )));
    }

    /// Stops claiming, lets running steps finish (up to the configured grace period), records
    /// their results and releases every lease so that other workers continue at once.
    pub async fn shutdown(&self) {
        self.stop_direct();
        self.inner.shutdown.send_replace(true);
        let handle = self
            .inner
            .dispatcher
            .lock()
            .ok()
            .and_then(|mut dispatcher| dispatcher.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Stops every worker at once, mid-step, without writing anything: what a crash does.
    /// Leases stay held until they expire; then any orchestrator on the store resumes the
    /// sagas. For tests of crash recovery.
    pub fn kill(&self) {
        self.stop_direct();
        if let Some(handle) = self
            .inner
            .dispatcher
            .lock()
            .ok()
            .and_then(|mut dispatcher| dispatcher.take())
        {
            handle.abort();
        }
    }

    fn stop_direct(&self) {
        if let Ok(mut sender) = self.inner.direct.lock() {
            sender.take();
        }
    }

    /// Where a saga started now can be driven at once: the dispatcher's channel and a free slot.
    fn direct_slot(&self) -> Option<(mpsc::UnboundedSender<Direct>, Slot)> {
        let sender = self.inner.direct.lock().ok()?.clone()?;
        if sender.is_closed() || *self.inner.shutdown.borrow() {
            return None;
        }
        let slot = self.inner.slots.try_take()?;
        Some((sender, slot))
    }

    /// Waits until the saga is settled (completed, compensated, cancelled or needs
    /// intervention), for at most `timeout`, and returns its record. The saga keeps running
    /// when the wait times out.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use saga_core::{Config, Error, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError};
    /// struct Slow;
    /// async fn nap(_: Arc<Slow>, ctx: StepContext<u64>) -> Result<(), StepError> {
    ///     tokio::time::sleep(Duration::from_millis(*ctx.input())).await;
    ///     Ok(())
    /// }
    /// impl Saga for Slow {
    ///     type Input = u64;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("slow", 1).step(Step::new("nap", nap).irreversible())
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Error> {
    /// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
    /// orchestrator.register(Slow)?;
    /// orchestrator.run();
    /// let id = orchestrator.start::<Slow>(&300).await?;
    /// assert!(matches!(
    ///     orchestrator.wait(id, Duration::from_millis(10)).await,
    ///     Err(Error::WaitTimeout { .. })
    /// ));
    /// let record = orchestrator.wait(id, Duration::from_secs(10)).await?;
    /// assert_eq!(record.status, SagaStatus::Completed);
    /// orchestrator.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::SagaNotFound`], [`Error::WaitTimeout`], store errors.
    pub async fn wait(&self, id: SagaId, timeout: Duration) -> Result<SagaRecord> {
        let deadline = clock::instant_after(timeout);
        loop {
            let progress = self.inner.progress.notified();
            let snapshot = self.snapshot(id).await?;
            if snapshot.record.status.is_settled() {
                return Ok(snapshot.record);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout {
                    saga: id,
                    waited: timeout,
                });
            }
            let pause = self.inner.config.poll_interval.min(deadline - now);
            tokio::select! {
                () = progress => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One saga with its step records and the signals delivered to it.
    ///
    /// # Errors
    /// [`Error::SagaNotFound`], store errors.
    pub async fn snapshot(&self, id: SagaId) -> Result<SagaSnapshot> {
        self.inner
            .store
            .load(id)
            .await?
            .ok_or(Error::SagaNotFound(id))
    }

    /// The full history of one saga.
    ///
    /// # Errors
    /// Store errors.
    pub async fn history(&self, id: SagaId) -> Result<History> {
        Ok(History {
            events: self.inner.store.history(id).await?,
        })
    }

    /// Sagas matching `filter`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        self.inner.store.list(filter).await
    }

    /// Manual-intervention items; only open ones when `open_only`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        self.inner.store.interventions(open_only).await
    }

    /// The store this orchestrator runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// This orchestrator's settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

/// The saga a signal is for.
pub(crate) async fn resolve_target(
    store: &dyn Store,
    target: &SignalTarget,
    name: &str,
) -> Result<SagaId> {
    match target {
        SignalTarget::Saga(id) => Ok(*id),
        SignalTarget::StartKey(key) => store
            .list(&SagaFilter {
                idempotency_key: Some(key.clone()),
                limit: Some(1),
                ..SagaFilter::default()
            })
            .await?
            .first()
            .map(|record| record.id)
            .ok_or_else(|| Error::SignalRefused {
                target: target.to_string(),
                name: name.to_owned(),
                refusal: SignalRefusal::UnknownStartKey(key.clone()),
            }),
    }
}

/// Refuses a payload no store can keep: over `limit` bytes, or holding a NUL character.
fn check_storable(what: &str, payload: &serde_json::Value, limit: usize) -> Result<()> {
    let size = payload.to_string().len();
    if size > limit {
        return Err(Error::PayloadTooLarge {
            what: what.to_owned(),
            size,
            limit,
        });
    }
    if crate::step::holds_nul(payload) {
        return Err(Error::Unstorable {
            what: what.to_owned(),
            reason: "it holds a NUL character (\\u0000), which no store keeps; encode binary data (base64)".into(),
        });
    }
    Ok(())
}

/// The saga as just created leased to this worker, for driving it without reading it back.
/// The `BeginStep` of a new saga's first step, if the plan starts with one.
fn first_step(
    snapshot: &SagaSnapshot,
    definition: &dyn ErasedSaga,
    id: SagaId,
    now: Timestamp,
    pauses: &[crate::policy::Pause],
) -> Option<(Change, crate::plan::Attempted)> {
    match crate::plan::next_action(snapshot, definition.specs(), now) {
        crate::plan::Action::Run {
            index,
            phase,
            attempt,
        } => {
            let spec = definition.specs().get(usize::try_from(index.0).ok()?)?;
            // A transactional step is begun by the worker, which orders its transaction and its
            // `in_progress` record as the store needs (`run_step`).
            // So is a step under a policy or a pause: the worker asks for its permit first.
            if spec.transactional
                || !spec.policies.is_empty()
                || crate::policy::pause_covering(pauses, definition.saga_type(), &spec.name)
                    .is_some()
            {
                return None;
            }
            Some((
                Change::BeginStep {
                    index,
                    name: spec.name.clone(),
                    phase,
                    attempt,
                    key: IdempotencyKey::for_step(id, &spec.name, phase),
                },
                crate::plan::Attempted {
                    index,
                    phase,
                    attempt,
                },
            ))
        }
        _ => None,
    }
}

/// Hash of (saga type, input) that tells a repeated start from a conflicting one. serde_json
/// maps keep their keys sorted, so equal inputs hash equally.
pub(crate) fn input_hash(saga_type: &SagaType, input: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(saga_type.as_str().as_bytes());
    hasher.update(b"\x1f");
    hasher.update(input.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
