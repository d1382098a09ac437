//! Scenario 3: PostgreSQL restarts mid-run, the way a crash restarts it (`pg_ctl stop -m
//! immediate`: every connection dropped, no checkpoint). Once while sagas simply run; once
//! while workers are taking over the expired leases of a worker just SIGKILLed (short
//! leases), so that claims, takeovers and the restart overlap.

use std::time::{Duration, Instant};

use saga_store::testing::TestCluster;

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;

const SAGAS: u64 = 600;
const WORKERS: usize = 3;
const LEASE_MS: u64 = 1_500;

async fn wait_for(db: &Db, what: &str, within: Duration, sql: &str, at_least: i64) {
    let deadline = Instant::now() + within;
    loop {
        let now = sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
        if now >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {now} < {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn run(seed: u64) -> Report {
    let cluster = TestCluster::start().await.expect("a cluster of its own");
    let db = Db::prepare(cluster.url().to_owned()).await;
    let mut rng = Rng::new(seed);
    let started = db.start(plans(&mut rng, SAGAS, 0.2, (2, 12))).await;
    let mut workers = Workers::start(specs(&db, "restart", WORKERS, LEASE_MS, seed), Vec::new());
    let mut notes = Vec::new();

    // 1. A restart while sagas run.
    let settled =
        "SELECT COUNT(*) FROM saga.saga_instances WHERE status NOT IN ('running', 'compensating')";
    wait_for(
        &db,
        "sagas settling before restart 1",
        Duration::from_secs(90),
        settled,
        150,
    )
    .await;
    let in_flight_1 = db.active().await.unwrap_or(0);
    let began = Instant::now();
    cluster.restart_immediately().await.expect("restart 1");
    assert!(
        in_flight_1 > 0,
        "restart 1 must interrupt work in flight: no saga was running"
    );
    notes.push(format!(
        "restart 1 mid-run, with {} sagas settled and {in_flight_1} in flight: server back in {:.2}s",
        db.settled().await,
        began.elapsed().as_secs_f64()
    ));

    // 2. SIGKILL a worker holding leases; restart the server the moment the others begin
    //    taking its sagas over.
    wait_for(
        &db,
        "sagas settling before restart 2",
        Duration::from_secs(90),
        settled,
        300,
    )
    .await;
    let victim = workers.name(0).to_owned();
    let held = format!(
        "SELECT COUNT(*) FROM saga.saga_instances WHERE lease_owner = '{victim}'
            AND status IN ('running', 'compensating')"
    );
    wait_for(
        &db,
        "the victim holding leases",
        Duration::from_secs(30),
        &held,
        3,
    )
    .await;
    let taken_from = format!(
        "SELECT COUNT(*) FROM saga.saga_events
          WHERE kind = 'lease_taken_over' AND detail LIKE '% took over from {victim}'"
    );
    let before = db.scalar(&taken_from).await;
    let holding = db.scalar(&held).await;
    workers.kill(0);
    wait_for(
        &db,
        "a takeover of the victim's leases",
        Duration::from_secs(30),
        &taken_from,
        before + 1,
    )
    .await;
    let at_restart = db.scalar(&taken_from).await - before;
    let in_flight_2 = db.active().await.unwrap_or(0);
    let began = Instant::now();
    cluster.restart_immediately().await.expect("restart 2");
    assert!(
        in_flight_2 > 0,
        "restart 2 must interrupt work in flight: no saga was running"
    );
    notes.push(format!(
        "restart 2 during takeovers: {victim} SIGKILLed holding {holding} leases; {at_restart} taken over and {in_flight_2} sagas in flight when the server went down; back in {:.2}s",
        began.elapsed().as_secs_f64()
    ));
    workers.restart(0);

    settle(&db, &mut workers, Duration::from_secs(150), |workers| {
        workers.restart_exited();
        Duration::from_millis(100)
    })
    .await;
    workers.stop_all();
    let taken_total = db.scalar(&taken_from).await - before;
    notes.push(format!(
        "leases of {victim} taken over in all after the kill: {taken_total}"
    ));
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    assert!(
        taken_total > 0,
        "no lease of the killed worker was taken over"
    );
    notes.extend(reported(&workers));
    Report { summary, notes }
}
