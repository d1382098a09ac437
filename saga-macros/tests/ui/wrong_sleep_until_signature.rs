use std::sync::Arc;

use saga::{StepContext, StepError, Timestamp};
use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "reminder", version = 1, input = u32)]
#[step(remind_at, sleep_until = remind_time)]
#[step(remind_later, sleep_until = later)]
struct Reminder;

// Takes the saga as `Arc<Reminder>`, like an action: a wake-time function borrows it.
fn remind_time(_: Arc<Reminder>, _: &StepContext<u32>) -> Result<Timestamp, StepError> {
    Ok(saga::now())
}

// Returns a number of seconds, not a time.
fn later(_: &Reminder, _: &StepContext<u32>) -> Result<u64, StepError> {
    Ok(60)
}

fn main() {}
