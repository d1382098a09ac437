//! Scenario 4: a zombie worker. One worker is frozen (SIGSTOP) in the middle of slow steps,
//! past its 2 s lease; the others take its sagas over and carry on; then it is thawed
//! (SIGCONT) and wakes up believing it still holds them. Fencing must refuse every write it
//! attempts, and the ledger must absorb the calls it finishes.

use std::time::{Duration, Instant};

use super::{deaths, plans, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::rng::Rng;

const SAGAS: u64 = 150;
const WORKERS: usize = 3;
const LEASE_MS: u64 = 2_000;

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let started = db.start(plans(&mut rng, SAGAS, 0.2, (100, 250))).await;
    let mut workers = Workers::start(specs(&db, "zombie", WORKERS, LEASE_MS, seed), Vec::new());
    let zombie = workers.name(0).to_owned();
    let held_sql = format!(
        "SELECT COUNT(*) FROM saga.saga_instances
          WHERE lease_owner = '{zombie}' AND status IN ('running', 'compensating')"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.scalar(&held_sql).await < 8 {
        assert!(Instant::now() < deadline, "{zombie} never held 8 leases");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.freeze(0);
    let frozen_at = Instant::now();
    let held = db.scalar(&held_sql).await;
    // Wait until every saga it held was taken over by another worker, for at most four lease
    // periods (a saga whose row the frozen process had locked mid-write waits for it).
    let taken_sql = format!(
        "SELECT COUNT(*) FROM saga.saga_events
          WHERE kind = 'lease_taken_over' AND detail LIKE '% took over from {zombie}'"
    );
    let deadline = Instant::now() + Duration::from_millis(4 * LEASE_MS);
    while db.scalar(&taken_sql).await < held && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let taken_while_frozen = db.scalar(&taken_sql).await;
    // Sagas still leased to the frozen process, and how many of those are row-locked by a
    // transaction it had open when it froze (claims skip locked rows).
    let still_held = format!(
        "SELECT id FROM saga.saga_instances
          WHERE lease_owner = '{zombie}' AND status IN ('running', 'compensating')"
    );
    let mut probe = db.pool.begin().await.expect("a probe transaction");
    let leased = sqlx::query(&still_held)
        .fetch_all(&mut *probe)
        .await
        .expect("leased")
        .len();
    let unlocked = sqlx::query(&format!("{still_held} FOR UPDATE SKIP LOCKED"))
        .fetch_all(&mut *probe)
        .await
        .expect("unlocked")
        .len();
    probe.rollback().await.expect("end the probe");
    let frozen_for = frozen_at.elapsed();
    let thawed_at_db = db
        .scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint")
        .await;
    workers.thaw(0);

    settle(&db, &mut workers, Duration::from_secs(120), |_| {
        Duration::from_millis(100)
    })
    .await;
    // Let the zombie finish whatever it still had in hand before stopping everyone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    let late_calls = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM public.ledger_calls
              WHERE worker = '{zombie}' AND at >= to_timestamp({thawed_at_db} / 1000.0)
                AND key IN (SELECT key FROM public.ledger_effects WHERE first_worker <> '{zombie}')"
        ))
        .await;
    let (refused, abandoned) = {
        let reports = workers.reports.lock().expect("reports");
        (
            reports.leases_lost.get(&zombie).copied().unwrap_or(0),
            reports.drives_abandoned.get(&zombie).copied().unwrap_or(0),
        )
    };
    assert!(
        taken_while_frozen > 0,
        "no saga of the frozen worker was taken over in {frozen_for:?}"
    );
    // Every lease it could lose was taken over: only sagas whose rows a transaction it had open
    // kept locked (claims skip locked rows) may still have been leased to it.
    assert_eq!(
        unlocked, 0,
        "{unlocked} of the frozen worker's sagas were neither taken over nor row-locked by it after {frozen_for:?}"
    );
    assert_eq!(
        taken_while_frozen + i64::try_from(leased).unwrap_or(i64::MAX),
        held,
        "each saga the frozen worker held was taken over or is row-locked by it"
    );
    assert!(
        refused > 0,
        "the thawed zombie never noticed it lost its leases (no fenced write or heartbeat refused)"
    );
    let mut notes = vec![
        format!(
            "{zombie} frozen {:.1}s holding {held} leases; {taken_while_frozen} taken over meanwhile{}",
            frozen_for.as_secs_f64(),
            if leased > 0 {
                format!(
                    " ({leased} still leased to it, {} of them row-locked by a transaction it had open, so no claim could take them)",
                    leased - unlocked
                )
            } else {
                String::new()
            }
        ),
        format!(
            "after SIGCONT: {refused} of its drives were refused by fencing (lease lost) and {abandoned} gave up on store timeouts that ran out while it was frozen; {late_calls} late downstream call(s) it finished were absorbed by their keys"
        ),
    ];
    notes.extend(reported(&workers));
    Report { summary, notes }
}
