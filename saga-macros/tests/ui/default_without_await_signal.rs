use saga_macros::Saga;

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u32)]
// `default` is the output of a signal step whose wait times out: these steps wait for no signal.
#[step(charge_card, irreversible, default = no_charge)]
#[step(approve_refund, approval, timeout = "2h", default = no_charge)]
struct Checkout;

fn main() {}
