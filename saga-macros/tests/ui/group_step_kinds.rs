use saga_macros::Saga;

// What a step in a group may not be: a wait, transactional, the pivot, under a policy.
#[derive(Saga)]
#[saga(name = "trip", version = 1, input = u32)]
#[step(flight, compensate = cancel, group = book, transactional)]
#[step(hotel, irreversible, group = book, pivot)]
#[step(car, compensate = cancel, group = book, rate_limit(name = "cars", max = 5, per = "1s"))]
#[step(confirmed, await_signal = Confirmation, group = book)]
struct Trip;

fn main() {}
