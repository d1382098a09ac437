//! The test kit (`saga::testing`) on the README's checkout saga: every fault it can inject, and
//! what the library makes of it, under virtual time (retries, timeouts and leases elapse at
//! once).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use saga::{ResultExt, Saga, SagaStatus, StepContext, StepError};
use saga_core::testing::{CallOutcome, Fault, TestKit};
use saga_core::Phase;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    cents: u64,
}

#[derive(Serialize, Deserialize)]
struct Charge {
    charge_id: String,
}

/// A payment provider that honours idempotency keys: a second charge with a key returns the
/// first one's id; it counts the charges it really made.
#[derive(Default)]
struct Payments {
    charges: Mutex<HashMap<String, String>>,
    refunds: Mutex<Vec<String>>,
    refund_fails: bool,
}

impl Payments {
    async fn charge(&self, _cents: u64, key: &str) -> Result<String, String> {
        let mut charges = self.charges.lock().unwrap();
        let next = format!("ch_{}", charges.len() + 1);
        Ok(charges.entry(key.to_owned()).or_insert(next).clone())
    }

    async fn refund(&self, charge_id: &str, _key: &str) -> Result<(), String> {
        if self.refund_fails {
            return Err("the card was closed".to_owned());
        }
        let mut refunds = self.refunds.lock().unwrap();
        if !refunds.iter().any(|done| done == charge_id) {
            refunds.push(charge_id.to_owned());
        }
        Ok(())
    }

    fn charged(&self) -> usize {
        self.charges.lock().unwrap().len()
    }
}

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock)]
#[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "200ms"), timeout = "10s")]
#[step(send_receipt, irreversible)]
struct Checkout {
    payments: Arc<Payments>,
}

async fn reserve_stock(_: Arc<Checkout>, ctx: StepContext<Order>) -> Result<u64, StepError> {
    Ok(ctx.input().id)
}

async fn release_stock(_: Arc<Checkout>, _: StepContext<Order>, _: u64) -> Result<(), StepError> {
    Ok(())
}

