use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(send_receipt, irreversible)]
struct Checkout;

// Not async: the action must return a future.
fn send_receipt(_: Arc<Checkout>, _: StepContext<u32>) -> Result<(), StepError> {
    Ok(())
}

fn main() {}
