//! Validation of waiting steps (`sleep`, `sleep_until`, `await_signal`, `approval`): a wait
//! calls no action, so it takes none of an action's options (its policies included), and only a
//! signal step, whose output is the signal's payload, has something a compensation could undo.

use syn::spanned::Spanned;

use crate::duration;
use crate::parse::{Errors, StepInput, WaitInput, WaitKindInput};
use crate::validate::{Compensation, StepKind};

/// The kind and compensation of waiting step `step`, which waits for `wait`, with an error for
/// each option it does not take; `None` when what it waits for is unreadable.
pub(crate) fn checked(
    wait: WaitInput,
    step: &mut StepInput,
    name_text: &str,
    errors: &mut Errors,
) -> Option<(StepKind, Compensation)> {
    let waits = format!("step `{name_text}` waits (`{}`)", wait.kind.key());
    let action_options = [
        (
            step.action.as_ref().map(Spanned::span),
            "calls no action; remove `action`, or call the function in a step of its own",
        ),
        (
            step.probe.as_ref().map(Spanned::span),
            "calls no action, so there is nothing to probe; remove `probe`",
        ),
        (
            step.retry.map(|retry| retry.span),
            "calls no action, so there is nothing to retry; remove `retry`",
        ),
        (
            step.transactional,
            "runs nothing in a transaction; remove `transactional`",
        ),
        (
            step.irreversible,
            "has no effect of its own to undo, so it needs neither `compensate` nor `irreversible`; remove `irreversible`",
        ),
    ];
    for (span, why) in action_options {
        if let Some(span) = span {
            errors.at(span, format!("{waits} and {why}"));
        }
    }
    for policy in &step.policies {
        let key = policy.kind.key();
        errors.push(syn::Error::new_spanned(
            &policy.written,
            format!(
                "{waits} and calls nothing, so `{key}(...)` would have nothing to count; remove it, or declare it on the step whose action it limits"
            ),
        ));
    }

    let sleeps = match &wait.kind {
        WaitKindInput::Sleep(Some(length)) => Some(format!(
            "sleeps for \"{}\": its length is its duration",
            duration::literal(length.millis)
        )),
        WaitKindInput::Sleep(None) => Some("sleeps: its length is its duration".to_owned()),
        WaitKindInput::SleepUntil(_) => {
            Some("sleeps until the time its function returns".to_owned())
        }
        WaitKindInput::Child(_) => {
            Some("waits for its child saga, whose own steps have their timeouts".to_owned())
        }
        WaitKindInput::Signal(_) | WaitKindInput::Approval => None,
    };
    if let (Some(timeout), Some(why)) = (step.timeout, sleeps) {
        errors.at(
            timeout.span,
            format!(
                "step `{name_text}` {why}, so a `timeout` would never apply; remove `timeout` (`#[saga(deadline = \"...\")]` bounds the whole saga)"
            ),
        );
    }

    let compensation = match (step.compensate.take(), &wait.kind) {
        (Some(path), WaitKindInput::Signal(_)) => Compensation::Compensate(path),
        (Some(path), WaitKindInput::Child(_)) => {
            errors.at(
                path.span(),
                format!(
                    "step `{name_text}` starts a child saga, which is undone by compensating the child's own steps; remove `compensate`"
                ),
            );
            Compensation::NothingToUndo
        }
        (Some(path), _) => {
            errors.at(
                path.span(),
                format!(
                    "{waits} and has no effect of its own to undo; remove `compensate` (only an `await_signal` step takes one, and its compensation receives the signal's payload)"
                ),
            );
            Compensation::NothingToUndo
        }
        (None, _) => Compensation::NothingToUndo,
    };
    if matches!(compensation, Compensation::NothingToUndo) {
        for (key, span) in step.compensation_settings() {
            errors.at(
                span,
                format!("{waits} and has no compensation to configure; remove `{key}`"),
            );
        }
    }

    let kind = match wait.kind {
        WaitKindInput::Sleep(length) => StepKind::Sleep(length?),
        WaitKindInput::SleepUntil(wake) => StepKind::SleepUntil(wake?),
        WaitKindInput::Signal(ty) => StepKind::Signal {
            ty,
            default: step.default.take(),
        },
        WaitKindInput::Approval => StepKind::Approval(wait.span),
        WaitKindInput::Child(ty) => match step.child_input.take() {
            Some(input) => StepKind::Child { ty, input },
            None => {
                errors.at(
                    wait.span,
                    format!(
                        "step `{name_text}` starts a child saga and needs its input: add `child_input = fn_name`, a fn (not async) taking `&Self` and `&StepContext<Input>` and returning `Result<ChildInput, StepError>`"
                    ),
                );
                return None;
            }
        },
    };
    Some((kind, compensation))
}

#[cfg(test)]
mod tests {
    use crate::parse::{self, Errors};
    use crate::validate::{self, Compensation, SagaModel, StepKind};

    fn check(input: syn::DeriveInput) -> Result<SagaModel, Vec<String>> {
        let mut errors = Errors::default();
        let parsed = parse::saga_input(&input, &mut errors);
        validate::validate(parsed, errors)
            .map_err(|err| err.into_iter().map(|e| e.to_string()).collect())
    }

    fn errors_of(input: syn::DeriveInput) -> Vec<String> {
        check(input).err().unwrap_or_default()
    }

