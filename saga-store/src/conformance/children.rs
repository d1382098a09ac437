//! Child sagas, end to end on the backend under test. An `order` reserves stock, starts one
//! `shipment` child saga (which packs and labels a parcel) and waits for it, then charges; each
//! step follows a [`Script`], so that the scenarios can tell which effects happened, with which
//! key, and which were undone.

use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    ChildOutput, Phase, RetryPolicy, Saga, SagaDefinition, SagaFilter, SagaId, SagaRecord,
    SagaStatus, Step, StepContext, StepError, StepStatus, Store,
};

use super::scenarios::{input, key, orchestrator, wait_until, Outcome, ProbeInput, Script};

const WAIT: Duration = Duration::from_secs(30);

async fn act(script: &Script, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    script.perform(&ctx).await?;
    Ok(format!("{}-done", ctx.step()))
}

async fn undo(
    script: &Script,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    if output != format!("{}-done", ctx.step()) {
        return Err(StepError::permanent(format!(
            "compensation got output `{output}`, not its action's"
        )));
    }
    script.perform(&ctx).await.map(|_| ())
}

fn retry() -> RetryPolicy {
    RetryPolicy::exponential(3, Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(100))
}

/// The child: packs and labels one parcel.
pub struct Shipment(pub Arc<Script>);

async fn shipment_act(
    shipment: Arc<Shipment>,
    ctx: StepContext<ProbeInput>,
) -> Result<String, StepError> {
    act(&shipment.0, ctx).await
}

async fn shipment_undo(
    shipment: Arc<Shipment>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    undo(&shipment.0, ctx, output).await
}

impl Saga for Shipment {
    type Input = ProbeInput;

    fn definition() -> SagaDefinition<Self> {
        let step = |name: &str| {
            Step::new(name, shipment_act)
                .retry(retry())
                .timeout(Duration::from_secs(2))
                .compensate(shipment_undo)
                .compensation_retry(RetryPolicy::exponential(2, Duration::from_millis(20)))
        };
        SagaDefinition::new("shipment", 1)
            .step(step("pack"))
            .step(step("label"))
    }
}

/// The parent: reserves, ships (a child saga), charges; declared with `#[derive(Saga)]`.
#[derive(saga_macros::Saga)]
#[saga(name = "order", version = 1, input = ProbeInput, crate = ::saga_core)]
#[step(reserve, action = order_act, compensate = order_undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s")]
#[step(ship, child = Shipment, child_input = shipment_for)]
#[step(charge, action = order_act, compensate = order_undo,
       retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "2s")]
pub struct Order(pub Arc<Script>);

/// The child's input: the parent's, for parcel `order * 10`.
fn shipment_for(_: &Order, ctx: &StepContext<ProbeInput>) -> Result<ProbeInput, StepError> {
    Ok(input(ctx.input().order * 10))
}

async fn order_act(order: Arc<Order>, ctx: StepContext<ProbeInput>) -> Result<String, StepError> {
    if ctx.step().as_str() == "charge" {
        // The child's output reaches the steps after it.
        let shipped: ChildOutput = ctx.output("ship")?;
        let label: String = shipped.output("label")?;
        if label != "label-done" {
            return Err(StepError::permanent(format!(
                "the child's label output is `{label}`"
            )));
        }
    }
    act(&order.0, ctx).await
}

async fn order_undo(
    order: Arc<Order>,
    ctx: StepContext<ProbeInput>,
    output: String,
) -> Result<(), StepError> {
    undo(&order.0, ctx, output).await
}

/// A running orchestrator with both sagas registered on one script.
fn running<S: Store>(store: &Arc<S>, script: &Arc<Script>) -> saga_core::Orchestrator {
    let orchestrator = orchestrator(store, Duration::from_secs(10));
    orchestrator.register(Order(script.clone())).unwrap();
    orchestrator.register(Shipment(script.clone())).unwrap();
    orchestrator.run();
    orchestrator
}

/// The children of `parent`.
async fn children<S: Store>(store: &Arc<S>, parent: SagaId) -> Vec<SagaRecord> {
    store
        .list(&SagaFilter {
            parent: Some(parent),
            ..SagaFilter::default()
        })
        .await
        .unwrap()
}

/// The one child of `parent`.
async fn child<S: Store>(store: &Arc<S>, parent: SagaId) -> SagaRecord {
    let children = children(store, parent).await;
    assert_eq!(children.len(), 1, "one child: {children:?}");
    children.into_iter().next().unwrap()
}

/// How many times the effect of `step` (in `phase`) of saga `id` was applied, and called.
fn effect(script: &Script, id: SagaId, step: &str, phase: Phase) -> (u32, u32) {
    let effect = script.effect(&key(id, step, phase));
    (effect.applied, effect.calls)
}

