use std::sync::Arc;

use saga::{Signal, StepContext, StepError};
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PaymentWebhook {
    charge_id: String,
}

impl Signal for PaymentWebhook {
    const NAME: &'static str = "payment_webhook";
}

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(payment_confirmed, await_signal = PaymentWebhook, compensate = refund)]
struct Checkout;

// A signal step's compensation receives the signal's payload, not a `String`.
async fn refund(_: Arc<Checkout>, _: StepContext<u32>, _charge_id: String) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
