//! `#[derive(Saga)]` with waiting steps (`sleep`, `sleep_until`, `await_signal`, `approval`), a
//! pivot and a saga deadline, against the same saga written with the builder: the same step
//! specs and deadline, a pinned fingerprint, and a run through every wait but the approval.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use saga::{
    Approval, Config, MemoryStore, Orchestrator, Saga, SagaDefinition, SagaStatus, Signal,
    SignalKey, Step, StepContext, StepError, StepKind, Store, Timestamp,
};
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    cents: u64,
}

/// The payment provider's webhook, awaited by `payment_confirmed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentWebhook {
    charge_id: String,
    paid: bool,
}

impl Signal for PaymentWebhook {
    const NAME: &'static str = "payment_webhook";
}

/// The output `payment_confirmed` records when no webhook came in time.
fn no_payment() -> PaymentWebhook {
    PaymentWebhook {
        charge_id: String::new(),
        paid: false,
    }
}

async fn reserve_budget(_: Arc<Promotion>, ctx: StepContext<Order>) -> Result<u64, StepError> {
    Ok(ctx.input().cents)
}

async fn release_budget(
    _: Arc<Promotion>,
    _: StepContext<Order>,
    _cents: u64,
) -> Result<(), StepError> {
    Ok(())
}

async fn refund_payment(
    _: Arc<Promotion>,
    _: StepContext<Order>,
    _webhook: PaymentWebhook,
) -> Result<(), StepError> {
    Ok(())
}

async fn publish(_: Arc<Promotion>, ctx: StepContext<Order>) -> Result<(), StepError> {
    let _approval: Approval = ctx.output(Promotion::APPROVE_BUDGET)?;
    Ok(())
}

/// Every waiting step, a pivot and a deadline, declared with the derive.
#[derive(Saga)]
#[saga(name = "promotion", version = 1, input = Order, deadline = "2h")]
#[step(reserve_budget, compensate = release_budget)]
#[step(remind_later, sleep = "24h")]
#[step(remind_at, sleep_until = Self::remind_time)]
#[step(payment_confirmed, await_signal = PaymentWebhook, timeout = "30m",
       default = no_payment, compensate = refund_payment)]
#[step(approve_budget, approval, timeout = "2h")]
#[step(publish, irreversible, pivot)]
struct Promotion;

impl Promotion {
    fn remind_time(&self, _: &StepContext<Order>) -> Result<Timestamp, StepError> {
        Ok(saga::after(saga::now(), Duration::from_secs(3_600)))
    }
}

/// The same saga, written by hand with the builder.
struct HandPromotion;

impl Saga for HandPromotion {
    type Input = Order;

    fn definition() -> SagaDefinition<Self> {
        async fn reserve(_: Arc<HandPromotion>, ctx: StepContext<Order>) -> Result<u64, StepError> {
            Ok(ctx.input().cents)
        }
        async fn publish(_: Arc<HandPromotion>, _: StepContext<Order>) -> Result<(), StepError> {
            Ok(())
        }
        SagaDefinition::new("promotion", 1)
            .deadline(Duration::from_secs(2 * 3_600))
            .step(
                Step::new("reserve_budget", reserve)
                    .compensate(|_, _, _cents: u64| async { Ok(()) }),
            )
            .step(Step::sleep("remind_later", Duration::from_secs(24 * 3_600)))
            .step(Step::sleep_until("remind_at", |_, _| {
                Ok(saga::after(saga::now(), Duration::from_secs(3_600)))
            }))
            .step(
                Step::signal::<PaymentWebhook>("payment_confirmed")
                    .timeout(Duration::from_secs(30 * 60))
                    .or_default(no_payment())
                    .compensate(|_, _, _webhook: PaymentWebhook| async { Ok(()) }),
            )
            .step(Step::approval("approve_budget").timeout(Duration::from_secs(2 * 3_600)))
            .step(Step::new("publish", publish).irreversible().pivot())
    }
}