pub async fn a_child_that_completes_completes_its_step_with_its_outputs<S: Store>(store: Arc<S>) {
    let script = Script::new();
    let orchestrator = running(&store, &script);
    let id = orchestrator.start::<Order>(&input(7)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed, "{record:?}");
    let child = child(&store, id).await;
    assert_eq!(child.status, SagaStatus::Completed);
    assert_eq!(child.saga_type.as_str(), "shipment");
    assert_eq!(child.input, serde_json::to_value(input(70)).unwrap());
    let link = child.parent.clone().expect("the child knows its parent");
    assert_eq!((link.saga, link.step.as_str()), (id, "ship"));
    assert_eq!(
        child.idempotency_key,
        Some(saga_core::child::child_key(id, &link.step)),
        "the child's start key comes from the step's key"
    );
    for (saga, step) in [
        (id, "reserve"),
        (child.id, "pack"),
        (child.id, "label"),
        (id, "charge"),
    ] {
        assert_eq!(
            effect(&script, saga, step, Phase::Action),
            (1, 1),
            "{step}: once"
        );
    }
    let snapshot = store.load(id).await.unwrap().unwrap();
    let ship = snapshot
        .steps
        .iter()
        .find(|step| step.name.as_str() == "ship" && step.phase == Phase::Action)
        .unwrap();
    assert_eq!(ship.status, StepStatus::Completed);
    let output: ChildOutput = serde_json::from_value(ship.output.clone().unwrap()).unwrap();
    assert_eq!(output.saga, child.id);
    assert_eq!(output.output::<String>("pack").unwrap(), "pack-done");
    // The histories link parent and child.
    let parent_history = store.history(id).await.unwrap();
    assert!(parent_history.iter().any(|event| {
        event.kind == saga_core::EventKind::ChildStarted
            && event
                .detail
                .as_deref()
                .is_some_and(|detail| detail.contains(&child.id.to_string()))
    }));
    let child_history = store.history(child.id).await.unwrap();
    assert!(child_history.first().is_some_and(|event| event
        .detail
        .as_deref()
        .is_some_and(|detail| detail.contains(&format!("child of saga {id} (step ship)")))));
    orchestrator.shutdown().await;
}

pub async fn a_child_that_compensates_fails_its_step_and_the_parent_compensates<S: Store>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan("label", Phase::Action, &[Outcome::Permanent]);
    let orchestrator = running(&store, &script);
    let id = orchestrator.start::<Order>(&input(8)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    let child = child(&store, id).await;
    assert_eq!(child.status, SagaStatus::Compensated);
    assert_eq!(effect(&script, child.id, "pack", Phase::Compensation).0, 1);
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation).0, 1);
    assert!(script.calls_of("charge", Phase::Action).is_empty());
    let snapshot = store.load(id).await.unwrap().unwrap();
    let ship = snapshot
        .steps
        .iter()
        .find(|step| step.name.as_str() == "ship" && step.phase == Phase::Action)
        .unwrap();
    assert_eq!(ship.status, StepStatus::Failed);
    assert!(
        ship.last_error
            .as_deref()
            .is_some_and(|error| error.contains("ended compensated")),
        "{:?}",
        ship.last_error
    );
    assert!(
        snapshot.step(ship.index, Phase::Compensation).is_none(),
        "a child that compensated itself leaves its step nothing to undo"
    );
    orchestrator.shutdown().await;
}

pub async fn a_parent_compensated_after_its_child_completed_compensates_the_child_first<
    S: Store,
>(
    store: Arc<S>,
) {
    let script = Script::new();
    script.plan("charge", Phase::Action, &[Outcome::Permanent]);
    let orchestrator = running(&store, &script);
    let id = orchestrator.start::<Order>(&input(9)).await.unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    let child = child(&store, id).await;
    assert_eq!(
        child.status,
        SagaStatus::Compensated,
        "the completed child was sent back to compensate"
    );
    for step in ["label", "pack"] {
        assert_eq!(
            effect(&script, child.id, step, Phase::Compensation),
            (1, 1),
            "{step} undone once"
        );
    }
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation), (1, 1));
    // In reverse: the child's steps before the step before the child.
    let calls = script.calls();
    let position = |step: &str| {
        calls
            .iter()
            .position(|call| call.step == step && call.phase == Phase::Compensation)
            .unwrap()
    };
    assert!(position("label") < position("pack"));
    assert!(position("pack") < position("reserve"));
    let snapshot = store.load(id).await.unwrap().unwrap();
    let undone = snapshot
        .steps
        .iter()
        .find(|step| step.name.as_str() == "ship" && step.phase == Phase::Compensation)
        .unwrap();
    assert_eq!(undone.status, StepStatus::Completed);
    let child_history = store.history(child.id).await.unwrap();
    assert!(child_history.iter().any(|event| event
        .detail
        .as_deref()
        .is_some_and(|detail| detail.contains(&format!("by parent saga {id} (step ship)")))));
    orchestrator.shutdown().await;
}

