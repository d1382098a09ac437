//! Last stage of the derive: parse, validate, then turn the checked declaration into
//! `impl Saga`, whose `definition()` is the builder chain a person would write by hand.

use proc_macro2::{Group, Literal, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::fingerprint::fingerprint;
use crate::parse::{self, DurationInput, Errors, RetryInput};
use crate::validate::{self, Compensation, SagaModel, StepModel};

/// The whole derive: `impl Saga for ...`, or every problem found in the declaration.
///
/// # Errors
/// All the errors found while reading and checking the declaration, combined.
pub(crate) fn derive(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let parsed = parse::saga_input(input, &mut errors);
    let model = validate::validate(parsed, errors)?;
    Ok(expand(&model))
}

/// `impl Saga` for a checked declaration. Every path is absolute, through the facade's hidden
/// `__private` module, and nothing but the impl is emitted, so no name leaks into user scope.
fn expand(saga: &SagaModel) -> TokenStream {
    let krate = &saga.krate;
    let private = quote!(#krate::__private);
    let ident = &saga.ident;
    let (impl_generics, type_generics, where_clause) = saga.generics.split_for_impl();
    let input = &saga.input;
    let name = &saga.name;
    let version = Literal::u32_unsuffixed(saga.version);
    let fingerprint = LitStr::new(&fingerprint(saga), Span::call_site());
    let steps = saga.steps.iter().map(|step| expand_step(step, &private));
    quote! {
        #[automatically_derived]
        impl #impl_generics #private::Saga for #ident #type_generics #where_clause {
            type Input = #input;

            fn definition() -> #private::SagaDefinition<Self> {
                #private::SagaDefinition::new(#name, #version)
                    .with_fingerprint(#fingerprint)
                    #( .step(#steps) )*
            }
        }
    }
}

/// `Step::new("name", action).compensate(undo)...` for one step. The calls that take the user's
/// functions carry the span of the function path, so that a missing function or a wrong
/// signature is reported on the user's `#[step(...)]` token.
fn expand_step(step: &StepModel, private: &TokenStream) -> TokenStream {
    let name = LitStr::new(&step.name_text, step.name.span());
    let action = &step.action;
    let span = action.span();
    // The whole call carries the span, `__private` path included: the compiler reports an
    // unsatisfied bound at the start of the call expression.
    let private_here = respan(private.clone(), span);
    let mut chain = quote_spanned! {span=>
        #private_here::Step::new(#name, #action)
    };
    match &step.compensation {
        Compensation::Compensate(path) => {
            chain = quote_spanned!(path.span()=> #chain.compensate(#path));
        }
        Compensation::Irreversible => chain = quote!(#chain.irreversible()),
    }
    if let Some(path) = &step.probe {
        chain = quote_spanned!(path.span()=> #chain.probe(#path));
    }
    if step.transactional {
        chain = quote!(#chain.transactional());
    }
    if let Some(policy) = &step.retry {
        let policy = retry_policy(policy, private);
        chain = quote!(#chain.retry(#policy));
    }
    if let Some(timeout) = &step.timeout {
        let timeout = duration(timeout, private);
        chain = quote!(#chain.timeout(#timeout));
    }
    if let Some(policy) = &step.compensation_retry {
        let policy = retry_policy(policy, private);
        chain = quote!(#chain.compensation_retry(#policy));
    }
    if let Some(timeout) = &step.compensation_timeout {
        let timeout = duration(timeout, private);
        chain = quote!(#chain.compensation_timeout(#timeout));
    }
    chain
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
fn duration(duration: &DurationInput, private: &TokenStream) -> TokenStream {
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
    fn errors_are_combined_and_nothing_is_emitted() {
        let input: DeriveInput = syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32, colour = "red")]
            #[step(a, compensate = undo, irreversible, timeout = "soon")]
            #[step(a, retries(max_attempts = 3))]
            struct X;
        };
        let messages: Vec<String> = match derive(&input) {
            Ok(tokens) => panic!("expanded despite errors: {tokens}"),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(messages.len(), 6, "{messages:#?}");
        let compile_error = derive(&input)
            .unwrap_or_else(syn::Error::into_compile_error)
            .to_string();
        assert_eq!(compile_error.matches("compile_error").count(), 6);
        assert!(!compile_error.contains("impl"));
    }
}
