use saga::Signal;
use saga_macros::Saga;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct PaymentWebhook {
    paid: bool,
}

impl Signal for PaymentWebhook {
    const NAME: &'static str = "payment_webhook";
}

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(payment_confirmed, await_signal = PaymentWebhook, timeout = "30m", default = unpaid)]
struct Checkout;

// The default output must be the signal type.
fn unpaid() -> bool {
    false
}

fn main() {}
