//! Last stage of the derive: parse, validate, then turn the checked declaration into
//! `impl Saga`, whose `definition()` is the builder chain a person would write by hand, and the
//! step-name constants.

use std::collections::HashSet;

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitStr, Path, Type};

use crate::constants::{self, constant_ident, StepConstant};
use crate::fingerprint::fingerprint;
use crate::function_paths::referenced;
use crate::parse::{self, DurationInput, Errors, RetryInput, SagaInput};
use crate::policy;
use crate::validate::{self, default_crate, Compensation, SagaModel, StepKind, StepModel};

/// The whole derive: `impl Saga for ...` and the step-name constants, or every problem found in
/// the declaration followed by [`fallback`] items, so that those problems are the only errors.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let parsed = parse::saga_input(input, &mut errors);
    let fallback = fallback(&parsed);
    match validate::validate(parsed, errors) {
        Ok(model) => expand(&model),
        Err(err) => {
            let mut tokens = err.into_compile_error();
            tokens.extend(fallback);
            tokens
        }
    }
}

/// `impl Saga` for a checked declaration, and the step-name constants. Every path is absolute,
/// through the facade's hidden `__private` module; the only names added are the constants, on
/// the deriving type.
fn expand(saga: &SagaModel) -> TokenStream {
    let krate = &saga.krate;
    let private = quote!(#krate::__private);
    let ident = &saga.ident;
    let (impl_generics, type_generics, where_clause) = saga.generics.split_for_impl();
    let input = &saga.input;
    let name = &saga.name;
    let version = Literal::u32_unsuffixed(saga.version);
    let fingerprint = LitStr::new(&fingerprint(saga), Span::call_site());
    let deadline = saga.deadline.as_ref().map(|deadline| {
        let deadline = duration(deadline, &private);
        quote!(.deadline(#deadline))
    });
    // Not in the fingerprint: how starts dedup does not change what a saga does.
    let dedup_window = saga.dedup_window.as_ref().map(|window| {
        let window = duration(window, &private);
        quote!(.dedup_window(#window))
    });
    let steps = saga
        .steps
        .iter()
        .map(|step| expand_step(step, krate, input));
    let constants = constants::expand(
        ident,
        &saga.vis,
        &saga.generics,
        saga.steps.iter().map(|step| StepConstant {
            ident: &step.constant,
            name: &step.name_text,
        }),
    );
    quote! {
        #constants

        #[automatically_derived]
        impl #impl_generics #private::Saga for #ident #type_generics #where_clause {
            type Input = #input;

            // `referenced` wraps each function path in braces, with unused local functions.
            #[allow(dead_code, unused_braces)]
            fn definition() -> #private::SagaDefinition<Self> {
                #private::SagaDefinition::new(#name, #version)
                    .with_fingerprint(#fingerprint)
                    #deadline
                    #dedup_window
                    #( .step(#steps) )*
            }
        }
    }
}

/// What a declaration with errors expands to besides the errors: `impl Saga` with no steps, and
/// the constants of the steps that could be read. Code using the saga (`Checkout::definition()`,
/// `Checkout::RESERVE_STOCK`) then compiles, so the declaration's errors are the only ones. It
/// never runs: the `compile_error!`s before it fail the build. An unreadable input type becomes
/// `()`.
fn fallback(saga: &SagaInput) -> TokenStream {
    let krate = saga.krate.clone().unwrap_or_else(default_crate);
    let private = quote!(#krate::__private);
    let ident = &saga.ident;
    let (impl_generics, type_generics, where_clause) = saga.generics.split_for_impl();
    let input = saga
        .input
        .as_ref()
        .map_or_else(|| quote!(()), ToTokens::to_token_stream);
    let name = saga
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
    let version = Literal::u32_unsuffixed(saga.version.unwrap_or(1));
    let mut seen = HashSet::new();
    let steps: Vec<_> = saga
        .steps
        .iter()
        .filter_map(|step| Some((constant_ident(&step.name)?, step.name_text())))
        .filter(|(constant, _)| seen.insert(constant.to_string()))
        .collect();
    let constants = constants::expand(
        ident,
        &saga.vis,
        &saga.generics,
        steps.iter().map(|(constant, name)| StepConstant {
            ident: constant,
            name,
        }),
    );
    quote! {
        #constants

        #[automatically_derived]
        impl #impl_generics #private::Saga for #ident #type_generics #where_clause {
            type Input = #input;

            fn definition() -> #private::SagaDefinition<Self> {
                #private::SagaDefinition::new(#name, #version)
            }
        }
    }
}

/// One step: `Step::<Self>::new(Self::NAME, action)` (for a waiting step `Step::<Self>::sleep`,
/// `sleep_until`, `signal::<T>` or `approval`), then one builder call per option, each taking
/// the previous one's result:
///
/// ```text
/// {
///     let step = Step::<Self>::new(Self::RESERVE_STOCK, { reserve_stock });
///     let step = StepBuilder::compensate(step, { release_stock });
///     StepBuilder::timeout(step, Duration::from_secs(10))
/// }
/// ```
///
/// `Step::<Self>` fixes the saga type before the action is looked at, so that a function taking
/// `Arc<Other>` is reported as a signature mismatch (expected `fn(Arc<Self>, ...)`) rather than
/// as `Other: Saga` not being satisfied. The builder calls are written as paths rather than
/// methods, and `step` carries the span of the action: an output type that is not serde is then
/// reported once per missing trait, on the action, instead of also as "method exists but its
/// trait bounds were not satisfied" on `#[derive(Saga)]`. The calls that take the user's
/// functions carry the span of the function path, so that a missing function or a wrong
/// signature is reported on the user's `#[step(...)]` token. A waiting step is built on the
/// span of what it waits for, so that a signal type that is not a `Signal` is reported on the
/// type.
fn expand_step(step: &StepModel, krate: &Path, input: &Type) -> TokenStream {
    let span = step.kind.span();
    let var = Ident::new(&step.local_name(), span);
    let builder = respan(quote!(#krate::StepBuilder), span);
    let private_here = respan(quote!(#krate::__private), span);
    let private = quote!(#krate::__private);
    let constant = &step.constant;
    let functions = step.function_names();
    let first = match &step.kind {
        StepKind::Call(action) => {
            let action = referenced(action, &functions);
            quote_spanned! {span=>
                #private_here::Step::<Self>::new(Self::#constant, #action)
            }
        }
        StepKind::Sleep(length) => {
            let length = duration(length, &private);
            quote_spanned! {span=>
                #private_here::Step::<Self>::sleep(Self::#constant, #length)
            }
        }
        StepKind::SleepUntil(wake) => {
            let wake = referenced(wake, &functions);
            quote_spanned! {span=>
                #private_here::Step::<Self>::sleep_until(Self::#constant, #wake)
            }
        }
        StepKind::Signal { ty, .. } => quote_spanned! {span=>
            #private_here::Step::<Self>::signal::<#ty>(Self::#constant)
        },
        StepKind::Approval(_) => quote_spanned! {span=>
            #private_here::Step::<Self>::approval(Self::#constant)
        },
        StepKind::Child { ty, input } => {
            let input = referenced(input, &functions);
            quote_spanned! {span=>
                #private_here::Step::<Self>::child::<#ty, _>(Self::#constant, #input)
            }
        }
    };
    let mut calls = vec![(span, first)];
    let mut call = |span: Span, method: &str, argument: Option<TokenStream>| {
        let method = Ident::new(method, span);
        let builder = respan(builder.clone(), span);
        let argument = argument.map(|argument| quote!(, #argument));
        calls.push((
            span,
            quote_spanned! {span=> #builder::#method(#var #argument) },
        ));
    };
    match &step.compensation {
        Compensation::Compensate(path) => {
            call(
                path.span(),
                "compensate",
                Some(referenced(path, &functions)),
            );
        }
        Compensation::Irreversible => call(span, "irreversible", None),
        Compensation::NothingToUndo => {}
    }
    if let Some(path) = &step.probe {
        call(path.span(), "probe", Some(referenced(path, &functions)));
    }
    if step.transactional {
        call(span, "transactional", None);
    }
    if let Some(policy) = &step.retry {
        call(span, "retry", Some(retry_policy(policy, &private)));
    }
    if let Some(timeout) = &step.timeout {
        call(span, "timeout", Some(duration(timeout, &private)));
    }
    if let Some(policy) = &step.compensation_retry {
        call(
            span,
            "compensation_retry",
            Some(retry_policy(policy, &private)),
        );
    }
    if let Some(timeout) = &step.compensation_timeout {
        call(
            span,
            "compensation_timeout",
            Some(duration(timeout, &private)),
        );
    }
    for policy in &step.policies {
        let arguments = policy::arguments(policy, input, &private, &functions);
        call(policy.span, policy.kind.key(), Some(arguments));
    }
    if let StepKind::Signal {
        ty,
        default: Some(default),
    } = &step.kind
    {
        // The user's function as a `fn() -> T`, on its path: a wrong signature is reported
        // there as such ("expected fn pointer `fn() -> T`"), where a call of it would have
        // rustc suggest building `T` around the path, which `default = ...` does not accept.
        let default_span = default.span();
        let default = referenced(default, &functions);
        call(
            default_span,
            "or_default",
            Some(quote_spanned! {default_span=>
                {
                    let default: fn() -> #ty = #default;
                    default()
                }
            }),
        );
    }
    if step.pivot {
        call(span, "pivot", None);
    }
    if let Some(group) = &step.group {
        let name = LitStr::new(&group.name, group.span);
        let limit = Literal::u32_unsuffixed(group.limit);
        call(group.span, "group", Some(quote!(#name, #limit)));
    }
    // There is always a last call: the constructor, if nothing follows it.
    let last = calls.pop().map(|(_, call)| call);
    let statements = calls
        .into_iter()
        .map(|(span, call)| quote_spanned!(span=> let #var = #call;));
    quote! {{
        #(#statements)*
        #last
    }}
}

/// `tokens` with every token's span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut respanned = Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                TokenTree::Group(respanned)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// `RetryPolicy { max_attempts: 5, ..RetryPolicy::default() }`: the fields given, the defaults
/// for the others.
fn retry_policy(policy: &RetryInput, private: &TokenStream) -> TokenStream {
    let mut fields = Vec::new();
    if let Some(max_attempts) = policy.max_attempts {
        let max_attempts = Literal::u32_unsuffixed(max_attempts);
        fields.push(quote!(max_attempts: #max_attempts));
    }
    if let Some(base) = &policy.base {
        let base = duration(base, private);
        fields.push(quote!(base: #base));
    }
    if let Some(max_delay) = &policy.max_delay {
        let max_delay = duration(max_delay, private);
        fields.push(quote!(max_delay: #max_delay));
    }
    let rest = (fields.len() < 3).then(|| quote!(..#private::RetryPolicy::default()));
    quote!(#private::RetryPolicy { #(#fields,)* #rest })
}

/// `Duration::from_secs(10)` or `Duration::from_millis(200)`.
pub(crate) fn duration(duration: &DurationInput, private: &TokenStream) -> TokenStream {
    if duration.millis % 1_000 == 0 {
        let secs = Literal::u64_unsuffixed(duration.millis / 1_000);
        quote!(#private::Duration::from_secs(#secs))
    } else {
        let millis = Literal::u64_unsuffixed(duration.millis);
        quote!(#private::Duration::from_millis(#millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The declaration, its expansion pretty-printed, and its fingerprint.
    fn expansion(input: DeriveInput) -> (String, String) {
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        let model = match validate::validate(parsed, errors) {
            Ok(model) => model,
            Err(err) => panic!("{err}"),
        };
        let file: syn::File = syn::parse2(expand(&model)).expect("the expansion parses as Rust");
        (prettyplease::unparse(&file), fingerprint(&model))
    }

    #[test]
    fn checkout_with_retries_timeouts_and_an_irreversible_step() {
        let (code, fingerprint) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "checkout", version = 1, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "200ms", max_delay = "5s"), timeout = "10s")]
            #[step(send_receipt, irreversible)]
            struct Checkout {
                downstream: Downstream,
            }
        });
        insta::assert_snapshot!("checkout", code);
        insta::assert_snapshot!("checkout_fingerprint", fingerprint);
    }

    #[test]
    fn probe_with_every_step_option() {
        let (code, fingerprint) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "probe", version = 1, input = ProbeInput)]
            #[step(reserve_stock, action = act, compensate = undo,
                   retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
                   compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
                   compensation_timeout = "1s")]
            #[step(charge_card, action = act, compensate = undo,
                   retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s",
                   compensation_retry(max_attempts = 2, base = "20ms", max_delay = "100ms"),
                   compensation_timeout = "1s")]
            #[step(send_receipt, action = act, irreversible,
                   retry(max_attempts = 3, base = "20ms", max_delay = "100ms"), timeout = "1s")]
            struct Probe(Arc<Script>);
        });
        insta::assert_snapshot!("probe", code);
        insta::assert_snapshot!("probe_fingerprint", fingerprint);
    }

    #[test]
    fn generic_saga_in_a_renamed_crate() {
        let (code, fingerprint) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "ledger", version = 2, input = Vec<Entry<u64>>, crate = ::renamed_saga)]
            #[step(post, action = post_entries::<C>, compensate = ledger::reverse::<C>, retry(max_attempts = 10))]
            #[step(r#notify, irreversible, timeout = "2m")]
            struct Ledger<C: Client + 'static, const N: usize>
            where
                C: Send + Sync,
            {
                client: C,
            }
        });
        insta::assert_snapshot!("generic_renamed_crate", code);
        insta::assert_snapshot!("generic_renamed_crate_fingerprint", fingerprint);
    }

    #[test]
    fn unit_enum_with_methods_as_steps() {
        let (code, fingerprint) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "refresh", version = 3, input = String)]
            #[step(refresh_cache, action = Self::refresh, compensate = Self::restore, compensation_retry(base = "1s"))]
            enum Refresh {
                Fast,
                Thorough,
            }
        });
        insta::assert_snapshot!("unit_enum_methods", code);
        insta::assert_snapshot!("unit_enum_methods_fingerprint", fingerprint);
    }

    #[test]
    fn waiting_steps_a_pivot_and_a_deadline() {
        let (code, fingerprint) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "promotion", version = 1, input = Order, deadline = "2h")]
            #[step(reserve_budget, compensate = release_budget)]
            #[step(remind_later, sleep = "24h")]
            #[step(remind_at, sleep_until = Self::remind_time)]
            #[step(payment_confirmed, await_signal = webhooks::Payment, timeout = "30m",
                   default = no_payment, compensate = refund_payment)]
            #[step(approve_budget, approval, timeout = "2h")]
            #[step(publish, irreversible, pivot)]
            struct Promotion;
        });
        insta::assert_snapshot!("waiting", code);
        insta::assert_snapshot!("waiting_fingerprint", fingerprint);
    }

    #[test]
    fn policies_expand_to_builder_calls_in_the_order_written() {
        let (code, _) = expansion(syn::parse_quote! {
            #[derive(Saga)]
            #[saga(name = "outreach", version = 1, input = Contact)]
            #[step(hold_cart, irreversible, concurrency(name = "cart", key = cart_id, max = 1))]
            #[step(send_email, irreversible, timeout = "10s",
                   cap(name = "email", key = customer, max = 1, per = "24h"),
                   rate_limit(name = "partner_api", max = 50, per = "1s"),
                   retry_budget(name = "contact", key_fn = contacts::key, max = 5, per = "1h"))]
            struct Outreach;
        });
        insta::assert_snapshot!("policies", code);
    }

    #[test]
    fn policies_leave_the_fingerprint_as_it_was() {
        let (_, with) = expansion(syn::parse_quote! {
            #[saga(name = "outreach", version = 1, input = Contact)]
            #[step(send_email, irreversible,
                   cap(name = "email", key = customer, max = 1, per = "24h"),
                   concurrency(name = "cart", key_fn = cart_of, max = 1))]
            struct Outreach;
        });
        let (_, without) = expansion(syn::parse_quote! {
            #[saga(name = "outreach", version = 1, input = Contact)]
            #[step(send_email, irreversible)]
            struct Outreach;
        });
        assert_eq!(with, without);
    }

    #[test]
    fn errors_are_combined_and_followed_by_a_fallback_without_steps() {
        let input: DeriveInput = syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32, colour = "red")]
            #[step(a, compensate = undo, irreversible, timeout = "soon")]
            #[step(a, retries(max_attempts = 3))]
            pub struct X;
        };
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        let messages: Vec<String> = match validate::validate(parsed, errors) {
            Ok(_) => panic!("validated despite errors"),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(messages.len(), 6, "{messages:#?}");

        let tokens = derive(&input);
        let mut items = Vec::new();
        let mut compile_errors = 0;
        for item in syn::parse2::<syn::File>(tokens).expect("parses").items {
            match item {
                syn::Item::Macro(mac)
                    if mac
                        .mac
                        .path
                        .segments
                        .last()
                        .is_some_and(|segment| segment.ident == "compile_error") =>
                {
                    compile_errors += 1;
                }
                other => items.push(other),
            }
        }
        assert_eq!(compile_errors, 6);
        let fallback = prettyplease::unparse(&syn::File {
            shebang: None,
            attrs: Vec::new(),
            items,
        });
        insta::assert_snapshot!("fallback", fallback);
    }

    #[test]
    fn an_unreadable_saga_attribute_falls_back_to_unit_input() {
        let input: DeriveInput = syn::parse_quote! {
            #[saga(name = "x", version = 1, input = )]
            #[step(a, irreversible)]
            struct X;
        };
        let tokens = derive(&input).to_string();
        assert!(tokens.contains("compile_error"), "{tokens}");
        assert!(tokens.contains("type Input = () ;"), "{tokens}");
        assert!(tokens.contains("const A"), "{tokens}");
    }
}