async fn charge_card(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<Charge, StepError> {
    let charge_id = saga
        .payments
        .charge(ctx.input().cents, ctx.key().as_str())
        .await
        .transient()?;
    Ok(Charge { charge_id })
}

async fn refund(
    saga: Arc<Checkout>,
    ctx: StepContext<Order>,
    charge: Charge,
) -> Result<(), StepError> {
    saga.payments
        .refund(&charge.charge_id, ctx.key().as_str())
        .await
        .map_err(StepError::permanent)
}

async fn send_receipt(_: Arc<Checkout>, _: StepContext<Order>) -> Result<(), StepError> {
    Ok(())
}

const ORDER: Order = Order {
    id: 7,
    cents: 4_200,
};

fn kit(payments: &Arc<Payments>) -> TestKit {
    let kit = TestKit::new();
    kit.register(Checkout {
        payments: Arc::clone(payments),
    })
    .unwrap();
    kit
}

#[tokio::test(start_paused = true)]
async fn a_declined_receipt_compensates_the_charge_and_the_stock_in_reverse() {
    let payments = Arc::new(Payments::default());
    let kit = kit(&payments);
    kit.inject(Fault::on("send_receipt").permanent("mailbox refused"));
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::Compensated)
        .assert_completed(&["reserve_stock", "charge_card"])
        .assert_compensated_in_reverse()
        .assert_one_key_per_step()
        .assert_no_intervention();
    assert_eq!(run.compensated(), vec!["charge_card", "reserve_stock"]);
    assert_eq!(payments.refunds.lock().unwrap().len(), 1, "one refund");
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_one_key_and_charge_once() {
    let payments = Arc::new(Payments::default());
    let kit = kit(&payments);
    kit.inject(Fault::on("charge_card").attempt(1).transient("503"));
    kit.inject(Fault::on("charge_card").attempt(2).transient("503"));
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::Completed)
        .assert_completed(&["reserve_stock", "charge_card", "send_receipt"])
        .assert_one_key_per_step();
    let calls = run.calls_of("charge_card", Phase::Action);
    assert_eq!(
        calls.len(),
        3,
        "two injected failures, then the call: {calls:?}"
    );
    assert_eq!(run.runs_of("charge_card", Phase::Action), 1);
    assert_eq!(payments.charged(), 1);
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_lost_after_the_charge_is_retried_with_its_key_and_charges_once() {
    let payments = Arc::new(Payments::default());
    let kit = kit(&payments);
    kit.inject(Fault::on("charge_card").attempt(1).timeout_after_effect());
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::Completed)
        .assert_one_key_per_step();
    assert_eq!(
        run.runs_of("charge_card", Phase::Action),
        2,
        "the unknown outcome is settled by a second call with the same key"
    );
    assert_eq!(
        run.calls_of("charge_card", Phase::Action)[0].outcome,
        CallOutcome::AnswerLost
    );
    assert_eq!(payments.charged(), 1, "the provider honoured the key");
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_the_charge_and_its_record_resumes_with_the_same_key() {
    let payments = Arc::new(Payments::default());
    let kit = kit(&payments);
    kit.inject(Fault::on("charge_card").attempt(1).crash_after_effect());
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::Completed)
        .assert_one_key_per_step();
    let calls = run.calls_of("charge_card", Phase::Action);
    assert_eq!(calls[0].outcome, CallOutcome::Crashed);
    assert_eq!(
        calls.len(),
        2,
        "taken over once the lease (30 s, virtual) expired, and called again: {calls:?}"
    );
    assert!(calls[1].call.attempt.0 >= 2);
    assert_eq!(payments.charged(), 1);
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refund_that_fails_for_good_opens_an_intervention() {
    let payments = Arc::new(Payments {
        refund_fails: true,
        ..Payments::default()
    });
    let kit = kit(&payments);
    kit.inject(Fault::on("send_receipt").permanent("mailbox refused"));
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::NeedsIntervention)
        .assert_intervention_opened();
    assert!(run.compensated().is_empty(), "{:?}", run.compensated());
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn redelivering_everything_shows_the_steps_are_idempotent() {
    let payments = Arc::new(Payments::default());
    let kit = kit(&payments);
    kit.redeliver_everything();
    kit.inject(Fault::on("send_receipt").permanent("mailbox refused"));
    let run = kit.run::<Checkout>(&ORDER).await.unwrap();
    run.assert_status(SagaStatus::Compensated)
        .assert_compensated_in_reverse()
        .assert_one_key_per_step()
        .assert_idempotent();
    assert_eq!(run.runs_of("charge_card", Phase::Action), 2);
    assert_eq!(run.runs_of("charge_card", Phase::Compensation), 2);
    assert_eq!(payments.charged(), 1, "two calls with one key charge once");
    assert_eq!(payments.refunds.lock().unwrap().len(), 1, "and refund once");
    kit.shutdown().await;
}

#[derive(Serialize, Deserialize)]
struct PaymentWebhook {
    charge_id: String,
}

impl saga::Signal for PaymentWebhook {
    const NAME: &'static str = "payment_webhook";
}

/// Reserves stock, waits up to 30 minutes for the payment's webhook, sleeps a day, then sends
/// the receipt.
#[derive(Saga)]
#[saga(name = "webhook_checkout", version = 1, input = Order)]
#[step(hold_stock, compensate = unhold_stock)]
#[step(payment_confirmed, await_signal = PaymentWebhook, timeout = "30m")]
#[step(a_day_later, sleep = "24h")]
#[step(receipt, irreversible)]
struct WebhookCheckout;

async fn hold_stock(_: Arc<WebhookCheckout>, ctx: StepContext<Order>) -> Result<u64, StepError> {
    Ok(ctx.input().id)
}

async fn unhold_stock(
    _: Arc<WebhookCheckout>,
    _: StepContext<Order>,
    _: u64,
) -> Result<(), StepError> {
    Ok(())
}

async fn receipt(_: Arc<WebhookCheckout>, _: StepContext<Order>) -> Result<(), StepError> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_signal_and_a_day_long_timer_complete_under_virtual_time() {
    let kit = TestKit::new();
    kit.register(WebhookCheckout).unwrap();
    let id = kit
        .orchestrator()
        .start::<WebhookCheckout>(&ORDER)
        .await
        .unwrap();
    let delivered = kit
        .signal(
            id,
            "payment_webhook",
            serde_json::json!({ "charge_id": "ch_1" }),
            "evt-1",
        )
        .await
        .unwrap();
    assert!(delivered.is_some(), "no fault: the signal is delivered");
    let run = kit.settle(id).await.unwrap();
    run.assert_status(SagaStatus::Completed).assert_completed(&[
        "hold_stock",
        "payment_confirmed",
        "a_day_later",
        "receipt",
    ]);
    kit.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_signal_lets_the_wait_time_out_and_the_saga_compensates() {
    let kit = TestKit::new();
    kit.register(WebhookCheckout).unwrap();
    kit.inject(Fault::lose_signal("payment_webhook"));
    let id = kit
        .orchestrator()
        .start::<WebhookCheckout>(&ORDER)
        .await
        .unwrap();
    let delivered = kit
        .signal(
            id,
            "payment_webhook",
            serde_json::json!({ "charge_id": "ch_1" }),
            "evt-1",
        )
        .await
        .unwrap();
    assert!(delivered.is_none(), "the fault lost it");
    let run = kit.settle(id).await.unwrap();
    run.assert_status(SagaStatus::Compensated)
        .assert_completed(&["hold_stock"])
        .assert_compensated_in_reverse();
    kit.shutdown().await;
}

#[test]
#[should_panic(expected = "expected the reverse of the completed actions")]
fn a_compensation_out_of_order_fails_the_assertion() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let payments = Arc::new(Payments::default());
        let kit = kit(&payments);
        kit.inject(Fault::on("send_receipt").permanent("mailbox refused"));
        let mut run = kit.run::<Checkout>(&ORDER).await.unwrap();
        // Swap the two compensations' completions in the history, as a library that
        // compensated in step order would have written it.
        let completed: Vec<usize> = run
            .history
            .events
            .iter()
            .enumerate()
            .filter(|(_, event)| {
                event.kind == saga::EventKind::StepCompleted
                    && event.phase == Some(Phase::Compensation)
            })
            .map(|(index, _)| index)
            .collect();
        let (first, second) = (completed[0], completed[1]);
        let moved = run.history.events[first].step.clone();
        run.history.events[first].step = run.history.events[second].step.clone();
        run.history.events[second].step = moved;
        run.assert_compensated_in_reverse();
    });
}

