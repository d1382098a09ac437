//! The scenarios, and what they share: a fresh database with the ledger, starting sagas,
//! worker specs, waiting for every saga to settle.

pub(crate) mod ambiguous_commits;
pub(crate) mod cancel_under_kills;
pub(crate) mod children_under_kills;
pub(crate) mod concurrent_start;
pub(crate) mod fault_points;
pub(crate) mod groups_under_kills;
pub(crate) mod kill_random;
pub(crate) mod pg_restart;
pub(crate) mod poison;
pub(crate) mod policies_under_kills;
pub(crate) mod signals_under_kills;
pub(crate) mod zombie;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{Config, IdempotencyKey, Orchestrator};
use saga_store::testing::TestPg;
use saga_store::PgStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};

use crate::child::WorkerSpec;
use crate::harness::Workers;
use crate::invariants::Summary;
use crate::ledger::{self, Ledger};
use crate::rng::Rng;
use crate::sagas::{self, Crash, Plan, Registry};

/// What a scenario did and measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) summary: Summary,
    /// Scenario-specific figures, one line each.
    pub(crate) notes: Vec<String>,
}

/// A scenario's database: its URL and a pool for the checks.
pub(crate) struct Db {
    pub(crate) url: String,
    pub(crate) pool: PgPool,
}

impl Db {
    /// A fresh database on the shared test server, with the saga schema and the ledger.
    pub(crate) async fn fresh() -> Db {
        let url = TestPg::fresh_database().await.expect("a test database");
        Db::prepare(url).await
    }

    /// Migrates `url` (through the store) and creates the ledger.
    pub(crate) async fn prepare(url: String) -> Db {
        drop(PgStore::connect(&url).await.expect("migrate the store"));
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .expect("connect the checker");
        ledger::create(&pool).await.expect("create the ledger");
        Db { url, pool }
    }

    /// Sagas not yet settled; `None` while the server does not answer.
    pub(crate) async fn active(&self) -> Option<i64> {
        sqlx::query(
            "SELECT COUNT(*) FROM saga.saga_instances WHERE status IN ('running', 'compensating')",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|row| row.try_get(0))
        .ok()
    }

    /// Sagas settled so far.
    pub(crate) async fn settled(&self) -> i64 {
        sqlx::query(
            "SELECT COUNT(*) FROM saga.saga_instances
              WHERE status NOT IN ('running', 'compensating')",
        )
        .fetch_one(&self.pool)
        .await
        .and_then(|row| row.try_get(0))
        .unwrap_or(0)
    }

