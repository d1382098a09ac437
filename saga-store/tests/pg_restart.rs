//! The Postgres store survives a database restart: workers back off and reconnect, and nothing
//! is lost or run twice.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::{
    Config, IdempotencyKey, Orchestrator, Saga, SagaDefinition, SagaStatus, Step, StepContext,
    StepError, Store,
};
use saga_store::testing::TestCluster;
use saga_store::{PgOptions, PgStore};
use sqlx::Row;

/// Five slow steps; a downstream ledger counts calls per idempotency key.
struct Slow {
    ledger: Arc<Mutex<HashMap<String, u32>>>,
}

async fn work(saga: Arc<Slow>, ctx: StepContext<u32>) -> Result<(), StepError> {
    *saga
        .ledger
        .lock()
        .unwrap()
        .entry(ctx.key().as_str().to_owned())
        .or_default() += 1;
    tokio::time::sleep(Duration::from_millis(15)).await;
    Ok(())
}

impl Saga for Slow {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        (1..=5).fold(SagaDefinition::new("slow", 1), |definition, n| {
            definition.step(Step::new(&format!("step_{n}"), work).irreversible())
        })
    }
}

async fn completed(store: &PgStore) -> Option<u64> {
    let counts = store.count_by_status().await.ok()?;
    Some(
        counts
            .iter()
            .filter(|(status, _)| *status == SagaStatus::Completed)
            .map(|(_, n)| *n)
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_survive_an_immediate_database_restart() {
    let cluster = TestCluster::start().await.unwrap();
    let store = Arc::new(
        PgStore::connect_with(
            cluster.url(),
            PgOptions {
                acquire_timeout: Duration::from_secs(3),
                ..PgOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let ledger = Arc::new(Mutex::new(HashMap::new()));
    let saga = Slow {
        ledger: Arc::clone(&ledger),
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        Config::default()
            .concurrency(8)
            .lease_ttl(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(50)),
    );
    orchestrator.register(saga).unwrap();
    const SAGAS: u64 = 120;
    for n in 0..SAGAS as u32 {
        orchestrator
            .start_with_key::<Slow>(IdempotencyKey::new(format!("slow-{n}")), &n)
            .await
            .unwrap();
    }
    orchestrator.run();

    // Restart the server (immediate stop) twice while sagas are mid-flight.
    for threshold in [20, 60] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while completed(&store).await.unwrap_or(0) < threshold {
            assert!(tokio::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cluster.restart_immediately().await.unwrap();
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while completed(&store).await != Some(SAGAS) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sagas did not all complete after the restarts: {:?}",
            store.count_by_status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    orchestrator.shutdown().await;

    // Nothing lost: every step of every saga completed.
    let pool = store.pool();
    let scalar = |sql: &'static str| async move {
        sqlx::query(sql)
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .unwrap()
    };
    assert_eq!(
        scalar("SELECT COUNT(*) FROM saga_steps WHERE status = 'completed'").await,
        i64::try_from(SAGAS * 5).unwrap()
    );
    // Nothing repeated: no step started again after it completed.
    assert_eq!(
        scalar(
            "SELECT COUNT(*) FROM saga_events started JOIN saga_events done
               ON done.saga_id = started.saga_id AND done.step = started.step
              AND done.phase = started.phase
            WHERE done.kind = 'step_completed' AND started.kind = 'step_started'
              AND started.seq > done.seq"
        )
        .await,
        0
    );
    // Every step was called with exactly one key per step; a call whose completion the
    // restart cut off was repeated with that same key (the downstream dedups it).
    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.len(), SAGAS as usize * 5, "one key per step");
    let repeated = ledger.values().filter(|calls| **calls > 1).count();
    println!(
        "restart survived: {} step calls repeated with the same key",
        repeated
    );
}
