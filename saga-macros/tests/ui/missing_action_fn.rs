use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock)]
#[step(charge_card, action = charge, irreversible)]
struct Checkout;

async fn release_stock(_: Arc<Checkout>, _: StepContext<u32>, _: String) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
