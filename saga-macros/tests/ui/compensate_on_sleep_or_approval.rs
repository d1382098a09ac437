use saga_macros::Saga;

// A sleep or an approval has no effect of its own to undo; only a signal step takes a
// compensation, which receives the signal's payload.
#[derive(Saga)]
#[saga(name = "promotion", version = 1, input = u32)]
#[step(remind_later, sleep = "24h", compensate = forget_reminder)]
#[step(approve_budget, approval, compensate = withdraw_approval, compensation_timeout = "5s")]
struct Promotion;

fn main() {}
