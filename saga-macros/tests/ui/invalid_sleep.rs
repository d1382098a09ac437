use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "reminder", version = 1, input = u32, deadline = "2 days")]
#[step(remind_later, sleep = "1.5h")]
#[step(remind_again, sleep = 24)]
#[step(approve, approval, timeout = "0m")]
struct Reminder;

fn main() {}
