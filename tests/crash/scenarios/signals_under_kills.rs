//! Scenario 9: sagas that wait for a signal, whose signals are sent from another process (this
//! one, through the library) while worker processes are SIGKILLed. Some signals arrive before
//! their saga reaches the waiting step, some while it waits; a third are delivered twice (a
//! provider retrying its webhook). Every signal is consumed exactly once, none is lost: every
//! saga completes with its own payload as the waiting step's output, and each effect happened
//! once.

use std::sync::Arc;
use std::time::Duration;

use saga::{Config, Delivered, Error, IdempotencyKey, Orchestrator, SignalKey};
use saga_store::PgStore;

use super::{deaths, reported, settle, specs, Db, Report};
use crate::harness::Workers;
use crate::invariants;
use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::sagas::{self, CrashSignal, Paid, Registry};

const SAGAS: u64 = 300;
const WORKERS: usize = 3;

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    // The sender: an orchestrator that registers the type (so that payloads are checked) and
    // runs no workers.
    let store = Arc::new(PgStore::connect(&db.url).await.expect("connect the sender"));
    let sender = Orchestrator::new(store, Config::default());
    sagas::register(
        &sender,
        Registry::Standard,
        &Ledger::new(None, "sender".into()),
    )
    .expect("register");
    for n in 0..SAGAS {
        sender
            .start_with_key::<CrashSignal>(IdempotencyKey::new(format!("signal-{n}")), &n)
            .await
            .expect("start a saga");
    }
    let started = i64::try_from(SAGAS).unwrap_or(i64::MAX);
    // A fifth of the signals go out before any worker runs: they arrive before their step.
    let mut order: Vec<u64> = (0..SAGAS).collect();
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.between(0, u64::try_from(i).unwrap_or(0))).unwrap_or(0);
        order.swap(i, j);
    }
    let (early, late) = order.split_at(order.len() / 5);
    let mut duplicates = 0u64;
    for n in early {
        duplicates += send(&sender, *n, rng.chance(0.33)).await;
    }
    let mut workers = Workers::start(specs(&db, "signal", WORKERS, 1_500, seed), Vec::new());
    workers.wait_ready(Duration::from_secs(30)).await;
    // The rest while workers run and die, a few every few milliseconds.
    let late: Vec<(u64, bool)> = late.iter().map(|n| (*n, rng.chance(0.33))).collect();
    let sending = tokio::spawn(async move {
        let mut duplicates = 0u64;
        for chunk in late.chunks(5) {
            for (n, twice) in chunk {
                duplicates += send(&sender, *n, *twice).await;
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        duplicates
    });
    settle(&db, &mut workers, Duration::from_secs(240), |workers| {
        let slot =
            usize::try_from(rng.between(0, u64::try_from(WORKERS - 1).unwrap_or(0))).unwrap_or(0);
        workers.kill(slot);
        workers.restart(slot);
        Duration::from_millis(rng.between(200, 700))
    })
    .await;
    duplicates += sending.await.expect("the sender task");
    workers.stop_all();

    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    assert!(workers.kills > 0, "no worker was killed");
    let completed = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_instances
              WHERE saga_type = 'crash_signal' AND status = 'completed'",
        )
        .await;
    assert_eq!(
        completed, started,
        "every saga got its signal and completed: {summary}"
    );
    let signals = db.scalar("SELECT COUNT(*) FROM saga.saga_signals").await;
    assert_eq!(signals, started, "one signal stored per saga");
    let own_payload = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_steps st
               JOIN saga.saga_instances s ON s.id = st.saga_id
              WHERE st.name = 'paid' AND st.status = 'completed'
                AND st.output = jsonb_build_object('charge', 'ch-' || (s.input #>> '{}'))",
        )
        .await;
    assert_eq!(own_payload, started, "each saga consumed its own signal");
    // Signals that came before the saga waited for them: consumed without a wait.
    let before_wait = db
        .scalar(
            "SELECT COUNT(*) FROM saga.saga_instances s
              WHERE NOT EXISTS (SELECT 1 FROM saga.saga_events w
                                 WHERE w.saga_id = s.id AND w.kind = 'waiting'
                                   AND w.seq < (SELECT r.seq FROM saga.saga_events r
                                                 WHERE r.saga_id = s.id AND r.kind = 'signal_received'))",
        )
        .await;
    assert!(before_wait > 0, "no signal arrived before its saga waited");
    assert!(
        before_wait < started,
        "no signal arrived while its saga waited"
    );
    let mut notes = reported(&workers);
    notes.push(format!(
        "signals: {started} delivered once each ({before_wait} before their saga waited, the rest while it waited), {duplicates} repeated deliveries answered as duplicates; every saga completed with its own payload"
    ));
    Report { summary, notes }
}

/// Sends saga `n`'s signal (twice when `twice`), retrying while the store is unavailable;
/// returns how many duplicates were answered.
async fn send(sender: &Orchestrator, n: u64, twice: bool) -> u64 {
    let paid = Paid {
        charge: format!("ch-{n}"),
    };
    let mut duplicates = 0;
    for delivery in 0..(1 + u64::from(twice)) {
        loop {
            match sender
                .signal(
                    IdempotencyKey::new(format!("signal-{n}")),
                    &paid,
                    SignalKey::new(format!("evt-{n}")),
                )
                .await
            {
                Ok(Delivered::New(_)) => {
                    assert_eq!(
                        delivery, 0,
                        "a repeated delivery of saga {n}'s signal was stored again"
                    );
                    break;
                }
                Ok(Delivered::Duplicate(_)) => {
                    assert_eq!(
                        delivery, 1,
                        "the first delivery of saga {n}'s signal was a duplicate"
                    );
                    duplicates += 1;
                    break;
                }
                Err(Error::StoreUnavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("signal of saga {n} refused: {err}"),
            }
        }
    }
    duplicates
}
