//! Step policies across processes: four worker processes (separate OS processes, each embedding
//! an orchestrator) share one real PostgreSQL database; every step records its call in a ledger
//! of the test's own (`public.calls`: when by the database's clock, which process, for which
//! customer or cart), and the parent checks the ledger and the store afterwards:
//!
//! 1. a frequency cap replays the seed incident (a loop re-ran a nudge twelve times per
//!    customer): one email per customer, the other sagas complete with the step skipped;
//! 2. a rate limit of 50 per second is never exceeded in any window, counted on the calls (and
//!    on the store's grants, when it keeps a row per grant), and waiting spends no attempt;
//! 3. per-key concurrency: never more than 2 sagas of one cart at once;
//! 4. a pause stops new attempts in every process within a poll interval, until resumed, and
//!    the resume lets every held saga go on (none is held again by the lifted pause);
//! 5. a throttled answer makes the whole integration back off in every process.
//!
//! The checks run one after the other on the same four processes, each on a saga type and
//! policy names of its own. A test without the libtest harness: the binary re-runs itself with
//! `--saga-worker` to become a worker process.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{
    Config, IdempotencyKey, Orchestrator, PauseScope, Saga, SagaDefinition, SagaType, Step,
    StepContext, StepError, Store, WorkerId,
};
use saga_store::testing::TestPg;
use saga_store::PgStore;
use sqlx::{PgPool, Row};

const WORKERS: usize = 4;
/// The workers' poll interval: a process reads the pauses again at least this often.
const POLL: Duration = Duration::from_millis(200);
/// How long one check waits for its sagas (or a state it needs) before it fails.
const SETTLE: Duration = Duration::from_secs(40);
/// A millisecond and a second in microseconds, the unit of every instant read from the
/// database here.
const MS: i64 = 1_000;
const SECOND: i64 = 1_000_000;

/// What each step does first: records its call, stamped with `clock_timestamp()`.
struct Recorder {
    pool: PgPool,
    worker: String,
}

impl Recorder {
    async fn record<I>(&self, ctx: &StepContext<I>, key: &str) -> Result<(), StepError> {
        sqlx::query(
            "INSERT INTO public.calls (saga_id, step, key, worker, at)
             VALUES ($1, $2, $3, $4, clock_timestamp())",
        )
        .bind(ctx.saga_id().to_string())
        .bind(ctx.step().as_str())
        .bind(key)
        .bind(&self.worker)
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(|err| StepError::transient(err.to_string()))
    }
}

/// Check 1: emails a customer, at most once per customer per day.
struct Nudge(Recorder);

impl Saga for Nudge {
    type Input = String;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("nudge", 1).step(
            Step::new(
                "send_email",
                |saga: Arc<Self>, ctx: StepContext<String>| async move {
                    saga.0.record(&ctx, ctx.input()).await
                },
            )
            .irreversible()
            .cap("email", 1, Duration::from_secs(86_400), String::clone),
        )
    }
}

/// Check 2: calls a partner whose API takes 50 calls per second.
struct Partner(Recorder);

impl Saga for Partner {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("partner", 1).step(
            Step::new(
                "call_partner",
                |saga: Arc<Self>, ctx: StepContext<u32>| async move {
                    saga.0.record(&ctx, &ctx.input().to_string()).await
                },
            )
            .irreversible()
            .rate_limit("partner_api", 50, Duration::from_secs(1)),
        )
    }
}

/// Check 3: enter, linger, leave; at most two flows per cart at once.
struct CartFlow(Recorder);

impl Saga for CartFlow {
    type Input = String;

    fn definition() -> SagaDefinition<Self> {
        let call = |saga: Arc<Self>, ctx: StepContext<String>| async move {
            saga.0.record(&ctx, ctx.input()).await
        };
        SagaDefinition::new("cart_flow", 1)
            .step(Step::new("enter", call).irreversible().concurrency(
                "cart_flow",
                2,
                String::clone,
            ))
            .step(Step::sleep("linger", Duration::from_millis(500)))
            .step(Step::new("leave", call).irreversible())
    }
}

/// Check 4: one step that works for 20 ms.
struct Paced(Recorder);

impl Saga for Paced {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("paced", 1).step(
            Step::new(
                "work",
                |saga: Arc<Self>, ctx: StepContext<u32>| async move {
                    saga.0.record(&ctx, &ctx.input().to_string()).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                },
            )
            .irreversible(),
        )
    }
}

