//! Second stage of the derive: the checks that need the whole declaration (required keys, at
//! least one step, unique step names and step-name constants, each step either compensable or
//! declared irreversible), turning a [`SagaInput`] into a [`SagaModel`] that the expansion can
//! trust.

use std::collections::{HashMap, HashSet};

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{ExprPath, Generics, Ident, LitStr, Path, Type, Visibility};

use crate::constants::constant_ident;
use crate::parse::{DurationInput, Errors, RetryInput, SagaInput, StepInput};

/// A declaration with everything required present and consistent.
pub(crate) struct SagaModel {
    /// The type deriving `Saga`.
    pub(crate) ident: Ident,
    /// Its visibility, given to the step-name constants.
    pub(crate) vis: Visibility,
    /// Its generics.
    pub(crate) generics: Generics,
    /// The saga type name.
    pub(crate) name: LitStr,
    /// The version.
    pub(crate) version: u32,
    /// The input type, as written.
    pub(crate) input: Type,
    /// The path of the facade crate (`::saga` unless `crate = ...`).
    pub(crate) krate: Path,
    /// The steps, in order.
    pub(crate) steps: Vec<StepModel>,
}

/// One checked step.
pub(crate) struct StepModel {
    /// The associated constant holding the name, spanned on the name as written:
    /// `reserve_stock` → `RESERVE_STOCK`.
    pub(crate) constant: Ident,
    /// The action: `action = path`, or the function named like the step.
    pub(crate) action: ExprPath,
    /// Its compensation, or the explicit `irreversible` mark.
    pub(crate) compensation: Compensation,
    /// `probe = path`, if given: tells whether an attempt with an unknown outcome took effect.
    pub(crate) probe: Option<ExprPath>,
    /// The `transactional` flag: the step runs in the store's transaction.
    pub(crate) transactional: bool,
    /// `retry(...)`, if given.
    pub(crate) retry: Option<RetryInput>,
    /// `timeout = "..."`, if given.
    pub(crate) timeout: Option<DurationInput>,
    /// `compensation_retry(...)`, if given.
    pub(crate) compensation_retry: Option<RetryInput>,
    /// `compensation_timeout = "..."`, if given.
    pub(crate) compensation_timeout: Option<DurationInput>,
    /// The step name as the orchestrator sees it.
    pub(crate) name_text: String,
}

/// How a step is undone.
pub(crate) enum Compensation {
    /// By this function, which receives the action's output.
    Compensate(ExprPath),
    /// Not at all, on purpose.
    Irreversible,
}

