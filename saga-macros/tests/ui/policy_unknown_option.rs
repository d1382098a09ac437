use saga_macros::Saga;

// Each policy takes its own options only: a rate limit counts per integration (no key), and
// concurrency counts running sagas (no window).
#[derive(Saga)]
#[saga(name = "outreach", version = 1, input = u32)]
#[step(send_email, irreversible, cap(name = "email", key = customer, max = 1, per = "24h", every = "1d"))]
#[step(call_partner, irreversible, rate_limit(name = "partner_api", key = customer, max = 50, per = "1s"))]
#[step(hold_cart, irreversible, concurrency(name = "cart", key = cart_id, max = 1, per = "1h"))]
#[step(notify, irreversible, rate_limit = 50)]
struct Outreach;

fn main() {}