#[test]
fn derived_waiting_steps_have_the_specs_and_deadline_of_the_builder() {
    let derived = Promotion::definition();
    let hand = HandPromotion::definition();
    assert_eq!(derived.name(), hand.name());
    assert_eq!(derived.version(), hand.version());
    assert_eq!(derived.specs(), hand.specs());
    assert_eq!(
        derived.deadline_after_start(),
        Some(Duration::from_secs(7_200))
    );
    assert_eq!(derived.deadline_after_start(), hand.deadline_after_start());
    derived.validate().unwrap();

    let specs = derived.specs();
    let kinds: Vec<&StepKind> = specs.iter().map(|spec| &spec.kind).collect();
    assert_eq!(
        kinds,
        [
            &StepKind::Call,
            &StepKind::Sleep {
                duration: Some(Duration::from_secs(86_400))
            },
            &StepKind::Sleep { duration: None },
            &StepKind::Signal {
                name: "payment_webhook".to_owned(),
                timeout: Some(Duration::from_secs(1_800)),
                default: Some(serde_json::to_value(no_payment()).unwrap()),
            },
            &StepKind::Approval {
                timeout: Some(Duration::from_secs(7_200))
            },
            &StepKind::Call,
        ]
    );
    let compensable: Vec<bool> = specs.iter().map(|spec| spec.compensable).collect();
    assert_eq!(compensable, [true, false, false, true, false, false]);
    let pivots: Vec<bool> = specs.iter().map(|spec| spec.pivot).collect();
    assert_eq!(pivots, [false, false, false, false, false, true]);
}

#[test]
fn step_name_constants_name_the_waiting_steps_too() {
    let specs = Promotion::definition().specs();
    let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    assert_eq!(
        names,
        [
            Promotion::RESERVE_BUDGET,
            Promotion::REMIND_LATER,
            Promotion::REMIND_AT,
            Promotion::PAYMENT_CONFIRMED,
            Promotion::APPROVE_BUDGET,
            Promotion::PUBLISH,
        ]
    );
    assert_eq!(Promotion::PAYMENT_CONFIRMED, "payment_confirmed");
}

#[test]
fn the_fingerprint_of_waiting_steps_is_pinned() {
    // A change here means sagas in flight would be parked after a deploy: bump the version.
    insta::assert_snapshot!(
        "promotion_fingerprint",
        Promotion::definition().fingerprint()
    );
}

/// A short saga that goes through a sleep, a computed sleep and a signal (sent, or timed out
/// to its default), then a pivot that reads what came.
#[derive(Saga)]
#[saga(name = "reminder", version = 1, input = Order, deadline = "1h")]
#[step(nap, sleep = "20ms")]
#[step(nap_until, sleep_until = Reminder::wake)]
#[step(paid, await_signal = PaymentWebhook, timeout = "200ms", default = no_payment)]
#[step(record, irreversible, pivot)]
struct Reminder;

impl Reminder {
    fn wake(&self, ctx: &StepContext<Order>) -> Result<Timestamp, StepError> {
        let napped: Timestamp = ctx.output(Reminder::NAP)?;
        Ok(saga::after(napped, Duration::from_millis(20)))
    }
}

async fn record(_: Arc<Reminder>, ctx: StepContext<Order>) -> Result<bool, StepError> {
    let webhook: PaymentWebhook = ctx.output(Reminder::PAID)?;
    Ok(webhook.paid)
}

async fn run_reminder(signal: Option<PaymentWebhook>) -> (SagaStatus, Option<serde_json::Value>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .concurrency(2)
            .poll_interval(Duration::from_millis(10)),
    );
    orchestrator.register(Reminder).unwrap();
    orchestrator.run();
    let id = orchestrator
        .start::<Reminder>(&Order { cents: 500 })
        .await
        .unwrap();
    if let Some(webhook) = signal {
        // Kept until the saga reaches its step, even if it arrives first.
        orchestrator
            .signal(id, &webhook, SignalKey::new("delivery-1"))
            .await
            .unwrap();
    }
    let status = orchestrator.wait(id, WAIT).await.unwrap().status;
    let snapshot = orchestrator.snapshot(id).await.unwrap();
    orchestrator.shutdown().await;
    (status, snapshot.steps[3].output.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_saga_sleeps_then_takes_the_signal() {
    let webhook = PaymentWebhook {
        charge_id: "ch_1".to_owned(),
        paid: true,
    };
    let (status, recorded) = run_reminder(Some(webhook)).await;
    assert_eq!(status, SagaStatus::Completed);
    assert_eq!(recorded, Some(serde_json::json!(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_signal_step_times_out_to_its_default() {
    let (status, recorded) = run_reminder(None).await;
    assert_eq!(status, SagaStatus::Completed);
    assert_eq!(recorded, Some(serde_json::json!(false)));
}
