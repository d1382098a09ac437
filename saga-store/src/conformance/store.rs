//! The Store contract: claims, leases and fencing, dedup on start, step transitions, history, interventions, listing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    after, now, store::Refusal, Attempt, CancelOutcome, Change, Created, Error, EventKind,
    IdempotencyKey, InterventionId, InterventionKind, InterventionStatus, Lease, NewIntervention,
    NewSaga, Phase, SagaFilter, SagaId, SagaStatus, SagaType, StepError, StepIndex, StepName,
    StepStatus, Store, Timestamp, WorkerId,
};
use serde_json::{json, Value};

const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A saga to create: a fresh id, the given type, input and start key, and a hash derived from the
/// input (so the same input gives the same hash).
fn new_saga(saga_type: &str, key: Option<&str>, input: Value) -> NewSaga {
    NewSaga {
        id: SagaId::new(),
        saga_type: SagaType::new(saga_type),
        version: 3,
        fingerprint: format!("fp-{saga_type}-v3"),
        input_hash: format!("hash:{saga_type}:{input}"),
        input,
        idempotency_key: key.map(IdempotencyKey::new),
        trace_context: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        lease: None,
        changes: Vec::new(),
        deadline: None,
        dedup_window: None,
        parent: None,
    }
}

/// Creates a saga that must be new, and returns its id.
async fn create<S: Store>(store: &S, saga: NewSaga) -> SagaId {
    let id = saga.id;
    let created = store
        .create(saga)
        .await
        .expect("create of a fresh saga failed");
    assert_eq!(
        created,
        Created::New(id),
        "create of a saga with a fresh id (and unused key) must return Created::New with that id"
    );
    id
}

/// Creates `n` sagas of type `order` without start keys.
async fn create_many<S: Store>(store: &S, n: usize) -> Vec<SagaId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(create(store, new_saga("order", None, json!({ "n": i }))).await);
    }
    ids
}

/// Claims at `at` for `worker`, expecting exactly one due saga, and returns its lease.
async fn claim_one<S: Store>(store: &S, worker: &str, at: Timestamp, lease_for: Duration) -> Lease {
    let leases = store
        .claim(&WorkerId::new(worker), at, lease_for, 10)
        .await
        .expect("claim failed");
    assert_eq!(
        leases.len(),
        1,
        "{worker} claiming at {at} expected exactly one due saga, got {leases:?}"
    );
    leases.into_iter().next().unwrap()
}

/// Claims every due saga at `at` for one worker, expecting exactly `ids`; returns the leases by saga.
async fn claim_all<S: Store>(store: &S, ids: &[SagaId], at: Timestamp) -> HashMap<SagaId, Lease> {
    let leases = store
        .claim(&WorkerId::new("worker-all"), at, LEASE, 100)
        .await
        .expect("claim failed");
    let by_saga: HashMap<SagaId, Lease> = leases.into_iter().map(|l| (l.saga, l)).collect();
    let claimed: HashSet<SagaId> = by_saga.keys().copied().collect();
    let expected: HashSet<SagaId> = ids.iter().copied().collect();
    assert_eq!(
        claimed, expected,
        "claiming with a high limit must claim exactly the due, unleased sagas"
    );
    by_saga
}

async fn apply_ok<S: Store>(store: &S, lease: &Lease, changes: &[Change]) {
    store.apply(lease, changes).await.unwrap_or_else(|err| {
        panic!("apply by the lease holder must succeed, got {err}: {changes:?}")
    });
}

fn name(index: u32) -> StepName {
    StepName::new(format!("step_{index}"))
}

fn begin(saga: SagaId, index: u32, phase: Phase, attempt: u32) -> Change {
    let name = name(index);
    Change::BeginStep {
        index: StepIndex(index),
        key: IdempotencyKey::for_step(saga, &name, phase),
        name,
        phase,
        attempt: Attempt(attempt),
    }
}

fn complete(index: u32, phase: Phase, attempt: u32, output: Option<Value>) -> Change {
    Change::CompleteStep {
        index: StepIndex(index),
        name: name(index),
        phase,
        attempt: Attempt(attempt),
        output,
    }
}

fn fail(
    index: u32,
    phase: Phase,
    attempt: u32,
    error: StepError,
    retry_at: Option<Timestamp>,
) -> Change {
    Change::FailStep {
        index: StepIndex(index),
        name: name(index),
        phase,
        attempt: Attempt(attempt),
        error,
        retry_at,
    }
}

fn set_status(status: SagaStatus) -> Change {
    Change::SetStatus {
        status,
        reason: Some(format!("moved to {status} by the conformance suite")),
    }
}

fn release(next_run_at: Option<Timestamp>) -> Change {
    Change::Release { next_run_at }
}

fn intervention(saga: SagaId) -> NewIntervention {
    let step = StepName::new("charge_card");
    NewIntervention {
        id: InterventionId::new(),
        kind: InterventionKind::CompensationFailed,
        idempotency_key: Some(IdempotencyKey::for_step(saga, &step, Phase::Compensation)),
        step: Some((StepIndex(1), step)),
        phase: Some(Phase::Compensation),
        input: Some(json!({ "order": 7, "items": ["a", "b"] })),
        output: Some(json!({ "charge_id": "ch_123", "cents": 4200 })),
        error: "permanent: refund refused, card closed".to_owned(),
        parked_from: Some(SagaStatus::Compensating),
    }
}

async fn snapshot<S: Store>(store: &S, id: SagaId) -> saga_core::SagaSnapshot {
    store
        .load(id)
        .await
        .expect("load failed")
        .unwrap_or_else(|| panic!("saga {id} was created but load returned None"))
}

async fn history_len<S: Store>(store: &S, id: SagaId) -> usize {
    store.history(id).await.expect("history failed").len()
}

pub async fn create_then_load_round_trips<S: Store>(store: Arc<S>) {
    let before = now();
    let input = json!({ "sku": "A-1", "qty": 3, "gift": true, "tags": ["x", "y"], "note": null });
    let deadline = after(before, DAY);
    let saga = NewSaga {
        deadline: Some(deadline),
        ..new_saga("order", Some("order-42"), input.clone())
    };
    let id = create(&*store, saga.clone()).await;
    let after_create = now();

    let snap = snapshot(&*store, id).await;
    let record = &snap.record;
    assert_eq!(record.id, id, "load returned another saga");
    assert_eq!(
        record.deadline,
        Some(deadline),
        "the deadline a start call set must round-trip"
    );
    assert_eq!(
        (record.waiting_for.as_deref(), record.signals_received),
        (None, 0),
        "a new saga waits for nothing and received no signal"
    );
    assert_eq!(
        record.status,
        SagaStatus::Running,
        "a new saga starts in running"
    );
    assert_eq!(
        record.status_reason, None,
        "a new saga has no status reason"
    );
    assert_eq!(
        record.saga_type, saga.saga_type,
        "saga type must round-trip"
    );
    assert_eq!(record.version, saga.version, "version must round-trip");
    assert_eq!(
        record.fingerprint, saga.fingerprint,
        "fingerprint must round-trip"
    );
    assert_eq!(record.input, input, "input JSON must round-trip exactly");
    assert_eq!(
        record.input_hash, saga.input_hash,
        "input hash must round-trip"
    );
    assert_eq!(
        record.idempotency_key, saga.idempotency_key,
        "start key must round-trip"
    );
    assert_eq!(
        record.trace_context, saga.trace_context,
        "trace context must round-trip"
    );
    assert!(
        record.next_run_at.is_some_and(|at| at <= after_create),
        "a new saga must be due now, got next_run_at {:?}",
        record.next_run_at
    );
    assert_eq!(record.lease_owner, None, "a new saga is not leased");
    assert_eq!(
        record.lease_expires_at, None,
        "a new saga has no lease expiry"
    );
    assert!(
        record.created_at >= before && record.created_at <= after_create,
        "created_at {} must lie between {before} and {after_create}",
        record.created_at
    );
    assert!(
        snap.steps.is_empty(),
        "a new saga has no step records, got {:?}",
        snap.steps
    );

    let history = store.history(id).await.expect("history failed");
    assert_eq!(
        history.len(),
        1,
        "a new saga has exactly one event, got {history:?}"
    );
    assert_eq!(
        history[0].kind,
        EventKind::SagaStarted,
        "the first event is saga_started"
    );
    assert_eq!(
        history[0].saga_id, id,
        "the saga_started event belongs to the saga"
    );

    assert!(
        store
            .load(SagaId::new())
            .await
            .expect("load failed")
            .is_none(),
        "loading an unknown saga id must return None"
    );
}

