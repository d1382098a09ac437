//! The fingerprint of a declared step graph, computed at compile time: each saga records the
//! fingerprint it started with, and a worker parks a saga whose registered definition no longer
//! has that fingerprint instead of running it against the wrong steps.
//!
//! It covers what an in-flight saga depends on: the saga name, the input type, and for each step
//! in order its name, whether it is compensable and the path of its action (which stands for its
//! output type, invisible to a macro). Retry policies and the timeouts of actions are left out:
//! changing them is safe for sagas in flight. Types and paths are hashed token by token, so
//! formatting does not matter, but `crate::Order` and `Order` are different spellings and so
//! different fingerprints.
//!
//! Waiting steps, pivots and a saga deadline add fields only where they are declared, so that
//! the fingerprint of a saga without them is the one it always had: a waiting step hashes what it
//! waits for (a sleep's length, a wake-time function's path, a signal type as written, whether
//! it has a default) and how long (a wait's `timeout`), as the core's own fingerprint does. Each
//! such field is text that no step name (an identifier) and no action path (tokens separated by
//! spaces) can be, so no two declarations hash the same fields.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

use crate::duration;
use crate::validate::{Compensation, SagaModel, StepKind, StepModel};

/// Bumped if the hashed layout ever changes, which changes every fingerprint.
const LAYOUT: &str = "saga-derive-fingerprint/1";

/// The fingerprint of `saga`: 16 lowercase hex digits (FNV-1a, 64 bits).
pub(crate) fn fingerprint(saga: &SagaModel) -> String {
    let mut hash = Fnv1a::new();
    hash.field(LAYOUT);
    hash.field(&saga.name.value());
    hash.field(&canonical(saga.input.to_token_stream()));
    if let Some(deadline) = &saga.deadline {
        hash.field(&format!("deadline:{}", duration::literal(deadline.millis)));
    }
    // Step policies are left out: changing a cap must not strand sagas in flight.
    for step in &saga.steps {
        hash.field(&step.name_text);
        hash.field(match step.compensation {
            Compensation::Compensate(_) => "compensable",
            Compensation::Irreversible => "irreversible",
            Compensation::NothingToUndo => "nothing to undo",
        });
        match &step.kind {
            StepKind::Call(action) => hash.field(&canonical(action.to_token_stream())),
            _ => wait_fields(&mut hash, step),
        }
        if step.pivot {
            hash.field("+pivot");
        }
        if let Some(group) = &step.group {
            hash.field(&format!("+group:{}", group.name));
        }
    }
    format!("{:016x}", hash.0)
}

/// The fields of a waiting step after its compensation: `wait:<kind>`, then what it waits for.
fn wait_fields(hash: &mut Fnv1a, step: &StepModel) {
    let timeout = |hash: &mut Fnv1a| {
        if let Some(timeout) = &step.timeout {
            hash.field(&format!("timeout:{}", duration::literal(timeout.millis)));
        }
    };
    match &step.kind {
        StepKind::Call(_) => {}
        StepKind::Sleep(length) => {
            hash.field("wait:sleep");
            hash.field(&duration::literal(length.millis));
        }
        StepKind::SleepUntil(wake) => {
            hash.field("wait:sleep_until");
            hash.field(&canonical(wake.to_token_stream()));
        }
        StepKind::Signal { ty, default } => {
            hash.field("wait:signal");
            hash.field(&canonical(ty.to_token_stream()));
            timeout(hash);
            if default.is_some() {
                hash.field("+default");
            }
        }
        StepKind::Approval(_) => {
            hash.field("wait:approval");
            timeout(hash);
        }
        StepKind::Child { ty, .. } => {
            hash.field("wait:child");
            hash.field(&canonical(ty.to_token_stream()));
        }
    }
}

/// FNV-1a over length-prefixed fields, so that no two field lists hash the same bytes.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        }
    }

    fn field(&mut self, text: &str) {
        self.bytes(&(text.len() as u64).to_le_bytes());
        self.bytes(text.as_bytes());
    }
}

/// Tokens as text, one space between tokens whatever the source formatting, and the same whether
/// the compiler or `proc-macro2`'s fallback prints them (each token prints as written).
pub(crate) fn canonical(tokens: TokenStream) -> String {
    let mut out = String::new();
    write_tokens(&mut out, tokens);
    out
}

fn write_tokens(out: &mut String, tokens: TokenStream) {
    for token in tokens {
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                push_token(out, open);
                write_tokens(out, group.stream());
                push_token(out, close);
            }
            TokenTree::Ident(ident) => push_token(out, &ident.to_string()),
            TokenTree::Punct(punct) => push_token(out, punct.as_char().encode_utf8(&mut [0; 4])),
            TokenTree::Literal(literal) => push_token(out, &literal.to_string()),
        }
    }
}

