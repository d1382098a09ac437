//! SQLite specifics with real files: transactional steps, whose transaction holds SQLite's only
//! write lock while the step runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Config, Orchestrator, ResultExt, Saga, SagaDefinition, SagaStatus, Step, StepContext, StepError,
};
use saga_store::{sqlite_transaction, SqliteStore};

/// Records the order in the step's transaction; fails after writing when the order is odd.
struct Ledger;

async fn record(_: Arc<Ledger>, ctx: StepContext<i64>) -> Result<i64, StepError> {
    {
        let mut tx = sqlite_transaction(&ctx).await?;
        sqlx::query("INSERT INTO recorded (order_id) VALUES (?)")
            .bind(*ctx.input())
            .execute(&mut *tx)
            .await
            .transient()?;
    }
    if ctx.input() % 2 == 1 {
        return Err(StepError::permanent("odd orders are refused after writing"));
    }
    Ok(*ctx.input())
}

async fn after(_: Arc<Ledger>, _: StepContext<i64>) -> Result<(), StepError> {
    Ok(())
}

impl Saga for Ledger {
    type Input = i64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("ledger", 1)
            .step(Step::new("record", record).transactional().irreversible())
            .step(Step::new("after", after).irreversible())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_steps_commit_with_their_completion_or_roll_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
    sqlx::query("CREATE TABLE recorded (order_id INTEGER PRIMARY KEY)")
        .execute(store.pool())
        .await
        .unwrap();
    let orchestrator = Orchestrator::new(
        store.clone(),
        Config::default()
            .lease_ttl(Duration::from_secs(5))
            .poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Ledger).unwrap();
    orchestrator.run();
    let mut ids = Vec::new();
    for order in 0..6 {
        ids.push(orchestrator.start::<Ledger>(&order).await.unwrap());
    }
    for (order, id) in ids.iter().enumerate() {
        // (Generous: a step waiting for the write lock it needs would take 30 s per try.)
        let record = orchestrator
            .wait(*id, Duration::from_secs(20))
            .await
            .unwrap();
        let expected = if order % 2 == 0 {
            SagaStatus::Completed
        } else {
            SagaStatus::Compensated
        };
        assert_eq!(record.status, expected, "order {order}");
    }
    let recorded: Vec<i64> = sqlx::query_scalar("SELECT order_id FROM recorded ORDER BY order_id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        recorded,
        vec![0, 2, 4],
        "the refused steps' writes were rolled back"
    );
    orchestrator.shutdown().await;
}
