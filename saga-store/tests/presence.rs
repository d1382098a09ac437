//! Postgres presence: instant takeover of a dead worker's sagas (a binary of its own: it ends a
//! server session, which must not race the tracing checks of the other Postgres tests).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use saga_core::{Error, Store};
use saga_store::testing::TestPg;
use saga_store::PgStore;
use sqlx::Connection;

/// A saga of `saga_type` with input `n`, created idle (no lease, nothing begun).
fn new_saga(saga_type: &str, n: u32) -> saga_core::NewSaga {
    saga_core::NewSaga {
        id: saga_core::SagaId::new(),
        saga_type: saga_core::SagaType::new(saga_type),
        version: 1,
        fingerprint: "fp".to_owned(),
        input: serde_json::json!({ "n": n }),
        input_hash: format!("hash-{n}"),
        idempotency_key: None,
        trace_context: None,
        lease: None,
        changes: Vec::new(),
        deadline: None,
        dedup_window: None,
        parent: None,
    }
}

/// A worker's presence: while its session lives, nobody takes its leases before they expire
/// (a frozen process keeps them); once the server ends that session (the process was killed),
/// another worker takes its sagas over at its next claim, long before the lease would expire,
/// and the old holder's late writes are refused by fencing. A second worker claiming through
/// the same store has a presence of its own and keeps its sagas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_session_ended_is_taken_over_at_once_and_a_live_one_is_not() {
    use saga_core::{Change, WorkerId};
    let url = TestPg::fresh_database().await.unwrap();
    let first = PgStore::connect(&url).await.unwrap();
    let second = PgStore::connect(&url).await.unwrap();
    let sagas: Vec<_> = (1..=3).map(|n| new_saga("presence", n)).collect();
    let ids: Vec<_> = sagas.iter().map(|saga| saga.id).collect();
    for saga in sagas {
        first.create(saga).await.unwrap();
    }
    let (a, b, c) = (
        WorkerId::new("worker-a"),
        WorkerId::new("worker-b"),
        WorkerId::new("worker-c"),
    );
    let lease = Duration::from_secs(30);
    let held = first
        .claim_loaded(&a, saga_core::now(), lease, 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 3, "worker-a holds every saga");
    // worker-c claims through the same store (two workers in one process): it is present too.
    let others: Vec<_> = (4..=5).map(|n| new_saga("presence", n)).collect();
    for saga in others {
        first.create(saga).await.unwrap();
    }
    let held_by_c = first.claim(&c, saga_core::now(), lease, 10).await.unwrap();
    assert_eq!(held_by_c.len(), 2, "worker-c holds the two newer sagas");

    // worker-a lives (or is frozen): its leases stand until they expire.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let none = second
        .claim_loaded(&b, saga_core::now(), lease, 10)
        .await
        .unwrap();
    assert!(
        none.is_empty(),
        "a live holder's sagas are not taken: {none:?}"
    );

    // The server ends worker-a's session, as it does when its process is killed.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND objsubid = 2
            AND classid = hashtext('saga-worker')::oid
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND objid = hashtext('saga/worker-a')::oid",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, 1, "worker-a held its presence lock on one session");

    let mut taken = Vec::new();
    for _ in 0..40 {
        taken = second
            .claim_loaded(&b, saga_core::now(), lease, 10)
            .await
            .unwrap();
        if !taken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut taken_ids: Vec<_> = taken.iter().map(|(lease, _)| lease.saga).collect();
    taken_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        taken_ids, expected,
        "every saga of the dead holder is taken over"
    );
    for (lease, _) in &taken {
        assert_eq!(lease.taken_over_from.as_ref(), Some(&a));
        assert!(lease.expires_at > saga_core::now());
    }
    // worker-c, whose session lives in the same store, keeps its sagas.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let kept = second
        .claim_loaded(&b, saga_core::now(), lease, 10)
        .await
        .unwrap();
    assert!(
        kept.is_empty(),
        "a live worker sharing the dead one's store keeps its sagas: {kept:?}"
    );
    // worker-a's lease, 30 s from expiring, is fenced off.
    let (stale, _) = &held[0];
    let late = first
        .apply(stale, &[Change::Release { next_run_at: None }])
        .await;
    assert!(
        matches!(late, Err(Error::LeaseLost(_))),
        "the old holder's write is refused: {late:?}"
    );
    first.close().await;
    second.close().await;
}

/// When the server ends every session at once (a restart, a failover, a proxy resetting its
/// connections), every live worker's lock is gone for a moment: a store that finds its own
/// session ended takes no saga over for a lease's length, so a live worker's sagas stay its
/// own until it takes its lock again at its next claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_session_ended_at_once_no_live_lease_is_taken_over() {
    use saga_core::WorkerId;
    let url = TestPg::fresh_database().await.unwrap();
    let first = PgStore::connect(&url).await.unwrap();
    let second = PgStore::connect(&url).await.unwrap();
    for n in 1..=3 {
        first.create(new_saga("restart", n)).await.unwrap();
    }
    let (a, b) = (WorkerId::new("worker-a"), WorkerId::new("worker-b"));
    let lease = Duration::from_secs(30);
    let held = first
        .claim_loaded(&a, saga_core::now(), lease, 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    // worker-b is present too (it claimed, finding nothing).
    let none = second
        .claim_loaded(&b, saga_core::now(), lease, 10)
        .await
        .unwrap();
    assert!(none.is_empty());

    // Every presence session ends at once, as in a restart.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND objsubid = 2
            AND classid = hashtext('saga-worker')::oid
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, 2, "both workers held their presence");

    // worker-b claims again (after its once-a-second check): it finds its own session ended,
    // takes its lock again, and takes none of worker-a's sagas, though worker-a holds no lock
    // until its own next claim.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let taken = second
            .claim_loaded(&b, saga_core::now(), lease, 10)
            .await
            .unwrap();
        assert!(
            taken.is_empty(),
            "a live worker's sagas were taken after a restart: {taken:?}"
        );
    }
    first.close().await;
    second.close().await;
}