pub async fn a_parent_cancelled_while_its_child_runs_cancels_the_child<S: Store>(store: Arc<S>) {
    let (script, orchestrator, id) = order_while_it_runs(&store, "pack", 400, 10).await;
    let admin = orchestrator.admin();
    let parent = store.load(id).await.unwrap().unwrap().record;
    assert_eq!(
        parent.waiting_for.as_deref(),
        Some("child:ship"),
        "the parent waits for its child"
    );
    assert!(
        parent.lease_owner.is_none(),
        "the parent holds no worker while it waits"
    );
    admin
        .cancel_saga(id, "erin", "the customer cancelled the order")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    let child = child(&store, id).await;
    assert_eq!(child.status, SagaStatus::Compensated);
    let rendered = admin.history(child.id).await.unwrap().render();
    assert!(
        rendered.contains(
            "cancel requested by parent saga <id> (step ship): the parent is compensating: cancel requested by erin: the customer cancelled the order"
        ),
        "{rendered}"
    );
    assert!(
        script.calls_of("label", Phase::Action).is_empty(),
        "the child began no step after the cancel"
    );
    assert_eq!(effect(&script, child.id, "pack", Phase::Compensation).0, 1);
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation).0, 1);
    assert!(script.calls_of("charge", Phase::Action).is_empty());
    orchestrator.shutdown().await;
}

pub async fn a_parent_and_its_child_started_twice_with_one_key_run_once<S: Store>(store: Arc<S>) {
    let script = Script::new();
    script.plan(
        "pack",
        Phase::Action,
        &[Outcome::Slow(Duration::from_millis(200))],
    );
    let orchestrator = running(&store, &script);
    let key = saga_core::IdempotencyKey::new("order-11");
    let first = orchestrator
        .start_with_key::<Order>(key.clone(), &input(11))
        .await
        .unwrap();
    let second = orchestrator
        .start_with_key::<Order>(key, &input(11))
        .await
        .unwrap();
    assert_eq!(first.id(), second.id());
    wait_until("the child packs", || {
        !script.calls_of("pack", Phase::Action).is_empty()
    })
    .await;
    // Starting the child again with its key (a step run again) finds the child it started.
    let started = child(&store, first.id()).await;
    let again = store
        .create(saga_core::NewSaga {
            id: SagaId::new(),
            saga_type: started.saga_type.clone(),
            version: started.version,
            fingerprint: started.fingerprint.clone(),
            input: started.input.clone(),
            input_hash: started.input_hash.clone(),
            idempotency_key: started.idempotency_key.clone(),
            trace_context: None,
            lease: None,
            changes: Vec::new(),
            deadline: None,
            dedup_window: None,
            parent: started.parent.as_deref().cloned(),
        })
        .await
        .unwrap();
    assert_eq!(again, saga_core::Created::Existing(started.id));
    let record = orchestrator.wait(first.id(), WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let child = child(&store, first.id()).await;
    assert_eq!(child.id, started.id);
    for step in ["pack", "label"] {
        assert_eq!(effect(&script, child.id, step, Phase::Action), (1, 1));
    }
    assert_eq!(
        effect(&script, first.id(), "reserve", Phase::Action),
        (1, 1)
    );
    orchestrator.shutdown().await;
}

pub async fn a_child_waiting_for_a_person_keeps_its_parent_waiting_until_it_is_settled<S: Store>(
    store: Arc<S>,
) {
    let (script, orchestrator, id, child_id) = child_waiting_for_a_person(&store, 12).await;
    let admin = orchestrator.admin();
    // The parent is woken, reads its child, and waits on: the child's item is where a person acts.
    wait_until("the parent records its child's state", || {
        futures_now(store.history(id)).unwrap().iter().any(|event| {
            event.kind == saga_core::EventKind::Waiting
                && event
                    .detail
                    .as_deref()
                    .is_some_and(|detail| detail.contains("needs_intervention"))
        })
    })
    .await;
    let parent = store.load(id).await.unwrap().unwrap().record;
    assert_eq!(parent.status, SagaStatus::Running);
    assert_eq!(parent.waiting_for.as_deref(), Some("child:ship"));
    assert!(
        admin
            .interventions(true)
            .await
            .unwrap()
            .iter()
            .all(|item| item.saga_id == child_id),
        "one item, the child's"
    );
    let item = admin.interventions(true).await.unwrap()[0].item.id;
    admin
        .resolve(item, "erin", "unpacked the parcel by hand")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    assert_eq!(
        store.load(child_id).await.unwrap().unwrap().record.status,
        SagaStatus::Compensated
    );
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation).0, 1);
    orchestrator.shutdown().await;
}

