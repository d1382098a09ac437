//! `#[derive(Saga)]` with step policies (`cap`, `rate_limit`, `concurrency`, `retry_budget`):
//! the derived step specs carry them in the order written, and a cap of one per customer, keyed
//! by a field or by a function, skips the step of a second saga for the same customer.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga::{
    Config, MemoryStore, Orchestrator, Phase, Policy, PolicyKind, Saga, SagaId, SagaStatus,
    StepContext, StepError, StepIndex, StepStatus, Store,
};
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Contact {
    customer: String,
    cart_id: u64,
}

/// The retry budget's key: customers are counted whatever the case they were written in.
fn contact_key(contact: &Contact) -> String {
    contact.customer.to_lowercase()
}

/// Every policy kind, declared with the derive; `sent` records each email the action sends.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = Contact)]
#[step(hold_cart, irreversible, concurrency(name = "cart", key = cart_id, max = 1))]
#[step(send_email, irreversible,
       cap(name = "email", key = customer, max = 1, per = "24h"),
       rate_limit(name = "partner_api", max = 50, per = "1s"),
       retry_budget(name = "contact", key_fn = contact_key, max = 5, per = "1h"))]
#[step(log_contact, irreversible)]
struct Outreach {
    sent: Arc<Mutex<Vec<String>>>,
}

async fn hold_cart(_: Arc<Outreach>, ctx: StepContext<Contact>) -> Result<u64, StepError> {
    Ok(ctx.input().cart_id)
}

async fn send_email(saga: Arc<Outreach>, ctx: StepContext<Contact>) -> Result<(), StepError> {
    saga.sent
        .lock()
        .map_err(|_| StepError::permanent("the test's mailbox is poisoned"))?
        .push(ctx.input().customer.clone());
    Ok(())
}

async fn log_contact(_: Arc<Outreach>, _: StepContext<Contact>) -> Result<(), StepError> {
    Ok(())
}

#[test]
fn derived_policies_are_in_the_step_specs_in_the_order_written() {
    let definition = Outreach::definition();
    definition.validate().unwrap();
    let specs = definition.specs();
    assert_eq!(
        specs[0].policies,
        [Policy {
            kind: PolicyKind::Concurrency,
            name: "cart".to_owned(),
            max: 1,
            per: Duration::ZERO,
        }]
    );
    assert_eq!(
        specs[1].policies,
        [
            Policy {
                kind: PolicyKind::Cap,
                name: "email".to_owned(),
                max: 1,
                per: Duration::from_secs(86_400),
            },
            Policy {
                kind: PolicyKind::RateLimit,
                name: "partner_api".to_owned(),
                max: 50,
                per: Duration::from_secs(1),
            },
            Policy {
                kind: PolicyKind::RetryBudget,
                name: "contact".to_owned(),
                max: 5,
                per: Duration::from_secs(3_600),
            },
        ]
    );
    assert!(specs[2].policies.is_empty());
}

/// An orchestrator on a fresh `MemoryStore`, running.
fn orchestrator() -> Orchestrator {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    Orchestrator::new(
        store,
        Config::default()
            .concurrency(2)
            .poll_interval(Duration::from_millis(10)),
    )
}

/// Runs one saga to its end: its status, and the status of each step's action.
async fn run_to_end<S: Saga>(
    orchestrator: &Orchestrator,
    input: &S::Input,
) -> (SagaStatus, Vec<StepStatus>) {
    let id: SagaId = orchestrator.start::<S>(input).await.unwrap();
    let status = orchestrator.wait(id, WAIT).await.unwrap().status;
    let snapshot = orchestrator.snapshot(id).await.unwrap();
    let steps = (0..S::definition().specs().len())
        .map(|index| {
            let index = StepIndex(u32::try_from(index).unwrap());
            snapshot
                .step(index, Phase::Action)
                .map_or(StepStatus::Pending, |step| step.status)
        })
        .collect();
    (status, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_one_per_customer_skips_the_second_sagas_step_and_the_saga_completes() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let orchestrator = orchestrator();
    orchestrator
        .register(Outreach { sent: sent.clone() })
        .unwrap();
    orchestrator.run();
    let contact = |customer: &str, cart_id| Contact {
        customer: customer.to_owned(),
        cart_id,
    };

    let first = run_to_end::<Outreach>(&orchestrator, &contact("ann", 1)).await;
    let second = run_to_end::<Outreach>(&orchestrator, &contact("ann", 2)).await;
    let other = run_to_end::<Outreach>(&orchestrator, &contact("bob", 3)).await;
    orchestrator.shutdown().await;

    use StepStatus::{Completed, Skipped};
    assert_eq!(
        first,
        (SagaStatus::Completed, vec![Completed, Completed, Completed])
    );
    assert_eq!(
        second,
        (SagaStatus::Completed, vec![Completed, Skipped, Completed])
    );
    assert_eq!(
        other,
        (SagaStatus::Completed, vec![Completed, Completed, Completed])
    );
    assert_eq!(*sent.lock().unwrap(), ["ann", "bob"]);
}

/// A cap keyed by a function of the input rather than a field.
#[derive(Saga)]
#[saga(name = "reminder", version = 1, input = Contact)]
#[step(remind, irreversible, cap(name = "reminder", key_fn = contact_key, max = 1, per = "1h"))]
struct Reminder;

async fn remind(_: Arc<Reminder>, _: StepContext<Contact>) -> Result<(), StepError> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_keyed_by_a_function_counts_what_the_function_returns() {
    let orchestrator = orchestrator();
    orchestrator.register(Reminder).unwrap();
    orchestrator.run();
    let contact = |customer: &str| Contact {
        customer: customer.to_owned(),
        cart_id: 1,
    };

    let first = run_to_end::<Reminder>(&orchestrator, &contact("Ann")).await;
    let same_key = run_to_end::<Reminder>(&orchestrator, &contact("ann")).await;
    orchestrator.shutdown().await;

    assert_eq!(first, (SagaStatus::Completed, vec![StepStatus::Completed]));
    assert_eq!(same_key, (SagaStatus::Completed, vec![StepStatus::Skipped]));
}

/// A dedup window on the saga's start keys.
#[derive(Saga)]
#[saga(name = "nudge", version = 1, input = Contact, dedup_window = "5m")]
#[step(remind_once, irreversible)]
struct Nudge;

async fn remind_once(_: Arc<Nudge>, _: StepContext<Contact>) -> Result<(), StepError> {
    Ok(())
}

#[test]
fn a_dedup_window_is_read_into_the_definition() {
    use saga::Saga as _;
    assert_eq!(
        Nudge::definition().dedup_window_of_starts(),
        Some(Duration::from_secs(300))
    );
    assert_eq!(Reminder::definition().dedup_window_of_starts(), None);
}
