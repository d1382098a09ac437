use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, irreversible)]
struct Checkout;

// The saga's input is u32, but this action expects a String.
async fn reserve_stock(_: Arc<Checkout>, _: StepContext<String>) -> Result<String, StepError> {
    Ok("reservation".to_owned())
}

fn main() {}
