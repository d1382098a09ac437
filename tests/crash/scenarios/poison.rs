//! Scenario 6: poison. Sagas that cannot run — an unknown saga type, a definition whose steps
//! were removed, reordered or renamed without a version bump, stored input that no longer
//! decodes (Postgres) or is not JSON at all (SQLite), an input over the payload limit, a step
//! that panics, an output over the limit, a compensation that hangs past its timeout — each
//! ends parked or failed with a readable reason, and none is picked up again and again. A step
//! that panics and an output over the limit are unknown outcomes (the effect may have
//! happened): after their retries they wait for a person, never recorded as clean failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{Config, Error, Orchestrator, SagaId, SqliteStore};
use saga_store::PgStore;
use sqlx::Row;

use super::{deaths, plans, reported, settle, Db, Report};
use crate::child::WorkerSpec;
use crate::harness::Workers;
use crate::invariants;
use crate::ledger::Ledger;
use crate::rng::Rng;
use crate::sagas::{
    self, BigOutput, Bulky, Crash, Evolving, Ghost, Hangs, Panicky, Plan, Registry, REMOVED,
    RENAMED, REORDERED,
};

/// A poison saga and what must become of it.
struct Expect {
    id: SagaId,
    what: &'static str,
    status: &'static str,
    /// Words the reason (status reason, step errors or open item) must contain.
    reason: &'static str,
}

fn worker(url: &str, name: &str, seed: u64) -> WorkerSpec {
    WorkerSpec {
        url: url.to_owned(),
        name: name.to_owned(),
        registry: Registry::PoisonWorker,
        lease_ttl_ms: 2_000,
        concurrency: 16,
        poll_ms: 100,
        ambiguous: None,
        permit_deaths: None,
        seed,
    }
}

pub(crate) async fn run(seed: u64) -> Report {
    let db = Db::fresh().await;
    let mut rng = Rng::new(seed);
    let mut started = db.start(plans(&mut rng, 40, 0.3, (0, 3))).await;

    let store = Arc::new(
        PgStore::connect(&db.url)
            .await
            .expect("connect the starter"),
    );
    let starter = Orchestrator::new(store, Config::default());
    sagas::register(
        &starter,
        Registry::PoisonStarter,
        &Ledger::new(None, "starter".into()),
    )
    .expect("register");
    let mut expect = Vec::new();
    let mut add = |id: saga::Result<SagaId>, what, status, reason| {
        expect.push(Expect {
            id: id.expect("start a poison saga"),
            what,
            status,
            reason,
        });
    };
    add(
        starter.start::<Ghost>(&1).await,
        "unknown saga type",
        "needs_intervention",
        "is not registered",
    );
    add(
        starter.start::<Evolving<REMOVED, true>>(&1).await,
        "step removed without a version bump",
        "needs_intervention",
        "fingerprint",
    );
    add(
        starter.start::<Evolving<REORDERED, true>>(&1).await,
        "steps reordered without a version bump",
        "needs_intervention",
        "fingerprint",
    );
    add(
        starter.start::<Evolving<RENAMED, true>>(&1).await,
        "step renamed without a version bump",
        "needs_intervention",
        "fingerprint",
    );
    add(
        starter.start::<Panicky>(&1).await,
        "a step that panics (an unknown outcome: escalated)",
        "needs_intervention",
        "panicked",
    );
    add(
        starter.start::<BigOutput>(&1).await,
        "an output over the payload limit (took effect, cannot be recorded: escalated)",
        "needs_intervention",
        "over the limit",
    );
    add(
        starter.start::<Hangs>(&1).await,
        "a compensation that hangs past its timeout",
        "needs_intervention",
        "timed out",
    );
    let plan = Plan::random(9_000, &mut rng, 0.0, (0, 0));
    for (what, stored) in [
        ("stored input of another shape", "\"no longer a plan\""),
        (
            "stored input with a field of the wrong type",
            "{\"n\": \"seven\"}",
        ),
    ] {
        let id = starter.start::<Crash>(&plan).await;
        if let Ok(id) = &id {
            sqlx::query("UPDATE saga.saga_instances SET input = $1::jsonb WHERE id = $2::uuid")
                .bind(stored)
                .bind(id.to_string())
                .execute(&db.pool)
                .await
                .expect("change a stored input");
        }
        add(id, what, "needs_intervention", "does not decode");
    }
    started += i64::try_from(expect.len()).unwrap_or(0);
    let oversized = starter.start::<Bulky>(&"x".repeat(2 * 1024 * 1024)).await;
    assert!(
        matches!(oversized, Err(Error::PayloadTooLarge { .. })),
        "an oversized input is refused at start: {oversized:?}"
    );
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM saga.saga_instances WHERE saga_type = 'bulky'")
            .await,
        0,
        "nothing stored for the oversized input"
    );

    let mut workers = Workers::start(
        (0..2)
            .map(|i| worker(&db.url, &format!("poison-w{i}"), seed + i))
            .collect(),
        Vec::new(),
    );
    settle(&db, &mut workers, Duration::from_secs(60), |_| {
        Duration::from_millis(100)
    })
    .await;

    let mut notes = Vec::new();
    for item in &expect {
        let row = sqlx::query(
            "SELECT s.status, COALESCE(s.status_reason, ''),
                    COALESCE((SELECT string_agg(last_error, ' / ') FROM saga.saga_steps st
                               WHERE st.saga_id = s.id), ''),
                    COALESCE((SELECT string_agg(error, ' / ') FROM saga.saga_interventions i
                               WHERE i.saga_id = s.id), '')
               FROM saga.saga_instances s WHERE s.id = $1::uuid",
        )
        .bind(item.id.to_string())
        .fetch_one(&db.pool)
        .await
        .expect("a poison saga");
        let status: String = row.get(0);
        let (reason, errors, item_error): (String, String, String) =
            (row.get(1), row.get(2), row.get(3));
        let all = format!("{reason} | {errors} | {item_error}");
        assert_eq!(status, item.status, "{}: {all}", item.what);
        assert!(
            all.contains(item.reason),
            "{}: the reason should say `{}`: {all}",
            item.what,
            item.reason
        );
        // What an operator reads first: the open item, else the saga's reason, else the
        // failed step's error.
        let readable = [item_error, reason, errors]
            .into_iter()
            .find(|text| !text.is_empty())
            .unwrap_or_default();
        let shown: String = readable.chars().take(140).collect();
        notes.push(format!("{}: {status}: {shown}", item.what));
    }
    notes.push(
        "an input over the payload limit: refused at start (PayloadTooLarge), nothing stored"
            .into(),
    );

    // Never a hot loop: nothing a parked or failed saga does changes while the workers idle.
    let ids: Vec<String> = expect.iter().map(|item| item.id.to_string()).collect();
    let activity = "SELECT (SELECT COUNT(*) FROM saga.saga_events WHERE saga_id::text = ANY($1))
                         + (SELECT COALESCE(SUM(fencing_token), 0)::bigint FROM saga.saga_instances
                             WHERE id::text = ANY($1))";
    let measure = || async {
        sqlx::query_scalar::<_, i64>(activity)
            .bind(&ids)
            .fetch_one(&db.pool)
            .await
            .expect("activity")
    };
    let before = measure().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = measure().await;
    assert_eq!(
        before, after,
        "a settled poison saga was claimed or changed again"
    );
    assert_eq!(
        db.scalar(
            "SELECT COUNT(*) FROM saga.saga_instances
              WHERE status = 'needs_intervention' AND next_run_at IS NOT NULL"
        )
        .await,
        0,
        "a parked saga is never due again"
    );
    workers.stop_all();
    let summary = invariants::check(&db.pool, started, deaths(&workers)).await;
    notes.push(sqlite_malformed_json(seed).await);
    notes.extend(reported(&workers));
    Report { summary, notes }
}

