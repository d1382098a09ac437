//! Scenario 1: SIGKILL a random worker every 100–500 ms while 2,000 five-step sagas run on 4
//! worker processes, restarting each killed worker. A fifth of the sagas have a step that is
//! declined (they compensate); a quarter of those have a compensation that fails too (they
//! need an operator).

use std::time::{Duration, Instant};

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;

pub(crate) const SAGAS: u64 = 2_000;
const WORKERS: usize = 4;

pub(crate) async fn run(seed: u64) -> Report {
    run_with(seed, SAGAS).await
}

pub(crate) async fn run_with(seed: u64, sagas: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let started = db.start(plans(&mut rng, sagas, 0.2, (0, 10))).await;
    let mut workers = Workers::start(specs(&db, "kill", WORKERS, 2_000, seed), Vec::new());
    workers.wait_ready(Duration::from_secs(30)).await;
    let began = Instant::now();
    settle(&db, &mut workers, Duration::from_secs(180), |workers| {
        let slot =
            usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0))).unwrap_or(0);
        workers.kill(slot);
        workers.restart(slot);
        Duration::from_millis(rng.between(100, 500))
    })
    .await;
    let took = began.elapsed();
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    assert!(workers.kills > 0, "no worker was killed");
    assert!(summary.takeovers > 0, "no lease was taken over");
    for status in ["completed", "compensated", "needs_intervention"] {
        assert!(
            summary.by_status.iter().any(|(s, n)| s == status && *n > 0),
            "no saga ended {status}: {summary}"
        );
    }
    let mut notes = reported(&workers);
    notes.push(format!(
        "all {sagas} sagas settled {:.1}s after the workers came up, under a kill every 100-500 ms",
        took.as_secs_f64()
    ));
    Report { summary, notes }
}