pub async fn start_key_dedup_returns_existing_or_conflicts<S: Store>(store: Arc<S>) {
    let input = json!({ "order": 1 });
    let first = create(&*store, new_saga("order", Some("key-1"), input.clone())).await;

    let repeat = new_saga("order", Some("key-1"), input.clone());
    let created = store.create(repeat).await.expect("repeated start failed");
    assert_eq!(
        created,
        Created::Existing(first),
        "same start key and same input hash must return the existing saga"
    );

    let mut conflicting = new_saga("order", Some("key-1"), json!({ "order": 2 }));
    conflicting.input_hash = "another-hash".to_owned();
    match store.create(conflicting).await {
        Err(Error::Conflict { key, existing }) => {
            assert_eq!(
                existing, first,
                "the conflict must name the saga the key started first"
            );
            assert_eq!(
                key,
                IdempotencyKey::new("key-1"),
                "the conflict must name the start key"
            );
        }
        other => {
            panic!("same start key with another input hash must be Error::Conflict, got {other:?}")
        }
    }

    let all = store
        .list(&SagaFilter::default())
        .await
        .expect("list failed");
    let ids: Vec<SagaId> = all.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        vec![first],
        "dedup and conflict must not store a second saga"
    );
    assert_eq!(
        history_len(&*store, first).await,
        1,
        "dedup must not append events"
    );
}

pub async fn claim_takes_each_due_saga_once<S: Store>(store: Arc<S>) {
    let ids = create_many(&*store, 3).await;
    let t = now();
    let worker_a = WorkerId::new("worker-a");
    let leases = store
        .claim(&worker_a, t, LEASE, 10)
        .await
        .expect("claim failed");
    assert_eq!(
        leases.len(),
        3,
        "worker A must claim all 3 due sagas, got {leases:?}"
    );
    let claimed: HashSet<SagaId> = leases.iter().map(|l| l.saga).collect();
    assert_eq!(
        claimed,
        ids.iter().copied().collect::<HashSet<_>>(),
        "each due saga must be claimed exactly once"
    );
    for lease in &leases {
        assert!(
            lease.token.0 >= 1,
            "a claim must increment the fencing token, got {}",
            lease.token
        );
        assert_eq!(
            lease.owner, worker_a,
            "the lease must name the claiming worker"
        );
        assert_eq!(
            lease.expires_at,
            after(t, LEASE),
            "the lease must expire at now + lease_for"
        );
        let record = snapshot(&*store, lease.saga).await.record;
        assert_eq!(
            record.lease_owner.as_ref(),
            Some(&worker_a),
            "load must show the lease owner"
        );
        assert_eq!(
            record.fencing_token, lease.token,
            "load must show the lease's token"
        );
        assert_eq!(
            record.lease_expires_at,
            Some(lease.expires_at),
            "load must show the lease expiry"
        );
    }

    let other = store
        .claim(&WorkerId::new("worker-b"), t, LEASE, 10)
        .await
        .expect("claim failed");
    assert!(
        other.is_empty(),
        "sagas under a live lease must not be claimed again, got {other:?}"
    );
}

pub async fn claim_respects_limit_and_next_run_at<S: Store>(store: Arc<S>) {
    let ids = create_many(&*store, 3).await;
    let t = now();
    let leases = store
        .claim(&WorkerId::new("worker-a"), t, LEASE, 2)
        .await
        .expect("claim failed");
    assert_eq!(
        leases.len(),
        2,
        "a claim with limit 2 must take 2 of 3 due sagas, got {leases:?}"
    );
    let deferred = leases[0].saga;
    let held = leases[1].saga;
    let third = *ids
        .iter()
        .find(|id| **id != deferred && **id != held)
        .expect("the limited claim returned an unknown saga");

    let due_again = after(t, Duration::from_secs(10));
    apply_ok(&*store, &leases[0], &[release(Some(due_again))]).await;
    let record = snapshot(&*store, deferred).await.record;
    assert_eq!(
        record.next_run_at,
        Some(due_again),
        "release must persist next_run_at"
    );
    assert_eq!(
        record.lease_owner, None,
        "release must clear the lease owner"
    );
    assert_eq!(
        record.lease_expires_at, None,
        "release must clear the lease expiry"
    );

    let worker_b = WorkerId::new("worker-b");
    let now_claim = store
        .claim(&worker_b, t, LEASE, 10)
        .await
        .expect("claim failed");
    let now_ids: Vec<SagaId> = now_claim.iter().map(|l| l.saga).collect();
    assert_eq!(
        now_ids,
        vec![third],
        "at now only the unclaimed saga is due: not the one released until now+10s, not the one still leased"
    );

    let later = store
        .claim(
            &worker_b,
            after(t, Duration::from_secs(11)),
            Duration::from_secs(1),
            10,
        )
        .await
        .expect("claim failed");
    let later_ids: Vec<SagaId> = later.iter().map(|l| l.saga).collect();
    assert_eq!(
        later_ids,
        vec![deferred],
        "at now+11s the saga released until now+10s is due again (the others are still leased)"
    );
}

pub async fn expired_lease_is_taken_over_and_stale_writes_are_fenced<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let t = now();
    let lease_a = claim_one(&*store, "worker-a", t, Duration::from_secs(1)).await;
    assert_eq!(lease_a.saga, id);

    let lease_b = claim_one(&*store, "worker-b", after(t, Duration::from_secs(2)), LEASE).await;
    assert_eq!(
        lease_b.saga, id,
        "worker B must take over the expired lease"
    );
    assert!(
        lease_b.token > lease_a.token,
        "a takeover must carry a higher fencing token ({} !> {})",
        lease_b.token,
        lease_a.token
    );
    let history = store.history(id).await.expect("history failed");
    assert!(
        history.iter().any(|e| e.kind == EventKind::LeaseTakenOver),
        "taking over an expired lease must append lease_taken_over, got {history:?}"
    );
    let events_before = history.len();

    match store
        .apply(&lease_a, &[begin(id, 0, Phase::Action, 1)])
        .await
    {
        Err(Error::LeaseLost(saga)) => assert_eq!(saga, id, "LeaseLost must name the saga"),
        other => {
            panic!("a write with a stale fencing token must fail with LeaseLost, got {other:?}")
        }
    }
    let snap = snapshot(&*store, id).await;
    assert!(
        snap.steps.is_empty(),
        "a fenced write must write nothing, got {:?}",
        snap.steps
    );
    assert_eq!(
        snap.record.lease_owner,
        Some(WorkerId::new("worker-b")),
        "B must still hold the lease"
    );
    assert_eq!(
        snap.record.fencing_token, lease_b.token,
        "the stale write must not touch the token"
    );
    assert_eq!(
        history_len(&*store, id).await,
        events_before,
        "a fenced write must append no events"
    );

    let extend_to = after(t, Duration::from_secs(60));
    match store.heartbeat(&lease_a, extend_to).await {
        Err(Error::LeaseLost(_)) => {}
        other => panic!("a heartbeat with a stale token must fail with LeaseLost, got {other:?}"),
    }
    let renewed = store
        .heartbeat(&lease_b, extend_to)
        .await
        .expect("the current holder's heartbeat must succeed");
    assert_eq!(
        renewed.expires_at, extend_to,
        "heartbeat must return the extended lease"
    );
    assert_eq!(
        renewed.token, lease_b.token,
        "heartbeat must keep the token"
    );
    assert_eq!(
        snapshot(&*store, id).await.record.lease_expires_at,
        Some(extend_to),
        "heartbeat must persist the new expiry"
    );
    apply_ok(&*store, &renewed, &[begin(id, 0, Phase::Action, 1)]).await;
    assert_eq!(
        snapshot(&*store, id).await.steps.len(),
        1,
        "the current holder's write must land"
    );
}

pub async fn apply_is_all_or_nothing<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    let events_before = history_len(&*store, id).await;

    let batch = [
        begin(id, 0, Phase::Action, 1),
        set_status(SagaStatus::Compensating),
        complete(1, Phase::Action, 1, Some(json!("never started"))),
    ];
    match store.apply(&lease, &batch).await {
        Err(Error::Refused { saga, refusal }) => {
            assert_eq!(saga, id);
            assert_eq!(
                refusal,
                Refusal::StepNotBegun {
                    step: name(1),
                    phase: Phase::Action
                }
            );
        }
        other => panic!(
            "completing a step that never began must fail the whole batch with Refused(StepNotBegun), got {other:?}"
        ),
    }
    let snap = snapshot(&*store, id).await;
    assert!(
        snap.steps.is_empty(),
        "a failed batch must write no step, got {:?}",
        snap.steps
    );
    assert_eq!(
        snap.record.status,
        SagaStatus::Running,
        "a failed batch must not change the status"
    );
    assert_eq!(
        history_len(&*store, id).await,
        events_before,
        "a failed batch must append no events"
    );

    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    assert_eq!(
        snapshot(&*store, id).await.steps.len(),
        1,
        "the lease must remain usable after a failed batch"
    );
}

