use saga_macros::Saga;

// A waiting step calls nothing, so a policy on it would have nothing to count.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = u32)]
#[step(remind_later, sleep = "24h", cap(name = "email", key = customer, max = 1, per = "24h"))]
#[step(approve, approval, rate_limit(name = "partner_api", max = 50, per = "1s"))]
struct Outreach;

fn main() {}
