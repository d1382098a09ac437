use std::sync::Arc;

use saga::{StepContext, StepError};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock)]
#[step(send_receipt, irreversible)]
struct Checkout;

async fn reserve_stock(_: Arc<Checkout>, _: StepContext<u32>) -> Result<String, StepError> {
    Ok("reservation".to_owned())
}

async fn release_stock(_: Arc<Checkout>, _: StepContext<u32>, _: String) -> Result<(), StepError> {
    Ok(())
}

async fn send_receipt(_: Arc<Checkout>, ctx: StepContext<u32>) -> Result<(), StepError> {
    // `reserve_stok`: as a string this compiles and fails at run time; as a constant it does not.
    let _reservation: String = ctx.output(Checkout::RESERVE_STOK)?;
    Ok(())
}

fn main() {}
