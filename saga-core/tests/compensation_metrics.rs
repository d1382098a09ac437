//! The compensation metrics, read from a real Prometheus recorder after sagas run on the memory
//! store: one start per saga that compensates, however it got there and however often an
//! operator sends it back, and one duration per end of its compensation, labelled with how it
//! ended.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use saga_core::{
    Admin, CancelOutcome, Config, InterventionKind, MemoryStore, Orchestrator, RetryPolicy, Saga,
    SagaDefinition, SagaStatus, Step, StepContext, StepError, Store,
};

/// How long every compensation takes: a lower bound of each observed duration.
const RELEASE_TAKES: Duration = Duration::from_millis(50);

/// The recorder of this test binary (one per process), shared by its tests; each test runs its
/// own saga type, so each reads its own series.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(series: &str) -> Option<f64> {
    prometheus().render().lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Names a saga type.
trait Named: Send + Sync + 'static {
    const NAME: &'static str;
}

/// `reserve` (compensated by `release`, which takes [`RELEASE_TAKES`] and fails for good while
/// `release_fails` is set), then `pay`, which always declines.
struct Order<N> {
    release_fails: Arc<AtomicBool>,
    name: PhantomData<N>,
}

impl<N> Order<N> {
    fn new(release_fails: &Arc<AtomicBool>) -> Self {
        Self {
            release_fails: Arc::clone(release_fails),
            name: PhantomData,
        }
    }
}

async fn reserve<N: Named>(_: Arc<Order<N>>, _: StepContext<u32>) -> Result<u32, StepError> {
    Ok(1)
}

async fn release<N: Named>(
    order: Arc<Order<N>>,
    _: StepContext<u32>,
    _: u32,
) -> Result<(), StepError> {
    tokio::time::sleep(RELEASE_TAKES).await;
    if order.release_fails.load(Ordering::SeqCst) {
        return Err(StepError::permanent("warehouse refused the release"));
    }
    Ok(())
}

async fn pay<N: Named>(_: Arc<Order<N>>, _: StepContext<u32>) -> Result<(), StepError> {
    Err(StepError::permanent("card declined"))
}

impl<N: Named> Saga for Order<N> {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new(N::NAME, 1)
            .step(Step::new("reserve", reserve::<N>).compensate(release::<N>))
            .step(Step::new("pay", pay::<N>).irreversible())
    }
}

fn orchestrator(store: Arc<dyn Store>) -> Orchestrator {
    prometheus();
    Orchestrator::new(
        store,
        Config::default().poll_interval(Duration::from_millis(10)),
    )
}

fn started(saga_type: &str) -> Option<f64> {
    sample(&format!(
        r#"saga_compensations_started_total{{saga_type="{saga_type}"}}"#
    ))
}

fn duration(saga_type: &str, outcome: &str, part: &str) -> Option<f64> {
    sample(&format!(
        r#"saga_compensation_duration_seconds_{part}{{saga_type="{saga_type}",outcome="{outcome}"}}"#
    ))
}

struct Declined;
impl Named for Declined {
    const NAME: &'static str = "declined";
}

#[tokio::test]
async fn a_compensated_saga_counts_one_start_and_one_duration_covering_its_compensation() {
    let orchestrator = orchestrator(Arc::new(MemoryStore::new()));
    orchestrator
        .register(Order::<Declined>::new(&Arc::default()))
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Order<Declined>>(&1).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    orchestrator.shutdown().await;

    assert_eq!(started("declined"), Some(1.0));
    assert_eq!(duration("declined", "compensated", "count"), Some(1.0));
    let took = duration("declined", "compensated", "sum").unwrap();
    assert!(
        took >= RELEASE_TAKES.as_secs_f64(),
        "the duration covers the compensation it timed: {took}"
    );
    assert_eq!(duration("declined", "needs_intervention", "count"), None);
}

struct Stuck;
impl Named for Stuck {
    const NAME: &'static str = "stuck";
}

