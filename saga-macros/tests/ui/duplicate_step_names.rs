use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, irreversible)]
#[step(send_receipt, irreversible)]
#[step(charge_card, irreversible)]
struct Checkout;

fn main() {}
