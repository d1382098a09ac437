//! Scenario 2: workers die exactly at the dangerous instants, by the library's fault points
//! (feature `fault-injection`): after `in_progress` is durable but before the step runs
//! (`after_begin_step`), after the action's effect but before `completed` is written
//! (`after_action`), and after a compensation ran but before it is recorded
//! (`mid_compensation`). Each aborted worker is restarted until every saga settled.

use std::time::Duration;

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;

const SAGAS: u64 = 500;
const WORKERS: usize = 4;
pub(crate) const FAULTS: &str = "after_begin_step=0.02,after_action=0.02,mid_compensation=0.05";

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let started = db.start(plans(&mut rng, SAGAS, 0.3, (0, 4))).await;
    // Fewer sagas per process than elsewhere: a fault point kills every step in flight in its
    // process, not only the one at the dangerous instant.
    let mut specs = specs(&db, "fault", WORKERS, 1_000, seed);
    for spec in &mut specs {
        spec.concurrency = 8;
    }
    let mut workers = Workers::start(specs, vec![("SAGA_FAULTS".to_owned(), FAULTS.to_owned())]);
    settle(&db, &mut workers, Duration::from_secs(180), |workers| {
        workers.restart_exited();
        Duration::from_millis(100)
    })
    .await;
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    {
        let reports = workers.reports.lock().expect("reports");
        for point in ["after_begin_step", "after_action", "mid_compensation"] {
            assert!(
                reports.faults.get(point).copied().unwrap_or(0) > 0,
                "fault point {point} never fired: {:?}",
                reports.faults
            );
        }
    }
    assert!(
        summary.repeats_absorbed > 0,
        "a death after the action must lead to a repeated call with the same key"
    );
    Report {
        summary,
        notes: reported(&workers),
    }
}