#[tokio::test]
async fn a_failed_compensation_is_timed_to_needs_intervention_and_its_retry_is_not_a_new_start() {
    let release_fails = Arc::new(AtomicBool::new(true));
    let orchestrator = orchestrator(Arc::new(MemoryStore::new()));
    orchestrator
        .register(Order::<Stuck>::new(&release_fails))
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Order<Stuck>>(&1).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);

    assert_eq!(started("stuck"), Some(1.0));
    assert_eq!(duration("stuck", "needs_intervention", "count"), Some(1.0));
    let to_intervention = duration("stuck", "needs_intervention", "sum").unwrap();
    assert!(
        to_intervention >= RELEASE_TAKES.as_secs_f64(),
        "the duration covers the failed release: {to_intervention}"
    );
    assert_eq!(duration("stuck", "compensated", "count"), None);

    // The warehouse is fixed; an operator retries the release, and the saga compensates.
    release_fails.store(false, Ordering::SeqCst);
    let admin = orchestrator.admin();
    let item = admin.interventions(true).await.unwrap().remove(0);
    let status = admin
        .retry(item.item.id, "alice", "warehouse fixed")
        .await
        .unwrap();
    assert_eq!(status, SagaStatus::Compensating);
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    orchestrator.shutdown().await;

    assert_eq!(started("stuck"), Some(1.0), "sent back, not started again");
    assert_eq!(duration("stuck", "compensated", "count"), Some(1.0));
    let to_compensated = duration("stuck", "compensated", "sum").unwrap();
    assert!(
        to_compensated >= to_intervention + RELEASE_TAKES.as_secs_f64(),
        "timed from the same start, through the retried release: {to_compensated} after {to_intervention}"
    );
}

struct Withdrawn;
impl Named for Withdrawn {
    const NAME: &'static str = "withdrawn";
}

#[tokio::test]
async fn an_operator_cancel_of_an_unheld_saga_counts_one_start_and_one_duration() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let orchestrator = orchestrator(Arc::clone(&store));
    orchestrator
        .register(Order::<Withdrawn>::new(&Arc::default()))
        .unwrap();
    // Stored; no worker runs yet, so the cancel moves it to compensating in the store.
    let id = orchestrator.start::<Order<Withdrawn>>(&1).await.unwrap();
    let outcome = Admin::new(store)
        .cancel_saga(id, "alice", "customer withdrew")
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Compensating);
    assert_eq!(started("withdrawn"), Some(1.0));

    orchestrator.run();
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    orchestrator.shutdown().await;

    assert_eq!(started("withdrawn"), Some(1.0));
    assert_eq!(duration("withdrawn", "compensated", "count"), Some(1.0));
}

/// `reserve` (compensated), then `charge`, whose call never answers: its outcome is unknown.
struct Unsure;

async fn hold(_: Arc<Unsure>, _: StepContext<u32>) -> Result<u32, StepError> {
    Ok(1)
}

async fn unhold(_: Arc<Unsure>, _: StepContext<u32>, _: u32) -> Result<(), StepError> {
    Ok(())
}

async fn charge(_: Arc<Unsure>, _: StepContext<u32>) -> Result<(), StepError> {
    std::future::pending().await
}

impl Saga for Unsure {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("unsure", 1)
            .step(Step::new("hold", hold).compensate(unhold))
            .step(
                Step::new("charge", charge)
                    .irreversible()
                    .retry(RetryPolicy::NONE)
                    .timeout(Duration::from_millis(20)),
            )
    }
}

#[tokio::test]
async fn an_unknown_outcome_resolved_as_not_applied_counts_one_start() {
    let orchestrator = orchestrator(Arc::new(MemoryStore::new()));
    orchestrator.register(Unsure).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Unsure>(&1).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    assert_eq!(
        started("unsure"),
        None,
        "parked while running: not compensating"
    );

    let admin = orchestrator.admin();
    let item = admin.interventions(true).await.unwrap().remove(0);
    assert_eq!(item.item.kind, InterventionKind::UnknownOutcome);
    let status = admin
        .resolve(item.item.id, "alice", "the bank shows no charge")
        .await
        .unwrap();
    assert_eq!(status, SagaStatus::Compensating);
    assert_eq!(started("unsure"), Some(1.0));

    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    orchestrator.shutdown().await;
    assert_eq!(started("unsure"), Some(1.0));
    assert_eq!(duration("unsure", "compensated", "count"), Some(1.0));
}