    pub(crate) async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query(sql)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<Option<i64>, _>(0))
            .unwrap_or_else(|err| panic!("{sql}: {err}"))
            .unwrap_or(0)
    }

    /// Starts `crash_five` sagas with these plans (keys `saga-<n>`), 8 at a time.
    pub(crate) async fn start(&self, plans: Vec<Plan>) -> i64 {
        self.start_as::<Crash>(plans).await
    }

    /// Starts sagas of type `S` (`crash_five` or `crash_grouped`) with these plans (keys
    /// `saga-<n>`), 8 at a time.
    pub(crate) async fn start_as<S>(&self, plans: Vec<Plan>) -> i64
    where
        S: saga::Saga<Input = Plan>,
    {
        let store = Arc::new(
            PgStore::connect(&self.url)
                .await
                .expect("connect the starter"),
        );
        let orchestrator = Orchestrator::new(store, Config::default());
        sagas::register(
            &orchestrator,
            Registry::Standard,
            &Ledger::new(None, "starter".into()),
        )
        .expect("register");
        let count = i64::try_from(plans.len()).unwrap_or(i64::MAX);
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in plans.chunks(plans.len().div_ceil(8).max(1)) {
            let chunk = chunk.to_vec();
            let orchestrator = orchestrator.clone();
            tasks.spawn(async move {
                for plan in chunk {
                    orchestrator
                        .start_with_key::<S>(IdempotencyKey::new(format!("saga-{}", plan.n)), &plan)
                        .await
                        .expect("start a saga");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a start task");
        }
        count
    }
}

/// `count` plans from `rng`: `fail` of them with a declined step.
pub(crate) fn plans(rng: &mut Rng, count: u64, fail: f64, work_ms: (u64, u64)) -> Vec<Plan> {
    (0..count)
        .map(|n| Plan::random(n, rng, fail, work_ms))
        .collect()
}

/// Specs of `count` workers named `<prefix>-w<i>`.
pub(crate) fn specs(
    db: &Db,
    prefix: &str,
    count: usize,
    lease_ttl_ms: u64,
    seed: u64,
) -> Vec<WorkerSpec> {
    (0..count)
        .map(|i| WorkerSpec {
            url: db.url.clone(),
            name: format!("{prefix}-w{i}"),
            registry: Registry::Standard,
            lease_ttl_ms,
            concurrency: 16,
            poll_ms: 100,
            ambiguous: None,
            permit_deaths: None,
            seed: seed.wrapping_add(u64::try_from(i).unwrap_or(0)),
        })
        .collect()
}

/// Waits until no saga is active, calling `tick` between looks (kills, restarts); panics with
/// the workers' last words after `within`.
pub(crate) async fn settle<F>(db: &Db, workers: &mut Workers, within: Duration, mut tick: F)
where
    F: FnMut(&mut Workers) -> Duration,
{
    let deadline = Instant::now() + within;
    loop {
        if db.active().await == Some(0) {
            return;
        }
        if Instant::now() > deadline {
            let statuses = sqlx::query(
                "SELECT status || ' ' || COUNT(*) FROM saga.saga_instances GROUP BY status",
            )
            .fetch_all(&db.pool)
            .await
            .map(|rows| {
                rows.iter()
                    .map(|row| row.get::<String, _>(0))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
            panic!(
                "sagas did not settle within {within:?}: {statuses:?}\nworkers said:\n{}",
                workers.tails()
            );
        }
        let pause = tick(workers);
        tokio::time::sleep(pause).await;
    }
}

/// Worker processes that died: SIGKILLed by the suite, or aborted at a fault point.
pub(crate) fn deaths(workers: &Workers) -> u64 {
    let aborted: u64 = workers
        .reports
        .lock()
        .map(|reports| reports.faults.values().sum())
        .unwrap_or(0);
    workers.kills + aborted
}

/// The fault points and injections the workers reported, as note lines.
pub(crate) fn reported(workers: &Workers) -> Vec<String> {
    let reports = workers.reports.lock().expect("reports");
    let mut notes = Vec::new();
    if !reports.faults.is_empty() {
        notes.push(format!(
            "fault points hit (process aborted): {:?}",
            reports.faults
        ));
    }
    if !reports.ambiguous.is_empty() {
        notes.push(format!(
            "ambiguous commits injected (committed, answered StoreUnavailable): {:?}",
            reports.ambiguous
        ));
    }
    notes.push(format!(
        "worker processes started {} (restarts {}), SIGKILLs {}",
        workers.restarts + u64::try_from(workers.len()).unwrap_or(0),
        workers.restarts,
        workers.kills
    ));
    notes
}

/// What an operator's random cancels did.
#[derive(Default)]
pub(crate) struct Cancels {
    /// Recorded for a worker holding the saga.
    pub(crate) requested: AtomicU64,
    /// The saga moved to compensating at once (no live lease).
    pub(crate) immediate: AtomicU64,
    /// Refused: the saga was settled or compensating already.
    pub(crate) refused: AtomicU64,
}

/// How an operator picks the sagas it cancels.
pub(crate) struct Picking {
    /// Selects one saga's id as text; `$1` is an offset drawn below `window`.
    pub(crate) sql: &'static str,
    /// Another query, and the odds of using it instead on a look.
    pub(crate) sometimes: Option<(&'static str, f64)>,
    /// The offsets drawn: `0..window`.
    pub(crate) window: u64,
    /// The pause between looks, in ms.
    pub(crate) pause_ms: (u64, u64),
    /// The odds that a saga found is cancelled.
    pub(crate) odds: f64,
    /// The reason recorded.
    pub(crate) reason: &'static str,
}

/// An operator cancelling sagas at random, as `picking` says, until `stop`; counts each
/// outcome in `cancels`.
pub(crate) async fn cancel_at_random(
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    cancels: Arc<Cancels>,
    picking: Picking,
) {
    let store = Arc::new(PgStore::connect(&url).await.expect("connect the operator"));
    let admin = saga::Admin::new(store.clone());
    let pool = store.pool().clone();
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(
            rng.between(picking.pause_ms.0, picking.pause_ms.1),
        ))
        .await;
        let offset = i64::try_from(rng.between(0, picking.window)).unwrap_or(0);
        let sql = match picking.sometimes {
            Some((other, odds)) if rng.chance(odds) => other,
            _ => picking.sql,
        };
        let id: Option<String> = sqlx::query_scalar(sql)
            .bind(offset)
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
        let Some(id) = id.and_then(|id| id.parse::<saga::SagaId>().ok()) else {
            continue;
        };
        if !rng.chance(picking.odds) {
            continue;
        }
        match admin
            .cancel_saga(id, "crash-operator", picking.reason)
            .await
        {
            Ok(saga::CancelOutcome::Requested) => cancels.requested.fetch_add(1, Ordering::SeqCst),
            Ok(saga::CancelOutcome::Compensating) => {
                cancels.immediate.fetch_add(1, Ordering::SeqCst)
            }
            Ok(saga::CancelOutcome::AlreadyCompensating) | Err(saga::Error::InvalidAction(_)) => {
                cancels.refused.fetch_add(1, Ordering::SeqCst)
            }
            Err(err) => panic!("cancel of {id} failed: {err}"),
        };
    }
}