pub async fn completed_step_never_restarts<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    let output = json!({ "reservation": "r-1" });
    apply_ok(
        &*store,
        &lease,
        &[
            begin(id, 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, Some(output.clone())),
        ],
    )
    .await;
    let events_before = history_len(&*store, id).await;

    let restart = store.apply(&lease, &[begin(id, 0, Phase::Action, 2)]).await;
    assert!(
        matches!(
            &restart,
            Err(Error::Refused { saga, refusal: Refusal::StepCompleted { step, phase: Phase::Action } })
                if *saga == id && *step == name(0)
        ),
        "beginning a completed step again must fail with Refused(StepCompleted), got {restart:?}"
    );

    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("the completed step must still be recorded");
    assert_eq!(
        step.status,
        StepStatus::Completed,
        "a completed step stays completed"
    );
    assert_eq!(
        step.output.as_ref(),
        Some(&output),
        "a completed step keeps its output"
    );
    assert_eq!(
        step.attempt,
        Attempt(1),
        "a refused restart must not bump the attempt"
    );
    assert_eq!(
        history_len(&*store, id).await,
        events_before,
        "a refused restart appends no events"
    );
}

pub async fn step_transitions_persist<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    let action_key = IdempotencyKey::for_step(id, &name(0), Phase::Action);

    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("begun step must be recorded");
    assert_eq!(
        step.status,
        StepStatus::InProgress,
        "BeginStep records in_progress"
    );
    assert_eq!(step.attempt, Attempt(1), "BeginStep records the attempt");
    assert_eq!(step.name, name(0), "BeginStep records the step name");
    assert_eq!(
        step.idempotency_key, action_key,
        "BeginStep records the step key"
    );
    assert!(step.started_at.is_some(), "BeginStep records started_at");

    let retry_at = after(now(), Duration::from_secs(30));
    apply_ok(
        &*store,
        &lease,
        &[fail(
            0,
            Phase::Action,
            1,
            StepError::transient("upstream 503"),
            Some(retry_at),
        )],
    )
    .await;
    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("step must be recorded");
    assert_eq!(
        step.status,
        StepStatus::Pending,
        "a failure with retry_at goes back to pending"
    );
    assert_eq!(
        step.next_attempt_at,
        Some(retry_at),
        "the retry time must persist exactly (ms precision)"
    );
    assert!(
        step.last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "the failure must be recorded in last_error, got {:?}",
        step.last_error
    );
    assert!(
        step.finished_at.is_some(),
        "a failed attempt records finished_at"
    );

    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 2)]).await;
    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("step must be recorded");
    assert_eq!(
        step.status,
        StepStatus::InProgress,
        "a retry goes back to in_progress"
    );
    assert_eq!(
        step.attempt,
        Attempt(2),
        "a retry records the new attempt number"
    );
    assert_eq!(
        step.next_attempt_at, None,
        "a started retry is no longer scheduled"
    );
    assert_eq!(
        step.idempotency_key, action_key,
        "the key stays the same on every attempt"
    );

    let output = json!({ "reservation": "r-9", "lines": [1, 2, 3] });
    apply_ok(
        &*store,
        &lease,
        &[complete(0, Phase::Action, 2, Some(output.clone()))],
    )
    .await;
    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("step must be recorded");
    assert_eq!(
        step.status,
        StepStatus::Completed,
        "CompleteStep records completed"
    );
    assert_eq!(
        step.output.as_ref(),
        Some(&output),
        "the output must round-trip exactly"
    );
    assert!(
        step.finished_at.is_some(),
        "CompleteStep records finished_at"
    );

    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Compensation, 1)]).await;
    let snap = snapshot(&*store, id).await;
    assert_eq!(
        snap.steps.len(),
        2,
        "the compensation phase is a separate record, got {:?}",
        snap.steps
    );
    let comp = snap
        .step(StepIndex(0), Phase::Compensation)
        .expect("the compensation phase must be recorded");
    assert_eq!(
        comp.status,
        StepStatus::InProgress,
        "the compensation begins in_progress"
    );
    assert_eq!(
        comp.idempotency_key,
        IdempotencyKey::for_step(id, &name(0), Phase::Compensation),
        "the compensation has its own key"
    );
    let action = snap
        .step(StepIndex(0), Phase::Action)
        .expect("action must be recorded");
    assert_eq!(
        action.status,
        StepStatus::Completed,
        "beginning the compensation leaves the action completed"
    );
    assert_eq!(
        action.output.as_ref(),
        Some(&output),
        "beginning the compensation keeps the action output"
    );

    apply_ok(
        &*store,
        &lease,
        &[fail(
            0,
            Phase::Compensation,
            1,
            StepError::permanent("refund refused"),
            None,
        )],
    )
    .await;
    let snap = snapshot(&*store, id).await;
    let comp = snap
        .step(StepIndex(0), Phase::Compensation)
        .expect("the compensation phase must be recorded");
    assert_eq!(
        comp.status,
        StepStatus::Failed,
        "a failure without retry_at is failed for good"
    );
    assert_eq!(
        comp.next_attempt_at, None,
        "a failed-for-good step has no next attempt"
    );
    assert!(
        comp.last_error
            .as_deref()
            .is_some_and(|e| e.contains("refund refused")),
        "the failure must be recorded in last_error, got {:?}",
        comp.last_error
    );
}

pub async fn escalation_opens_one_intervention_and_parks<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    let item = intervention(id);
    let before = now();
    apply_ok(&*store, &lease, &[Change::Escalate(item.clone())]).await;
    apply_ok(&*store, &lease, &[Change::Escalate(item.clone())]).await;
    apply_ok(&*store, &lease, &[release(None)]).await;
    let after_apply = now();

    let record = snapshot(&*store, id).await.record;
    assert_eq!(
        record.status,
        SagaStatus::NeedsIntervention,
        "escalation parks the saga"
    );
    assert_eq!(
        record.lease_owner, None,
        "release after escalation clears the lease"
    );
    assert_eq!(record.next_run_at, None, "a parked saga is not scheduled");

    let open = store
        .interventions(true)
        .await
        .expect("interventions failed");
    assert_eq!(
        open.len(),
        1,
        "escalating twice with the same intervention id must open exactly one item, got {open:?}"
    );
    let found = &open[0];
    assert_eq!(found.saga_id, id, "the item names the saga");
    assert_eq!(found.item, item, "every field of the item must round-trip");
    assert_eq!(found.status, InterventionStatus::Open, "a new item is open");
    assert!(
        found.opened_at >= before && found.opened_at <= after_apply,
        "opened_at {} must lie between {before} and {after_apply}",
        found.opened_at
    );
    assert_eq!(found.resolved_at, None, "an open item is not resolved");
    assert_eq!(found.resolved_by, None, "an open item has no resolver");
    assert_eq!(found.resolution, None, "an open item has no resolution");
    assert_eq!(
        found.resolution_reason, None,
        "an open item has no resolution reason"
    );
    assert_eq!(
        store
            .interventions(false)
            .await
            .expect("interventions failed")
            .len(),
        1,
        "all items: still exactly one"
    );

    let later = store
        .claim(&WorkerId::new("worker-b"), after(now(), DAY), LEASE, 10)
        .await
        .expect("claim failed");
    assert!(
        later.is_empty(),
        "a saga in needs_intervention must never be claimed, got {later:?}"
    );
}

