use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(reserve_stock, compensate = release_stock)]
#[step(charge_card, timeout = "10s")]
struct Checkout;

fn main() {}
