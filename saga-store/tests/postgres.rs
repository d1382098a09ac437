//! Postgres-only behaviour: transactional steps, the schema option, concurrent start-up.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::Refusal;
use saga_core::{
    Config, Error, MemoryStore, Orchestrator, ResultExt, Saga, SagaDefinition, SagaStatus, Step,
    StepContext, StepError, Store,
};
use saga_store::testing::TestPg;
use saga_store::{pg_transaction, PgOptions, PgStore};
use sqlx::{Connection, Row};

/// A saga of `saga_type` with input `n`, created idle (no lease, nothing begun).
fn new_saga(saga_type: &str, n: u32) -> saga_core::NewSaga {
    saga_core::NewSaga {
        id: saga_core::SagaId::new(),
        saga_type: saga_core::SagaType::new(saga_type),
        version: 1,
        fingerprint: "fp".to_owned(),
        input: serde_json::json!(n),
        input_hash: format!("h{n}"),
        idempotency_key: None,
        trace_context: None,
        lease: None,
        changes: Vec::new(),
        deadline: None,
        dedup_window: None,
        parent: None,
    }
}

/// Options of the grouping tests' stores: `writers` writers, a small pool.
fn grouping_options(writers: usize) -> PgOptions {
    PgOptions {
        writers,
        max_connections: 4,
        ..PgOptions::default()
    }
}

/// The name of the one step the grouping tests begin.
const FIRST: &str = "first";

