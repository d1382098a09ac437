//! The step-name constants of the expansion: `#[step(reserve_stock, ...)]` on `Checkout` gives
//! `Checkout::RESERVE_STOCK`, so that a step reading an earlier step's output by a misspelt name
//! fails to compile instead of failing at run time.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;
use syn::{GenericParam, Generics, Ident, LitStr, Visibility};

/// `reserve_stock` (or `r#reserve_stock`) → `RESERVE_STOCK`, spanned on the step name so that
/// "go to definition" leads to the `#[step(...)]` attribute. `None` when the name has no
/// upper-case form that is an identifier (never for ASCII names).
pub(crate) fn constant_ident(step: &Ident) -> Option<Ident> {
    let name = step.unraw().to_string();
    let ident = syn::parse_str::<Ident>(&name.to_uppercase())
        .or_else(|_| syn::parse_str::<Ident>(&name.to_ascii_uppercase()))
        .ok()?;
    Some(Ident::new(&ident.to_string(), step.span()))
}

/// One step's constant: its identifier and the step name it holds.
pub(crate) struct StepConstant<'a> {
    /// `RESERVE_STOCK`.
    pub(crate) ident: &'a Ident,
    /// `"reserve_stock"`, the name the orchestrator sees.
    pub(crate) name: &'a str,
}

/// `impl Checkout { pub const RESERVE_STOCK: &'static str = "reserve_stock"; ... }`, with the
/// type's generics and its visibility. Each constant is documented, for users who deny
/// `missing_docs`.
pub(crate) fn expand<'a>(
    ident: &Ident,
    vis: &Visibility,
    generics: &Generics,
    steps: impl IntoIterator<Item = StepConstant<'a>>,
) -> TokenStream {
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    let owner = owner(ident, generics);
    let constants = steps.into_iter().map(|step| {
        let name = LitStr::new(step.name, Span::call_site());
        let doc = format!(
            " The name of step `{}`: `ctx.output::<T>({owner}::{})` reads its output, and a \
             misspelt constant does not compile.",
            step.name, step.ident
        );
        let constant = step.ident;
        quote! {
            #[doc = #doc]
            #vis const #constant: &'static ::core::primitive::str = #name;
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics #ident #type_generics #where_clause {
            #(#constants)*
        }
    }
}

/// How the constants are reached in an expression: `Checkout`, or `Ledger::<C, N>` for a
/// generic type, whose parameters an expression cannot leave out (lifetimes it can).
fn owner(ident: &Ident, generics: &Generics) -> String {
    let params: Vec<String> = generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(param) => Some(param.ident.to_string()),
            GenericParam::Const(param) => Some(param.ident.to_string()),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    if params.is_empty() {
        ident.to_string()
    } else {
        format!("{ident}::<{}>", params.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(name: &str) -> Option<String> {
        let step: Ident = syn::parse_str(name).expect("a test step name is an identifier");
        constant_ident(&step).map(|ident| ident.to_string())
    }

    #[test]
    fn step_names_become_upper_case_constants() {
        assert_eq!(constant("reserve_stock").as_deref(), Some("RESERVE_STOCK"));
        assert_eq!(constant("chargeCard2").as_deref(), Some("CHARGECARD2"));
        assert_eq!(constant("_private").as_deref(), Some("_PRIVATE"));
    }

    #[test]
    fn raw_identifiers_lose_their_prefix() {
        assert_eq!(constant("r#match").as_deref(), Some("MATCH"));
        assert_eq!(constant("r#type").as_deref(), Some("TYPE"));
    }

    #[test]
    fn non_ascii_letters_are_upper_cased_too() {
        assert_eq!(constant("réserver").as_deref(), Some("RÉSERVER"));
    }
}
