//! Durations at their limits saturate: nothing panics on `Duration::MAX`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Admin, Config, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError, Store,
};

struct Quick;

async fn work(_: Arc<Quick>, _: StepContext<u64>) -> Result<u64, StepError> {
    Ok(1)
}

impl Saga for Quick {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("quick", 1).step(Step::new("work", work).irreversible())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_saturate_instead_of_panicking() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let orchestrator = Orchestrator::new(
        Arc::clone(&store),
        Config::default()
            .poll_interval(Duration::MAX)
            .lease_ttl(Duration::MAX)
            .metrics_interval(Duration::MAX),
    );
    orchestrator.register(Quick).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Quick>(&1).await.unwrap();
    let record = orchestrator.wait(id, Duration::MAX).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let admin = Admin::new(Arc::clone(&store));
    // A hundred million days: older than everything, so nothing is that old.
    let ancient = Duration::from_secs(100_000_000 * 86_400);
    assert_eq!(admin.prune(ancient, 10).await.unwrap(), 0);
    assert!(admin
        .list_older_than(ancient, &Default::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(admin.prune(Duration::MAX, 10).await.unwrap(), 0);
    orchestrator.shutdown().await;
}
