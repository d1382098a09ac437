//! Second stage of the derive: the checks that need the whole declaration (required keys, at
//! least one step, unique step names and step-name constants, each step that calls an action
//! either compensable or declared irreversible, each waiting step with only the options a wait
//! takes, policies included), turning a [`SagaInput`] into a [`SagaModel`] that the expansion
//! can trust.

use std::collections::{HashMap, HashSet};

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{ExprPath, Generics, Ident, LitStr, Path, Type, Visibility};

use crate::constants::constant_ident;
use crate::parse::{
    DurationInput, Errors, GroupInput, RetryInput, SagaInput, StepInput, WaitInput, WaitKindInput,
};
use crate::policy::PolicyModel;
use crate::wait;

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
    /// `deadline = "..."`, if given: how long the saga may run, counted from its start.
    pub(crate) deadline: Option<DurationInput>,
    /// `dedup_window = "..."`, if given: how long a start key dedups starts.
    pub(crate) dedup_window: Option<DurationInput>,
    /// The steps, in order.
    pub(crate) steps: Vec<StepModel>,
}

/// One checked step.
pub(crate) struct StepModel {
    /// The associated constant holding the name, spanned on the name as written:
    /// `reserve_stock` → `RESERVE_STOCK`.
    pub(crate) constant: Ident,
    /// What the step does: call its action, or wait.
    pub(crate) kind: StepKind,
    /// Its compensation, the explicit `irreversible` mark, or nothing for a waiting step.
    pub(crate) compensation: Compensation,
    /// `probe = path`, if given: tells whether an attempt with an unknown outcome took effect.
    pub(crate) probe: Option<ExprPath>,
    /// The `transactional` flag: the step runs in the store's transaction.
    pub(crate) transactional: bool,
    /// `retry(...)`, if given.
    pub(crate) retry: Option<RetryInput>,
    /// `timeout = "..."`, if given: of one attempt of the action, or of the wait of a signal or
    /// approval step (never on a sleep).
    pub(crate) timeout: Option<DurationInput>,
    /// `compensation_retry(...)`, if given.
    pub(crate) compensation_retry: Option<RetryInput>,
    /// `compensation_timeout = "..."`, if given.
    pub(crate) compensation_timeout: Option<DurationInput>,
    /// The `pivot` flag: the step is the saga's point of no return.
    pub(crate) pivot: bool,
    /// Its policies, in the order written; only a step that calls an action has any.
    pub(crate) policies: Vec<PolicyModel>,
    /// The parallel group it belongs to, if any.
    pub(crate) group: Option<GroupModel>,
    /// The step name as the orchestrator sees it.
    pub(crate) name_text: String,
}

/// A step's parallel group, checked: its steps are consecutive, at least two, and each calls
/// an action, outside any transaction, not as the pivot, under no policy.
pub(crate) struct GroupModel {
    /// The group's name.
    pub(crate) name: String,
    /// At most this many of its steps run at once (`#[group(name, limit = N)]`, or all).
    pub(crate) limit: u32,
    /// Where `group = name` was written on the step.
    pub(crate) span: Span,
}

/// What a step does.
pub(crate) enum StepKind {
    /// Calls this action: `action = path`, or the function named like the step.
    Call(ExprPath),
    /// `sleep = "..."`: sleeps this long from when the saga reaches the step.
    Sleep(DurationInput),
    /// `sleep_until = path`: sleeps until the time this function computes.
    SleepUntil(ExprPath),
    /// `await_signal = Type`: waits for the signal of this type, whose payload is the output.
    Signal {
        /// The signal type, as written.
        ty: Box<Type>,
        /// `default = path`: makes the output recorded when the wait times out.
        default: Option<ExprPath>,
    },
    /// `approval`: waits for a person's decision; the span is the flag's.
    Approval(Span),
    /// `child = Type, child_input = path`: starts a child saga of this type, with the input
    /// this function computes, and waits for its end.
    Child {
        /// The child saga type, as written.
        ty: Box<Type>,
        /// Computes the child's input.
        input: ExprPath,
    },
}