pub async fn a_cancel_requested_while_the_parent_runs_starts_no_child<S: Store>(store: Arc<S>) {
    let (script, orchestrator, id) = order_while_it_runs(&store, "reserve", 300, 13).await;
    let admin = orchestrator.admin();
    // A worker holds the parent: the request is recorded, and its next forward write, the one
    // that would begin `ship` and start the child, is refused.
    assert_eq!(
        admin
            .cancel_saga(id, "erin", "changed their mind")
            .await
            .unwrap(),
        saga_core::CancelOutcome::Requested
    );
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    assert!(
        children(&store, id).await.is_empty(),
        "no child was started after the cancel"
    );
    assert_eq!(
        effect(&script, id, "reserve", Phase::Action),
        (1, 1),
        "reserve ran once: its completion was written with what survived the refused batch"
    );
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation), (1, 1));
    let rendered = admin.history(id).await.unwrap().render();
    assert!(
        !rendered.contains("lease taken over"),
        "the worker that was asked compensated at once: {rendered}"
    );
    orchestrator.shutdown().await;
}

pub async fn a_child_a_person_cancelled_leaves_its_parents_step_to_a_person<S: Store>(
    store: Arc<S>,
) {
    let (script, orchestrator, id, _) = child_waiting_for_a_person(&store, 14).await;
    let admin = orchestrator.admin();
    let child = child(&store, id).await;
    let item = admin.interventions(true).await.unwrap()[0].item.id;
    // Stopped where it is: its packed parcel may still be there.
    admin
        .cancel(item, "erin", "the warehouse will sort it out")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(
        record.status,
        SagaStatus::NeedsIntervention,
        "a cancelled child is no clean failure: {record:?}"
    );
    let items = admin.interventions(true).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    let parent_item = &items[0];
    assert_eq!(parent_item.saga_id, id);
    assert_eq!(
        parent_item.item.kind,
        saga_core::InterventionKind::UnknownOutcome
    );
    assert_eq!(
        parent_item
            .item
            .step
            .as_ref()
            .map(|(_, name)| name.as_str()),
        Some("ship")
    );
    assert!(
        parent_item.item.error.contains(&child.id.to_string()),
        "{}",
        parent_item.item.error
    );
    assert!(
        script.calls_of("reserve", Phase::Compensation).is_empty(),
        "nothing is undone before a person decides"
    );
    // The person finds the shipment had no effect: the order compensates.
    admin
        .resolve(parent_item.item.id, "erin", "the parcel was unpacked")
        .await
        .unwrap();
    let record = orchestrator.wait(id, WAIT).await.unwrap();
    assert_eq!(record.status, SagaStatus::Compensated, "{record:?}");
    assert_eq!(effect(&script, id, "reserve", Phase::Compensation).0, 1);
    orchestrator.shutdown().await;
}

/// An order (number `n`) whose step `slow` (its own or its shipment's) takes `ms`, started and
/// running that step. Returns the script, the running orchestrator and the order.
async fn order_while_it_runs<S: Store>(
    store: &Arc<S>,
    slow: &str,
    ms: u64,
    n: u64,
) -> (Arc<Script>, saga_core::Orchestrator, SagaId) {
    let script = Script::new();
    script.plan(
        slow,
        Phase::Action,
        &[Outcome::Slow(Duration::from_millis(ms))],
    );
    let orchestrator = running(store, &script);
    let id = orchestrator.start::<Order>(&input(n)).await.unwrap();
    wait_until(&format!("{slow} runs"), || {
        !script.calls_of(slow, Phase::Action).is_empty()
    })
    .await;
    (script, orchestrator, id)
}

/// An order (number `n`) whose shipment's label is refused and whose parcel cannot be unpacked:
/// the child compensates, its compensation gives up, and it waits for a person. Returns the
/// script, the running orchestrator, the order and the child.
async fn child_waiting_for_a_person<S: Store>(
    store: &Arc<S>,
    n: u64,
) -> (Arc<Script>, saga_core::Orchestrator, SagaId, SagaId) {
    let script = Script::new();
    script.plan("label", Phase::Action, &[Outcome::Permanent]);
    script.plan(
        "pack",
        Phase::Compensation,
        &[Outcome::Permanent, Outcome::Permanent],
    );
    let orchestrator = running(store, &script);
    let id = orchestrator.start::<Order>(&input(n)).await.unwrap();
    let mut child_id = None;
    wait_until("the child waits for a person", || {
        let found = futures_now(children(store, id));
        child_id = found.first().map(|child| child.id);
        found
            .first()
            .is_some_and(|child| child.status == SagaStatus::NeedsIntervention)
    })
    .await;
    (script, orchestrator, id, child_id.unwrap())
}

/// Runs a store call to its end from a synchronous check (the stores answer at once).
fn futures_now<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}
