use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock, timeout = "0s", compensation_timeout = "1.5s")]
#[step(charge_card, irreversible, timeout = "10sec")]
#[step(send_receipt, irreversible, timeout = 10)]
struct Checkout;

fn main() {}