#[test]
#[should_panic(expected = "expected the reverse of the completed actions")]
fn a_missing_compensation_fails_the_assertion() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let payments = Arc::new(Payments::default());
        let kit = kit(&payments);
        kit.inject(Fault::on("send_receipt").permanent("mailbox refused"));
        let mut run = kit.run::<Checkout>(&ORDER).await.unwrap();
        // Forget that reserve_stock was compensated, as a library that skipped it would.
        run.history.events.retain(|event| {
            !(event.phase == Some(Phase::Compensation)
                && event.step.as_ref().map(|s| s.as_str()) == Some("reserve_stock"))
        });
        run.snapshot.steps.retain(|step| {
            !(step.phase == Phase::Compensation && step.name.as_str() == "reserve_stock")
        });
        run.assert_compensated_in_reverse();
    });
}

/// Charges anew on every call, whatever the key: not idempotent.
#[derive(Saga)]
#[saga(name = "careless_checkout", version = 1, input = Order)]
#[step(charge_every_time, irreversible)]
struct Careless {
    payments: Arc<Payments>,
}

async fn charge_every_time(
    saga: Arc<Careless>,
    ctx: StepContext<Order>,
) -> Result<String, StepError> {
    let fresh = format!("{}-{}", ctx.key(), saga.payments.charged());
    saga.payments
        .charge(ctx.input().cents, &fresh)
        .await
        .transient()
}

#[tokio::test(start_paused = true)]
async fn redelivery_catches_a_step_that_ignores_its_key_and_never_records_it_clean() {
    let payments = Arc::new(Payments::default());
    let kit = TestKit::new();
    kit.register(Careless {
        payments: Arc::clone(&payments),
    })
    .unwrap();
    kit.redeliver_everything();
    let run = kit.run::<Careless>(&ORDER).await.unwrap();
    assert_ne!(
        run.status(),
        SagaStatus::Completed,
        "an attempt whose second call answered differently is an unknown outcome, not a result"
    );
    assert!(matches!(
        run.calls_of("charge_every_time", Phase::Action)
            .iter()
            .find(|call| matches!(call.outcome, CallOutcome::NotIdempotent(_)))
            .map(|call| &call.outcome),
        Some(CallOutcome::NotIdempotent(_))
    ));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run.assert_idempotent();
    }));
    assert!(caught.is_err(), "assert_idempotent fails the test");
    assert!(
        payments.charged() >= 2,
        "the careless step did charge twice"
    );
    kit.shutdown().await;
}