impl StepKind {
    /// Where errors about building the step point: the action, or what the step waits for.
    pub(crate) fn span(&self) -> Span {
        match self {
            StepKind::Call(path) | StepKind::SleepUntil(path) => path.span(),
            StepKind::Sleep(duration) => duration.span,
            StepKind::Signal { ty, .. } => ty.span(),
            StepKind::Approval(span) => *span,
            StepKind::Child { ty, .. } => ty.span(),
        }
    }
}

/// How a step is undone.
pub(crate) enum Compensation {
    /// By this function, which receives the action's output (a signal step's: the payload).
    Compensate(ExprPath),
    /// Not at all, on purpose.
    Irreversible,
    /// Not at all, and nothing to declare: a waiting step has no effect of its own to undo.
    NothingToUndo,
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
        deadline,
        dedup_window,
        steps,
        step_attrs,
        groups,
    } = input;
    // A step whose attribute or options could not be read may be one of a group's, so no
    // count or order of a group's steps is sure then.
    let all_read = steps.len() == step_attrs && steps.iter().all(|step| !step.broken);
    let group_limits = check_groups(&steps, &groups, all_read, &mut errors);

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
        let group = step.group.as_ref().map(|name| GroupModel {
            name: name.to_string(),
            limit: group_limits.get(&name.to_string()).copied().unwrap_or(1),
            span: name.span(),
        });
        if let Some(mut model) = step_model(step, name_text, constant, &mut errors) {
            model.group = group;
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
            deadline,
            dedup_window,
            steps: checked,
        }),
        _ => Err(syn::Error::new(
            saga_attr.as_ref().map_or_else(Span::call_site, Spanned::span),
            "`#[saga(...)]` could not be read; write `#[saga(name = \"...\", version = N, input = Type)]`",
        )),
    }
}

/// Checks one step: a step calling an action has a compensation or the `irreversible` mark,
/// exactly one of them, and no compensation settings without a compensation; a waiting step has
/// only the options a wait takes (see [`wait::checked`]); `default` belongs to a signal step, and
/// a pivot has no compensation.
fn step_model(
    mut step: StepInput,
    name_text: String,
    constant: Ident,
    errors: &mut Errors,
) -> Option<StepModel> {
    let awaits_signal = matches!(
        step.wait,
        Some(WaitInput {
            kind: WaitKindInput::Signal(_),
            ..
        })
    );
    if let (Some(path), false) = (&step.default, awaits_signal) {
        errors.at(
            path.span(),
            format!(
                "`default` is the output an `await_signal` step records when its wait times out, and step `{name_text}` waits for no signal; remove `default`, or make the step wait with `await_signal = SignalType`"
            ),
        );
    }
    let starts_child = matches!(
        step.wait,
        Some(WaitInput {
            kind: WaitKindInput::Child(_),
            ..
        })
    );
    if let (Some(path), false) = (&step.child_input, starts_child) {
        errors.at(
            path.span(),
            format!(
                "`child_input` computes the input of the child saga a `child` step starts, and step `{name_text}` starts none; remove `child_input`, or make the step start one with `child = SagaType`"
            ),
        );
    }
    // A sleep or an approval takes no `compensate` at all, which `wait::checked` reports.
    let may_compensate = step.wait.is_none() || awaits_signal;
    if let (Some(span), Some(_), true) = (step.pivot, &step.compensate, may_compensate) {
        let fix = if awaits_signal {
            "remove `compensate`"
        } else {
            "replace `compensate` with `irreversible`"
        };
        errors.at(
            span,
            format!(
                "step `{name_text}` is the pivot, the saga's point of no return, so its compensation would never run; {fix}, or make another step the pivot"
            ),
        );
    }
    let (kind, compensation) = match step.wait.take() {
        None => call_step(&mut step, &name_text, errors)?,
        Some(wait) => wait::checked(wait, &mut step, &name_text, errors)?,
    };
    Some(StepModel {
        constant,
        kind,
        compensation,
        probe: step.probe,
        transactional: step.transactional.is_some(),
        retry: step.retry,
        timeout: step.timeout,
        compensation_retry: step.compensation_retry,
        compensation_timeout: step.compensation_timeout,
        pivot: step.pivot.is_some(),
        policies: step
            .policies
            .into_iter()
            .filter_map(|policy| policy.readable)
            .collect(),
        group: None,
        name_text,
    })
}