/// On SQLite the input column is text: corrupt it so it is not JSON at all.
async fn sqlite_malformed_json(seed: u64) -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = format!("sqlite://{}", dir.path().join("poison.db").display());
    let store = Arc::new(SqliteStore::connect(&url).await.expect("open SQLite"));
    let starter = Orchestrator::new(store, Config::default());
    sagas::register(
        &starter,
        Registry::Standard,
        &Ledger::new(None, "starter".into()),
    )
    .expect("register");
    let plan = Plan::random(1, &mut Rng::new(seed), 0.0, (0, 0));
    let id = starter
        .start::<Crash>(&plan)
        .await
        .expect("start on SQLite");
    drop(starter);
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open SQLite");
    sqlx::query("UPDATE saga_instances SET input = '{\"n\": 1, \"fail_at\": ' WHERE id = ?")
        .bind(id.to_string())
        .execute(&pool)
        .await
        .expect("corrupt the stored input");

    let mut workers = Workers::start(vec![worker(&url, "poison-sqlite", seed)], Vec::new());
    let state = "SELECT status, COALESCE(status_reason, ''), fencing_token,
                        (SELECT COUNT(*) FROM saga_events WHERE saga_id = ?1),
                        (SELECT COUNT(*) FROM saga_interventions WHERE saga_id = ?1 AND status = 'open')
                   FROM saga_instances WHERE id = ?1";
    let read = || async {
        let row = sqlx::query(state)
            .bind(id.to_string())
            .fetch_one(&pool)
            .await
            .expect("read the saga");
        (
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<i64, _>(2),
            row.get::<i64, _>(3),
            row.get::<i64, _>(4),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while read().await.0 != "needs_intervention" {
        assert!(
            Instant::now() < deadline,
            "the malformed saga was not parked: {:?}\n{}",
            read().await,
            workers.tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parked = read().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let later = read().await;
    workers.stop_all();
    assert!(parked.1.contains("malformed JSON"), "{parked:?}");
    assert_eq!(parked.4, 1, "one open item: {parked:?}");
    assert_eq!(parked, later, "the parked saga is left alone");
    let shown: String = parked.1.chars().take(150).collect();
    format!("malformed stored JSON (SQLite): needs_intervention: {shown}")
}
