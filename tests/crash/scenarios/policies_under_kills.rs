//! Scenario 10: step policies while worker processes die. 200 orders of 25 customers (8 each)
//! run `crash_policy`: `notify` (irreversible) and `issue_code` (compensable) are capped at one
//! per customer, `partner` is rate-limited and sometimes throttled, `confirm` declines a
//! quarter of the orders (they compensate). Half the orders start at once, so that a
//! customer's sagas race for their caps; the rest arrive while workers are SIGKILLed at
//! random and, now and then, die right after a permit under a cap was granted (the use is
//! counted, the attempt not begun: the worker that takes the saga over must find the use
//! counted as its own and not be refused by it) or after an action took effect.
//!
//! Every customer ends with exactly one notice and one code in the ledger, however many of
//! its sagas raced and whichever processes died; every other saga of the customer skipped
//! both steps, never called them and never compensated them; nothing ran twice and every saga
//! ended as its plan says.

use std::sync::Arc;
use std::time::Duration;

use saga::{Config, IdempotencyKey, Orchestrator};
use saga_store::PgStore;

use super::{deaths, reported, settle, specs, Db, Report};
use crate::capped::{Capped, Order, ATTEMPTS, TYPE};
use crate::harness::Workers;
use crate::invariants;
use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::sagas::{self, Registry};