pub async fn settled_sagas_are_never_claimed<S: Store>(store: Arc<S>) {
    let ids = create_many(&*store, 4).await;
    let t = now();
    let leases = claim_all(&*store, &ids, t).await;
    // A completed saga released with no next run, and settled sagas released as if due now: the
    // status alone must keep every one of them away from workers.
    let plans: [(&[SagaStatus], Option<Timestamp>); 4] = [
        (&[SagaStatus::Completed], None),
        (
            &[SagaStatus::Compensating, SagaStatus::Compensated],
            Some(t),
        ),
        (&[SagaStatus::Cancelled], Some(t)),
        (&[SagaStatus::NeedsIntervention], Some(t)),
    ];
    for (id, (statuses, next)) in ids.iter().zip(plans) {
        let mut changes: Vec<Change> = statuses.iter().map(|s| set_status(*s)).collect();
        changes.push(release(next));
        apply_ok(&*store, &leases[id], &changes).await;
        let record = snapshot(&*store, *id).await.record;
        assert_eq!(
            record.status,
            *statuses.last().unwrap(),
            "SetStatus must persist"
        );
        assert_eq!(record.next_run_at, next, "Release must persist next_run_at");
    }

    for at in [t, after(t, Duration::from_secs(60)), after(t, DAY)] {
        let claimed = store
            .claim(&WorkerId::new("worker-b"), at, LEASE, 10)
            .await
            .expect("claim failed");
        assert!(
            claimed.is_empty(),
            "sagas that are completed, compensated, cancelled or need intervention must never be claimed (at {at}), got {claimed:?}"
        );
    }
}

pub async fn history_records_each_change_in_order<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    // Another saga's events must not show up in this one's history.
    let other = create(&*store, new_saga("refund", None, json!({ "n": 2 }))).await;

    apply_ok(
        &*store,
        &lease,
        &[
            begin(id, 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, Some(json!("ok"))),
            set_status(SagaStatus::Completed),
            release(None),
        ],
    )
    .await;

    let history = store.history(id).await.expect("history failed");
    let kinds: Vec<EventKind> = history.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::SagaStarted,
            EventKind::StepStarted,
            EventKind::StepCompleted,
            EventKind::StatusChanged
        ],
        "history must hold one event per change, in order (release appends nothing)"
    );
    assert!(
        history.windows(2).all(|w| w[0].seq < w[1].seq),
        "event seq must increase: {history:?}"
    );
    assert!(
        history.iter().all(|e| e.saga_id == id),
        "history must hold only this saga's events"
    );
    let started = &history[1];
    assert_eq!(started.step, Some(name(0)), "step_started names the step");
    assert_eq!(
        started.phase,
        Some(Phase::Action),
        "step_started names the phase"
    );
    assert_eq!(
        started.attempt,
        Some(Attempt(1)),
        "step_started names the attempt"
    );
    assert!(
        history[3]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("completed")),
        "status_changed names the new status, got {:?}",
        history[3].detail
    );
    assert_eq!(
        history_len(&*store, other).await,
        1,
        "the other saga only has its saga_started"
    );
}

pub async fn list_filters_and_pages<S: Store>(store: Arc<S>) {
    let specs = [
        ("order", Some("o-1")),
        ("refund", Some("r-1")),
        ("order", None),
        ("refund", None),
        ("order", Some("o-3")),
    ];
    let mut ids = Vec::new();
    for (i, (saga_type, key)) in specs.iter().enumerate() {
        ids.push(create(&*store, new_saga(saga_type, *key, json!({ "i": i }))).await);
    }
    let mut sorted = ids.clone();
    sorted.sort();

    let done = ids[2];
    let t = now();
    let leases = claim_all(&*store, &ids, t).await;
    for (id, lease) in &leases {
        if *id == done {
            apply_ok(
                &*store,
                lease,
                &[set_status(SagaStatus::Completed), release(None)],
            )
            .await;
        } else {
            apply_ok(&*store, lease, &[release(Some(t))]).await;
        }
    }

    let list = |filter: SagaFilter| {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&filter)
                .await
                .expect("list failed")
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<SagaId>>()
        }
    };
    let sorted_of = |mut v: Vec<SagaId>| {
        v.sort();
        v
    };

    assert_eq!(
        list(SagaFilter::default()).await,
        sorted,
        "no filter: every saga, in id order"
    );
    assert_eq!(
        list(SagaFilter {
            status: Some(SagaStatus::Completed),
            ..SagaFilter::default()
        })
        .await,
        vec![done],
        "status filter: only the completed saga"
    );
    assert_eq!(
        list(SagaFilter {
            status: Some(SagaStatus::Running),
            ..SagaFilter::default()
        })
        .await,
        sorted
            .iter()
            .copied()
            .filter(|id| *id != done)
            .collect::<Vec<_>>(),
        "status filter: the running sagas, in id order"
    );
    assert_eq!(
        list(SagaFilter {
            saga_type: Some(SagaType::new("refund")),
            ..SagaFilter::default()
        })
        .await,
        sorted_of(vec![ids[1], ids[3]]),
        "type filter: only the refunds, in id order"
    );
    assert_eq!(
        list(SagaFilter {
            saga_type: Some(SagaType::new("order")),
            status: Some(SagaStatus::Running),
            ..SagaFilter::default()
        })
        .await,
        sorted_of(vec![ids[0], ids[4]]),
        "type and status filters combine"
    );
    assert_eq!(
        list(SagaFilter {
            idempotency_key: Some(IdempotencyKey::new("o-3")),
            ..SagaFilter::default()
        })
        .await,
        vec![ids[4]],
        "key filter: only the saga started with that key"
    );
    assert!(
        list(SagaFilter {
            idempotency_key: Some(IdempotencyKey::new("nope")),
            ..SagaFilter::default()
        })
        .await
        .is_empty(),
        "key filter with an unused key: nothing"
    );

    let records = store
        .list(&SagaFilter::default())
        .await
        .expect("list failed");
    let first_created = records
        .iter()
        .map(|r| r.created_at)
        .min()
        .expect("5 sagas listed");
    let last_created = records
        .iter()
        .map(|r| r.created_at)
        .max()
        .expect("5 sagas listed");
    assert!(
        list(SagaFilter {
            created_before: Some(first_created),
            ..SagaFilter::default()
        })
        .await
        .is_empty(),
        "created_before is exclusive: nothing was created before the first saga"
    );
    assert_eq!(
        list(SagaFilter {
            created_before: Some(after(last_created, Duration::from_millis(1))),
            ..SagaFilter::default()
        })
        .await,
        sorted,
        "created_before after the last creation: every saga"
    );

    let mut pages: Vec<Vec<SagaId>> = Vec::new();
    let mut cursor: Option<SagaId> = None;
    loop {
        let page = list(SagaFilter {
            limit: Some(2),
            after: cursor,
            ..SagaFilter::default()
        })
        .await;
        assert!(
            page.len() <= 2,
            "a page must hold at most `limit` sagas, got {page:?}"
        );
        if page.is_empty() {
            break;
        }
        cursor = page.last().copied();
        pages.push(page);
        assert!(
            pages.len() <= 5,
            "paging must terminate, got pages {pages:?}"
        );
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![2, 2, 1], "5 sagas in pages of 2");
    let joined: Vec<SagaId> = pages.concat();
    assert_eq!(
        joined, sorted,
        "pages must follow id order without overlap or gap"
    );
}

pub async fn count_by_status_counts<S: Store>(store: Arc<S>) {
    let counts = |store: Arc<S>| async move {
        let raw = store
            .count_by_status()
            .await
            .expect("count_by_status failed");
        let mut map: HashMap<SagaStatus, u64> = HashMap::new();
        for (status, n) in &raw {
            assert!(
                map.insert(*status, *n).is_none(),
                "count_by_status listed {status} twice: {raw:?}"
            );
        }
        map.retain(|_, n| *n > 0);
        map
    };
    assert!(
        counts(Arc::clone(&store)).await.is_empty(),
        "an empty store counts nothing"
    );

    let ids = create_many(&*store, 5).await;
    assert_eq!(
        counts(Arc::clone(&store)).await,
        HashMap::from([(SagaStatus::Running, 5)]),
        "5 new sagas are all running"
    );

    let t = now();
    let leases = claim_all(&*store, &ids, t).await;
    apply_ok(
        &*store,
        &leases[&ids[0]],
        &[set_status(SagaStatus::Completed), release(None)],
    )
    .await;
    apply_ok(
        &*store,
        &leases[&ids[1]],
        &[set_status(SagaStatus::Compensating), release(Some(t))],
    )
    .await;
    apply_ok(
        &*store,
        &leases[&ids[2]],
        &[Change::Escalate(intervention(ids[2])), release(None)],
    )
    .await;
    apply_ok(&*store, &leases[&ids[3]], &[release(Some(t))]).await;
    apply_ok(
        &*store,
        &leases[&ids[4]],
        &[set_status(SagaStatus::Cancelled), release(None)],
    )
    .await;

    assert_eq!(
        counts(Arc::clone(&store)).await,
        HashMap::from([
            (SagaStatus::Running, 1),
            (SagaStatus::Completed, 1),
            (SagaStatus::Compensating, 1),
            (SagaStatus::NeedsIntervention, 1),
            (SagaStatus::Cancelled, 1),
        ]),
        "counts must follow every status change"
    );
}

