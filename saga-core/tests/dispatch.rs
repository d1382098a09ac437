//! How the dispatcher shares an orchestrator's slots between sagas started in this process and
//! sagas waiting in the store.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Config, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError, Store,
};

struct Slow;

async fn work(_: Arc<Slow>, _: StepContext<u64>) -> Result<(), StepError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

impl Saga for Slow {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("slow", 1).step(Step::new("work", work).irreversible())
    }
}

#[tokio::test]
async fn a_saga_waiting_in_the_store_is_claimed_while_starts_keep_every_slot_busy() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let busy = Arc::new(Orchestrator::new(
        Arc::clone(&store),
        Config::default()
            .concurrency(1)
            .poll_interval(Duration::from_millis(20)),
    ));
    busy.register(Slow).unwrap();
    busy.run();
    // One saga after another, each started as soon as the previous one settled, so that a
    // start is always ready to take the slot the moment it frees.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU32::new(0));
    let starter = {
        let (busy, stop, started) = (Arc::clone(&busy), Arc::clone(&stop), Arc::clone(&started));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let id = busy.start::<Slow>(&1).await.unwrap();
                let settled = busy.wait(id, Duration::from_secs(10)).await.unwrap();
                assert_eq!(settled.status, SagaStatus::Completed);
                started.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while started.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Started where no orchestrator runs: it waits in the store until some worker claims it.
    let elsewhere = Orchestrator::new(Arc::clone(&store), Config::default());
    elsewhere.register(Slow).unwrap();
    let waiting = elsewhere.start::<Slow>(&0).await.unwrap();
    let before = started.load(Ordering::SeqCst);
    let outcome = busy.wait(waiting, Duration::from_secs(3)).await;
    let meanwhile = started.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    starter.await.unwrap();
    busy.shutdown().await;
    let record = outcome.expect(
        "the saga waiting in the store must be claimed while starts keep coming, not after",
    );
    assert_eq!(record.status, SagaStatus::Completed);
    assert!(
        meanwhile < 100,
        "claimed only after {meanwhile} sagas started here took the slot first"
    );
}
