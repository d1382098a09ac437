//! The gauges of the intervention queue and of stuck steps, read from a real Prometheus
//! recorder while sagas run on the memory store: a step that has been running past the
//! threshold is counted by type, step and phase, and falls back to 0 once it finishes; the
//! queue's depth and its oldest item's age follow the open items.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use saga_core::{
    Config, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError,
};
use tokio::sync::Semaphore;

/// `hold` runs until the test lets it go; `fail` then declines, and `hold`'s compensation
/// fails for good, opening an item.
struct Slow {
    gate: Arc<Semaphore>,
}

async fn hold(saga: Arc<Slow>, _: StepContext<u32>) -> Result<u32, StepError> {
    let permit = saga.gate.acquire().await;
    drop(permit);
    Ok(1)
}

async fn undo(_: Arc<Slow>, _: StepContext<u32>, _: u32) -> Result<(), StepError> {
    Err(StepError::permanent("the partner refused the undo"))
}

async fn fail(_: Arc<Slow>, _: StepContext<u32>) -> Result<(), StepError> {
    Err(StepError::permanent("declined"))
}

impl Saga for Slow {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("slow", 1)
            .step(Step::new("hold", hold).compensate(undo))
            .step(Step::new("fail", fail).irreversible())
    }
}

/// Polls `read` until it gives `wanted` (bounded).
async fn eventually(what: &str, wanted: f64, read: impl Fn() -> Option<f64>) {
    for _ in 0..200 {
        if read() == Some(wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} never became {wanted}: last {:?}", read());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_steps_and_the_queue_are_sampled_and_fall_back_when_they_clear() {
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    let sample = move |series: &str| {
        handle.render().lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
    };
    let gate = Arc::new(Semaphore::new(0));
    let orchestrator = Orchestrator::new(
        Arc::new(MemoryStore::new()),
        Config::default()
            .poll_interval(Duration::from_millis(10))
            .metrics_interval(Duration::from_millis(20))
            .stuck_after(Duration::from_millis(100)),
    );
    orchestrator
        .register(Slow {
            gate: Arc::clone(&gate),
        })
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Slow>(&1).await.unwrap();

    let stuck = r#"saga_stuck_sagas{saga_type="slow",step="hold",phase="action"}"#;
    eventually("the stuck gauge", 1.0, || sample(stuck)).await;
    assert_eq!(sample("saga_interventions_open"), Some(0.0));
    assert_eq!(sample("saga_intervention_oldest_age_seconds"), Some(0.0));

    gate.add_permits(1);
    let record = orchestrator
        .wait(id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    eventually("the stuck gauge after the step finished", 0.0, || {
        sample(stuck)
    })
    .await;
    eventually("the queue depth", 1.0, || sample("saga_interventions_open")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let age = sample("saga_intervention_oldest_age_seconds").unwrap();
    assert!(
        age >= 0.1,
        "the oldest item has waited at least the 200 ms slept since it opened: {age}"
    );
    orchestrator.shutdown().await;
}
