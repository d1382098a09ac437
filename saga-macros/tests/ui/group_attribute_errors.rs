use saga_macros::Saga;

// `#[group(...)]` names a group of steps once, with a limit of at least one.
#[derive(Saga)]
#[saga(name = "trip", version = 1, input = u32)]
#[group(book, limit = 0)]
#[group(book, limit = 2)]
#[group(rent, limit = 2)]
#[group(limit = 2)]
#[group(stay, size = 2)]
#[step(flight, compensate = cancel, group = book)]
#[step(hotel, compensate = cancel, group = "book")]
struct Trip;

fn main() {}
