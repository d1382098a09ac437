use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "promotion", version = 1, input = u32)]
#[step(approve_budget, sleep = "1h", approval)]
#[step(payment_confirmed, await_signal = PaymentWebhook, sleep_until = remind_time)]
struct Promotion;

fn main() {}
