use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32, versioned = true)]
#[step(send_receipt, irreversible)]
struct Checkout;

fn main() {}