pub async fn claim_loaded_returns_what_load_would<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("loaded", None, json!({"n": 1}))).await;
    let now = saga_core::now();
    let lease = claim_one(&*store, "a", now, Duration::from_secs(60)).await;
    apply_ok(
        &*store,
        &lease,
        &[
            begin(id, 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, Some(json!("out"))),
            release(Some(now)),
        ],
    )
    .await;
    let later = saga_core::after(now, Duration::from_secs(1));
    let claimed = store
        .claim_loaded(&WorkerId::new("b"), later, Duration::from_secs(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "the saga is due again");
    let (lease_b, loaded) = claimed.into_iter().next().unwrap();
    assert_eq!(lease_b.saga, id);
    assert!(lease_b.token > lease.token, "a new claim, a new token");
    // Every backend reads the saga in the claim's round trip: the worker never needs a load.
    let loaded = loaded
        .expect("claim_loaded returns the snapshot with the claim")
        .expect("a readable record");
    let stored = snapshot(&*store, id).await;
    assert_eq!(loaded, stored, "claim_loaded's snapshot is the stored saga");
    assert_eq!(loaded.steps.len(), 1);
    assert_eq!(loaded.record.lease_owner, Some(WorkerId::new("b")));
}

pub async fn a_saga_created_leased_belongs_to_its_starter_until_the_lease_expires<S: Store>(
    store: Arc<S>,
) {
    let now = saga_core::now();
    let until = saga_core::after(now, Duration::from_secs(30));
    let starter = WorkerId::new("starter");
    let id = create(
        &*store,
        NewSaga {
            lease: Some((starter.clone(), until)),
            ..new_saga("direct", None, json!({}))
        },
    )
    .await;
    let record = snapshot(&*store, id).await.record;
    assert_eq!(record.lease_owner, Some(starter.clone()));
    assert_eq!(record.lease_expires_at, Some(until));
    assert_eq!(record.fencing_token.0, 1);
    let others = store
        .claim(&WorkerId::new("other"), now, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert!(others.is_empty(), "leased to its starter");
    let lease = Lease {
        saga: id,
        owner: starter,
        token: record.fencing_token,
        expires_at: until,
        taken_over_from: None,
    };
    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    // The starter died: the lease expires and another worker takes over with a newer token.
    let later = saga_core::after(until, Duration::from_secs(1));
    let taken = claim_one(&*store, "other", later, Duration::from_secs(30)).await;
    assert!(taken.token.0 > 1);
    assert!(matches!(
        store.apply(&lease, &[release(None)]).await,
        Err(Error::LeaseLost(_))
    ));
}

pub async fn a_creation_can_begin_the_first_step<S: Store>(store: Arc<S>) {
    let now = saga_core::now();
    let until = saga_core::after(now, LEASE);
    let starter = WorkerId::new("starter");
    let mut saga = NewSaga {
        lease: Some((starter.clone(), until)),
        ..new_saga("direct", Some("first-step"), json!({ "n": 1 }))
    };
    let id = saga.id;
    saga.changes = vec![begin(id, 0, Phase::Action, 1)];
    let created = store.create(saga.clone()).await.expect("create failed");
    assert_eq!(created, Created::New(id));
    let stored = snapshot(&*store, id).await;
    assert_eq!(
        stored.steps.len(),
        1,
        "the creation must write the first step"
    );
    let step = &stored.steps[0];
    assert_eq!(step.status, StepStatus::InProgress);
    assert_eq!(step.attempt, Attempt(1));
    assert_eq!(
        step.idempotency_key,
        IdempotencyKey::for_step(id, &name(0), Phase::Action)
    );
    let kinds: Vec<EventKind> = store
        .history(id)
        .await
        .expect("history failed")
        .iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(kinds, [EventKind::SagaStarted, EventKind::StepStarted]);

    // The starter's lease (token 1) goes on from there.
    let lease = Lease {
        saga: id,
        owner: starter.clone(),
        token: stored.record.fencing_token,
        expires_at: until,
        taken_over_from: None,
    };
    apply_ok(
        &*store,
        &lease,
        &[complete(0, Phase::Action, 1, Some(json!(1)))],
    )
    .await;

    // A repeated start with the key writes nothing, changes or not.
    let mut again = NewSaga {
        id: SagaId::new(),
        ..saga.clone()
    };
    again.changes = vec![begin(again.id, 0, Phase::Action, 1)];
    assert_eq!(
        store.create(again).await.expect("repeated create failed"),
        Created::Existing(id)
    );
    assert_eq!(
        snapshot(&*store, id).await.steps[0].status,
        StepStatus::Completed,
        "a repeated start must not touch the existing saga's steps"
    );

    // Changes need a lease, and only BeginStep is accepted.
    let mut unleased = new_saga("direct", None, json!({ "n": 2 }));
    unleased.changes = vec![begin(unleased.id, 0, Phase::Action, 1)];
    let unleased_id = unleased.id;
    assert!(matches!(
        store.create(unleased).await,
        Err(Error::InvalidAction(_))
    ));
    let mut completing = NewSaga {
        lease: Some((starter, until)),
        ..new_saga("direct", None, json!({ "n": 3 }))
    };
    completing.changes = vec![complete(0, Phase::Action, 1, None)];
    let completing_id = completing.id;
    assert!(matches!(
        store.create(completing).await,
        Err(Error::InvalidAction(_))
    ));
    for refused in [unleased_id, completing_id] {
        assert!(
            store.load(refused).await.expect("load failed").is_none(),
            "a refused creation must store nothing"
        );
    }
}

pub async fn a_restarted_worker_takes_back_its_own_leases_at_once<S: Store>(store: Arc<S>) {
    let ids = create_many(&*store, 2).await;
    let now = saga_core::now();
    let worker = WorkerId::new("worker-7");
    let earlier = store
        .claim(&worker, now, LEASE, 10)
        .await
        .expect("claim failed");
    assert_eq!(earlier.len(), 2);
    let restart = saga_core::after(now, Duration::from_secs(1));
    let granted_before = saga_core::after(restart, LEASE);

    // Another worker id takes nothing back, and nothing is claimable: the leases are live.
    let other = store
        .reclaim(
            &WorkerId::new("worker-8"),
            granted_before,
            restart,
            LEASE,
            10,
        )
        .await
        .expect("reclaim failed");
    assert!(
        other.is_empty(),
        "only the same worker id takes its leases back"
    );
    assert!(store
        .claim(&WorkerId::new("worker-8"), restart, LEASE, 10)
        .await
        .expect("claim failed")
        .is_empty());

    // Leases granted after the restart (expiring later) are not taken back.
    let none = store
        .reclaim(&worker, now, restart, LEASE, 10)
        .await
        .expect("reclaim failed");
    assert!(none.is_empty(), "leases granted since the restart stay");

    // The same worker id, restarted, takes them back at once, with new tokens.
    let back = store
        .reclaim(&worker, granted_before, restart, LEASE, 1)
        .await
        .expect("reclaim failed");
    assert_eq!(back.len(), 1, "reclaim honours its limit");
    let rest = store
        .reclaim(&worker, granted_before, restart, LEASE, 10)
        .await
        .expect("reclaim failed");
    assert_eq!(rest.len(), 1);
    let taken: HashSet<SagaId> = back.iter().chain(&rest).map(|lease| lease.saga).collect();
    assert_eq!(taken, ids.iter().copied().collect::<HashSet<_>>());
    for lease in back.iter().chain(&rest) {
        let old = earlier
            .iter()
            .find(|old| old.saga == lease.saga)
            .expect("an earlier lease");
        assert!(lease.token.0 > old.token.0, "a new fencing token");
        assert_eq!(lease.owner, worker);
        // The earlier run's writes are fenced off; the new lease writes.
        assert!(matches!(
            store.apply(old, &[release(None)]).await,
            Err(Error::LeaseLost(_))
        ));
        apply_ok(&*store, lease, &[begin(lease.saga, 0, Phase::Action, 1)]).await;
        let history = store.history(lease.saga).await.expect("history failed");
        assert!(history
            .iter()
            .any(|event| event.kind == EventKind::LeaseTakenOver));
    }
}

pub async fn an_immediate_cancel_fences_off_a_holder_that_was_still_alive<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("checkout", None, json!({ "order": 70 }))).await;
    let lease = claim_one(&*store, "slow-holder", now(), Duration::from_millis(200)).await;
    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    // The holder's lease runs out (its heartbeats are delayed), yet it is alive.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let outcome = store
        .request_cancel(id, "erin", "customer called", now())
        .await
        .unwrap();
    assert_eq!(outcome, saga_core::CancelOutcome::Compensating);
    let loaded = snapshot(&*store, id).await;
    assert_eq!(loaded.record.status, SagaStatus::Compensating);
    assert_eq!(loaded.record.lease_owner, None, "the lease is taken away");
    assert!(
        loaded.record.fencing_token.0 > lease.token.0,
        "the fencing token moves on, so the old holder's writes fail"
    );
    match store
        .apply(
            &lease,
            &[complete(0, Phase::Action, 1, Some(json!("late")))],
        )
        .await
    {
        Err(Error::LeaseLost(saga)) => assert_eq!(saga, id),
        other => panic!("the old holder's write must be fenced off, got {other:?}"),
    }
    let step = snapshot(&*store, id)
        .await
        .step(StepIndex(0), Phase::Action)
        .cloned()
        .unwrap();
    assert_eq!(step.status, StepStatus::InProgress, "nothing written");
}