/// Check 5: calls a partner that answers the first call of all with a 429 (retry after 1 s).
struct Flaky(Recorder);

impl Saga for Flaky {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("flaky", 1).step(
            Step::new(
                "call_flaky",
                |saga: Arc<Self>, ctx: StepContext<u32>| async move {
                    saga.0.record(&ctx, &ctx.input().to_string()).await?;
                    // Only the first caller of all inserts the row, and is throttled.
                    let first = sqlx::query(
                        "INSERT INTO public.throttled (only_one, saga_id, at)
                         VALUES (true, $1, clock_timestamp()) ON CONFLICT DO NOTHING",
                    )
                    .bind(ctx.saga_id().to_string())
                    .execute(&saga.0.pool)
                    .await
                    .map_err(|err| StepError::transient(err.to_string()))?
                    .rows_affected()
                        == 1;
                    if first {
                        return Err(StepError::throttled(
                            Duration::from_secs(1),
                            "429 Too Many Requests",
                        ));
                    }
                    Ok(())
                },
            )
            .irreversible()
            .rate_limit("flaky_api", 1_000, Duration::from_secs(1)),
        )
    }
}

fn register(orchestrator: &Orchestrator, pool: &PgPool, worker: &str) {
    let recorder = || Recorder {
        pool: pool.clone(),
        worker: worker.to_owned(),
    };
    orchestrator.register(Nudge(recorder())).expect("register");
    orchestrator
        .register(Partner(recorder()))
        .expect("register");
    orchestrator
        .register(CartFlow(recorder()))
        .expect("register");
    orchestrator.register(Paced(recorder())).expect("register");
    orchestrator.register(Flaky(recorder())).expect("register");
}

mod processes;

use processes::{Role, Workers};

fn main() -> ExitCode {
    let runtime = processes::runtime();
    match processes::role("policies_multi") {
        Role::List => ExitCode::SUCCESS,
        Role::Worker { url, name } => runtime.block_on(worker(url, name)),
        Role::Parent => runtime.block_on(parent()),
    }
}

/// A worker process: drives whatever is due until the parent inserts into `public.stop`.
async fn worker(url: String, name: String) -> ExitCode {
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .worker_id(WorkerId::new(name.clone()))
            .concurrency(16)
            .lease_ttl(Duration::from_secs(10))
            .poll_interval(POLL),
    );
    register(&orchestrator, &pool, &name);
    orchestrator.run();
    let deadline = Instant::now() + Duration::from_secs(170);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stop: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM public.stop)")
            .fetch_one(&pool)
            .await
            .and_then(|row| row.try_get(0))
            .unwrap_or(false);
        if stop {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("{name} was never told to stop");
            return ExitCode::FAILURE;
        }
    }
    orchestrator.shutdown().await;
    ExitCode::SUCCESS
}

/// Tells the workers to stop and checks that each exits cleanly.
async fn stop(workers: &mut Workers, pool: &PgPool) {
    sqlx::query("INSERT INTO public.stop VALUES (true)")
        .execute(pool)
        .await
        .expect("tell the workers to stop");
    workers.wait(Duration::from_secs(30)).await;
}

