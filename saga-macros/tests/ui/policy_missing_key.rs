use saga_macros::Saga;

// A cap, concurrency limit or retry budget counts per key of the input, so it needs one; the
// other required options are reported missing too.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = u32)]
#[step(send_email, irreversible, cap(name = "email", max = 1, per = "24h"))]
#[step(retry_contact, irreversible, retry_budget(key = customer))]
struct Outreach;

fn main() {}