pub async fn one_batch_that_fails_and_begins_a_phase_writes_its_net_effect<S: Store>(
    store: Arc<S>,
) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    let events_before = history_len(&*store, id).await;
    // A retry due at once goes out with the failed attempt: one phase touched twice.
    apply_ok(
        &*store,
        &lease,
        &[
            fail(
                0,
                Phase::Action,
                1,
                StepError::transient("busy"),
                Some(now()),
            ),
            begin(id, 0, Phase::Action, 2),
        ],
    )
    .await;
    let snap = snapshot(&*store, id).await;
    let step = snap
        .step(StepIndex(0), Phase::Action)
        .expect("the step is recorded");
    assert_eq!(
        (step.status, step.attempt),
        (StepStatus::InProgress, Attempt(2)),
        "the second attempt runs"
    );
    assert_eq!(
        step.last_error.as_deref(),
        Some("transient: busy"),
        "the first attempt's error is kept"
    );
    assert_eq!(step.next_attempt_at, None, "the retry began: none is due");
    assert_eq!(step.finished_at, None, "the running attempt has not ended");
    let history = store.history(id).await.expect("history");
    let kinds: Vec<EventKind> = history[events_before..]
        .iter()
        .map(|event| event.kind)
        .collect();
    assert_eq!(
        kinds,
        [EventKind::RetryScheduled, EventKind::StepStarted],
        "one event per change, in order"
    );
    // Completing and then failing one phase in a batch keeps the output it completed with.
    apply_ok(
        &*store,
        &lease,
        &[
            complete(0, Phase::Action, 2, Some(json!({ "kept": true }))),
            fail(0, Phase::Action, 2, StepError::permanent("late"), None),
        ],
    )
    .await;
    let snap = snapshot(&*store, id).await;
    let step = snap.step(StepIndex(0), Phase::Action).expect("recorded");
    assert_eq!(step.status, StepStatus::Failed);
    assert_eq!(step.output, Some(json!({ "kept": true })));
    assert_eq!(step.last_error.as_deref(), Some("permanent: late"));
}

pub async fn a_refused_batch_reports_its_first_refusal_alike<S: Store>(store: Arc<S>) {
    let id = create(&*store, new_saga("order", None, json!({ "n": 1 }))).await;
    let lease = claim_one(&*store, "worker-a", now(), LEASE).await;
    apply_ok(
        &*store,
        &lease,
        &[
            begin(id, 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, Some(json!("done"))),
        ],
    )
    .await;
    let written = || {
        let store = Arc::clone(&store);
        async move {
            let snap = snapshot(&*store, id).await;
            (
                snap.steps,
                snap.record.status,
                history_len(&*store, id).await,
            )
        }
    };
    let before = written().await;
    let refused = |step: u32, completed: bool| Error::Refused {
        saga: id,
        refusal: if completed {
            Refusal::StepCompleted {
                step: name(step),
                phase: Phase::Action,
            }
        } else {
            Refusal::StepNotBegun {
                step: name(step),
                phase: Phase::Action,
            }
        },
    };
    let same = |got: Result<(), Error>, want: Error, what: &str| {
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Err::<(), _>(want)),
            "{what}"
        );
    };

    // The first refusal in the batch's order, whether it comes from the stored steps or from
    // the batch itself.
    let got = store
        .apply(
            &lease,
            &[
                complete(2, Phase::Action, 1, None),
                begin(id, 0, Phase::Action, 2),
            ],
        )
        .await;
    same(
        got,
        refused(2, false),
        "a step never begun, then a completed one",
    );
    assert_eq!(written().await, before, "a refused batch writes nothing");
    // Begins step 1, completes it, and begins it again.
    let contradicting = [
        begin(id, 1, Phase::Action, 1),
        complete(1, Phase::Action, 1, None),
        begin(id, 1, Phase::Action, 2),
    ];
    let got = store.apply(&lease, &contradicting).await;
    same(
        got,
        refused(1, true),
        "a batch that begins a phase it completed",
    );
    assert_eq!(
        written().await,
        before,
        "a contradicting batch writes nothing"
    );

    // A stale lease is told first, whatever the batch holds.
    let mut stale = lease.clone();
    stale.token = saga_core::FencingToken(lease.token.0 - 1);
    let got = store.apply(&stale, &contradicting).await;
    same(
        got,
        Error::LeaseLost(id),
        "a stale lease with a contradiction",
    );

    // A cancel request refuses a forward step before any step is looked at; a batch that
    // begins no action is judged on its steps.
    let outcome = store
        .request_cancel(id, "alice", "customer asked", now())
        .await
        .expect("cancel");
    assert_eq!(outcome, CancelOutcome::Requested);
    let before = written().await;
    match store.apply(&lease, &[begin(id, 0, Phase::Action, 2)]).await {
        Err(Error::CancelRequested { saga, reason }) => {
            assert_eq!(saga, id);
            assert!(reason.contains("alice"), "{reason}");
        }
        other => panic!("a forward step after a cancel request: {other:?}"),
    }
    let got = store
        .apply(&lease, &[complete(3, Phase::Compensation, 1, None)])
        .await;
    same(
        got,
        Error::Refused {
            saga: id,
            refusal: Refusal::StepNotBegun {
                step: name(3),
                phase: Phase::Compensation,
            },
        },
        "no forward step: judged on its steps",
    );
    assert_eq!(written().await, before, "refused after the cancel request");
}

