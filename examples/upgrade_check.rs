//! The upgrade check of a service about to ship checkout v2: run it against the production store
//! before the deploy, and the pipeline stops when the new build would strand sagas in flight.
//!
//! Version 2 of the README's checkout saga checks for fraud before charging the card. Sagas in
//! flight on version 1 finish on version 1, so this build registers both: `CheckoutV1` stays
//! until no saga of it is in flight (the check says when), and new sagas start on `Checkout`.
//! Dropping `CheckoutV1`, or changing its steps without a version bump, is what the check
//! catches.
//!
//! ```text
//! cargo run --example upgrade_check -- --db sqlite://saga.db          # exit 0, or 6: stranded
//! cargo run --example upgrade_check --features postgres -- --db postgres://... --json
//! cargo run --example upgrade_check -- --definitions                  # what this build ships
//! ```
//!
//! In your service, put the same few lines in `src/bin/upgrade-check.rs` (or behind a
//! subcommand of your binary), listing every saga type the build registers.

use std::process::ExitCode;
use std::sync::Arc;

use saga::upgrade::{self, Definitions};
use saga::{Saga, StepContext, StepError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Order {
    id: u64,
    cents: u64,
}

#[derive(Serialize, Deserialize)]
struct Charge {
    charge_id: String,
}

/// The payment service's client (the step functions below stand for the real ones: this binary
/// reads the definitions and never runs a step).
struct PaymentsClient;

/// Version 1, as in the README: kept registered while sagas started on it are in flight.
#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = Order)]
#[step(reserve_stock, compensate = release_stock)]
#[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "200ms"), timeout = "10s")]
#[step(send_receipt, irreversible)]
struct CheckoutV1 {
    #[allow(dead_code)]
    payments: PaymentsClient,
}

/// Version 2: a fraud check before the charge. New sagas start on it.
// Clippy reads the second `irreversible` as a repeat of the first step's attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(Saga)]
#[saga(name = "checkout", version = 2, input = Order)]
#[step(reserve_stock, compensate = release_stock)]
#[step(check_fraud, irreversible, timeout = "5s")]
#[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "200ms"), timeout = "10s")]
#[step(send_receipt, irreversible)]
struct Checkout {
    #[allow(dead_code)]
    payments: PaymentsClient,
}

async fn reserve_stock<S>(_: Arc<S>, ctx: StepContext<Order>) -> Result<String, StepError> {
    Ok(format!("reservation-{}", ctx.input().id))
}

async fn release_stock<S>(
    _: Arc<S>,
    _: StepContext<Order>,
    _reservation: String,
) -> Result<(), StepError> {
    Ok(())
}

async fn check_fraud(_: Arc<Checkout>, _: StepContext<Order>) -> Result<(), StepError> {
    Ok(())
}

async fn charge_card<S>(_: Arc<S>, ctx: StepContext<Order>) -> Result<Charge, StepError> {
    Ok(Charge {
        charge_id: format!("charge-{}", ctx.key()),
    })
}

async fn refund<S>(_: Arc<S>, _: StepContext<Order>, _charge: Charge) -> Result<(), StepError> {
    Ok(())
}

async fn send_receipt<S>(_: Arc<S>, _: StepContext<Order>) -> Result<(), StepError> {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Every saga type and version this build registers with its orchestrator.
    let definitions = Definitions::new().with::<CheckoutV1>().with::<Checkout>();
    upgrade::main_with(&definitions, std::env::args().skip(1)).await
}