    #[test]
    fn each_wait_kind_needs_neither_compensate_nor_irreversible() {
        let model = check(syn::parse_quote! {
            #[saga(name = "promotion", version = 1, input = Order, deadline = "2h")]
            #[step(remind_later, sleep = "24h")]
            #[step(remind_at, sleep_until = Self::remind_time)]
            #[step(payment_confirmed, await_signal = webhooks::Payment, timeout = "30m",
                   default = no_payment, compensate = refund_payment)]
            #[step(approve_budget, approval, timeout = "2h", pivot)]
            #[step(publish, irreversible, pivot)]
            struct Promotion;
        })
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(model.deadline.map(|d| d.millis), Some(7_200_000));
        let steps = &model.steps;
        assert!(matches!(steps[0].kind, StepKind::Sleep(d) if d.millis == 86_400_000));
        assert!(matches!(&steps[1].kind, StepKind::SleepUntil(_)));
        assert!(matches!(
            &steps[2].kind,
            StepKind::Signal {
                default: Some(_),
                ..
            }
        ));
        assert!(matches!(steps[2].compensation, Compensation::Compensate(_)));
        assert_eq!(steps[2].timeout.map(|d| d.millis), Some(1_800_000));
        assert!(matches!(steps[3].kind, StepKind::Approval(_)));
        assert!(matches!(steps[3].compensation, Compensation::NothingToUndo));
        let pivots: Vec<bool> = steps.iter().map(|step| step.pivot).collect();
        assert_eq!(pivots, [false, false, false, true, true]);
    }

    #[test]
    fn a_waiting_step_takes_no_option_of_an_action() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, sleep = "1h", action = act, probe = check, retry(max_attempts = 2),
                       transactional, irreversible)]
                #[step(b, approval, compensation_timeout = "1s")]
                struct X;
            }),
            [
                "step `a` waits (`sleep`) and calls no action; remove `action`, or call the function in a step of its own",
                "step `a` waits (`sleep`) and calls no action, so there is nothing to probe; remove `probe`",
                "step `a` waits (`sleep`) and calls no action, so there is nothing to retry; remove `retry`",
                "step `a` waits (`sleep`) and runs nothing in a transaction; remove `transactional`",
                "step `a` waits (`sleep`) and has no effect of its own to undo, so it needs neither `compensate` nor `irreversible`; remove `irreversible`",
                "step `b` waits (`approval`) and has no compensation to configure; remove `compensation_timeout`",
            ]
        );
    }

    #[test]
    fn a_sleep_takes_no_timeout_and_no_compensation() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, sleep = "90m", timeout = "1h")]
                #[step(b, sleep_until = wake, timeout = "1h", compensate = undo)]
                #[step(c, approval, timeout = "1h", compensate = undo)]
                struct X;
            }),
            [
                "step `a` sleeps for \"90m\": its length is its duration, so a `timeout` would never apply; remove `timeout` (`#[saga(deadline = \"...\")]` bounds the whole saga)",
                "step `b` sleeps until the time its function returns, so a `timeout` would never apply; remove `timeout` (`#[saga(deadline = \"...\")]` bounds the whole saga)",
                "step `b` waits (`sleep_until`) and has no effect of its own to undo; remove `compensate` (only an `await_signal` step takes one, and its compensation receives the signal's payload)",
                "step `c` waits (`approval`) and has no effect of its own to undo; remove `compensate` (only an `await_signal` step takes one, and its compensation receives the signal's payload)",
            ]
        );
    }

    #[test]
    fn a_step_waits_for_one_thing() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, sleep = "1h", approval)]
                #[step(b, await_signal = Paid, await_signal = Paid)]
                struct X;
            }),
            [
                "step `a` already waits (`sleep`), and a step waits for one thing; remove `approval`, or give it a step of its own",
                "`await_signal` is given twice in step `b`; keep one",
            ]
        );
    }

    #[test]
    fn default_belongs_to_a_signal_step_and_a_pivot_has_no_compensation() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32)]
                #[step(a, irreversible, default = zero)]
                #[step(b, approval, default = zero)]
                #[step(c, compensate = undo, pivot)]
                #[step(d, await_signal = Paid, compensate = undo, pivot)]
                #[step(e, sleep = "1h", compensate = undo, pivot)]
                struct X;
            }),
            [
                "`default` is the output an `await_signal` step records when its wait times out, and step `a` waits for no signal; remove `default`, or make the step wait with `await_signal = SignalType`",
                "`default` is the output an `await_signal` step records when its wait times out, and step `b` waits for no signal; remove `default`, or make the step wait with `await_signal = SignalType`",
                "step `c` is the pivot, the saga's point of no return, so its compensation would never run; replace `compensate` with `irreversible`, or make another step the pivot",
                "step `d` is the pivot, the saga's point of no return, so its compensation would never run; remove `compensate`, or make another step the pivot",
                "step `e` waits (`sleep`) and has no effect of its own to undo; remove `compensate` (only an `await_signal` step takes one, and its compensation receives the signal's payload)",
            ]
        );
    }

    #[test]
    fn an_unreadable_wait_still_reports_the_options_it_does_not_take() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = u32, deadline = "2 h")]
                #[step(a, sleep = "1 day", retry(max_attempts = 2))]
                #[step(b, sleep_until = "tomorrow")]
                struct X;
            }),
            [
                "invalid `deadline`: `2 h` contains a space; write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "invalid `sleep`: `1 day` contains a space; write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "`sleep_until` takes the path of a fn (not async), e.g. `sleep_until = remind_at`",
                "step `a` waits (`sleep`) and calls no action, so there is nothing to retry; remove `retry`",
            ]
        );
    }
}