/// A signal delivered while a worker holds a waiting saga: the worker's write that ends the
/// wait for want of a signal is refused whole (`Refusal::SignalArrived`), and its release of a
/// wait makes the saga due at once; a signal's delivery is recorded once per key, and counted.
pub async fn a_signal_delivered_meanwhile_refuses_a_timeout_and_wakes_a_wait<S: Store>(
    store: Arc<S>,
) {
    use saga_core::wait::SignalDelivery;
    let id = create(&*store, new_saga("order", None, json!({}))).await;
    let t0 = now();
    let lease = claim_one(&*store, "worker-a", t0, LEASE).await;
    let until = after(t0, Duration::from_secs(3600));
    let wait = Change::Wait {
        index: StepIndex(0),
        name: name(0),
        until: Some(until),
        waiting_for: "signal:paid".into(),
        signals_seen: 0,
    };
    apply_ok(
        &*store,
        &lease,
        &[begin(id, 0, Phase::Action, 1), wait.clone()],
    )
    .await;
    let saga = snapshot(&*store, id).await;
    assert_eq!(saga.record.waiting_for.as_deref(), Some("signal:paid"));
    let step = saga.step(StepIndex(0), Phase::Action).unwrap();
    assert_eq!(
        (step.status, step.next_attempt_at),
        (StepStatus::InProgress, Some(until))
    );

    // The signal arrives while the worker holds the saga (it read none).
    let delivery = SignalDelivery {
        saga: id,
        name: "paid".into(),
        key: saga_core::SignalKey::new("evt-1"),
        payload: json!({ "charge": "ch_1" }),
    };
    let before = history_len(&*store, id).await;
    assert_eq!(
        store.deliver_signal(&delivery).await.unwrap(),
        saga_core::Delivered::New(id)
    );
    assert_eq!(
        store.deliver_signal(&delivery).await.unwrap(),
        saga_core::Delivered::Duplicate(id)
    );
    let saga = snapshot(&*store, id).await;
    assert_eq!(saga.record.signals_received, 1);
    assert_eq!(saga.signals.len(), 1);
    assert_eq!(saga.signals[0].payload, json!({ "charge": "ch_1" }));
    assert_eq!(
        history_len(&*store, id).await,
        before + 1,
        "one signal_received event"
    );

    // Deciding the wait timed out, on the copy read before the signal: refused, nothing written.
    let timed_out = [
        fail(
            0,
            Phase::Action,
            1,
            StepError::permanent("no signal came"),
            None,
        ),
        Change::NoSignalSince { signals_seen: 0 },
    ];
    match store.apply(&lease, &timed_out).await {
        Err(Error::Refused {
            refusal: Refusal::SignalArrived,
            ..
        }) => {}
        other => panic!("a write passing over a signal must be refused, got {other:?}"),
    }
    let unchanged = snapshot(&*store, id).await;
    assert_eq!(
        unchanged.step(StepIndex(0), Phase::Action).unwrap().status,
        StepStatus::InProgress
    );
    // Giving the saga back to wait, on that copy: due at once instead of in an hour.
    apply_ok(&*store, &lease, &[wait, release(Some(until))]).await;
    let saga = snapshot(&*store, id).await;
    assert!(saga.record.lease_owner.is_none());
    assert!(
        saga.record
            .next_run_at
            .is_some_and(|due| due < until && due <= after(now(), LEASE)),
        "a signal that raced the wait makes the saga due now: {:?}",
        saga.record.next_run_at
    );
    // With the signal read, the same decision is written.
    let lease = claim_one(&*store, "worker-b", now(), LEASE).await;
    apply_ok(
        &*store,
        &lease,
        &[
            complete(0, Phase::Action, 1, Some(json!({ "charge": "ch_1" }))),
            Change::NoSignalSince { signals_seen: 1 },
        ],
    )
    .await;
    let saga = snapshot(&*store, id).await;
    assert_eq!(saga.record.waiting_for, None);
    assert_eq!(
        saga.step(StepIndex(0), Phase::Action).unwrap().status,
        StepStatus::Completed
    );

    // A cancel requested of a holder refuses its going back to wait, as it refuses a step.
    let id = create(&*store, new_saga("order", None, json!({ "n": 2 }))).await;
    let lease = claim_one(&*store, "worker-c", now(), LEASE).await;
    let wait = Change::Wait {
        index: StepIndex(0),
        name: name(0),
        until: Some(until),
        waiting_for: "signal:paid".into(),
        signals_seen: 0,
    };
    apply_ok(&*store, &lease, &[begin(id, 0, Phase::Action, 1)]).await;
    assert_eq!(
        store
            .request_cancel(id, "erin", "customer withdrew", now())
            .await
            .unwrap(),
        CancelOutcome::Requested
    );
    assert!(matches!(
        store.apply(&lease, &[wait, release(Some(until))]).await,
        Err(Error::CancelRequested { .. })
    ));
    assert_eq!(snapshot(&*store, id).await.record.waiting_for, None);
}

pub async fn the_overview_counts_by_type_series_stuck_steps_and_the_queue<S: Store>(store: Arc<S>) {
    use saga_core::store::{Overview, OverviewQuery};
    const HOUR: Duration = Duration::from_secs(60 * 60);
    let read = |store: Arc<S>, stuck_after: Duration| async move {
        let now = after(
            store.clock().await.expect("clock failed"),
            Duration::from_secs(1),
        );
        let query = OverviewQuery::new(now, 2 * HOUR, HOUR, stuck_after).expect("a valid query");
        let parts = store.overview(&query).await.expect("overview failed");
        Overview::assemble(&query, parts)
    };
    let empty = read(Arc::clone(&store), Duration::ZERO).await;
    assert!(
        empty.counts.is_empty(),
        "an empty store counts nothing: {empty:?}"
    );
    assert_eq!(
        empty.series.len(),
        2,
        "two hours in hourly buckets, the last ending now"
    );
    assert!(empty.stuck.is_empty() && empty.open_interventions == 0);
    assert_eq!(empty.oldest_open_intervention, None);

    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(create(&*store, new_saga("order", None, json!({ "n": n }))).await);
    }
    let refund = create(&*store, new_saga("refund", None, json!({ "n": 9 }))).await;
    let before_escalation = now();
    let t = now();
    let mut all = ids.clone();
    all.push(refund);
    let leases = claim_all(&*store, &all, t).await;
    // ids[0] completes; ids[1] ends compensated.
    apply_ok(
        &*store,
        &leases[&ids[0]],
        &[
            begin(ids[0], 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, None),
            set_status(SagaStatus::Completed),
            release(None),
        ],
    )
    .await;
    apply_ok(
        &*store,
        &leases[&ids[1]],
        &[
            set_status(SagaStatus::Compensating),
            set_status(SagaStatus::Compensated),
            release(None),
        ],
    )
    .await;
    // ids[2] is inside its second step's action; ids[3] inside its first step's compensation.
    apply_ok(
        &*store,
        &leases[&ids[2]],
        &[
            begin(ids[2], 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, None),
            begin(ids[2], 1, Phase::Action, 1),
            release(Some(after(t, HOUR))),
        ],
    )
    .await;
    apply_ok(
        &*store,
        &leases[&ids[3]],
        &[
            begin(ids[3], 0, Phase::Action, 1),
            complete(0, Phase::Action, 1, None),
            set_status(SagaStatus::Compensating),
            begin(ids[3], 0, Phase::Compensation, 1),
            release(Some(after(t, HOUR))),
        ],
    )
    .await;
    // ids[4] waits for a person.
    apply_ok(
        &*store,
        &leases[&ids[4]],
        &[Change::Escalate(intervention(ids[4])), release(None)],
    )
    .await;
    apply_ok(
        &*store,
        &leases[&refund],
        &[
            begin(refund, 1, Phase::Action, 2),
            release(Some(after(t, HOUR))),
        ],
    )
    .await;
    let after_escalation = now();

    let overview = read(Arc::clone(&store), Duration::ZERO).await;
    let counts: Vec<(&str, SagaStatus, u64)> = overview
        .counts
        .iter()
        .map(|count| (count.saga_type.as_str(), count.status, count.sagas))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("order", SagaStatus::Compensated, 1),
            ("order", SagaStatus::Compensating, 1),
            ("order", SagaStatus::Completed, 1),
            ("order", SagaStatus::NeedsIntervention, 1),
            ("order", SagaStatus::Running, 1),
            ("refund", SagaStatus::Running, 1),
        ],
        "counts per type and status, sorted by type then status"
    );
    let total = |field: fn(&saga_core::store::overview::SeriesPoint) -> u64| {
        overview.series.iter().map(field).sum::<u64>()
    };
    assert_eq!(
        total(|p| p.started),
        6,
        "six sagas started in the window: {overview:?}"
    );
    assert_eq!(total(|p| p.completed), 1, "one completed in the window");
    assert_eq!(total(|p| p.compensated), 1, "one compensated in the window");
    assert_eq!(total(|p| p.escalated), 1, "one item opened in the window");
    assert_eq!(
        overview.series[0].started + overview.series[0].escalated,
        0,
        "nothing happened two hours ago"
    );
    let stuck: Vec<(&str, &str, Phase, u64)> = overview
        .stuck
        .iter()
        .map(|s| (s.saga_type.as_str(), s.step.as_str(), s.phase, s.sagas))
        .collect::<Vec<_>>();
    let mut sorted = stuck.clone();
    sorted.sort_by_key(|(saga_type, step, phase, _)| (*saga_type, *step, phase.as_str()));
    assert_eq!(
        sorted,
        vec![
            ("order", "step_0", Phase::Compensation, 1),
            ("order", "step_1", Phase::Action, 1),
            ("refund", "step_1", Phase::Action, 1),
        ],
        "the begun, unfinished phase of each running or compensating saga, and nothing of \
         finished or parked ones"
    );
    for window in overview.stuck.windows(2) {
        assert!(
            window[0].since <= window[1].since,
            "longest stuck first: {stuck:?}"
        );
    }
    assert_eq!(overview.open_interventions, 1, "one item is open");
    let oldest = overview
        .oldest_open_intervention
        .expect("the open item's age");
    assert!(
        oldest >= before_escalation - chrono::Duration::milliseconds(5)
            && oldest <= after_escalation + chrono::Duration::milliseconds(5),
        "the oldest open item was opened at {oldest}, between {before_escalation} and {after_escalation}"
    );

    let fresh = read(Arc::clone(&store), HOUR).await;
    assert!(
        fresh.stuck.is_empty(),
        "nothing has been begun for an hour: {:?}",
        fresh.stuck
    );
    let queues = store
        .overview(&OverviewQuery::queues(
            after(
                store.clock().await.expect("clock failed"),
                Duration::from_secs(1),
            ),
            Duration::ZERO,
        ))
        .await
        .expect("overview failed");
    assert!(
        queues.counts.is_empty() && queues.series.is_empty(),
        "a queues-only read leaves the totals out: {queues:?}"
    );
    assert_eq!((queues.stuck.len(), queues.open_interventions), (3, 1));
}

