use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, compensate = refund)]
struct Checkout;

async fn charge_card(_: Arc<Checkout>, _: StepContext<u32>) -> Result<u64, StepError> {
    Ok(42)
}

// A compensation receives the action's output: here u64, not String.
async fn refund(_: Arc<Checkout>, _: StepContext<u32>, _charge: String) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
