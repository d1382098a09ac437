use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "shipment", version = 1, input = u32)]
#[step(pack, irreversible)]
struct Shipment;

async fn pack(_: std::sync::Arc<Shipment>, _: saga_core::StepContext<u32>) -> Result<u32, saga_core::StepError> {
    Ok(1)
}

fn parcel(_: &Order, ctx: &saga_core::StepContext<u32>) -> Result<u32, saga_core::StepError> {
    Ok(*ctx.input())
}

#[derive(Saga)]
#[saga(name = "order", version = 1, input = u32)]
// A child step needs its child's input.
#[step(ship, child = Shipment)]
// A child step takes no action's options, and no timeout: its child's steps have theirs.
#[step(ship_again, child = Shipment, child_input = parcel, retry(max_attempts = 3), timeout = "1s")]
// A child step is undone by compensating its child.
#[step(ship_twice, child = Shipment, child_input = parcel, compensate = undo)]
// `child_input` belongs to a child step.
#[step(charge, irreversible, child_input = parcel)]
struct Order;

fn main() {}