/// Writes of many sagas at the same time (which a backend may group into one transaction or
/// statement) each get their own outcome: a stale lease among them is refused alone, and the
/// others land whole, in order; creations racing with one start key make one saga.
pub async fn writes_of_many_sagas_at_once_each_get_their_own_outcome<S: Store + 'static>(
    store: Arc<S>,
) {
    // Creations at once, four of them with one key (three with its input, one with another).
    let fresh: Vec<NewSaga> = (0..24)
        .map(|i| new_saga("order", None, json!({ "n": i })))
        .collect();
    let ids: Vec<SagaId> = fresh.iter().map(|saga| saga.id).collect();
    let keyed: Vec<NewSaga> = (0..4)
        .map(|i| {
            let input = if i == 3 {
                json!({ "other": true })
            } else {
                json!({ "same": true })
            };
            new_saga("checkout", Some("one-key-for-four"), input)
        })
        .collect();
    let creations = fresh.into_iter().chain(keyed).map(|saga| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.create(saga).await })
    });
    let created = all(creations.collect()).await;
    for (id, outcome) in ids.iter().zip(&created) {
        assert_eq!(
            outcome.as_ref().ok(),
            Some(&Created::New(*id)),
            "a creation among many at once must be stored, got {outcome:?}"
        );
    }
    let keyed_outcomes = &created[ids.len()..];
    let winners: Vec<SagaId> = keyed_outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Ok(Created::New(id)) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "creations racing with one key must make exactly one saga, got {keyed_outcomes:?}"
    );
    for outcome in &keyed_outcomes[..3] {
        match outcome {
            Ok(Created::New(id) | Created::Existing(id)) => assert_eq!(
                *id, winners[0],
                "a racing creation with the same input must be told of the one saga"
            ),
            other => panic!("a racing creation with the same input must succeed, got {other:?}"),
        }
    }
    match &keyed_outcomes[3] {
        Err(Error::Conflict { existing, .. }) => assert_eq!(*existing, winners[0]),
        other => panic!("a racing creation with another input must conflict, got {other:?}"),
    }

    // The leases: three of them stale (a fencing token one behind).
    let leases = claim_all(&*store, &[ids.clone(), winners].concat(), now()).await;
    let stale: HashSet<SagaId> = ids.iter().step_by(8).copied().collect();
    let writes = ids.iter().map(|id| {
        let mut lease = leases[id].clone();
        if stale.contains(id) {
            lease.token = saga_core::FencingToken(lease.token.0 - 1);
        }
        let store = Arc::clone(&store);
        let id = *id;
        tokio::spawn(async move {
            (
                id,
                store.apply(&lease, &[begin(id, 0, Phase::Action, 1)]).await,
            )
        })
    });
    for (id, outcome) in all(writes.collect()).await {
        if stale.contains(&id) {
            match outcome {
                Err(Error::LeaseLost(saga)) => assert_eq!(saga, id),
                other => panic!("a stale write among many must be fenced off, got {other:?}"),
            }
            let snap = snapshot(&*store, id).await;
            assert!(
                snap.steps.is_empty(),
                "a fenced write wrote {:?}",
                snap.steps
            );
            let history = store.history(id).await.expect("history failed");
            assert!(
                history
                    .iter()
                    .all(|event| event.kind != EventKind::StepStarted),
                "a fenced write must append no event, got {history:?}"
            );
        } else {
            assert!(
                outcome.is_ok(),
                "a write among many must land, got {outcome:?}"
            );
        }
    }

    // The next transition of the others, at once, but for two refused by a step phase (one
    // completes a step never begun, one begins a step again): each saga's steps and events in
    // order, and nothing of the refused ones.
    let admitted: Vec<SagaId> = ids
        .iter()
        .filter(|id| !stale.contains(id))
        .copied()
        .collect();
    let not_begun = admitted[3];
    let begun_again = admitted[10];
    let events_before = history_len(&*store, not_begun).await;
    let writes = admitted.iter().map(|id| {
        let store = Arc::clone(&store);
        let lease = leases[id].clone();
        let id = *id;
        tokio::spawn(async move {
            let changes = if id == not_begun {
                vec![complete(4, Phase::Action, 1, None)]
            } else {
                vec![
                    complete(0, Phase::Action, 1, Some(json!({ "saga": id.to_string() }))),
                    begin(id, 1, Phase::Action, 1),
                ]
            };
            (id, store.apply(&lease, &changes).await)
        })
    });
    for (id, outcome) in all(writes.collect()).await {
        if id == not_begun {
            match outcome {
                Err(Error::Refused {
                    saga,
                    refusal: Refusal::StepNotBegun { step, .. },
                }) => {
                    assert_eq!((saga, step), (id, name(4)));
                }
                other => panic!("completing a step never begun must be refused, got {other:?}"),
            }
        } else {
            assert!(
                outcome.is_ok(),
                "a write among many must land, got {outcome:?}"
            );
        }
    }
    let snap = snapshot(&*store, not_begun).await;
    assert_eq!(
        snap.steps.len(),
        1,
        "a refused write among many writes no step, got {:?}",
        snap.steps
    );
    assert_eq!(
        history_len(&*store, not_begun).await,
        events_before,
        "a refused write among many appends no event"
    );
    // Step 0 of `begun_again` is completed now: beginning it again, among other writes (which
    // release their sagas), is refused alone.
    let again = {
        let (store, lease) = (Arc::clone(&store), leases[&begun_again].clone());
        tokio::spawn(async move {
            store
                .apply(&lease, &[begin(begun_again, 0, Phase::Action, 2)])
                .await
        })
    };
    let released: Vec<SagaId> = admitted
        .iter()
        .filter(|id| **id != not_begun && **id != begun_again)
        .copied()
        .collect();
    let releases = released.iter().map(|id| {
        let (store, lease) = (Arc::clone(&store), leases[id].clone());
        tokio::spawn(async move {
            store
                .apply(&lease, &[release(Some(after(now(), DAY)))])
                .await
        })
    });
    let releases = all(releases.collect()).await;
    match again.await.expect("a task of the scenario panicked") {
        Err(Error::Refused {
            refusal: Refusal::StepCompleted { step, .. },
            ..
        }) => {
            assert_eq!(step, name(0));
        }
        other => panic!("beginning a completed step again must be refused, got {other:?}"),
    }
    for (id, outcome) in released.iter().zip(releases) {
        assert!(
            outcome.is_ok(),
            "a release among many must land, got {outcome:?}"
        );
        assert_eq!(
            snapshot(&*store, *id).await.record.lease_owner,
            None,
            "saga {id}: a release among many lands"
        );
    }
    let admitted: Vec<SagaId> = admitted.into_iter().filter(|id| *id != not_begun).collect();
    for id in &admitted {
        let snap = snapshot(&*store, *id).await;
        let statuses: Vec<(u32, StepStatus)> = snap
            .steps
            .iter()
            .map(|step| (step.index.0, step.status))
            .collect();
        assert_eq!(
            statuses,
            vec![(0, StepStatus::Completed), (1, StepStatus::InProgress)],
            "saga {id}: each write of a group lands whole"
        );
        assert_eq!(
            snap.steps[0].output,
            Some(json!({ "saga": id.to_string() })),
            "saga {id}: each write lands on its own saga"
        );
        let kinds: Vec<EventKind> = store
            .history(*id)
            .await
            .expect("history failed")
            .into_iter()
            .map(|event| event.kind)
            .filter(|kind| matches!(kind, EventKind::StepStarted | EventKind::StepCompleted))
            .collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::StepStarted,
                EventKind::StepCompleted,
                EventKind::StepStarted
            ],
            "saga {id}: its events in the order written"
        );
    }
}

/// The outcomes of tasks started at once, in the order they were started.
async fn all<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.expect("a task of the scenario panicked"));
    }
    outcomes
}
