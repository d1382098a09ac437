use saga::{Saga as _, StepContext, StepError, Timestamp};
use saga_macros::Saga;

// A sleep's length is its duration: a `timeout` would never apply. That is the only error: the
// code using the saga and its step-name constants compiles.
#[derive(Saga)]
#[saga(name = "reminder", version = 1, input = u32)]
#[step(remind_later, sleep = "24h", timeout = "1h")]
#[step(remind_at, sleep_until = remind_time, timeout = "1h")]
struct Reminder;

fn remind_time(_: &Reminder, ctx: &StepContext<u32>) -> Result<Timestamp, StepError> {
    ctx.output(Reminder::REMIND_LATER)
}

fn main() {
    let definition = Reminder::definition();
    assert_eq!(definition.name().as_str(), "reminder");
    assert_eq!(Reminder::REMIND_AT, "remind_at");
}