/// Checks the declaration as a whole.
///
/// # Errors
/// Every problem found, in this stage or by the parser before it (passed in `errors`).
pub(crate) fn validate(input: SagaInput, mut errors: Errors) -> syn::Result<SagaModel> {
    let SagaInput {
        ident,
        vis,
        generics,
        saga_attr,
        saga_attr_broken,
        keys_written,
        name,
        version,
        input: input_type,
        krate,
        steps,
        step_attrs,
    } = input;

    match &saga_attr {
        None => errors.at(
            ident.span(),
            format!(
                "`#[derive(Saga)]` needs `#[saga(name = \"...\", version = N, input = Type)]` on `{ident}`; add e.g. `#[saga(name = \"{}\", version = 1, input = MyInput)]`",
                snake_case(&ident.to_string())
            ),
        ),
        Some(attr) if !saga_attr_broken => {
            let missing = [
                ("name", name.is_none(), "name = \"checkout\""),
                ("version", version.is_none(), "version = 1"),
                ("input", input_type.is_none(), "input = Order"),
            ];
            for (key, absent, example) in missing {
                if absent && !keys_written.iter().any(|written| written == key) {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        format!("`#[saga(...)]` is missing `{key}`; add e.g. `{example}`"),
                    ));
                }
            }
        }
        Some(_) => {}
    }

    if step_attrs == 0 {
        errors.at(
            ident.span(),
            format!(
                "saga `{ident}` has no steps; add at least one `#[step(step_name, compensate = undo_fn)]` or `#[step(step_name, irreversible)]` below `#[saga(...)]`"
            ),
        );
    }

    let mut seen = HashSet::new();
    let mut constants: HashMap<String, String> = HashMap::new();
    let mut checked = Vec::with_capacity(steps.len());
    for step in steps {
        let name_text = step.name_text();
        if !seen.insert(name_text.clone()) {
            errors.at(
                step.name.span(),
                format!(
                    "step name `{name_text}` is used twice; give each step its own name (two steps may share a function through `action = path`)"
                ),
            );
        }
        let Some(constant) = constant_ident(&step.name) else {
            errors.at(
                step.name.span(),
                format!(
                    "step name `{name_text}` has no upper-case form for its constant `{ident}::...`; name the step with ASCII letters, digits and `_`"
                ),
            );
            continue;
        };
        match constants.get(&constant.to_string()) {
            Some(other) if *other != name_text => errors.at(
                step.name.span(),
                format!(
                    "steps `{other}` and `{name_text}` would share the constant `{ident}::{constant}`; give them names that differ by more than case"
                ),
            ),
            Some(_) => {}
            None => {
                constants.insert(constant.to_string(), name_text.clone());
            }
        }
        if let Some(model) = step_model(step, name_text, constant, &mut errors) {
            checked.push(model);
        }
    }

    errors.finish()?;
    match (name, version, input_type) {
        (Some(name), Some(version), Some(input)) => Ok(SagaModel {
            ident,
            vis,
            generics,
            name,
            version,
            input,
            krate: krate.unwrap_or_else(default_crate),
            steps: checked,
        }),
        _ => Err(syn::Error::new(
            saga_attr.as_ref().map_or_else(Span::call_site, Spanned::span),
            "`#[saga(...)]` could not be read; write `#[saga(name = \"...\", version = N, input = Type)]`",
        )),
    }
}

/// Checks one step: a compensation or the `irreversible` mark, exactly one of them, and no
/// compensation settings on a step that has no compensation.
fn step_model(
    step: StepInput,
    name_text: String,
    constant: Ident,
    errors: &mut Errors,
) -> Option<StepModel> {
    let compensation = match (step.compensate, step.irreversible) {
        (Some(path), None) => Compensation::Compensate(path),
        (None, Some(_)) => Compensation::Irreversible,
        (Some(_), Some(flag)) => {
            errors.at(
                flag,
                format!(
                    "step `{name_text}` has both `compensate` and `irreversible`; keep `compensate` if the step can be undone, else remove it"
                ),
            );
            return None;
        }
        (None, None) if step.broken => return None,
        (None, None) => {
            errors.at(
                step.name.span(),
                format!(
                    "step `{name_text}` has no compensation; add `compensate = undo_fn`, or declare it `irreversible` if it cannot be undone"
                ),
            );
            return None;
        }
    };
    if matches!(compensation, Compensation::Irreversible) {
        let settings = [
            (
                "compensation_retry",
                step.compensation_retry.map(|r| r.span),
            ),
            (
                "compensation_timeout",
                step.compensation_timeout.map(|d| d.span),
            ),
        ];
        for (key, span) in settings {
            if let Some(span) = span {
                errors.at(
                    span,
                    format!(
                        "step `{name_text}` is irreversible, so it has no compensation to configure; remove `{key}`"
                    ),
                );
            }
        }
    }
    let action = step.action.unwrap_or_else(|| ExprPath {
        attrs: Vec::new(),
        qself: None,
        path: Path::from(step.name),
    });
    Some(StepModel {
        constant,
        action,
        compensation,
        probe: step.probe,
        transactional: step.transactional.is_some(),
        retry: step.retry,
        timeout: step.timeout,
        compensation_retry: step.compensation_retry,
        compensation_timeout: step.compensation_timeout,
        name_text,
    })
}

/// `::saga`, the facade crate.
pub(crate) fn default_crate() -> Path {
    syn::parse_quote!(::saga)
}

