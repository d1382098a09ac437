use saga_macros::Saga;

// A waiting step calls no action: none of an action's options apply, and it needs neither
// `compensate` nor `irreversible`.
#[derive(Saga)]
#[saga(name = "promotion", version = 1, input = u32)]
#[step(remind_later, sleep = "24h", action = remind, retry(max_attempts = 3))]
#[step(payment_confirmed, await_signal = PaymentWebhook, probe = payment_status, transactional)]
#[step(approve_budget, approval, irreversible)]
struct Promotion;

fn main() {}
