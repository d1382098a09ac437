//! Scenario 3b: ambiguous commits. Every worker's store is wrapped in a decorator whose writes
//! that complete a step, change the saga's status or give its lease back commit and then,
//! with odds of 15%, answer `StoreUnavailable` — the caller cannot tell that they committed.

use std::time::Duration;

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;

const SAGAS: u64 = 500;
const WORKERS: usize = 3;

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let started = db.start(plans(&mut rng, SAGAS, 0.3, (0, 4))).await;
    let mut specs = specs(&db, "ambiguous", WORKERS, 2_000, seed);
    for spec in &mut specs {
        spec.ambiguous = Some(0.15);
    }
    let mut workers = Workers::start(specs, Vec::new());
    settle(&db, &mut workers, Duration::from_secs(120), |_| {
        Duration::from_millis(100)
    })
    .await;
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    {
        let reports = workers.reports.lock().expect("reports");
        for what in ["completion", "final"] {
            assert!(
                reports.ambiguous.get(what).copied().unwrap_or(0) > 0,
                "no ambiguous {what} was injected: {:?}",
                reports.ambiguous
            );
        }
    }
    let mut notes = reported(&workers);
    let history_repeats = db
        .scalar(
            "SELECT COUNT(*) FROM (
                 SELECT saga_id, kind, step, phase, attempt, detail, COUNT(*)
                   FROM saga.saga_events
                  WHERE kind IN ('step_started', 'step_completed', 'status_changed', 'step_failed',
                                 'retry_scheduled', 'intervention_opened')
                  GROUP BY saga_id, kind, step, phase, attempt, detail
                 HAVING COUNT(*) > 1) repeated",
        )
        .await;
    assert_eq!(
        history_repeats, 0,
        "a write that committed but answered an error was recorded twice in the history"
    );
    notes.push("each committed write recorded once in the history (0 repeated entries)".into());
    Report { summary, notes }
}
