use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, irreversible)]
struct Checkout;

/// Not `Serialize` or `Deserialize`: it cannot be stored as a step's output.
struct Reservation(String);

async fn reserve_stock(_: Arc<Checkout>, _: StepContext<u32>) -> Result<Reservation, StepError> {
    Ok(Reservation("reservation".to_owned()))
}

fn main() {}
