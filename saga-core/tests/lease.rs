//! Leases under failing heartbeats: a failed renewal is retried at once, well within what is
//! left of the lease.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Config, Error, EventKind, Orchestrator, Result, Saga, SagaDefinition, SagaStatus, Step,
    StepContext, StepError, Store, WorkerId,
};

mod support;

use support::{Around, Hooked};

/// The first `fail_first` heartbeats fail, as if the store were unreachable.
struct FlakyHeartbeats {
    fail_first: u32,
    heartbeats: AtomicU32,
}

impl Around for FlakyHeartbeats {
    fn before_heartbeat(&self) -> Result<()> {
        let n = self.heartbeats.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(Error::StoreUnavailable("injected: heartbeat lost".into()));
        }
        Ok(())
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

fn orchestrator(store: &Arc<Hooked<FlakyHeartbeats>>, name: &str, ttl: Duration) -> Orchestrator {
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
    let store = Arc::new(Hooked::new(FlakyHeartbeats {
        fail_first: 3,
        heartbeats: AtomicU32::new(0),
    }));
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
    assert!(store.around.heartbeats.load(Ordering::SeqCst) >= 3);
    holder.shutdown().await;
    rival.shutdown().await;
}
