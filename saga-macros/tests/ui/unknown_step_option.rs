use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, irreversible, retries(max_attempts = 3))]
#[step(compensate = refund)]
struct Checkout;

fn main() {}
