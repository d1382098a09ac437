use saga_macros::Saga;

// `max = 0` is refused where it would hold or fail every saga; a cap of 0 is allowed (its step
// is always skipped). Names and windows are checked too.
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = u32)]
#[step(call_partner, irreversible, rate_limit(name = "partner_api", max = 0, per = "1s"))]
#[step(hold_cart, irreversible, concurrency(name = "cart", key = cart_id, max = 0))]
#[step(retry_contact, irreversible, retry_budget(name = "contact", key = customer, max = 0, per = "1h"))]
#[step(send_email, irreversible, cap(name = "email:daily", key = customer, max = 0, per = "0s"))]
struct Outreach;

fn main() {}
