use saga_macros::Saga;
use serde::{Deserialize, Serialize};

// Serializable, but not declared a `Signal`: it has no name to be sent by.
#[derive(Serialize, Deserialize)]
struct PaymentWebhook {
    paid: bool,
}

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(payment_confirmed, await_signal = PaymentWebhook, timeout = "30m")]
struct Checkout;

fn main() {}