fn push_token(out: &mut String, token: &str) {
    if token.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(token);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{self, Errors};
    use crate::validate;

    fn fingerprint_of(input: syn::DeriveInput) -> String {
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        match validate::validate(parsed, errors) {
            Ok(model) => fingerprint(&model),
            Err(err) => panic!("{err}"),
        }
    }

    fn base() -> String {
        fingerprint_of(syn::parse_quote! {
            #[saga(name = "checkout", version = 1, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, compensate = refund)]
            struct Checkout;
        })
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        let mut empty = Fnv1a::new();
        empty.bytes(b"");
        assert_eq!(empty.0, 0xcbf2_9ce4_8422_2325);
        let mut a = Fnv1a::new();
        a.bytes(b"a");
        assert_eq!(a.0, 0xaf63_dc4c_8601_ec8c);
        let mut foobar = Fnv1a::new();
        foobar.bytes(b"foobar");
        assert_eq!(foobar.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fingerprint_is_sixteen_hex_digits() {
        let fingerprint = base();
        assert_eq!(fingerprint.len(), 16);
        assert!(fingerprint.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn formatting_version_retries_and_timeouts_do_not_change_it() {
        let same = fingerprint_of(syn::parse_quote! {
            #[saga(version = 7, input = Order, name = "checkout", crate = ::other)]
            #[step(reserve_stock, compensate = undo_reservation, timeout = "3s")]
            #[step(charge_card, compensate = refund, retry(max_attempts = 9),
                   compensation_timeout = "1m")]
            struct Renamed<T>(T);
        });
        assert_eq!(same, base());
    }

    #[test]
    fn each_part_of_the_step_graph_changes_it() {
        let changed = [
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout2", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Vec<Order>)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(charge_card, compensate = refund)]
                #[step(reserve_stock, compensate = release_stock)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, irreversible)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge, action = charge_card, compensate = refund)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, action = payments::charge_card, compensate = refund)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                struct Checkout;
            }),
        ];
        let base = base();
        for (index, fingerprint) in changed.iter().enumerate() {
            assert_ne!(fingerprint, &base, "change {index} kept the fingerprint");
        }
    }

    /// A saga with every new attribute, each changed in turn below.
    fn waiting() -> String {
        fingerprint_of(syn::parse_quote! {
            #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, compensate = refund)]
            #[step(remind_later, sleep = "24h")]
            #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
            #[step(approve, approval, timeout = "2h", pivot)]
            struct Checkout;
        })
    }

    #[test]
    fn the_new_attributes_count_only_where_declared() {
        // Writing a sleep as "1440m" rather than "24h", or reordering options, keeps it.
        let same = fingerprint_of(syn::parse_quote! {
            #[saga(deadline = "120m", name = "checkout", version = 2, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, compensate = refund, timeout = "5s")]
            #[step(remind_later, sleep = "1440m")]
            #[step(paid, default = other_default, timeout = "1800s", await_signal = Paid)]
            #[step(approve, pivot, timeout = "2h", approval)]
            struct Checkout;
        });
        assert_eq!(same, waiting());
        assert_ne!(waiting(), base());
    }

    #[test]
    fn each_new_attribute_changes_it() {
        let changed = [
            // No deadline, another deadline.
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order)]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "3h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            // Another sleep, a computed sleep.
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "25h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep_until = tomorrow)]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            // Another signal type, no timeout, no default, a compensation.
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = webhooks::Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, default = unpaid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m")]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid, compensate = refund_paid)]
                #[step(approve, approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
            // Another approval timeout, no pivot, the pivot elsewhere, a signal for the approval.
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "1h", pivot)]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h")]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h", pivot)]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, approval, timeout = "2h")]
                struct Checkout;
            }),
            fingerprint_of(syn::parse_quote! {
                #[saga(name = "checkout", version = 1, input = Order, deadline = "2h")]
                #[step(reserve_stock, compensate = release_stock)]
                #[step(charge_card, compensate = refund)]
                #[step(remind_later, sleep = "24h")]
                #[step(paid, await_signal = Paid, timeout = "30m", default = unpaid)]
                #[step(approve, await_signal = Approval, timeout = "2h", pivot)]
                struct Checkout;
            }),
        ];
        let waiting = waiting();
        for (index, fingerprint) in changed.iter().enumerate() {
            assert_ne!(fingerprint, &waiting, "change {index} kept the fingerprint");
        }
        let distinct: std::collections::HashSet<&String> = changed.iter().collect();
        assert_eq!(distinct.len(), changed.len(), "two changes hashed the same");
    }

    #[test]
    fn a_pivot_on_a_step_that_calls_its_action_changes_it() {
        let pivot = fingerprint_of(syn::parse_quote! {
            #[saga(name = "checkout", version = 1, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, irreversible, pivot)]
            struct Checkout;
        });
        let no_pivot = fingerprint_of(syn::parse_quote! {
            #[saga(name = "checkout", version = 1, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, irreversible)]
            struct Checkout;
        });
        assert_ne!(pivot, no_pivot);
    }

    #[test]
    fn canonical_tokens_ignore_spacing() {
        let tight: TokenStream = "Vec<(u8,String)>".parse().unwrap();
        let loose: TokenStream = "Vec < ( u8 , String ) >".parse().unwrap();
        assert_eq!(canonical(tight.clone()), canonical(loose));
        assert_eq!(canonical(tight), "Vec < ( u8 , String ) >");
        let path: TokenStream = "::a::b::<T>".parse().unwrap();
        assert_eq!(canonical(path), ": : a : : b : : < T >");
    }
}
