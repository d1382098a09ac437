use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, irreversible)]
#[step(charge_card, compensate = refund)]
struct Checkout;

/// Another saga's value: copied from its steps, these functions take `Arc<Other>`.
struct Other;

async fn reserve_stock(_: Arc<Other>, _: StepContext<u32>) -> Result<String, StepError> {
    Ok("reservation".to_owned())
}

async fn charge_card(_: Arc<Checkout>, _: StepContext<u32>) -> Result<u64, StepError> {
    Ok(42)
}

async fn refund(_: Arc<Other>, _: StepContext<u32>, _charged: u64) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