async fn parent() -> ExitCode {
    let url = TestPg::fresh_database().await.expect("a test database");
    let store = Arc::new(PgStore::connect(&url).await.expect("connect"));
    let pool = store.pool().clone();
    for table in [
        "CREATE TABLE public.calls (id bigserial PRIMARY KEY, saga_id text NOT NULL,
             step text NOT NULL, key text NOT NULL, worker text NOT NULL,
             at timestamptz NOT NULL)",
        "CREATE TABLE public.throttled (only_one boolean PRIMARY KEY, saga_id text NOT NULL,
             at timestamptz NOT NULL)",
        "CREATE TABLE public.stop (stop boolean)",
    ] {
        sqlx::query(table)
            .execute(&pool)
            .await
            .expect("create table");
    }
    let dyn_store: Arc<dyn Store> = store;
    // Starts sagas and never drives them (it does not run): the four processes do.
    let starter = Orchestrator::new(
        dyn_store,
        Config::default().worker_id(WorkerId::new("parent")),
    );
    register(&starter, &pool, "parent");
    let started = Instant::now();
    let mut workers = Workers::spawn(&url, WORKERS);

    // Each check runs as a task of its own, so that one failing (its panic message says what
    // broke) does not hide the figures of the others.
    let checks: [(&str, Check); 5] = [
        ("cap", Box::pin(cap_replay(starter.clone(), pool.clone()))),
        (
            "rate limit",
            Box::pin(rate_limit(starter.clone(), pool.clone())),
        ),
        (
            "concurrency",
            Box::pin(concurrency(starter.clone(), pool.clone())),
        ),
        ("pause", Box::pin(pause(starter.clone(), pool.clone()))),
        (
            "throttle",
            Box::pin(throttle(starter.clone(), pool.clone())),
        ),
    ];
    let total = checks.len();
    let mut failed = Vec::new();
    for (name, check) in checks {
        match tokio::spawn(check).await {
            Ok(summary) => println!("policies_multi: {summary}"),
            Err(_) => {
                println!("policies_multi: {name}: FAILED (see the panic above)");
                failed.push(name);
            }
        }
    }

    stop(&mut workers, &pool).await;
    let shares = sqlx::query("SELECT worker, COUNT(*) AS n FROM public.calls GROUP BY worker")
        .fetch_all(&pool)
        .await
        .expect("shares");
    let shares: Vec<(String, i64)> = shares
        .iter()
        .map(|row| (row.get("worker"), row.get("n")))
        .collect();
    assert_eq!(
        shares.len(),
        WORKERS,
        "every one of the {WORKERS} worker processes made calls: {shares:?}"
    );
    println!(
        "policies_multi: {} passed, {} failed {failed:?}; {WORKERS} processes, {:.1}s",
        total - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

type Check = Pin<Box<dyn Future<Output = String> + Send>>;

/// Check 1, the seed incident replayed: an agent loop re-ran after errors and started the nudge
/// of each of 20 customers 12 times (a new start key each run). One email per customer; the
/// other 11 nudges per customer complete with `send_email` skipped.
async fn cap_replay(starter: Orchestrator, pool: PgPool) -> String {
    const CUSTOMERS: u32 = 20;
    const RUNS: u32 = 12;
    let (starter, pool) = (&starter, &pool);
    let started = Instant::now();
    for run in 1..=RUNS {
        for customer in 1..=CUSTOMERS {
            starter
                .start_with_key::<Nudge>(
                    IdempotencyKey::new(format!("nudge-customer-{customer}-run-{run}")),
                    &format!("customer-{customer}"),
                )
                .await
                .expect("start a nudge");
        }
    }
    settle(pool, "nudge", i64::from(CUSTOMERS * RUNS)).await;
    let elapsed = started.elapsed();

    let calls = calls(pool, "nudge").await;
    let emails = per_key(&calls);
    assert_eq!(
        emails.len(),
        CUSTOMERS as usize,
        "every customer got an email: {emails:?}"
    );
    for (customer, sent) in &emails {
        assert_eq!(
            sent.len(),
            1,
            "{customer} was emailed {} times by {RUNS} nudges under a cap of 1 per 24h (by {sent:?})",
            sent.len()
        );
    }
    let steps = sqlx::query(
        "SELECT i.input #>> '{}' AS customer,
                COUNT(*) FILTER (WHERE s.status = 'completed') AS completed,
                COUNT(*) FILTER (WHERE s.status = 'skipped') AS skipped
           FROM saga_instances i JOIN saga_steps s ON s.saga_id = i.id AND s.phase = 'action'
          WHERE i.saga_type = 'nudge' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("nudge steps");
    assert_eq!(steps.len(), CUSTOMERS as usize);
    for row in &steps {
        let customer: String = row.get("customer");
        let counts: (i64, i64) = (row.get("completed"), row.get("skipped"));
        assert_eq!(
            counts,
            (1, i64::from(RUNS) - 1),
            "{customer}: (sent, skipped) send_email steps of its {RUNS} nudges"
        );
    }
    let senders = per_worker(emails.values().flatten().copied());
    format!(
        "cap: {CUSTOMERS} customers x {RUNS} nudges = {} sagas in {:.1}s; 1 email per customer ({} in all, sent by {senders:?}), {} steps skipped, every saga completed",
        CUSTOMERS * RUNS,
        elapsed.as_secs_f64(),
        emails.len(),
        CUSTOMERS * (RUNS - 1),
    )
}

/// Check 2: 300 sagas call a partner limited to 50 calls per second. No more than 50 calls
/// come in any window of 850 ms (a call follows its grant by the time its `in_progress` takes
/// to write: up to 150 ms allowed); when the store records each grant (`saga_policy_uses` rows
/// of kind `rate_limit`, read while they count), no second holds more than 50 of them either.
/// Every saga completes on attempt 1: waiting for the limit spends none.
async fn rate_limit(starter: Orchestrator, pool: PgPool) -> String {
    const SAGAS: u32 = 300;
    const SLACK: i64 = 150 * MS;
    let (starter, pool) = (&starter, &pool);
    let started = Instant::now();
    for n in 0..SAGAS {
        starter.start::<Partner>(&n).await.expect("start");
    }
    // A grant's row is deleted once its window has passed (by the next permit that looks), so
    // read the table more often than the window to see every grant.
    let mut grants: HashMap<String, Grant> = HashMap::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        let (done, counts) = progress(pool, "partner", i64::from(SAGAS)).await;
        let rows = sqlx::query(
            "SELECT saga_id::text AS saga,
                    (EXTRACT(EPOCH FROM used_at) * 1000000)::bigint AS at,
                    (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint AS seen
               FROM saga_policy_uses WHERE kind = 'rate_limit' AND name = 'partner_api'",
        )
        .fetch_all(pool)
        .await
        .expect("read the grants");
        for row in &rows {
            grants.entry(row.get("saga")).or_insert(Grant {
                at: row.get("at"),
                seen: row.get("seen"),
            });
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partner: not all {SAGAS} sagas completed within {SETTLE:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();

    let calls = calls(pool, "partner").await;
    assert_eq!(calls.len(), SAGAS as usize, "each saga called once");
    let busiest_calls = busiest(calls.iter().map(|call| call.at).collect(), SECOND - SLACK);
    let calls_in_a_second = busiest(calls.iter().map(|call| call.at).collect(), SECOND).len();
    let grant_figures = if grants.is_empty() {
        "the store keeps no row per grant, so the calls alone are counted".to_owned()
    } else {
        check_grants(&grants, &calls, busiest_calls.len())
    };
    assert!(
        busiest_calls.len() <= RATE_LIMIT,
        "{} calls within {} ms under a limit of {RATE_LIMIT} per second",
        busiest_calls.len(),
        (SECOND - SLACK) / MS
    );
    let attempts = sqlx::query(
        "SELECT s.attempt, COUNT(*) AS n FROM saga_steps s JOIN saga_instances i ON i.id = s.saga_id
          WHERE i.saga_type = 'partner' GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("attempts");
    let attempts: Vec<(i32, i64)> = attempts
        .iter()
        .map(|row| (row.get("attempt"), row.get("n")))
        .collect();
    assert_eq!(
        attempts,
        vec![(1, i64::from(SAGAS))],
        "(attempt, steps): waiting for the limit must spend no attempt"
    );
    let held = held(pool, "partner", "%rate limit%").await;
    format!(
        "rate limit: {SAGAS} sagas at {RATE_LIMIT}/s in {:.1}s; busiest {} ms window of calls {} (bound {RATE_LIMIT}; in 1 s: {calls_in_a_second}); {grant_figures}; {held} sagas held, all completed on attempt 1; calls by {:?}",
        elapsed.as_secs_f64(),
        (SECOND - SLACK) / MS,
        busiest_calls.len(),
        per_worker(calls.iter()),
    )
}

/// The bound of check 2: calls per second.
const RATE_LIMIT: usize = 50;

/// A rate limit's grant as the store recorded it: its `used_at`, and when a read first saw it
/// committed (µs, by the database's clock).
struct Grant {
    at: i64,
    seen: i64,
}

/// The strict half of check 2: every grant was seen, and no second holds more than the limit.
/// Returns the figures.
fn check_grants(grants: &HashMap<String, Grant>, calls: &[Call], busiest_calls: usize) -> String {
    // A grant's row counts for a second from its `used_at`; one that no read saw was deleted
    // as expired within about a read's period of being committed.
    let unseen: Vec<(&str, i64)> = calls
        .iter()
        .filter(|call| !grants.contains_key(&call.saga))
        .map(|call| (call.worker.as_str(), (call.at - calls[0].at) / MS))
        .collect();
    let busiest_grants = busiest(grants.values().map(|grant| grant.at).collect(), SECOND);
    assert!(
        unseen.is_empty(),
        "{} of the {} grants were deleted as expired before a read every 50 ms saw them (so their `used_at` lay about a window before the time of the permit that deleted them); their calls (worker, ms after the first call): {unseen:?}; busiest 850 ms window of calls: {busiest_calls}, busiest second of the grants seen: {}",
        unseen.len(),
        calls.len(),
        busiest_grants.len()
    );
    // Each grant as (ms into the busiest second, the process that called, ms from `used_at`
    // to first seen committed, ms from `used_at` to the call).
    let busiest_second = || {
        let mut window: Vec<(i64, &str, i64, i64)> = calls
            .iter()
            .filter_map(|call| Some((call, grants.get(&call.saga)?)))
            .filter(|(_, grant)| busiest_grants.contains(&grant.at))
            .map(|(call, grant)| {
                (
                    (grant.at - busiest_grants[0]) / MS,
                    call.worker.as_str(),
                    (grant.seen - grant.at) / MS,
                    (call.at - grant.at) / MS,
                )
            })
            .collect();
        window.sort_unstable();
        window
    };
    assert!(
        busiest_grants.len() <= RATE_LIMIT,
        "the store granted {} calls within one second under a limit of {RATE_LIMIT}, and {busiest_calls} calls came within 850 ms; the grants of that second (ms into it, worker, ms to committed (seen by a 50 ms poll), ms to the call): {:?}",
        busiest_grants.len(),
        busiest_second()
    );
    let latest_call = calls
        .iter()
        .filter_map(|call| Some(call.at - grants.get(&call.saga)?.at))
        .max()
        .unwrap_or(0);
    format!(
        "busiest 1 s window of the store's grants {} (bound {RATE_LIMIT}), a call at most {} ms after its grant",
        busiest_grants.len(),
        latest_call / MS
    )
}

/// Check 3: 10 carts x 6 flows, at most 2 flows per cart at once. A flow runs from its `enter`
/// call to its `leave` call (inside the time it holds its slot), and no instant is inside more
/// than 2 flows of one cart.
async fn concurrency(starter: Orchestrator, pool: PgPool) -> String {
    const CARTS: u32 = 10;
    const FLOWS: u32 = 6;
    let (starter, pool) = (&starter, &pool);
    let started = Instant::now();
    for _ in 0..FLOWS {
        for cart in 1..=CARTS {
            starter
                .start::<CartFlow>(&format!("cart-{cart}"))
                .await
                .expect("start");
        }
    }
    settle(pool, "cart_flow", i64::from(CARTS * FLOWS)).await;
    let elapsed = started.elapsed();

    let mut flows: BTreeMap<String, Flow> = BTreeMap::new();
    for call in calls(pool, "cart_flow").await {
        let flow = flows.entry(call.saga.clone()).or_insert_with(|| Flow {
            cart: call.key.clone(),
            ..Flow::default()
        });
        match call.step.as_str() {
            "enter" => flow.enters.push(call.at),
            _ => flow.leaves.push(call.at),
        }
    }
    assert_eq!(flows.len(), (CARTS * FLOWS) as usize, "every flow ran");
    // Per cart, +1 at each flow's `enter` and -1 at its `leave`.
    let mut edges: BTreeMap<&str, Vec<(i64, i32)>> = BTreeMap::new();
    for (saga, flow) in &flows {
        let (&[enter], &[leave]) = (flow.enters.as_slice(), flow.leaves.as_slice()) else {
            panic!(
                "flow {saga} entered at {:?} and left at {:?}, once each expected",
                flow.enters, flow.leaves
            );
        };
        edges
            .entry(flow.cart.as_str())
            .or_default()
            .extend([(enter, 1), (leave, -1)]);
    }
    assert_eq!(edges.len(), CARTS as usize, "every cart ran");
    let mut most = 0;
    for (cart, mut edges) in edges {
        // A flow that leaves at the instant another enters does not overlap it.
        edges.sort_unstable();
        let (mut running, mut peak) = (0, 0);
        for (_, change) in edges {
            running += change;
            peak = peak.max(running);
        }
        assert!(
            peak <= 2,
            "{peak} flows of {cart} ran at once under a limit of 2 per cart"
        );
        most = most.max(peak);
    }
    let held = held(pool, "cart_flow", "%concurrency%").await;
    assert!(
        held > 0,
        "no flow was ever held, so the limit was never exercised"
    );
    format!(
        "concurrency: {CARTS} carts x {FLOWS} flows in {:.1}s; at most {most} flows of one cart at once (bound 2); {held} flows held for a slot; all completed",
        elapsed.as_secs_f64()
    )
}

/// Check 4: while 200 sagas flow in (one started every 10 ms), the type is paused. No call
/// begins later than one poll interval (+100 ms for the step's own writes) after the pause,
/// until the resume; then every saga completes, and none is held again by the lifted pause
/// (due over a second after the resume).
async fn pause(starter: Orchestrator, pool: PgPool) -> String {
    const SAGAS: u32 = 200;
    let (starter, pool) = (&starter, &pool);
    let admin = starter.admin();
    let scope = PauseScope {
        saga_type: SagaType::new("paced"),
        step: None,
    };
    let starts = async {
        let mut every = tokio::time::interval(Duration::from_millis(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0..SAGAS {
            every.tick().await;
            starter.start::<Paced>(&n).await.expect("start");
        }
    };
    let pause_midway = async {
        let deadline = Instant::now() + SETTLE;
        while calls(pool, "paced").await.len() < 40 {
            assert!(
                Instant::now() < deadline,
                "paced: fewer than 40 calls within {SETTLE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin
            .pause(scope.clone(), "policies_multi", "a runaway loop")
            .await
            .expect("pause");
        now(pool).await
    };
    let ((), paused_at) = tokio::join!(starts, pause_midway);

    // Every saga not finished is held by the pause, with no lease: it has taken hold everywhere.
    let deadline = Instant::now() + SETTLE;
    let held = loop {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE status <> 'completed') AS unfinished,
                    COUNT(*) FILTER (WHERE status = 'running' AND waiting_for = $1
                                       AND lease_owner IS NULL) AS held
               FROM saga_instances WHERE saga_type = 'paced'",
        )
        .bind(scope.waiting_for())
        .fetch_one(pool)
        .await
        .expect("held");
        let (unfinished, held): (i64, i64) = (row.get("unfinished"), row.get("held"));
        if held > 0 && held == unfinished {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "paced: the pause does not hold every unfinished saga: {held} held of {unfinished}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resumed_at = now(pool).await;
    let waiting_for = scope.waiting_for();
    let (_, woken) = admin
        .resume(scope, "policies_multi", "loop fixed")
        .await
        .expect("resume");
    let resumed = Instant::now();
    // A saga must not stay held by the lifted pause: one held again with a wake time over a
    // second past the resume (a process applying the pause it read before) is noted, with it.
    let mut held_again: BTreeMap<String, i64> = BTreeMap::new();
    let deadline = Instant::now() + SETTLE;
    loop {
        let (done, counts) = progress(pool, "paced", i64::from(SAGAS)).await;
        let rows = sqlx::query(
            "SELECT id::text AS id, (EXTRACT(EPOCH FROM next_run_at) * 1000000)::bigint AS due
               FROM saga_instances
              WHERE saga_type = 'paced' AND status = 'running' AND waiting_for = $1
                AND next_run_at > to_timestamp($2::bigint / 1000000.0)",
        )
        .bind(&waiting_for)
        .bind(resumed_at + SECOND)
        .fetch_all(pool)
        .await
        .expect("sagas held again");
        for row in &rows {
            held_again.insert(row.get("id"), row.get("due"));
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "paced: not all {SAGAS} sagas completed within {SETTLE:?} of the resume: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_resume = resumed.elapsed();

    let calls = calls(pool, "paced").await;
    assert_eq!(calls.len(), SAGAS as usize, "each saga called once");
    let bound = paused_at + i64::try_from(POLL.as_micros()).unwrap() + 100 * MS;
    let late: Vec<(&str, i64)> = calls
        .iter()
        .filter(|call| call.at > bound && call.at < resumed_at)
        .map(|call| (call.worker.as_str(), (call.at - paused_at) / MS))
        .collect();
    assert!(
        late.is_empty(),
        "calls began while paused, later than {} ms after the pause (worker, ms after it): {late:?}",
        (bound - paused_at) / MS
    );
    let after: Vec<i64> = calls
        .iter()
        .filter(|call| call.at >= resumed_at)
        .map(|call| (call.at - resumed_at) / MS)
        .collect();
    let within_a_second = after.iter().filter(|ms| **ms < 1_000).count();
    assert!(
        held_again.is_empty(),
        "{} of the {woken} sagas the resume woke were held again by the lifted pause, due up to {} ms after the resume; {within_a_second} of the {} calls after the resume came within 1 s of it, the last at +{} ms, all completed {:.1}s after it",
        held_again.len(),
        held_again.values().max().map_or(0, |due| (due - resumed_at) / MS),
        after.len(),
        after.iter().max().copied().unwrap_or(0),
        after_resume.as_secs_f64()
    );
    let before = calls.iter().filter(|call| call.at <= paused_at).count();
    let last_let_through = calls
        .iter()
        .filter(|call| call.at > paused_at && call.at < resumed_at)
        .map(|call| (call.at - paused_at) / MS)
        .max();
    format!(
        "pause: {SAGAS} sagas; {before} calls before the pause, the last call after it at {} (bound +{} ms), none then for {} ms; {held} sagas held at the resume ({woken} woken), all completed {:.1}s after it",
        last_let_through.map_or("none".into(), |ms| format!("+{ms} ms")),
        (bound - paused_at) / MS,
        (resumed_at - bound) / MS,
        after_resume.as_secs_f64()
    )
}

/// Check 5: 40 sagas (one started every 30 ms) call a partner that answers the first call of
/// all with a 429, retry after 1 s. No call from any process lands in [T + 50 ms, T + 900 ms],
/// T being the 429 (by the database's clock). The 50 ms allow the calls granted before the
/// back-off was written (it is written as the step returns) to follow their grant; the 100 ms
/// under 1 s allow for the back-off's end being computed on the worker's reading of the
/// database's clock rather than by the database; every saga completes.
async fn throttle(starter: Orchestrator, pool: PgPool) -> String {
    const SAGAS: u32 = 40;
    let (starter, pool) = (&starter, &pool);
    let started = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(30));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..SAGAS {
        every.tick().await;
        starter.start::<Flaky>(&n).await.expect("start");
    }
    settle(pool, "flaky", i64::from(SAGAS)).await;
    let elapsed = started.elapsed();

    let throttled_at: i64 =
        sqlx::query("SELECT (EXTRACT(EPOCH FROM at) * 1000000)::bigint FROM public.throttled")
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get(0))
            .expect("the first call was throttled");
    let calls = calls(pool, "flaky").await;
    assert_eq!(
        calls.len(),
        SAGAS as usize + 1,
        "each saga called once, and the throttled one again"
    );
    // Each call as (worker, µs after the 429).
    let offsets: Vec<(&str, i64)> = calls
        .iter()
        .map(|call| (call.worker.as_str(), call.at - throttled_at))
        .collect();
    let (opens, closes) = (50 * MS, 900 * MS);
    let inside: Vec<(&str, i64)> = offsets
        .iter()
        .filter(|(_, after)| (opens..=closes).contains(after))
        .map(|(worker, after)| (*worker, after / MS))
        .collect();
    assert!(
        inside.is_empty(),
        "calls during the back-off (worker, ms after the 429): {inside:?}"
    );
    let held = held(pool, "flaky", "%throttling%").await;
    assert!(
        held > 0,
        "no saga was held by the back-off, so it was never exercised"
    );
    let before: Vec<i64> = offsets
        .iter()
        .map(|(_, after)| *after)
        .filter(|after| *after < opens)
        .collect();
    let first_after = offsets
        .iter()
        .map(|(_, after)| *after)
        .filter(|after| *after > closes)
        .min()
        .unwrap_or(0);
    format!(
        "throttle: {SAGAS} sagas in {:.1}s; calls before +50 ms of the 429: {} (the last at {:+} ms), the next at {:+} ms (none allowed in [+50, +900] ms); {held} sagas held by the back-off; calls by {:?}; all completed",
        elapsed.as_secs_f64(),
        before.len(),
        before.iter().max().copied().unwrap_or(0) / MS,
        first_after / MS,
        per_worker(calls.iter()),
    )
}

/// The calls of one flow of check 3: its cart, and when it entered and left.
#[derive(Debug, Default)]
struct Flow {
    cart: String,
    enters: Vec<i64>,
    leaves: Vec<i64>,
}

/// One step call from the ledger; `at` in microseconds since the epoch, by the database.
#[derive(Debug)]
struct Call {
    saga: String,
    step: String,
    key: String,
    worker: String,
    at: i64,
}

/// The calls of the steps of sagas of `saga_type`, in the order they were made.
async fn calls(pool: &PgPool, saga_type: &str) -> Vec<Call> {
    sqlx::query(
        "SELECT c.saga_id, c.step, c.key, c.worker,
                (EXTRACT(EPOCH FROM c.at) * 1000000)::bigint AS at
           FROM public.calls c JOIN saga_instances i ON i.id::text = c.saga_id
          WHERE i.saga_type = $1 ORDER BY c.at",
    )
    .bind(saga_type)
    .fetch_all(pool)
    .await
    .expect("read the calls")
    .iter()
    .map(|row| Call {
        saga: row.get("saga_id"),
        step: row.get("step"),
        key: row.get("key"),
        worker: row.get("worker"),
        at: row.get("at"),
    })
    .collect()
}

fn per_key(calls: &[Call]) -> BTreeMap<String, Vec<&Call>> {
    let mut keys: BTreeMap<String, Vec<&Call>> = BTreeMap::new();
    for call in calls {
        keys.entry(call.key.clone()).or_default().push(call);
    }
    keys
}

fn per_worker<'c>(calls: impl Iterator<Item = &'c Call>) -> BTreeMap<&'c str, usize> {
    let mut workers = BTreeMap::new();
    for call in calls {
        *workers.entry(call.worker.as_str()).or_insert(0) += 1;
    }
    workers
}

/// The instants of `times` in the busiest window `[t, t + window)`, in order.
fn busiest(mut times: Vec<i64>, window: i64) -> Vec<i64> {
    times.sort_unstable();
    let mut end = 0;
    let mut most = 0..0;
    for (start, at) in times.iter().enumerate() {
        while end < times.len() && times[end] < at + window {
            end += 1;
        }
        if end - start > most.len() {
            most = start..end;
        }
    }
    times[most].to_vec()
}

/// The database's clock, in microseconds since the epoch.
async fn now(pool: &PgPool) -> i64 {
    sqlx::query("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint")
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get(0))
        .expect("the database's clock")
}

/// How many sagas of `saga_type` were ever held by a policy whose reason matches `reason`.
async fn held(pool: &PgPool, saga_type: &str, reason: &str) -> i64 {
    sqlx::query(
        "SELECT COUNT(DISTINCT e.saga_id) FROM saga_events e
           JOIN saga_instances i ON i.id = e.saga_id
          WHERE i.saga_type = $1 AND e.kind = 'held' AND e.detail LIKE $2",
    )
    .bind(saga_type)
    .bind(reason)
    .fetch_one(pool)
    .await
    .and_then(|row| row.try_get(0))
    .expect("held sagas")
}

/// Whether all `expected` sagas of `saga_type` completed, and the count per status; fails when
/// one ended otherwise.
async fn progress(pool: &PgPool, saga_type: &str, expected: i64) -> (bool, Vec<(String, i64)>) {
    let counts: Vec<(String, i64)> = sqlx::query(
        "SELECT status, COUNT(*) AS n FROM saga_instances WHERE saga_type = $1
          GROUP BY status ORDER BY status",
    )
    .bind(saga_type)
    .fetch_all(pool)
    .await
    .expect("count by status")
    .iter()
    .map(|row| (row.get("status"), row.get("n")))
    .collect();
    assert!(
        counts
            .iter()
            .all(|(status, _)| ["running", "compensating", "completed"].contains(&status.as_str())),
        "{saga_type}: sagas ended other than completed: {counts:?}"
    );
    let done = counts == [("completed".to_owned(), expected)];
    (done, counts)
}

/// Waits until all `expected` sagas of `saga_type` completed.
async fn settle(pool: &PgPool, saga_type: &str, expected: i64) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (done, counts) = progress(pool, saga_type, expected).await;
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{saga_type}: not all {expected} sagas completed within {SETTLE:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
