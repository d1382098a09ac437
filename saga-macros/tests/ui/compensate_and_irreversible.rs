use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, compensate = refund, irreversible)]
#[step(send_receipt, irreversible, compensation_timeout = "5s")]
struct Checkout;

fn main() {}
