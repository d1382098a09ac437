use std::sync::Arc;

use saga::{Saga as _, StepContext, StepError};
use saga_macros::Saga;

// One typo in the declaration: the code that uses the saga must not add errors of its own.
#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock, timeout = "10 sec")]
#[step(send_receipt, irreversible)]
struct Checkout;

async fn reserve_stock(_: Arc<Checkout>, _: StepContext<u32>) -> Result<String, StepError> {
    Ok("reservation".to_owned())
}

async fn release_stock(_: Arc<Checkout>, _: StepContext<u32>, _: String) -> Result<(), StepError> {
    Ok(())
}

async fn send_receipt(_: Arc<Checkout>, ctx: StepContext<u32>) -> Result<(), StepError> {
    let _reservation: String = ctx.output(Checkout::RESERVE_STOCK)?;
    Ok(())
}

fn main() {
    let definition = Checkout::definition();
    assert_eq!(definition.name().as_str(), "checkout");
}
