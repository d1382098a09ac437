use saga_macros::Saga;

// Once the pivot completed the saga never compensates it: its compensation would never run.
#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
#[step(charge_card, compensate = refund, pivot)]
#[step(payment_confirmed, await_signal = PaymentWebhook, compensate = refund_payment, pivot)]
struct Checkout;

fn main() {}
