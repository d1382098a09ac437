use saga_macros::Saga;

// A policy counts under one key: a field of the input or what a function returns, not both.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = u32)]
#[step(send_email, irreversible, cap(name = "email", key = customer, key_fn = customer_of, max = 1, per = "24h"))]
struct Outreach;

fn main() {}
