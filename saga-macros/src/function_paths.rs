//! The user's function paths in the expansion, written so that rustc's errors about them point
//! at the mistake and suggest nothing misleading.

use proc_macro2::{TokenStream, TokenTree};
use quote::{quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ExprPath, Ident};

use crate::policy::PolicyKey;
use crate::validate::{Compensation, StepKind, StepModel};

impl StepModel {
    /// The step's function paths: its action or wake-time function, then its compensation,
    /// probe and signal default if any, then its policies' key functions.
    fn paths(&self) -> impl Iterator<Item = &ExprPath> {
        let (own, default) = match &self.kind {
            StepKind::Call(path)
            | StepKind::SleepUntil(path)
            | StepKind::Child { input: path, .. } => (Some(path), None),
            StepKind::Signal { default, .. } => (None, default.as_ref()),
            StepKind::Sleep(_) | StepKind::Approval(_) => (None, None),
        };
        let compensation = match &self.compensation {
            Compensation::Compensate(path) => Some(path),
            Compensation::Irreversible | Compensation::NothingToUndo => None,
        };
        let keys = self.policies.iter().filter_map(|policy| match &policy.key {
            Some(PolicyKey::Function(path)) => Some(path),
            Some(PolicyKey::Field(_)) | None => None,
        });
        [own, compensation, self.probe.as_ref(), default]
            .into_iter()
            .flatten()
            .chain(keys)
    }

    /// The step's functions written as a bare name (`release_stock`, not `payments::refund`).
    pub(crate) fn function_names(&self) -> Vec<&Ident> {
        self.paths()
            .filter(|path| path.qself.is_none())
            .filter_map(|path| path.path.get_ident())
            .collect()
    }

    /// A name for the local that holds the step while it is built: `step`, unless one of the
    /// step's paths uses that word, then `step_`, and so on, so that it never hides a function.
    pub(crate) fn local_name(&self) -> String {
        let used: Vec<String> = self.paths().flat_map(idents_in).collect();
        let mut name = String::from("step");
        while used.contains(&name) {
            name.push('_');
        }
        name
    }
}

/// Every identifier in `path`, generic arguments included, without `r#`.
fn idents_in(path: &ExprPath) -> Vec<String> {
    fn walk(tokens: TokenStream, out: &mut Vec<String>) {
        for token in tokens {
            match token {
                TokenTree::Ident(ident) => out.push(ident.unraw().to_string()),
                TokenTree::Group(group) => walk(group.stream(), out),
                TokenTree::Punct(_) | TokenTree::Literal(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(path.to_token_stream(), &mut out);
    out
}

/// A user's function path as a block, `{ fn release_stock() {} reserve_stock }`, spanned on the
/// path, so that rustc's errors about it say what is wrong and suggest nothing misleading:
///
/// - When the path names no function, rustc adds "a function with a similar name exists" with
///   the closest name in scope, which for a compensation is usually the step's own action (and
///   for an action, its compensation). A local `fn` with each of the step's other names
///   (`names`, less those the path uses) shadows them in that search, and rustc suggests nothing
///   defined on the path itself.
/// - When the function has the wrong signature, rustc suggests wrapping the path in a closure,
///   which `#[step(...)]` does not accept; it does not for a block.
pub(crate) fn referenced(path: &ExprPath, names: &[&Ident]) -> TokenStream {
    let used = idents_in(path);
    let span = path.span();
    let hiders: Vec<TokenStream> = names
        .iter()
        // Never shadow a name the path uses.
        .filter(|name| !used.contains(&name.unraw().to_string()))
        .map(|name| {
            let mut name = (*name).clone();
            name.set_span(span);
            quote_spanned! {span=>
                fn #name() {}
            }
        })
        .collect();
    quote_spanned! {span=>
        {
            #(#hiders)*
            #path
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{self, Errors};
    use crate::validate;

    fn step(input: syn::DeriveInput) -> StepModel {
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        match validate::validate(parsed, errors) {
            Ok(mut model) => model.steps.remove(0),
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn a_path_hides_the_other_bare_names_of_its_step() {
        let step = step(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(reserve_stock, compensate = release_stock, probe = payments::status)]
            struct X;
        });
        let names = step.function_names();
        let StepKind::Call(action) = &step.kind else {
            panic!("the step calls an action");
        };
        let action = referenced(action, &names).to_string();
        assert_eq!(action, "{ fn release_stock () { } reserve_stock }");
        let Compensation::Compensate(compensation) = &step.compensation else {
            panic!("the step is compensable");
        };
        let compensation = referenced(compensation, &names).to_string();
        assert_eq!(compensation, "{ fn reserve_stock () { } release_stock }");
    }

    #[test]
    fn a_path_never_hides_a_name_it_uses() {
        let step = step(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(a, action = act, compensate = r#undo, probe = check::<act>)]
            struct X;
        });
        let names = step.function_names();
        let Some(probe) = &step.probe else {
            panic!("the step has a probe");
        };
        let probe = referenced(probe, &names).to_string();
        assert_eq!(probe, "{ fn r#undo () { } check :: < act > }");
    }

    #[test]
    fn the_local_avoids_every_word_of_the_step_paths() {
        let step = step(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(a, action = step, compensate = m::step_::<T>)]
            struct X;
        });
        assert_eq!(step.local_name(), "step__");
    }
}
