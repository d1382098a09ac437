use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock)]
struct Checkout;

async fn reserve_stock(_: Arc<Checkout>, _: StepContext<u32>) -> Result<String, StepError> {
    Ok("reservation".to_owned())
}

fn main() {}