const SAGAS: u64 = 200;
const CUSTOMERS: u64 = 25;
const WORKERS: usize = 3;
/// Odds that a worker dies right after a permit under a cap was granted to a first attempt.
const PERMIT_DEATHS: f64 = 0.25;
/// The library's fault point after an action took effect, before `completed` is written.
const FAULTS: &str = "after_action=0.005";

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    // Customer `n % 25`, in a shuffled order: every customer has 8 orders, spread over the run.
    let mut orders: Vec<Order> = (0..SAGAS)
        .map(|n| Order::random(n, format!("customer-{}", n % CUSTOMERS), &mut rng, 0.25))
        .collect();
    for i in (1..orders.len()).rev() {
        let j = usize::try_from(rng.between(0, u64::try_from(i).unwrap_or(0))).unwrap_or(0);
        orders.swap(i, j);
    }
    let store = Arc::new(
        PgStore::connect(&db.url)
            .await
            .expect("connect the starter"),
    );
    let starter = Orchestrator::new(store, Config::default());
    sagas::register(
        &starter,
        Registry::Standard,
        &Ledger::new(None, "starter".into()),
    )
    .expect("register");
    let late = orders.split_off(orders.len() / 2);
    for order in &orders {
        start(&starter, order).await;
    }

    let mut specs = specs(&db, "policy", WORKERS, 1_500, seed);
    for spec in &mut specs {
        spec.permit_deaths = Some(PERMIT_DEATHS);
        // Fewer sagas per process than elsewhere: every death interrupts each attempt in
        // flight in its process, and these processes die often.
        spec.concurrency = 8;
    }
    let mut workers = Workers::start(specs, vec![("SAGA_FAULTS".to_owned(), FAULTS.to_owned())]);
    workers.wait_ready(Duration::from_secs(30)).await;
    // The other half, four every 200 ms, while workers die.
    let starting = tokio::spawn(async move {
        for chunk in late.chunks(4) {
            for order in chunk {
                start(&starter, order).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    settle(&db, &mut workers, Duration::from_secs(120), |workers| {
        workers.restart_exited();
        if rng.chance(0.35) {
            let slot = usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0)))
                .unwrap_or(0);
            workers.kill(slot);
            workers.restart(slot);
        }
        Duration::from_millis(rng.between(100, 300))
    })
    .await;
    starting.await.expect("the starter task");
    // Sagas started after the last look at the store may not have settled yet.
    settle(&db, &mut workers, Duration::from_secs(60), |workers| {
        workers.restart_exited();
        Duration::from_millis(100)
    })
    .await;
    workers.stop_all();

    let summary = invariants::check(&db.pool, count(SAGAS), deaths(&workers)).await;
    assert!(workers.kills > 0, "no worker was killed");
    // Exactly one effect per customer and cap: every customer's first saga to reach a capped
    // step holds the cap's use and completes the step (nothing before it fails), so none may
    // miss its effect; the invariants hold the other bound.
    let mut skips = Vec::new();
    for (step, cap) in [("notify", "notice"), ("issue_code", "code")] {
        let per_customer = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM (SELECT entity FROM public.ledger_effects
                                        WHERE step = '{step}' AND phase = 'action'
                                        GROUP BY entity HAVING COUNT(*) = 1) once"
            ))
            .await;
        assert_eq!(
            per_customer,
            count(CUSTOMERS),
            "every customer got exactly one `{cap}` effect: {summary}"
        );
        let skipped = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM saga.saga_steps
                  WHERE name = '{step}' AND phase = 'action' AND status = 'skipped'"
            ))
            .await;
        assert_eq!(
            skipped,
            count(SAGAS - CUSTOMERS),
            "every saga but one per customer skipped `{step}`: {summary}"
        );
        skips.push(format!("{step} {skipped}"));
    }
    let most = db
        .scalar(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM public.ledger_effects
                                  WHERE step IN ('notify', 'issue_code') AND phase = 'action'
                                  GROUP BY step, entity) per_customer",
        )
        .await;
    let compensated = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM saga.saga_instances
              WHERE saga_type = '{TYPE}' AND status = 'compensated'"
        ))
        .await;
    let skipped_in_compensated = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_steps st
               JOIN saga.saga_instances s ON s.id = st.saga_id
              WHERE s.status = 'compensated' AND st.status = 'skipped'",
        )
        .await;
    let codes_revoked = db
        .scalar(
            "SELECT COUNT(*) FROM public.ledger_effects
              WHERE step = 'issue_code' AND phase = 'compensation'",
        )
        .await;
    assert!(compensated > 0, "no saga compensated");
    assert!(
        skipped_in_compensated > 0,
        "no compensated saga had a skipped step to leave alone"
    );
    // Capped steps that ran more than one attempt: each later attempt asked for a permit again
    // and found its own use counted (after a kill, an abort after the action, or a lost answer).
    let capped_retries = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_steps
              WHERE name IN ('notify', 'issue_code') AND phase = 'action'
                AND status = 'completed' AND attempt > 1",
        )
        .await;
    // Each death right after a cap's permit left a use counted and the attempt not begun: the
    // worker that took the saga over must have found the use its own and completed the step.
    let permit_deaths = workers
        .reports
        .lock()
        .map(|reports| reports.permit_deaths.clone())
        .unwrap_or_default();
    assert!(
        !permit_deaths.is_empty(),
        "no worker died right after a cap's permit"
    );
    for (saga, step) in &permit_deaths {
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM saga.saga_steps
              WHERE saga_id::text = $1 AND name = $2 AND phase = 'action'",
        )
        .bind(saga)
        .bind(step)
        .fetch_optional(&db.pool)
        .await
        .expect("read a step");
        assert_eq!(
            status.as_deref(),
            Some("completed"),
            "saga {saga}'s worker died right after its `{step}` was granted a permit: the worker \
             that took over must find the use its own and complete the step"
        );
    }
    let permit_deaths = permit_deaths.len();
    let most_attempts = db
        .scalar("SELECT MAX(attempt)::bigint FROM saga.saga_steps")
        .await;
    let throttled = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_events
              WHERE kind = 'held' AND detail LIKE 'integration `partner` backs off%'",
        )
        .await;
    let mut notes = reported(&workers);
    notes.push(format!(
        "caps: {SAGAS} sagas over {CUSTOMERS} customers; effects per customer and cap: max {most} (notice and code exactly 1 each); skipped: {skips}; {capped_retries} capped steps completed on a later attempt, not refused by their own use; deaths right after a cap's permit {permit_deaths}, each step completed by the worker that took over",
        skips = skips.join(", ")
    ));
    notes.push(format!(
        "compensated {compensated} (declined at confirm): {skipped_in_compensated} skipped steps left uncompensated, {codes_revoked} codes revoked, only codes that were issued; partner held by a throttled back-off {throttled} times; most attempts of one step phase {most_attempts} (of {ATTEMPTS} allowed)"
    ));
    Report { summary, notes }
}

/// Starts `order` (key `order-<n>`).
async fn start(starter: &Orchestrator, order: &Order) {
    starter
        .start_with_key::<Capped>(IdempotencyKey::new(format!("order-{}", order.n)), order)
        .await
        .expect("start a saga");
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