/// A saga of `saga_type` with input `n`, created leased to `worker` until `until` with its
/// first step ([`FIRST`]) running.
fn running_saga(
    saga_type: &str,
    n: u32,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> saga_core::NewSaga {
    use saga_core::{Attempt, Change, IdempotencyKey, Phase, StepIndex, StepName};
    let mut saga = new_saga(saga_type, n);
    let name = StepName::new(FIRST);
    saga.lease = Some((worker.clone(), until));
    saga.changes = vec![Change::BeginStep {
        index: StepIndex(0),
        key: IdempotencyKey::for_step(saga.id, &name, Phase::Action),
        name,
        phase: Phase::Action,
        attempt: Attempt(1),
    }];
    saga
}

/// The lease a saga made by [`running_saga`] was created with.
fn first_lease(
    saga: saga_core::SagaId,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> saga_core::Lease {
    saga_core::Lease {
        saga,
        owner: worker.clone(),
        token: saga_core::FencingToken(1),
        expires_at: until,
        taken_over_from: None,
    }
}

/// A connection holding the rows of `sagas` locked, in a transaction left open (`COMMIT` on it
/// lets writes of those sagas go on).
async fn lock_sagas(url: &str, sagas: &[saga_core::SagaId]) -> sqlx::PgConnection {
    let mut lock = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("SELECT 1 FROM saga.saga_instances WHERE id = ANY($1) FOR UPDATE")
        .bind(sagas.iter().map(|saga| saga.as_uuid()).collect::<Vec<_>>())
        .execute(&mut lock)
        .await
        .unwrap();
    lock
}

/// `count` sagas of `saga_type` created leased to `worker` until `until`, their first step running.
async fn running_sagas(
    store: &PgStore,
    saga_type: &str,
    count: u32,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> Vec<saga_core::SagaId> {
    let mut sagas = Vec::new();
    for n in 0..count {
        let saga = running_saga(saga_type, n, worker, until);
        sagas.push(saga.id);
        store.create(saga).await.unwrap();
    }
    sagas
}

/// Completes the running first step of saga `id` (see [`running_sagas`]), in a task of its own.
fn complete_first(
    store: &Arc<PgStore>,
    id: saga_core::SagaId,
    worker: &saga_core::WorkerId,
    until: saga_core::Timestamp,
) -> tokio::task::JoinHandle<saga_core::Result<()>> {
    use saga_core::{Attempt, Change, Phase, StepIndex, StepName};
    let writer = Arc::clone(store);
    let lease = first_lease(id, worker, until);
    let change = Change::CompleteStep {
        index: StepIndex(0),
        name: StepName::new(FIRST),
        phase: Phase::Action,
        attempt: Attempt(1),
        output: None,
    };
    tokio::spawn(async move { writer.apply(&lease, &[change]).await })
}

/// What the `book` step does after writing its booking in the step's transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Succeed,
    FailPermanently,
    HangOnFirstCall,
}

struct Booking {
    then: Then,
    calls: AtomicU32,
}

async fn book(saga: Arc<Booking>, ctx: StepContext<i64>) -> Result<i64, StepError> {
    let call = saga.calls.fetch_add(1, Ordering::SeqCst) + 1;
    {
        let mut tx = pg_transaction(&ctx).await?;
        sqlx::query("INSERT INTO public.bookings (order_id, saga_id) VALUES ($1, $2)")
            .bind(*ctx.input())
            .bind(ctx.saga_id().to_string())
            .execute(&mut *tx)
            .await
            .transient()?;
    }
    match saga.then {
        Then::Succeed => Ok(*ctx.input()),
        Then::FailPermanently => Err(StepError::permanent("payment provider said no")),
        Then::HangOnFirstCall if call == 1 => {
            std::future::pending::<()>().await;
            Ok(0)
        }
        Then::HangOnFirstCall => Ok(*ctx.input()),
    }
}

async fn confirm(_: Arc<Booking>, _: StepContext<i64>) -> Result<(), StepError> {
    Ok(())
}

impl Saga for Booking {
    type Input = i64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("booking", 1)
            .step(Step::new("book", book).transactional().irreversible())
            .step(Step::new("confirm", confirm).irreversible())
    }
}

async fn store() -> (Arc<PgStore>, String) {
    let url = TestPg::fresh_database().await.unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE public.bookings (order_id bigint PRIMARY KEY, saga_id text)")
        .execute(store.pool())
        .await
        .unwrap();
    (Arc::new(store), url)
}

fn orchestrator(store: Arc<dyn Store>, lease: Duration) -> Orchestrator {
    Orchestrator::new(
        store,
        Config::default()
            .lease_ttl(lease)
            .poll_interval(Duration::from_millis(20)),
    )
}

async fn bookings(store: &PgStore) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM public.bookings")
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_step_writes_commit_with_its_completion() {
    let (store, _) = store().await;
    let orchestrator = orchestrator(store.clone(), Duration::from_secs(5));
    orchestrator
        .register(Booking {
            then: Then::Succeed,
            calls: AtomicU32::new(0),
        })
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Booking>(&7).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(bookings(&store).await, 1);
    orchestrator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_step_writes_roll_back_when_the_step_fails() {
    let (store, _) = store().await;
    let orchestrator = orchestrator(store.clone(), Duration::from_secs(5));
    orchestrator
        .register(Booking {
            then: Then::FailPermanently,
            calls: AtomicU32::new(0),
        })
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Booking>(&8).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(
        bookings(&store).await,
        0,
        "the failed step's write was rolled back"
    );
    orchestrator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_step_interrupted_by_a_crash_commits_exactly_once() {
    let (store, url) = store().await;
    let first = orchestrator(store.clone(), Duration::from_millis(600));
    first
        .register(Booking {
            then: Then::HangOnFirstCall,
            calls: AtomicU32::new(0),
        })
        .unwrap();
    first.run();
    let id = first.start::<Booking>(&9).await.unwrap();
    // The first attempt wrote its booking in the step's transaction, then hangs: crash now,
    // once the server shows that transaction open with the booking written.
    let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
    let booked_uncommitted = "SELECT COUNT(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'
           AND query LIKE 'INSERT INTO public.bookings%'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while scalar(&mut watch, booked_uncommitted).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first attempt never wrote its booking"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill();
    assert_eq!(
        bookings(&store).await,
        0,
        "nothing committed before completion"
    );

    let second = orchestrator(store.clone(), Duration::from_millis(600));
    second
        .register(Booking {
            then: Then::HangOnFirstCall,
            calls: AtomicU32::new(1), // this process's first call is the saga's second attempt
        })
        .unwrap();
    second.run();
    let record = second.wait(id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(bookings(&store).await, 1, "the booking exists exactly once");
    let book = store
        .load(id)
        .await
        .unwrap()
        .unwrap()
        .steps
        .into_iter()
        .find(|step| step.name.as_str() == "book")
        .unwrap();
    assert_eq!(book.attempt.0, 2, "the interrupted attempt was retried");
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_step_on_a_store_without_transactions_fails_clearly() {
    let orchestrator = orchestrator(Arc::new(MemoryStore::new()), Duration::from_secs(5));
    orchestrator
        .register(Booking {
            then: Then::Succeed,
            calls: AtomicU32::new(0),
        })
        .unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Booking>(&10).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    let history = orchestrator.history(id).await.unwrap().render();
    assert!(
        history.contains("lends no transactions; run it on Postgres"),
        "{history}"
    );
    orchestrator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_schema_names_are_a_configuration_error() {
    let url = TestPg::fresh_database().await.unwrap();
    for schema in [
        "saga\"; DROP TABLE x; --",
        "Saga",
        "1saga",
        "",
        "sa ga",
        &"s".repeat(64),
    ] {
        let options = PgOptions {
            schema: schema.to_owned(),
            ..PgOptions::default()
        };
        match PgStore::connect_with(&url, options).await {
            Err(Error::Configuration(message)) => {
                assert!(message.contains("is not allowed"), "{message}")
            }
            other => panic!("schema {schema:?} was accepted: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_in_different_schemas_of_one_database_are_isolated() {
    let url = TestPg::fresh_database().await.unwrap();
    let tenant = |schema: &str| PgOptions {
        schema: schema.to_owned(),
        ..PgOptions::default()
    };
    let a = Arc::new(
        PgStore::connect_with(&url, tenant("tenant_a"))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        PgStore::connect_with(&url, tenant("tenant_b"))
            .await
            .unwrap(),
    );
    let orchestrator = orchestrator(a.clone(), Duration::from_secs(5));
    orchestrator
        .register(Booking {
            then: Then::Succeed,
            calls: AtomicU32::new(0),
        })
        .unwrap();
    orchestrator.start::<Booking>(&11).await.unwrap();
    assert_eq!(a.list(&Default::default()).await.unwrap().len(), 1);
    assert!(b.list(&Default::default()).await.unwrap().is_empty());
    let tables: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'tenant_a'",
    )
    .fetch_one(a.pool())
    .await
    .and_then(|row| row.try_get(0))
    .unwrap();
    assert!(tables >= 4, "the saga tables live in the configured schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_starting_at_once_migrate_safely() {
    let url = TestPg::fresh_database().await.unwrap();
    let connects = (0..6).map(|_| {
        let url = url.clone();
        async move { PgStore::connect(&url).await }
    });
    let stores = futures_join_all(connects).await;
    for store in &stores {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let store = stores.into_iter().next().unwrap().unwrap();
    let migrations: i64 = sqlx::query("SELECT COUNT(*) FROM saga._sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .and_then(|row| row.try_get(0))
        .unwrap();
    assert_eq!(
        usize::try_from(migrations).unwrap(),
        saga_store::postgres_migrator().iter().count(),
        "each migration applied once"
    );
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

/// A store call dropped mid-flight (a drive cancelled because its lease was lost, a caller's
/// timeout) must not leave its pooled connection inside a transaction. With sqlx 0.8, a future
/// dropped while `Pool::begin`'s BEGIN was in flight did exactly that (sqlx#4393): nothing ended
/// the transaction, the pool handed the connection to the next caller, and whatever it wrote
/// (a step's own downstream statement, a claim) ran inside that transaction and vanished when
/// it was later rolled back. The crash suite found it as a step recorded `completed` whose
/// effect was missing from the ledger. Here a proxy holds back the server's answer to BEGIN, so
/// the call is dropped exactly in that window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_call_dropped_during_begin_leaves_no_connection_inside_a_transaction() {
    let (_, url) = store().await;
    let proxy = HoldingProxy::start(&url);
    let store = Arc::new(
        PgStore::connect_with(
            &proxy.url,
            PgOptions {
                max_connections: 2,
                ..PgOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let mut observer = sqlx::PgConnection::connect(&url).await.unwrap();
    let begun = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
        AND pid <> pg_backend_pid() AND state = 'idle in transaction' AND query = 'BEGIN'";
    let open = "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
        AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'";

    proxy.hold_next_begin();
    let call = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.load(saga_core::SagaId::new()).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while scalar(&mut observer, begun).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call never ran BEGIN"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The server ran BEGIN and its answer is held back: drop the call now, then let it through.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    proxy.release();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while scalar(&mut observer, open).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a store call dropped during BEGIN left a pooled connection inside a transaction"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Statements through the pool afterwards (a step's own writes) are committed, not swallowed.
    for order in 0..8 {
        sqlx::query("INSERT INTO public.bookings (order_id, saga_id) VALUES ($1, 'probe')")
            .bind(order)
            .execute(store.pool())
            .await
            .unwrap();
    }
    assert_eq!(
        scalar(&mut observer, "SELECT COUNT(*) FROM public.bookings").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_store_returns_while_it_listens() {
    let url = TestPg::fresh_database().await.unwrap();
    let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
    let listening = "SELECT COUNT(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %'";
    for _ in 0..5 {
        let store = PgStore::connect(&url).await.unwrap();
        // Close only once the store's LISTEN has reached the server.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while scalar(&mut watch, listening).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store never started listening"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::timeout(Duration::from_secs(10), store.close())
            .await
            .expect("closing the store must not wait for its LISTEN connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_many_sagas_share_statements_and_each_keeps_its_own_fence() {
    concurrent_writes_share_statements(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_writers_concurrent_writes_share_statements_and_each_keeps_its_own_fence() {
    concurrent_writes_share_statements(3).await;
}

/// 60 sagas written at once through `writers` writers: each write is answered for its own
/// saga (written, fenced off, or refused), and the writes share statements.
async fn concurrent_writes_share_statements(writers: usize) {
    use saga_core::{
        Attempt, Change, IdempotencyKey, Phase, SagaId, StepIndex, StepName, StepStatus, WorkerId,
    };
    let url = TestPg::fresh_database().await.unwrap();
    let options = grouping_options(writers);
    let setup = PgStore::connect_with(&url, options.clone()).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..60 {
        let saga = new_saga("grouped", n);
        let id = saga.id;
        setup.create(saga).await.unwrap();
        ids.push(id);
    }
    let worker = WorkerId::new("grouping-worker");
    let leases = setup
        .claim(&worker, saga_core::now(), Duration::from_secs(30), 100)
        .await
        .unwrap();
    assert_eq!(leases.len(), 60);
    let name = StepName::new("only");
    let begin = |saga: SagaId| Change::BeginStep {
        index: StepIndex(0),
        name: name.clone(),
        phase: Phase::Action,
        attempt: Attempt(1),
        key: IdempotencyKey::for_step(saga, &name, Phase::Action),
    };
    setup.close().await;
    let store = Arc::new(PgStore::connect_with(&url, options.clone()).await.unwrap());
    // 60 writes: 50 well-formed and 5 with a stale token at once (measured), then 5 completing
    // a step that never began (refused for their content; a refused statement is written again
    // saga by saga, so they are kept out of the measured round).
    let write = |store: &Arc<PgStore>, (n, lease): (usize, &saga_core::Lease)| {
        let store = Arc::clone(store);
        let mut lease = lease.clone();
        let changes = if n % 12 == 5 {
            lease.token = saga_core::FencingToken(lease.token.0 - 1);
            vec![begin(lease.saga)]
        } else if n % 12 == 7 {
            vec![Change::CompleteStep {
                index: StepIndex(0),
                name: name.clone(),
                phase: Phase::Action,
                attempt: Attempt(1),
                output: None,
            }]
        } else {
            vec![begin(lease.saga)]
        };
        async move { (n, lease.saga, store.apply(&lease, &changes).await) }
    };
    let before = flushed_counts(&url).await;
    let measured = leases.iter().enumerate().filter(|(n, _)| n % 12 != 7);
    let mut outcomes = futures_join_all(measured.map(|each| write(&store, each))).await;
    store.close().await;
    let after = flushed_counts(&url).await;
    let store = Arc::new(PgStore::connect_with(&url, options).await.unwrap());
    let refused = leases.iter().enumerate().filter(|(n, _)| n % 12 == 7);
    outcomes.extend(futures_join_all(refused.map(|each| write(&store, each))).await);
    for (n, saga, outcome) in &outcomes {
        let stored = store.load(*saga).await.unwrap().unwrap();
        match n % 12 {
            5 => {
                assert!(matches!(outcome, Err(Error::LeaseLost(_))), "{outcome:?}");
                assert!(stored.steps.is_empty(), "a fenced-off write writes nothing");
            }
            7 => {
                match outcome {
                    Err(Error::Refused {
                        refusal: Refusal::StepNotBegun { step, phase },
                        ..
                    }) => assert_eq!((step, *phase), (&name, Phase::Action)),
                    other => panic!("completing a step never begun must be refused, got {other:?}"),
                }
                assert!(stored.steps.is_empty(), "a refused write writes nothing");
            }
            _ => {
                assert!(outcome.is_ok(), "{outcome:?}");
                assert_eq!(stored.steps.len(), 1);
                assert_eq!(stored.steps[0].status, StepStatus::InProgress);
                let history = store.history(*saga).await.unwrap();
                assert_eq!(history.len(), 2, "saga_started and step_started, once each");
            }
        }
    }
    // The 55 writes share statements: written one by one they would take 60 commits (55
    // writes, and one read for each lost fence); writes that arrive while the writers are
    // busy share their next statements. Connections opened for the burst (more with more
    // writers) commit their settings: at most two commits each, not counted.
    let sessions = after.sessions - before.sessions;
    let commits = after.commits - before.commits - 2 * sessions;
    assert!(
        commits < 50,
        "55 concurrent writes through {writers} writers took {commits} commits (besides those of {sessions} new connections); they should share statements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_share_statements_and_each_start_key_starts_one_saga() {
    use saga_core::{Created, IdempotencyKey, StepStatus, WorkerId};
    let url = TestPg::fresh_database().await.unwrap();
    let options = grouping_options(1);
    // Migrated by a store of its own, closed before measuring (a backend reports its commits
    // when it exits); then what connecting and closing a store costs by itself (schema check,
    // session settings), so that only the creations are counted.
    PgStore::connect_with(&url, options.clone())
        .await
        .unwrap()
        .close()
        .await;
    let idle = flushed_counts(&url).await;
    PgStore::connect_with(&url, options.clone())
        .await
        .unwrap()
        .close()
        .await;
    let connected = flushed_counts(&url).await;
    let overhead = connected.commits - idle.commits;
    let overhead_sessions = connected.sessions - idle.sessions;
    let store = Arc::new(PgStore::connect_with(&url, options.clone()).await.unwrap());
    let worker = WorkerId::new("starter");
    // 40 creations at once: 15 idle, 15 leased with their first step begun, 5 with one start
    // key and one input, 5 with another start key and 5 different inputs.
    let mut sagas = Vec::new();
    for n in 0..40u32 {
        let mut saga = new_saga("created-together", n);
        match n {
            15..=29 => {
                let until = saga_core::after(saga_core::now(), Duration::from_secs(30));
                saga = running_saga("created-together", n, &worker, until);
            }
            30..=34 => {
                saga.idempotency_key = Some(IdempotencyKey::new("same-input"));
                saga.input = serde_json::json!("same");
                saga.input_hash = "same".to_owned();
            }
            35..=39 => {
                saga.idempotency_key = Some(IdempotencyKey::new("other-inputs"));
            }
            _ => {}
        }
        sagas.push(saga);
    }
    let before = flushed_counts(&url).await;
    let outcomes = futures_join_all(sagas.iter().cloned().map(|saga| {
        let store = Arc::clone(&store);
        async move { store.create(saga).await }
    }))
    .await;
    store.close().await;
    let after = flushed_counts(&url).await;
    let store = PgStore::connect_with(&url, options.clone()).await.unwrap();

    for (n, (saga, outcome)) in sagas.iter().zip(&outcomes).enumerate().take(30) {
        assert_eq!(
            outcome.as_ref().ok(),
            Some(&Created::New(saga.id)),
            "creation {n}"
        );
        let stored = store.load(saga.id).await.unwrap().unwrap();
        assert_eq!(stored.record.status, SagaStatus::Running);
        let history = store.history(saga.id).await.unwrap();
        if n < 15 {
            assert!(
                stored.record.lease_owner.is_none(),
                "an idle creation is not leased"
            );
            assert!(stored.steps.is_empty());
            assert_eq!(history.len(), 1, "saga_started");
        } else {
            assert_eq!(stored.record.lease_owner.as_ref(), Some(&worker));
            assert_eq!(stored.record.fencing_token.0, 1);
            assert_eq!(stored.steps.len(), 1);
            assert_eq!(stored.steps[0].status, StepStatus::InProgress);
            assert_eq!(history.len(), 2, "saga_started, then step_started");
        }
    }
    // One start key, one input: one saga, and every start of it is told which.
    let same = &outcomes[30..35];
    let new = the_one_created(same);
    for outcome in same {
        assert_eq!(
            outcome.as_ref().ok().map(|c| c.id()),
            Some(new),
            "{outcome:?}"
        );
    }
    // One start key, five inputs: one saga; the other four are conflicts naming it.
    let other = &outcomes[35..40];
    let winner = the_one_created(other);
    for outcome in other.iter().filter(|o| !matches!(o, Ok(Created::New(_)))) {
        match outcome {
            Err(Error::Conflict { existing, .. }) => assert_eq!(*existing, winner),
            other => panic!("a start key reused with another input must conflict: {other:?}"),
        }
    }
    let rows: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM saga_instances WHERE saga_type = 'created-together'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(rows, 32, "30 sagas without a key and one per start key");
    // Created one by one, they would take 48 commits (40 creations, and a read of the saga a
    // start key already started for each of the 8 that lost), plus the settings of the few
    // more connections a burst opens; creations that arrive while the writer is busy share its
    // next statement.
    // The connections a burst opens beyond those of connecting commit their settings: at most
    // two commits each, not counted (as in the grouped writes' test above).
    let extra_sessions = (after.sessions - before.sessions - overhead_sessions).max(0);
    let commits = after.commits - before.commits - overhead - 2 * extra_sessions;
    assert!(
        commits < 36,
        "40 concurrent creations took {commits} commits (besides {overhead} for connecting); they should share statements"
    );

    // A creation refused for its content (a saga id that exists) fails alone: the others
    // written with it are created.
    let store = Arc::new(store);
    let first = new_saga("created-together", 100);
    let mut twin = new_saga("created-together", 101);
    twin.id = first.id;
    let mut batch = vec![first, twin];
    batch.extend((102..112).map(|n| new_saga("created-together", n)));
    let outcomes = futures_join_all(batch.iter().cloned().map(|saga| {
        let store = Arc::clone(&store);
        async move { store.create(saga).await }
    }))
    .await;
    assert_eq!(
        outcomes[..2].iter().filter(|o| o.is_ok()).count(),
        1,
        "one of two sagas with the same id is created: {:?}",
        &outcomes[..2]
    );
    for (saga, outcome) in batch.iter().zip(&outcomes).skip(2) {
        assert_eq!(outcome.as_ref().ok(), Some(&Created::New(saga.id)));
    }
    assert!(
        outcomes[..2]
            .iter()
            .any(|o| matches!(o, Err(e) if e.to_string().contains(&batch[0].id.to_string()))),
        "the refused creation names its saga id: {:?}",
        &outcomes[..2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_grouped_with_failing_writes_and_a_repeated_creation_are_each_answered_once() {
    use saga_core::{
        Attempt, Change, Created, EventKind, IdempotencyKey, Phase, StepIndex, StepName,
        StepStatus, WorkerId,
    };
    let url = TestPg::fresh_database().await.unwrap();
    // The locked rows below hold their writes for as long as the test needs.
    let options = PgOptions {
        write_lock_timeout: Duration::from_secs(600),
        ..grouping_options(1)
    };
    let store = Arc::new(PgStore::connect_with(&url, options).await.unwrap());
    let worker = WorkerId::new("mixed");
    let name = StepName::new(FIRST);
    let until = saga_core::after(saga_core::now(), Duration::from_secs(30));
    let leased = |n: u32| running_saga("mixed", n, &worker, until);
    // 22 sagas whose first step is running.
    let mut running = Vec::new();
    for n in 0..22 {
        let saga = leased(n);
        store.create(saga.clone()).await.unwrap();
        running.push(saga.id);
    }
    // At once: those 22 steps fail for good, 20 new sagas are created, and one creation is
    // sent twice.
    // Created idle (no lease, nothing begun), as a saga started while no worker runs.
    let twice = {
        let mut saga = new_saga("mixed", 100);
        saga.idempotency_key = Some(IdempotencyKey::new("sent-twice"));
        saga
    };
    let fail = |id: saga_core::SagaId| {
        let writer = Arc::clone(&store);
        let lease = first_lease(id, &worker, until);
        let change = Change::FailStep {
            index: StepIndex(0),
            name: name.clone(),
            phase: Phase::Action,
            attempt: Attempt(1),
            error: StepError::permanent("card declined"),
            retry_at: None,
        };
        tokio::spawn(async move { writer.apply(&lease, &[change]).await.map(|()| None) })
    };
    // So that everything else goes out in one statement: the first two sagas' rows are locked
    // here, so the first write (written by its caller) and the second (taken alone by the
    // writer) wait, and the rest queue behind them.
    let mut lock = lock_sagas(&url, &running[..2]).await;
    let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut jobs = vec![fail(running[0])];
    wait_for_lock_waiters(&mut watch, 1).await;
    jobs.push(fail(running[1]));
    wait_for_lock_waiters(&mut watch, 2).await;
    for (n, id) in running.iter().enumerate().skip(2) {
        jobs.push(fail(*id));
        let starter = Arc::clone(&store);
        let saga = leased(20 + u32::try_from(n).unwrap());
        jobs.push(tokio::spawn(
            async move { starter.create(saga).await.map(Some) },
        ));
        if n == 10 {
            for _ in 0..2 {
                let starter = Arc::clone(&store);
                let saga = twice.clone();
                jobs.push(tokio::spawn(
                    async move { starter.create(saga).await.map(Some) },
                ));
            }
        }
    }
    // Time for the queued jobs to reach the writer (whatever arrives later only goes out in a
    // later statement, which the count below would show).
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    let mut created = Vec::new();
    for job in jobs {
        match job.await.unwrap() {
            Ok(None) => {}
            Ok(Some(outcome)) => created.push(outcome),
            Err(err) => panic!("every write and creation succeeds: {err}"),
        }
    }
    // Rows written by one statement carry its transaction id (xmin): 42 writes and creations
    // written one by one would show 42 transactions; grouped, a few.
    let transactions = scalar(
        &mut watch,
        &format!(
            "SELECT COUNT(DISTINCT xmin::text) FROM (
                 SELECT xmin FROM saga.saga_steps
                  WHERE saga_id IN ({running}) AND saga_id NOT IN ({held})
                 UNION ALL
                 SELECT xmin FROM saga.saga_instances WHERE saga_type = 'mixed' AND id NOT IN ({running})
             ) written",
            running = running
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(","),
            held = running[..2]
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(","),
        ),
    )
    .await;
    assert!(
        transactions <= 6,
        "40 writes and creations queued behind a held statement were written in {transactions} transactions; they should share statements"
    );
    for id in &running {
        let stored = store.load(*id).await.unwrap().unwrap();
        assert_eq!(stored.steps[0].status, StepStatus::Failed);
        let kinds: Vec<EventKind> = store
            .history(*id)
            .await
            .unwrap()
            .iter()
            .map(|event| event.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                EventKind::SagaStarted,
                EventKind::StepStarted,
                EventKind::StepFailed
            ]
        );
    }
    assert_eq!(created.len(), 22);
    let repeated: Vec<&Created> = created.iter().filter(|c| c.id() == twice.id).collect();
    assert_eq!(repeated.len(), 2);
    assert_eq!(
        repeated
            .iter()
            .filter(|c| matches!(c, Created::New(_)))
            .count(),
        1,
        "a creation sent twice is new once and found existing once: {repeated:?}"
    );
    assert_eq!(
        created
            .iter()
            .filter(|c| matches!(c, Created::New(_)))
            .count(),
        21
    );
    for outcome in created.iter().filter(|c| c.id() != twice.id) {
        let history = store.history(outcome.id()).await.unwrap();
        assert_eq!(history.len(), 2, "saga_started and step_started, once each");
        let stored = store.load(outcome.id()).await.unwrap().unwrap();
        assert_eq!(stored.steps[0].status, StepStatus::InProgress);
    }
    let history = store.history(twice.id).await.unwrap();
    assert_eq!(history.len(), 1, "one saga_started: {history:?}");
}

/// Waits until `count` statements of this database wait for a row lock.
async fn wait_for_lock_waiters(watch: &mut sqlx::PgConnection, count: i64) {
    let waiting = "SELECT COUNT(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while scalar(watch, waiting).await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} write(s) never waited for the locked rows"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The saga that exactly one of `outcomes` (starts with one start key) created.
fn the_one_created(outcomes: &[saga_core::Result<saga_core::Created>]) -> saga_core::SagaId {
    let new: Vec<saga_core::SagaId> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(saga_core::Created::New(id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(
        new.len(),
        1,
        "exactly one start creates the saga: {outcomes:?}"
    );
    new[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_held_in_flight_does_not_hold_back_the_writes_behind_it() {
    use saga_core::{StepStatus, WorkerId};
    let url = TestPg::fresh_database().await.unwrap();
    // A statement held in flight for as long as the test needs (no lock timeout in reach).
    let options = PgOptions {
        write_lock_timeout: Duration::from_secs(600),
        ..grouping_options(2)
    };
    let store = Arc::new(PgStore::connect_with(&url, options).await.unwrap());
    let worker = WorkerId::new("overlap");
    let until = saga_core::after(saga_core::now(), Duration::from_secs(30));
    // 31 sagas whose first step is running.
    let sagas = running_sagas(&store, "overlap", 31, &worker, until).await;
    let complete = |id: saga_core::SagaId| complete_first(&store, id, &worker, until);
    // The first saga's row is locked here, so its write (made by its caller: nothing else is
    // in flight) stays in flight until the lock goes; it is seen waiting for the lock before
    // the others start.
    let mut lock = lock_sagas(&url, &sagas[..1]).await;
    let held = complete(sagas[0]);
    let mut watch = sqlx::PgConnection::connect(&url).await.unwrap();
    let waiting_for_the_lock = "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'";
    for _ in 0..1500 {
        if scalar(&mut watch, waiting_for_the_lock).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(scalar(&mut watch, waiting_for_the_lock).await, 1);
    // Five writes (fewer than the 16 that let a statement start beside another at once): they
    // wait for the held statement only briefly, then go out beside it.
    // (The time limits below only keep a regression from hanging the suite.)
    let few: Vec<_> = sagas[1..6].iter().map(|id| complete(*id)).collect();
    for job in few {
        tokio::time::timeout(Duration::from_secs(60), job)
            .await
            .expect("a few writes must not wait for a held statement to end")
            .unwrap()
            .unwrap();
    }
    // 25 more at once, while the first is still held.
    let many: Vec<_> = sagas[6..].iter().map(|id| complete(*id)).collect();
    for job in many {
        tokio::time::timeout(Duration::from_secs(60), job)
            .await
            .expect("many writes must not wait for a held statement to end")
            .unwrap()
            .unwrap();
    }
    assert!(
        !held.is_finished(),
        "the locked saga's write is still in flight"
    );
    assert_eq!(
        scalar(&mut watch, waiting_for_the_lock).await,
        1,
        "only the locked saga's write waits"
    );
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    held.await.unwrap().unwrap();
    for id in &sagas {
        let stored = store.load(*id).await.unwrap().unwrap();
        assert_eq!(stored.steps[0].status, StepStatus::Completed);
    }
}

/// The database's transactions committed and sessions opened so far.
struct Counts {
    commits: i64,
    sessions: i64,
}

/// The database's `xact_commit` and sessions, once the backends of closed connections have
/// reported theirs (a backend reports its statistics when it exits, or at most once a second).
async fn flushed_counts(url: &str) -> Counts {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let (commits, sessions): (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    Counts { commits, sessions }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_write_grouped_with_a_current_write_of_the_same_saga_writes_nothing() {
    use saga_core::{
        Attempt, Change, IdempotencyKey, Phase, SagaId, StepIndex, StepName, WorkerId,
    };
    let url = TestPg::fresh_database().await.unwrap();
    let store = Arc::new(
        PgStore::connect_with(&url, grouping_options(1))
            .await
            .unwrap(),
    );
    let (other_saga, target) = (new_saga("grouped", 1), new_saga("grouped", 2));
    let (other, saga) = (other_saga.id, target.id);
    store.create(other_saga).await.unwrap();
    store.create(target).await.unwrap();
    let worker = WorkerId::new("w");
    let now = saga_core::now();
    let leases = store
        .claim(&worker, now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    let stale = leases.iter().find(|l| l.saga == saga).unwrap().clone();
    // The lease lapses and the saga is claimed again (a newer token): the old holder's write
    // may still be queued when the new holder writes.
    let later = saga_core::after(now, Duration::from_secs(31));
    let again = store
        .claim(&worker, later, Duration::from_secs(30), 10)
        .await
        .unwrap();
    let current = again.iter().find(|l| l.saga == saga).unwrap().clone();
    let other_lease = again.iter().find(|l| l.saga == other).unwrap().clone();
    assert!(current.token.0 > stale.token.0);
    let begin = |saga: SagaId, index: u32, name: &str| {
        let name = StepName::new(name);
        Change::BeginStep {
            index: StepIndex(index),
            key: IdempotencyKey::for_step(saga, &name, Phase::Action),
            name,
            phase: Phase::Action,
            attempt: Attempt(1),
        }
    };
    // The first write goes out alone; the two behind it queue and share the next statement.
    let (first, late, fresh) = (
        [begin(other, 0, "first")],
        [begin(saga, 1, "late")],
        [begin(saga, 0, "fresh")],
    );
    let (first, stale_outcome, current_outcome) = tokio::join!(
        store.apply(&other_lease, &first),
        store.apply(&stale, &late),
        store.apply(&current, &fresh),
    );
    first.unwrap();
    current_outcome.unwrap();
    assert!(
        matches!(stale_outcome, Err(Error::LeaseLost(_))),
        "the stale write must be refused, got {stale_outcome:?}"
    );
    let stored = store.load(saga).await.unwrap().unwrap();
    let names: Vec<&str> = stored.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["fresh"], "nothing of the stale write may be stored");
    let history = store.history(saga).await.unwrap();
    assert!(
        history
            .iter()
            .all(|event| event.step.as_ref().map(StepName::as_str) != Some("late")),
        "nor in the history: {history:?}"
    );
}

async fn scalar(conn: &mut sqlx::PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

/// A TCP proxy in front of the test server that can hold back the server's answers on the
/// connection that sends the next `BEGIN`, from that BEGIN on, until released.
struct HoldingProxy {
    url: String,
    armed: Arc<std::sync::atomic::AtomicBool>,
    /// Id of the connection whose answers are held (0: none).
    held: Arc<std::sync::atomic::AtomicU64>,
}

impl HoldingProxy {
    fn start(url: &str) -> HoldingProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, AtomicU64};

        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let (accept_armed, accept_held) = (Arc::clone(&armed), Arc::clone(&held));
        std::thread::spawn(move || {
            for (id, client) in (1u64..).zip(listener.incoming()) {
                let (Ok(client), Ok(server)) = (client, std::net::TcpStream::connect(&upstream))
                else {
                    return;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, held) = (Arc::clone(&accept_armed), Arc::clone(&accept_held));
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 8192];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer) {
                        let chunk = &buffer[..n];
                        if chunk.windows(6).any(|w| w == b"BEGIN\0")
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            held.store(id, Ordering::SeqCst);
                        }
                        if to_server.write_all(chunk).is_err() {
                            break;
                        }
                    }
                });
                let (mut from_server, mut to_client) = (server, client);
                let held = Arc::clone(&accept_held);
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 8192];
                    while let Ok(n @ 1..) = from_server.read(&mut buffer) {
                        while held.load(Ordering::SeqCst) == id {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        if to_client.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        HoldingProxy {
            url: format!(
                "postgres://{}@127.0.0.1:{port}/{}?sslmode=disable",
                options.get_username(),
                options.get_database().unwrap_or("postgres")
            ),
            armed,
            held,
        }
    }

    fn hold_next_begin(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.held.store(0, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_a_settled_saga_deletes_its_steps_and_history() {
    use saga_core::{
        Attempt, Change, IdempotencyKey, Phase, SagaStatus, StepIndex, StepName, WorkerId,
    };
    let url = TestPg::fresh_database().await.unwrap();
    let store = PgStore::connect(&url).await.unwrap();
    let mut saga = new_saga("pruned", 1);
    let id = saga.id;
    let worker = WorkerId::new("pruning-worker");
    let name = StepName::new("only");
    let begin = Change::BeginStep {
        index: StepIndex(0),
        name: name.clone(),
        phase: Phase::Action,
        attempt: Attempt(1),
        key: IdempotencyKey::for_step(id, &name, Phase::Action),
    };
    saga.lease = Some((
        worker.clone(),
        saga_core::after(saga_core::now(), Duration::from_secs(30)),
    ));
    saga.changes = vec![begin];
    store.create(saga).await.unwrap();
    let lease = saga_core::Lease {
        saga: id,
        owner: worker,
        token: saga_core::FencingToken(1),
        expires_at: saga_core::after(saga_core::now(), Duration::from_secs(30)),
        taken_over_from: None,
    };
    let settle = [
        Change::CompleteStep {
            index: StepIndex(0),
            name,
            phase: Phase::Action,
            attempt: Attempt(1),
            output: None,
        },
        Change::SetStatus {
            status: SagaStatus::Completed,
            reason: None,
        },
        Change::Release { next_run_at: None },
    ];
    store.apply(&lease, &settle).await.unwrap();
    let rows = |table: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT COUNT(*) FROM {table} WHERE saga_id = $1"
            ))
            .bind(id.as_uuid())
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(rows("saga_steps").await, 1);
    assert!(rows("saga_events").await > 0);
    let later = saga_core::after(saga_core::now(), Duration::from_secs(1));
    assert_eq!(store.prune(later, 10).await.unwrap(), 1);
    assert!(store.load(id).await.unwrap().is_none());
    assert_eq!(
        rows("saga_steps").await,
        0,
        "a pruned saga's steps are deleted with it"
    );
    assert_eq!(rows("saga_events").await, 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_row_locked_by_someone_else_holds_back_only_that_sagas_write() {
    use saga_core::{Error, StepStatus, WorkerId};
    let url = TestPg::fresh_database().await.unwrap();
    let options = PgOptions {
        write_lock_timeout: Duration::from_millis(300),
        ..grouping_options(1)
    };
    let store = Arc::new(PgStore::connect_with(&url, options).await.unwrap());
    let worker = WorkerId::new("locked");
    let until = saga_core::after(saga_core::now(), Duration::from_secs(60));
    let sagas = running_sagas(&store, "locked", 8, &worker, until).await;
    let complete = |id: saga_core::SagaId| complete_first(&store, id, &worker, until);
    // Someone (an operator's transaction, say) holds the first saga's row and does not let go.
    let mut lock = lock_sagas(&url, &sagas[..1]).await;
    let writes: Vec<_> = sagas.iter().map(|id| complete(*id)).collect();
    let mut outcomes = Vec::new();
    for write in writes {
        // (The limit only keeps a regression from hanging the suite.)
        let outcome = tokio::time::timeout(Duration::from_secs(60), write)
            .await
            .expect("no write waits for the lock for good")
            .unwrap();
        outcomes.push(outcome);
    }
    assert!(
        matches!(&outcomes[0], Err(Error::StoreUnavailable(_))),
        "the locked saga's write gives up, to be retried: {:?}",
        outcomes[0]
    );
    for (id, outcome) in sagas.iter().zip(&outcomes).skip(1) {
        assert!(outcome.is_ok(), "saga {id}: {outcome:?}");
        let stored = store.load(*id).await.unwrap().unwrap();
        assert_eq!(stored.steps[0].status, StepStatus::Completed);
    }
    let held = store.load(sagas[0]).await.unwrap().unwrap();
    assert_eq!(
        held.steps[0].status,
        StepStatus::InProgress,
        "nothing written"
    );
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
    complete(sagas[0]).await.unwrap().unwrap();
    let done = store.load(sagas[0]).await.unwrap().unwrap();
    assert_eq!(done.steps[0].status, StepStatus::Completed);
}

/// A transactional step that holds its transaction (and so a pooled connection) for a while.
struct SlowBooking {
    attempts: std::sync::Mutex<Vec<u32>>,
}

async fn book_slowly(saga: Arc<SlowBooking>, ctx: StepContext<i64>) -> Result<i64, StepError> {
    saga.attempts.lock().unwrap().push(ctx.attempt().0);
    let mut tx = pg_transaction(&ctx).await?;
    sqlx::query("INSERT INTO public.bookings (order_id, saga_id) VALUES ($1, $2)")
        .bind(*ctx.input())
        .bind(ctx.saga_id().to_string())
        .execute(&mut *tx)
        .await
        .transient()?;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    Ok(*ctx.input())
}

impl Saga for SlowBooking {
    type Input = i64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("slow_booking", 1)
            .step(
                Step::new("book", book_slowly)
                    .transactional()
                    .timeout(Duration::from_secs(30))
                    .irreversible(),
            )
            .step(Step::new("confirm", confirm_slowly).irreversible())
    }
}

async fn confirm_slowly(_: Arc<SlowBooking>, _: StepContext<i64>) -> Result<(), StepError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_transactional_steps_above_the_pool_size_lose_no_lease_and_burn_no_attempt() {
    let url = TestPg::fresh_database().await.unwrap();
    // Two pooled connections, six sagas at once whose steps each hold one for over a second:
    // every connection of the pool is busy with steps most of the time.
    let options = PgOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    let store = Arc::new(PgStore::connect_with(&url, options).await.unwrap());
    sqlx::query("CREATE TABLE public.bookings (order_id bigint PRIMARY KEY, saga_id text)")
        .execute(store.pool())
        .await
        .unwrap();
    let orchestrator = Orchestrator::new(
        store.clone(),
        Config::default()
            .concurrency(6)
            .lease_ttl(Duration::from_millis(1_000))
            .poll_interval(Duration::from_millis(20)),
    );
    let saga = SlowBooking {
        attempts: std::sync::Mutex::new(Vec::new()),
    };
    orchestrator.register(saga).unwrap();
    orchestrator.run();
    let mut ids = Vec::new();
    for order in 0..6 {
        ids.push(orchestrator.start::<SlowBooking>(&order).await.unwrap());
    }
    for id in &ids {
        let record = orchestrator
            .wait(*id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(record.status, SagaStatus::Completed);
    }
    // (Read once every step is done: reads like these share the pool with the steps.)
    for id in &ids {
        let history = store.history(*id).await.unwrap();
        assert!(
            !history
                .iter()
                .any(|event| event.kind == saga_core::EventKind::LeaseTakenOver),
            "a lease was lost while steps held the pool: {}",
            orchestrator.history(*id).await.unwrap().render()
        );
        let book = orchestrator
            .snapshot(*id)
            .await
            .unwrap()
            .step(saga_core::StepIndex(0), saga_core::Phase::Action)
            .cloned()
            .unwrap();
        assert_eq!(
            book.attempt.0, 1,
            "no attempt was burned waiting for a connection"
        );
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    assert_eq!(
        scalar(&mut conn, "SELECT COUNT(*) FROM public.bookings").await,
        6
    );
    orchestrator.shutdown().await;
}
