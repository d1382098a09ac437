use saga_macros::Saga;

// A group's steps run side by side: they must be next to each other, and at least two.
#[derive(Saga)]
#[saga(name = "trip", version = 1, input = u32)]
#[step(flight, compensate = cancel, group = book)]
#[step(charge, compensate = refund)]
#[step(hotel, compensate = cancel, group = book)]
#[step(car, compensate = cancel, group = rent)]
struct Trip;

fn main() {}
