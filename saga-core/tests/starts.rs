//! Starts in progress at once are bounded (`Config::max_starts_in_progress`): a burst of starts
//! waits in its callers, in order, and every one of them is stored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use saga_core::{
    Config, Orchestrator, Result, Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError,
    Store,
};

mod support;

use support::{Around, Hooked};

/// Holds every creation 20 ms, and counts the creations in progress and their most at once.
#[derive(Default)]
struct SlowCreates {
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Around for SlowCreates {
    async fn before_create(&self) -> Result<()> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }

    fn after_create(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Once;

async fn once(_: Arc<Once>, _: StepContext<u64>) -> std::result::Result<(), StepError> {
    Ok(())
}

impl Saga for Once {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("once", 1).step(Step::new("once", once).irreversible())
    }
}

/// Issues 24 starts at once with at most `bound` in progress; returns the most creations seen
/// in progress at once, once every saga started is stored.
async fn burst(bound: Option<usize>) -> usize {
    let store = Arc::new(Hooked::new(SlowCreates::default()));
    let dyn_store: Arc<dyn Store> = store.clone();
    let config = match bound {
        Some(bound) => Config::default().max_starts_in_progress(bound),
        None => Config::default(),
    };
    let orchestrator = Orchestrator::new(dyn_store, config);
    orchestrator.register(Once).unwrap();
    let starts: Vec<_> = (0..24)
        .map(|n| {
            let orchestrator = orchestrator.clone();
            tokio::spawn(async move { orchestrator.start::<Once>(&n).await })
        })
        .collect();
    let mut ids = Vec::new();
    for start in starts {
        ids.push(start.await.unwrap().unwrap());
    }
    for id in ids {
        let stored = store
            .load(id)
            .await
            .unwrap()
            .expect("every start is stored");
        assert_eq!(stored.record.status, SagaStatus::Running);
    }
    store.around.most.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_beyond_the_bound_wait_their_turn_and_all_are_stored() {
    assert_eq!(
        burst(Some(4)).await,
        4,
        "at most 4 creations at once, and the bound is used"
    );
    assert_eq!(burst(Some(1)).await, 1, "one creation at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_burst_of_starts_is_written_at_once() {
    assert_eq!(
        burst(None).await,
        24,
        "24 starts are within the default bound of 1,024: all go to the store together"
    );
}
