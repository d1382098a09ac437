//! Scenario 8: operators cancel random running sagas while workers are SIGKILLed and steps
//! time out after taking effect. A cancel never starts a step that had not begun, and a step
//! that had begun — running, interrupted by a kill, or waiting for its retry after a timeout —
//! is settled with its key before compensation: no effect is left in place while its saga says
//! "compensated". The ledger invariant is strict here as everywhere: every effect belongs to a
//! completed step phase or to the open item that escalated it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{cancel_at_random, deaths, reported, settle, specs, Cancels, Db, Picking, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;
use crate::sagas::{Plan, STEPS};

const SAGAS: u64 = 400;
const WORKERS: usize = 3;

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let plans: Vec<Plan> = (0..SAGAS)
        .map(|n| {
            let mut plan = Plan::random(n, &mut rng, 0.1, (20, 120));
            // A step in ten: the first attempt takes effect, then hangs past its timeout.
            plan.stall = (1..=STEPS).fold(0u8, |bits, step| {
                if rng.chance(0.1) {
                    bits | (1 << step)
                } else {
                    bits
                }
            });
            plan
        })
        .collect();
    let started = db.start(plans).await;
    let mut workers = Workers::start(specs(&db, "cancel", WORKERS, 1_500, seed), Vec::new());
    workers.wait_ready(Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let cancels = Arc::new(Cancels::default());
    // Every 10–40 ms, a running saga not yet asked to cancel, among the oldest fifty, is
    // cancelled about one try in three.
    let operator = tokio::spawn(cancel_at_random(
        db.url.clone(),
        seed ^ 0x0ca7_ce11,
        Arc::clone(&stop),
        Arc::clone(&cancels),
        Picking {
            sql: "SELECT id::text FROM saga.saga_instances
                   WHERE status = 'running' AND cancel_requested IS NULL
                   ORDER BY id OFFSET $1 LIMIT 1",
            sometimes: None,
            window: 50,
            pause_ms: (10, 40),
            odds: 0.35,
            reason: "cancelled while workers die",
        },
    ));
    settle(&db, &mut workers, Duration::from_secs(240), |workers| {
        let slot =
            usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0))).unwrap_or(0);
        workers.kill(slot);
        workers.restart(slot);
        Duration::from_millis(rng.between(300, 900))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    operator.await.expect("the operator task");
    workers.stop_all();

    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    let requested = cancels.requested.load(Ordering::SeqCst);
    let immediate = cancels.immediate.load(Ordering::SeqCst);
    assert!(workers.kills > 0, "no worker was killed");
    assert!(
        requested + immediate >= 20,
        "too few cancels to mean anything: {requested} requested, {immediate} immediate"
    );
    // Steps whose first attempt took effect, then hung: each ended unknown, by its timeout or by
    // the kill of its worker (whichever came first), and was settled (see the invariants).
    let stalled = db
        .scalar(
            "SELECT COUNT(*) FROM public.ledger_calls c
               JOIN saga.saga_instances s ON s.id::text = c.saga_id
              WHERE c.phase = 'action' AND c.attempt = 1
                AND ((s.input->>'stall')::int & (1 << (c.step_index + 1))) <> 0",
        )
        .await;
    assert!(stalled > 0, "no step took effect and then hung");
    let timed_out = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_events
              WHERE kind IN ('retry_scheduled', 'outcome_unknown') AND detail LIKE 'unknown:%timed out%'",
        )
        .await;
    let cancelled_compensated = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_instances s
              WHERE s.status = 'compensated'
                AND EXISTS (SELECT 1 FROM saga.saga_events e WHERE e.saga_id = s.id
                             AND e.kind = 'operator_action' AND e.detail LIKE 'cancel requested%')",
        )
        .await;
    let mut notes = reported(&workers);
    notes.push(format!(
        "cancels: {requested} requested of a holder, {immediate} immediate (lease lapsed or released), {} refused (already settled); {cancelled_compensated} cancelled sagas ended compensated",
        cancels.refused.load(Ordering::SeqCst)
    ));
    notes.push(format!(
        "steps that took effect and then hung: {stalled} ({timed_out} attempts ended by their timeout, the rest by a kill); each settled with its key"
    ));
    Report { summary, notes }
}