/// `CheckoutSaga` → `checkout_saga`, for the example in an error message.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (index, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn check(input: syn::DeriveInput) -> Result<SagaModel, Vec<String>> {
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        validate(parsed, errors).map_err(|err| err.into_iter().map(|e| e.to_string()).collect())
    }

    fn errors_of(input: syn::DeriveInput) -> Vec<String> {
        match check(input) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        }
    }

    #[test]
    fn a_valid_declaration_defaults_the_action_and_the_crate() {
        let model = check(syn::parse_quote! {
            #[saga(name = "checkout", version = 1, input = Order)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(send_receipt, action = mail::send, irreversible)]
            struct Checkout;
        })
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        let krate = &model.krate;
        assert_eq!(quote::quote!(#krate).to_string(), ":: saga");
        let actions: Vec<String> = model
            .steps
            .iter()
            .map(|step| {
                let action = &step.action;
                quote::quote!(#action).to_string()
            })
            .collect();
        assert_eq!(actions, ["reserve_stock", "mail :: send"]);
        assert!(matches!(
            model.steps[1].compensation,
            Compensation::Irreversible
        ));
    }

    #[test]
    fn missing_saga_attribute_and_steps_are_both_reported() {
        assert_eq!(
            errors_of(syn::parse_quote! { struct CheckoutSaga; }),
            [
                "`#[derive(Saga)]` needs `#[saga(name = \"...\", version = N, input = Type)]` on `CheckoutSaga`; add e.g. `#[saga(name = \"checkout_saga\", version = 1, input = MyInput)]`",
                "saga `CheckoutSaga` has no steps; add at least one `#[step(step_name, compensate = undo_fn)]` or `#[step(step_name, irreversible)]` below `#[saga(...)]`",
            ]
        );
    }

    #[test]
    fn each_missing_key_is_named() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(version = 1)]
                #[step(a, irreversible)]
                struct X;
            }),
            [
                "`#[saga(...)]` is missing `name`; add e.g. `name = \"checkout\"`",
                "`#[saga(...)]` is missing `input`; add e.g. `input = Order`",
            ]
        );
    }

    #[test]
    fn a_wrong_value_is_not_also_reported_missing() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = 5, version = 1, input = u32)]
                #[step(a, irreversible)]
                struct X;
            }),
            ["`name` takes a string, e.g. `name = \"checkout\"`"]
        );
    }

    #[test]
    fn duplicate_step_names_are_refused() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, irreversible)]
                #[step(b, irreversible)]
                #[step(a, action = b, irreversible)]
                struct X;
            }),
            ["step name `a` is used twice; give each step its own name (two steps may share a function through `action = path`)"]
        );
    }

    #[test]
    fn step_names_that_differ_only_in_case_are_refused() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(charge, irreversible)]
                #[step(Charge, irreversible)]
                struct X;
            }),
            ["steps `charge` and `Charge` would share the constant `X::CHARGE`; give them names that differ by more than case"]
        );
    }

    #[test]
    fn compensation_must_be_declared_exactly_once() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, compensate = undo, irreversible)]
                #[step(b)]
                #[step(c, irreversible, compensation_timeout = "1s", compensation_retry(max_attempts = 2))]
                struct X;
            }),
            [
                "step `a` has both `compensate` and `irreversible`; keep `compensate` if the step can be undone, else remove it",
                "step `b` has no compensation; add `compensate = undo_fn`, or declare it `irreversible` if it cannot be undone",
                "step `c` is irreversible, so it has no compensation to configure; remove `compensation_retry`",
                "step `c` is irreversible, so it has no compensation to configure; remove `compensation_timeout`",
            ]
        );
    }

    #[test]
    fn an_unreadable_compensation_is_not_also_reported_missing() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, compensate = "undo")]
                struct X;
            }),
            ["`compensate` takes the path of an async fn, e.g. `compensate = refund`"]
        );
    }

    #[test]
    fn a_broken_step_attribute_does_not_report_no_steps() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(compensate = undo)]
                struct X;
            }),
            ["`#[step(...)]` starts with the step name, an identifier: write e.g. `#[step(reserve_stock, compensate = release_stock)]`"]
        );
    }

    #[test]
    fn snake_case_splits_words() {
        assert_eq!(snake_case("CheckoutSaga"), "checkout_saga");
        assert_eq!(snake_case("Probe"), "probe");
    }
}