/// Checks the parallel groups: each group's steps are consecutive and at least two (checked
/// only when every step was read: `all_read`), call an action, and are neither transactional,
/// nor the pivot, nor under a policy; each `#[group(name, limit = N)]` names a group of steps,
/// once. Returns each group's limit (the one given, or its number of steps).
fn check_groups(
    steps: &[StepInput],
    groups: &[GroupInput],
    all_read: bool,
    errors: &mut Errors,
) -> HashMap<String, u32> {
    let mut members: Vec<(String, usize, &Ident)> = Vec::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut previous: Option<String> = None;
    for step in steps {
        let current = step.group.as_ref().map(ToString::to_string);
        if let (Some(name), Some(ident)) = (&current, &step.group) {
            if previous.as_ref() != Some(name) {
                if closed.contains(name) && all_read {
                    errors.at(
                        ident.span(),
                        format!(
                            "the steps of group `{name}` are not consecutive: step `{}` comes after other steps; put a group's steps next to each other",
                            step.name_text()
                        ),
                    );
                } else {
                    members.push((name.clone(), 0, ident));
                }
            }
            if let Some(last) = members.last_mut().filter(|last| &last.0 == name) {
                last.1 += 1;
            }
            let in_group = format!("step `{}` is in group `{name}`", step.name_text());
            let refusals = [
                (
                    step.wait.as_ref().map(|wait| wait.span),
                    "and waits; a group's steps call actions, so put the wait before or after the group",
                ),
                (
                    step.transactional,
                    "and is transactional; a saga has one step transaction at a time, so move it out of the group or drop `transactional`",
                ),
                (
                    step.pivot,
                    "and is the pivot; the point of no return must be one step, so move it out of the group",
                ),
                (
                    step.policies.first().map(|policy| policy.written.span()),
                    "and declares a policy; policies are not yet supported in groups, so move the step out of the group or drop its policies",
                ),
            ];
            for (span, why) in refusals {
                if let Some(span) = span {
                    errors.at(span, format!("{in_group} {why}"));
                }
            }
        }
        if let Some(name) = previous.take() {
            if current.as_ref() != Some(&name) {
                closed.insert(name);
            }
        }
        previous = current;
    }
    let mut limits: HashMap<String, u32> = HashMap::new();
    for (name, count, ident) in &members {
        if *count < 2 && all_read {
            errors.at(
                ident.span(),
                format!(
                    "group `{name}` has one step; a group needs at least two, or remove `group = {name}` to make it a plain step"
                ),
            );
        }
        limits.insert(name.clone(), u32::try_from(*count).unwrap_or(u32::MAX));
    }
    let mut declared: HashSet<String> = HashSet::new();
    for group in groups {
        let name = group.name.to_string();
        if !declared.insert(name.clone()) {
            errors.at(
                group.name.span(),
                format!("`#[group({name}, ...)]` is given twice; keep one"),
            );
            continue;
        }
        if !limits.contains_key(&name) {
            errors.at(
                group.name.span(),
                format!(
                    "no step is in group `{name}`; add `group = {name}` to its steps, or remove `#[group({name}, ...)]`"
                ),
            );
            continue;
        }
        if let Some(limit) = group.limit {
            limits.insert(name, limit.max(1));
        }
    }
    limits
}

/// The kind and compensation of a step that calls an action; `None` when they are unclear.
fn call_step(
    step: &mut StepInput,
    name_text: &str,
    errors: &mut Errors,
) -> Option<(StepKind, Compensation)> {
    let compensation = match (step.compensate.take(), step.irreversible) {
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
        for (key, span) in step.compensation_settings() {
            errors.at(
                span,
                format!(
                    "step `{name_text}` is irreversible, so it has no compensation to configure; remove `{key}`"
                ),
            );
        }
    }
    let action = step.action.take().unwrap_or_else(|| ExprPath {
        attrs: Vec::new(),
        qself: None,
        path: Path::from(step.name.clone()),
    });
    Some((StepKind::Call(action), compensation))
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
                let StepKind::Call(action) = &step.kind else {
                    panic!("the step calls an action");
                };
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
