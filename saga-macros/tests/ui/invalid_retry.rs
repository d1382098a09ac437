use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, irreversible, retry(max_attempts = 0, base = "200", max_delay = "5 s"))]
#[step(send_receipt, irreversible, retry(max_attempts = "3", base = "2s", max_delay = "1s"))]
#[step(refund, irreversible, retry(attempts = 3))]
struct Checkout;

fn main() {}
