//! Scenario 11: sagas whose middle three steps run as one parallel group (`crash_grouped`),
//! under SIGKILLs of random workers and with workers dying at the fault points (after a group's
//! `in_progress` records are durable, after an effect, mid-compensation). A third of the sagas
//! have a declined step, often one of the group, so groups stop while their other steps run,
//! and are compensated together. Every killed or aborted worker is restarted.

use std::time::Duration;

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;
use crate::sagas::CrashGrouped;

const SAGAS: u64 = 600;
const WORKERS: usize = 4;
const FAULTS: &str = "after_begin_step=0.005,after_action=0.005,mid_compensation=0.02";

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let started = db
        .start_as::<CrashGrouped>(plans(&mut rng, SAGAS, 0.33, (0, 10)))
        .await;
    let mut workers = Workers::start(
        specs(&db, "group", WORKERS, 2_000, seed),
        vec![("SAGA_FAULTS".to_owned(), FAULTS.to_owned())],
    );
    workers.wait_ready(Duration::from_secs(30)).await;
    settle(&db, &mut workers, Duration::from_secs(180), |workers| {
        workers.restart_exited();
        let slot =
            usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0))).unwrap_or(0);
        workers.kill(slot);
        workers.restart(slot);
        Duration::from_millis(rng.between(150, 600))
    })
    .await;
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    // Groups that ran at once: all three steps begun before any of them completed.
    let together = db
        .scalar(
            "SELECT COUNT(*) FROM (
                 SELECT saga_id FROM saga.saga_events
                  WHERE step IN ('s2', 's3', 's4') AND phase = 'action'
                  GROUP BY saga_id
                 HAVING MAX(seq) FILTER (WHERE kind = 'step_started' AND attempt = 1)
                      < MIN(seq) FILTER (WHERE kind = 'step_completed')
                    AND COUNT(DISTINCT step) FILTER (WHERE kind = 'step_started') = 3) g",
        )
        .await;
    let undone_together = db
        .scalar(
            "SELECT COUNT(*) FROM (
                 SELECT saga_id FROM saga.saga_events
                  WHERE step IN ('s2', 's3', 's4') AND phase = 'compensation'
                  GROUP BY saga_id
                 HAVING COUNT(DISTINCT step) FILTER (WHERE kind = 'step_started') >= 2
                    AND MAX(seq) FILTER (WHERE kind = 'step_started' AND attempt = 1)
                      < MIN(seq) FILTER (WHERE kind = 'step_completed')) g",
        )
        .await;
    assert!(workers.kills > 0, "no worker was killed");
    assert!(summary.takeovers > 0, "no lease was taken over");
    assert!(together > 0, "no group ran its three steps at once");
    assert!(
        undone_together > 0,
        "no group had two or more steps undone at once"
    );
    for status in ["completed", "compensated"] {
        assert!(
            summary.by_status.iter().any(|(s, n)| s == status && *n > 0),
            "no saga ended {status}: {summary}"
        );
    }
    let mut notes = reported(&workers);
    notes.push(format!(
        "groups: {together} sagas began their three grouped steps before any completed; {undone_together} undid two or three of them at once"
    ));
    Report { summary, notes }
}
