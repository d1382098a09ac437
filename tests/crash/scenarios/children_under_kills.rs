//! Scenario 12: `crash_parent` sagas — a step, a parallel group of two, a child step starting one
//! `crash_child` saga, a last step — under SIGKILLs of random workers, workers dying at the fault
//! points, and an operator cancelling parents at random (often while their child runs). Plans
//! decline the parent's first step or a step of its group (no child starts), the child's second
//! step (the child compensates, so its parent's step fails and the parent undoes its group and
//! first step), or the parent's step after the child (the completed child is sent back to
//! compensate before the group and the first step are undone). Every killed or aborted worker is
//! restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{
    cancel_at_random, deaths, plans, reported, settle, specs, Cancels, Db, Picking, Report,
};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;
use crate::sagas::CrashParent;

const SAGAS: u64 = 300;
const WORKERS: usize = 4;
const FAULTS: &str = "after_begin_step=0.005,after_action=0.005,mid_compensation=0.02";

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let mut planned = plans(&mut rng, SAGAS, 0.5, (5, 30));
    for plan in &mut planned {
        // No compensation fails here: every parent and child settles without a person.
        plan.comp_fail_at = None;
    }
    let started = db.start_as::<CrashParent>(planned).await;
    let mut workers = Workers::start(
        specs(&db, "child", WORKERS, 2_000, seed),
        vec![("SAGA_FAULTS".to_owned(), FAULTS.to_owned())],
    );
    workers.wait_ready(Duration::from_secs(30)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let cancels = Arc::new(Cancels::default());
    // Every 20–60 ms, a running parent (every other look, one waiting for its child) is
    // cancelled about one try in four.
    let running_parent = "SELECT id::text FROM saga.saga_instances
                           WHERE status = 'running' AND parent_id IS NULL
                             AND cancel_requested IS NULL
                           ORDER BY id OFFSET $1 LIMIT 1";
    let waiting_parent = "SELECT id::text FROM saga.saga_instances
                           WHERE status = 'running' AND parent_id IS NULL
                             AND cancel_requested IS NULL AND waiting_for = 'child:ship'
                           ORDER BY id OFFSET $1 LIMIT 1";
    let operator = tokio::spawn(cancel_at_random(
        db.url.clone(),
        seed ^ 0x5eed,
        stop.clone(),
        cancels.clone(),
        Picking {
            sql: running_parent,
            sometimes: Some((waiting_parent, 0.5)),
            window: 30,
            pause_ms: (20, 60),
            odds: 0.25,
            reason: "the order was cancelled",
        },
    ));
    settle(&db, &mut workers, Duration::from_secs(180), |workers| {
        workers.restart_exited();
        let slot =
            usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0))).unwrap_or(0);
        workers.kill(slot);
        workers.restart(slot);
        Duration::from_millis(rng.between(150, 600))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    operator.await.expect("the operator task");
    workers.stop_all();
    // One child per parent step `ship` that began (the invariants check which child is whose).
    let children = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_steps
              WHERE name = 'ship' AND phase = 'action'",
        )
        .await;
    let summary = invariants::check(&db.pool, started + children, deaths(&workers)).await;
    let count = |sql: &'static str| db.scalar(sql);
    let sent_back = count(
        "SELECT COUNT(*) FROM saga.saga_instances c
          WHERE c.parent_id IS NOT NULL AND c.status = 'compensated'
            AND EXISTS (SELECT 1 FROM saga.saga_steps st
                         WHERE st.saga_id = c.id AND st.phase = 'action' AND st.name = 's2'
                           AND st.status = 'completed')",
    )
    .await;
    let stopped_running = count(
        "SELECT COUNT(*) FROM saga.saga_instances c
          WHERE c.parent_id IS NOT NULL AND c.status = 'compensated'
            AND EXISTS (SELECT 1 FROM saga.saga_events e
                         WHERE e.saga_id = c.id AND e.kind = 'operator_action'
                           AND e.detail LIKE 'cancel requested by parent saga%the parent is compensating%')",
    )
    .await;
    let declined = count(
        "SELECT COUNT(*) FROM saga.saga_instances c
          WHERE c.parent_id IS NOT NULL AND c.status = 'compensated'
            AND c.input->>'fail_at' = '2'",
    )
    .await;
    // Parents whose grouped steps ran at once: both begun before either completed.
    let together = count(
        "SELECT COUNT(*) FROM (
             SELECT e.saga_id FROM saga.saga_events e
               JOIN saga.saga_instances s ON s.id = e.saga_id AND s.saga_type = 'crash_parent'
              WHERE e.step IN ('s2', 's3') AND e.phase = 'action'
              GROUP BY e.saga_id
             HAVING MAX(e.seq) FILTER (WHERE e.kind = 'step_started' AND e.attempt = 1)
                  < MIN(e.seq) FILTER (WHERE e.kind = 'step_completed')
                AND COUNT(DISTINCT e.step) FILTER (WHERE e.kind = 'step_started') = 2) g",
    )
    .await;
    let cancels =
        cancels.requested.load(Ordering::SeqCst) + cancels.immediate.load(Ordering::SeqCst);
    assert!(workers.kills > 0, "no worker was killed");
    assert!(summary.takeovers > 0, "no lease was taken over");
    assert!(children > 0, "no child saga was started");
    assert!(
        sent_back > 0,
        "no completed child was sent back to compensate"
    );
    assert!(declined > 0, "no child compensated on its own");
    assert!(together > 0, "no parent ran its two grouped steps at once");
    assert!(cancels > 0, "no parent was cancelled while it ran");
    assert!(
        stopped_running > 0,
        "no running child was stopped by its parent's cancel"
    );
    let mut notes = reported(&workers);
    notes.push(format!(
        "children: {children} started; {declined} compensated on their own (their parent's step failed); {sent_back} completed and were sent back by their parent; {stopped_running} were stopped mid-run by their parent's cancel ({cancels} parents cancelled); {together} parents ran their grouped steps at once"
    ));
    Report { summary, notes }
}
