use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout")]
#[step(send_receipt, irreversible)]
struct Checkout;

#[derive(Saga)]
#[step(send_receipt, irreversible)]
struct Refund;

fn main() {}
