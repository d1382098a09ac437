//! First stage of the derive: reads the `#[saga(...)]` and `#[step(...)]` attributes of the
//! declaration into a [`SagaInput`], checking each value on its own (durations, attempts, option
//! names) and collecting every problem instead of stopping at the first.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Attribute, DeriveInput, Expr, ExprLit, ExprPath, Generics, Ident, Lit, LitStr, Path, Token,
    Type, Visibility,
};

use crate::duration;
use crate::policy::{self, PolicyInput, PolicyKind};

/// The options of `#[saga(...)]`, for error messages.
pub(crate) const SAGA_OPTIONS: &str = "name, version, input, crate, deadline, dedup_window";
/// The options of `#[step(...)]`, for error messages.
pub(crate) const STEP_OPTIONS: &str =
    "action, compensate, probe, irreversible, transactional, retry, timeout, compensation_retry, compensation_timeout, sleep, sleep_until, await_signal, approval, default, child, child_input, pivot, group, cap, rate_limit, concurrency, retry_budget";
/// The options of `retry(...)` and `compensation_retry(...)`, for error messages.
pub(crate) const RETRY_OPTIONS: &str = "max_attempts, base, max_delay";

/// Every error found so far, combined so that the user sees them all in one build.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Adds an error at `span`.
    pub(crate) fn at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    /// `Ok(())` when no error was found, else all of them.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The declaration as written: every field is optional here, `validate` decides what is missing.
pub(crate) struct SagaInput {
    /// The type deriving `Saga`.
    pub(crate) ident: Ident,
    /// Its visibility, given to the step-name constants.
    pub(crate) vis: Visibility,
    /// Its generics, carried to the impl.
    pub(crate) generics: Generics,
    /// The first `#[saga(...)]` attribute, where errors about missing keys point.
    pub(crate) saga_attr: Option<Attribute>,
    /// A `#[saga(...)]` attribute stopped at a syntax error, so keys after it were not read and
    /// are not reported missing.
    pub(crate) saga_attr_broken: bool,
    /// The keys written in `#[saga(...)]`, readable or not: a key whose value is wrong is
    /// reported as wrong, not also as missing.
    pub(crate) keys_written: Vec<String>,
    /// `name = "..."`.
    pub(crate) name: Option<LitStr>,
    /// `version = N`.
    pub(crate) version: Option<u32>,
    /// `input = Type`.
    pub(crate) input: Option<Type>,
    /// `crate = path`.
    pub(crate) krate: Option<Path>,
    /// `deadline = "..."`: how long the saga may run, counted from its start.
    pub(crate) deadline: Option<DurationInput>,
    /// `dedup_window = "..."`: how long a start key dedups starts.
    pub(crate) dedup_window: Option<DurationInput>,
    /// The steps that were read, in order.
    pub(crate) steps: Vec<StepInput>,
    /// How many `#[step(...)]` attributes there are, including unreadable ones.
    pub(crate) step_attrs: usize,
    /// The `#[group(name, limit = N)]` attributes, in order.
    pub(crate) groups: Vec<GroupInput>,
}

/// One `#[group(name, limit = N)]` attribute: the limit of a parallel group.
pub(crate) struct GroupInput {
    /// The group's name.
    pub(crate) name: Ident,
    /// `limit = N`: at most this many of its steps run at once.
    pub(crate) limit: Option<u32>,
}

/// One `#[step(...)]` attribute as written.
pub(crate) struct StepInput {
    /// The step name (the first item).
    pub(crate) name: Ident,
    /// `action = path`.
    pub(crate) action: Option<ExprPath>,
    /// `compensate = path`.
    pub(crate) compensate: Option<ExprPath>,
    /// `probe = path`.
    pub(crate) probe: Option<ExprPath>,
    /// The `irreversible` flag.
    pub(crate) irreversible: Option<Span>,
    /// The `transactional` flag.
    pub(crate) transactional: Option<Span>,
    /// `retry(...)`.
    pub(crate) retry: Option<RetryInput>,
    /// `timeout = "..."`.
    pub(crate) timeout: Option<DurationInput>,
    /// `compensation_retry(...)`.
    pub(crate) compensation_retry: Option<RetryInput>,
    /// `compensation_timeout = "..."`.
    pub(crate) compensation_timeout: Option<DurationInput>,
    /// What the step waits for, if it waits: `sleep`, `sleep_until`, `await_signal` or
    /// `approval`.
    pub(crate) wait: Option<WaitInput>,
    /// `default = path`: the output of a signal step whose wait times out.
    pub(crate) default: Option<ExprPath>,
    /// `child_input = path`: the input of the child saga a `child` step starts.
    pub(crate) child_input: Option<ExprPath>,
    /// The `pivot` flag.
    pub(crate) pivot: Option<Span>,
    /// `group = name`: the parallel group the step belongs to.
    pub(crate) group: Option<Ident>,
    /// `cap(...)`, `rate_limit(...)`, `concurrency(...)` and `retry_budget(...)`, in the order
    /// written.
    pub(crate) policies: Vec<PolicyInput>,
    /// An option of this step had an unreadable value, so cross-checks on it are skipped.
    pub(crate) broken: bool,
}

/// The wait of a waiting step, as written; the key is kept even when its value is unreadable,
/// so that the options a waiting step does not take are still reported.
pub(crate) struct WaitInput {
    /// Where the key (`sleep`, `await_signal`, ...) was written.
    pub(crate) span: Span,
    /// What it waits for.
    pub(crate) kind: WaitKindInput,
}

/// What a waiting step waits for.
pub(crate) enum WaitKindInput {
    /// `sleep = "24h"`; `None` when the duration is unreadable.
    Sleep(Option<DurationInput>),
    /// `sleep_until = path`; `None` when the path is unreadable.
    SleepUntil(Option<ExprPath>),
    /// `await_signal = Type`.
    Signal(Box<Type>),
    /// The `approval` flag.
    Approval,
    /// `child = Type`: starts a child saga of this type and waits for its end.
    Child(Box<Type>),
}

impl WaitKindInput {
    /// The key it is written with.
    pub(crate) fn key(&self) -> &'static str {
        match self {
            WaitKindInput::Sleep(_) => "sleep",
            WaitKindInput::SleepUntil(_) => "sleep_until",
            WaitKindInput::Signal(_) => "await_signal",
            WaitKindInput::Approval => "approval",
            WaitKindInput::Child(_) => "child",
        }
    }
}

impl StepInput {
    /// The name as the orchestrator sees it (`r#type` is the step `type`).
    pub(crate) fn name_text(&self) -> String {
        self.name.unraw().to_string()
    }

    /// The compensation settings given, with where they were written.
    pub(crate) fn compensation_settings(&self) -> impl Iterator<Item = (&'static str, Span)> {
        [
            (
                "compensation_retry",
                self.compensation_retry.map(|r| r.span),
            ),
            (
                "compensation_timeout",
                self.compensation_timeout.map(|d| d.span),
            ),
        ]
        .into_iter()
        .filter_map(|(key, span)| Some((key, span?)))
    }
}

/// `retry(max_attempts = N, base = "...", max_delay = "...")`; unset fields keep the default.
#[derive(Clone, Copy)]
pub(crate) struct RetryInput {
    /// Where it was written.
    pub(crate) span: Span,
    /// Attempts in all, the first included; at least 1.
    pub(crate) max_attempts: Option<u32>,
    /// Upper bound of the first retry's delay.
    pub(crate) base: Option<DurationInput>,
    /// Upper bound of any retry's delay.
    pub(crate) max_delay: Option<DurationInput>,
}

/// A checked, positive duration literal.
#[derive(Clone, Copy)]
pub(crate) struct DurationInput {
    /// Where it was written.
    pub(crate) span: Span,
    /// Its length.
    pub(crate) millis: u64,
}

/// Reads the declaration, adding every problem found to `errors`.
pub(crate) fn saga_input(input: &DeriveInput, errors: &mut Errors) -> SagaInput {
    let mut saga = SagaInput {
        ident: input.ident.clone(),
        vis: input.vis.clone(),
        generics: input.generics.clone(),
        saga_attr: None,
        saga_attr_broken: false,
        keys_written: Vec::new(),
        name: None,
        version: None,
        input: None,
        krate: None,
        deadline: None,
        dedup_window: None,
        steps: Vec::new(),
        step_attrs: 0,
        groups: Vec::new(),
    };
    for attr in &input.attrs {
        if attr.path().is_ident("saga") {
            saga.saga_attr.get_or_insert_with(|| attr.clone());
            if let Err(err) = attr.parse_nested_meta(|meta| saga_option(&mut saga, &meta, errors)) {
                saga.saga_attr_broken = true;
                errors.push(err);
            }
        } else if attr.path().is_ident("step") {
            saga.step_attrs += 1;
            if let Some(step) = step_input(attr, errors) {
                saga.steps.push(step);
            }
        } else if attr.path().is_ident("group") {
            if let Some(group) = group_input(attr, errors) {
                saga.groups.push(group);
            }
        }
    }
    saga
}

/// One `key = value` of `#[saga(...)]`.
fn saga_option(
    saga: &mut SagaInput,
    meta: &ParseNestedMeta<'_>,
    errors: &mut Errors,
) -> syn::Result<()> {
    let path = &meta.path;
    saga.keys_written.push(path_text(path));
    if path.is_ident("name") {
        let expr: Expr = meta.value()?.parse()?;
        match expr {
            Expr::Lit(ExprLit {
                lit: Lit::Str(lit), ..
            }) => {
                if lit.value().trim().is_empty() {
                    errors.at(
                        lit.span(),
                        "the saga name is empty; give the saga type a name, e.g. `name = \"checkout\"`",
                    );
                }
                set_once(&mut saga.name, lit, path, "#[saga(...)]", errors);
            }
            other => errors.push(syn::Error::new_spanned(
                other,
                "`name` takes a string, e.g. `name = \"checkout\"`",
            )),
        }
    } else if path.is_ident("version") {
        if let Some(version) = integer_value::<u32>(meta, "version", "version = 1", errors)? {
            set_once(&mut saga.version, version, path, "#[saga(...)]", errors);
        }
    } else if path.is_ident("input") {
        let ty: Type = meta.value()?.parse()?;
        set_once(&mut saga.input, ty, path, "#[saga(...)]", errors);
    } else if path.is_ident("crate") {
        let value = meta.value()?;
        let krate = if value.peek(LitStr) {
            value.parse::<LitStr>()?.parse_with(Path::parse_mod_style)?
        } else {
            value.call(Path::parse_mod_style)?
        };
        set_once(&mut saga.krate, krate, path, "#[saga(...)]", errors);
    } else if path.is_ident("deadline") {
        if let Some(deadline) = duration_value(meta, "deadline", errors)? {
            set_once(&mut saga.deadline, deadline, path, "#[saga(...)]", errors);
        }
    } else if path.is_ident("dedup_window") {
        if let Some(window) = duration_value(meta, "dedup_window", errors)? {
            set_once(&mut saga.dedup_window, window, path, "#[saga(...)]", errors);
        }
    } else {
        errors.push(syn::Error::new_spanned(
            path,
            format!(
                "unknown saga option `{}`; expected one of: {SAGA_OPTIONS}",
                path_text(path)
            ),
        ));
        skip_value(meta)?;
    }
    Ok(())
}

/// One `#[step(name, options...)]` attribute; `None` when its name cannot be read.
fn step_input(attr: &Attribute, errors: &mut Errors) -> Option<StepInput> {
    let mut step: Option<StepInput> = None;
    let result = attr.parse_nested_meta(|meta| match &mut step {
        Some(step) => step_option(step, &meta, errors),
        None => {
            step = Some(step_name(&meta)?);
            Ok(())
        }
    });
    if let Err(err) = result {
        errors.push(err);
        if let Some(step) = &mut step {
            step.broken = true;
        }
    } else if step.is_none() {
        errors.push(syn::Error::new_spanned(
            attr,
            "a step needs a name: write `#[step(step_name, compensate = undo_fn)]` or `#[step(step_name, irreversible)]`",
        ));
    }
    step
}

/// One `#[group(name, limit = N)]` attribute; `None` when its name cannot be read.
fn group_input(attr: &Attribute, errors: &mut Errors) -> Option<GroupInput> {
    let mut group: Option<GroupInput> = None;
    let result = attr.parse_nested_meta(|meta| {
        let Some(group) = &mut group else {
            let bare = meta.input.is_empty() || meta.input.peek(Token![,]);
            return match meta.path.get_ident() {
                Some(ident) if bare => {
                    group = Some(GroupInput {
                        name: ident.clone(),
                        limit: None,
                    });
                    Ok(())
                }
                _ => Err(syn::Error::new_spanned(
                    &meta.path,
                    "`#[group(...)]` starts with the group's name, an identifier: write e.g. `#[group(booking, limit = 2)]`",
                )),
            };
        };
        let place = format!("group `{}`", group.name);
        if meta.path.is_ident("limit") {
            if let Some(limit) = integer_value::<u32>(&meta, "limit", "limit = 2", errors)? {
                if limit == 0 {
                    errors.push(syn::Error::new_spanned(
                        &meta.path,
                        "`limit` is how many steps of the group run at once; give at least 1",
                    ));
                }
                set_once(&mut group.limit, limit, &meta.path, &place, errors);
            }
        } else {
            errors.push(syn::Error::new_spanned(
                &meta.path,
                format!(
                    "unknown group option `{}`; expected `limit`, e.g. `#[group(booking, limit = 2)]`",
                    path_text(&meta.path)
                ),
            ));
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(err) = result {
        errors.push(err);
    } else if group.is_none() {
        errors.push(syn::Error::new_spanned(
            attr,
            "a group needs a name: write `#[group(booking, limit = 2)]`, and `group = booking` on its steps",
        ));
    }
    group
}

/// The first item of `#[step(...)]`: the step name.
fn step_name(meta: &ParseNestedMeta<'_>) -> syn::Result<StepInput> {
    let bare = meta.input.is_empty() || meta.input.peek(Token![,]);
    let ident = match meta.path.get_ident() {
        Some(ident) if bare && ident != "irreversible" => ident.clone(),
        _ => {
            return Err(syn::Error::new_spanned(
                &meta.path,
                "`#[step(...)]` starts with the step name, an identifier: write e.g. `#[step(reserve_stock, compensate = release_stock)]`",
            ))
        }
    };
    Ok(StepInput {
        name: ident,
        action: None,
        compensate: None,
        probe: None,
        irreversible: None,
        transactional: None,
        retry: None,
        timeout: None,
        compensation_retry: None,
        compensation_timeout: None,
        wait: None,
        default: None,
        child_input: None,
        pivot: None,
        group: None,
        policies: Vec::new(),
        broken: false,
    })
}

/// One option of `#[step(...)]` after the name.
fn step_option(
    step: &mut StepInput,
    meta: &ParseNestedMeta<'_>,
    errors: &mut Errors,
) -> syn::Result<()> {
    let path = &meta.path;
    let place = format!("step `{}`", step.name_text());
    if path.is_ident("action") {
        match function_path(meta, "action", ASYNC_FN, "action = charge_card", errors)? {
            Some(value) => set_once(&mut step.action, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("compensate") {
        match function_path(meta, "compensate", ASYNC_FN, "compensate = refund", errors)? {
            Some(value) => set_once(&mut step.compensate, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("probe") {
        match function_path(meta, "probe", ASYNC_FN, "probe = charge_status", errors)? {
            Some(value) => set_once(&mut step.probe, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("irreversible") {
        flag(meta, "irreversible", errors)?;
        set_once(&mut step.irreversible, path.span(), path, &place, errors);
    } else if path.is_ident("transactional") {
        flag(meta, "transactional", errors)?;
        set_once(&mut step.transactional, path.span(), path, &place, errors);
    } else if path.is_ident("pivot") {
        flag(meta, "pivot", errors)?;
        set_once(&mut step.pivot, path.span(), path, &place, errors);
    } else if path.is_ident("group") {
        let value = meta.value()?;
        match value.parse::<Ident>() {
            Ok(name) => set_once(&mut step.group, name, path, &place, errors),
            Err(_) => {
                errors.push(syn::Error::new(
                    value.span(),
                    "`group` takes the group's name, an identifier: write e.g. `group = booking`",
                ));
                value.parse::<Expr>()?;
                step.broken = true;
            }
        }
    } else if path.is_ident("sleep") {
        let duration = duration_value(meta, "sleep", errors)?;
        step.broken |= duration.is_none();
        set_wait(step, WaitKindInput::Sleep(duration), path, errors);
    } else if path.is_ident("sleep_until") {
        let wake = function_path(
            meta,
            "sleep_until",
            PLAIN_FN,
            "sleep_until = remind_at",
            errors,
        )?;
        step.broken |= wake.is_none();
        set_wait(step, WaitKindInput::SleepUntil(wake), path, errors);
    } else if path.is_ident("await_signal") {
        let ty: Type = meta.value()?.parse()?;
        set_wait(step, WaitKindInput::Signal(Box::new(ty)), path, errors);
    } else if path.is_ident("approval") {
        flag(meta, "approval", errors)?;
        set_wait(step, WaitKindInput::Approval, path, errors);
    } else if path.is_ident("child") {
        let ty: Type = meta.value()?.parse()?;
        set_wait(step, WaitKindInput::Child(Box::new(ty)), path, errors);
    } else if path.is_ident("child_input") {
        match function_path(
            meta,
            "child_input",
            PLAIN_FN,
            "child_input = shipment_for",
            errors,
        )? {
            Some(value) => set_once(&mut step.child_input, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("default") {
        match function_path(meta, "default", PLAIN_FN, "default = no_payment", errors)? {
            Some(value) => set_once(&mut step.default, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("retry") || path.is_ident("compensation_retry") {
        let key = path_text(path);
        match retry_input(meta, &key, errors)? {
            Some(retry) if key == "retry" => set_once(&mut step.retry, retry, path, &place, errors),
            Some(retry) => set_once(&mut step.compensation_retry, retry, path, &place, errors),
            None => step.broken = true,
        }
    } else if path.is_ident("timeout") || path.is_ident("compensation_timeout") {
        let key = path_text(path);
        match duration_value(meta, &key, errors)? {
            Some(value) if key == "timeout" => {
                set_once(&mut step.timeout, value, path, &place, errors);
            }
            Some(value) => set_once(&mut step.compensation_timeout, value, path, &place, errors),
            None => step.broken = true,
        }
    } else if let Some(kind) = PolicyKind::from_path(path) {
        let policy = policy::policy_input(meta, kind, errors)?;
        step.broken |= policy.readable.is_none();
        step.policies.push(policy);
    } else {
        errors.push(syn::Error::new_spanned(
            path,
            format!(
                "unknown step option `{}`; expected one of: {STEP_OPTIONS}",
                path_text(path)
            ),
        ));
        skip_value(meta)?;
    }
    Ok(())
}

/// Checks that a flag (`irreversible`, `pivot`, ...) has no value, reporting and skipping one.
fn flag(meta: &ParseNestedMeta<'_>, key: &str, errors: &mut Errors) -> syn::Result<()> {
    if !(meta.input.is_empty() || meta.input.peek(Token![,])) {
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!("`{key}` is a flag and takes no value; write just `{key}`"),
        ));
        skip_value(meta)?;
    }
    Ok(())
}

/// Sets the step's wait unless it already has one: a step waits for one thing.
fn set_wait(step: &mut StepInput, kind: WaitKindInput, path: &Path, errors: &mut Errors) {
    match &step.wait {
        Some(first) if first.kind.key() == kind.key() => errors.push(syn::Error::new_spanned(
            path,
            format!(
                "`{}` is given twice in step `{}`; keep one",
                kind.key(),
                step.name_text()
            ),
        )),
        Some(first) => errors.push(syn::Error::new_spanned(
            path,
            format!(
                "step `{}` already waits (`{}`), and a step waits for one thing; remove `{}`, or give it a step of its own",
                step.name_text(),
                first.kind.key(),
                kind.key()
            ),
        )),
        None => {
            step.wait = Some(WaitInput {
                span: path.span(),
                kind,
            });
        }
    }
}

/// `retry(max_attempts = N, base = "...", max_delay = "...")`; `None` when unreadable.
fn retry_input(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    errors: &mut Errors,
) -> syn::Result<Option<RetryInput>> {
    if !meta.input.peek(syn::token::Paren) {
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!(
                "`{key}` takes a list: write e.g. `{key}(max_attempts = 5, base = \"200ms\", max_delay = \"5s\")`"
            ),
        ));
        skip_value(meta)?;
        return Ok(None);
    }
    let fork = meta.input.fork();
    let content;
    syn::parenthesized!(content in fork);
    if content.is_empty() {
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!(
                "`{key}()` is empty; set at least one of {RETRY_OPTIONS}, or remove it to keep the default policy"
            ),
        ));
        skip_value(meta)?;
        return Ok(None);
    }
    let mut retry = RetryInput {
        span: meta.path.span(),
        max_attempts: None,
        base: None,
        max_delay: None,
    };
    let mut readable = true;
    let place = format!("`{key}(...)`");
    meta.parse_nested_meta(|inner| {
        let path = &inner.path;
        if path.is_ident("max_attempts") {
            match integer_value::<u32>(&inner, "max_attempts", "max_attempts = 5", errors)? {
                Some(0) => {
                    readable = false;
                    errors.push(syn::Error::new_spanned(
                        path,
                        "`max_attempts = 0` allows no attempt at all; it counts the first attempt, so use 1 for no retries",
                    ));
                }
                Some(n) => set_once(&mut retry.max_attempts, n, path, &place, errors),
                None => readable = false,
            }
        } else if path.is_ident("base") || path.is_ident("max_delay") {
            let name = path_text(path);
            match duration_value(&inner, &name, errors)? {
                Some(value) if name == "base" => {
                    set_once(&mut retry.base, value, path, &place, errors);
                }
                Some(value) => set_once(&mut retry.max_delay, value, path, &place, errors),
                None => readable = false,
            }
        } else {
            errors.push(syn::Error::new_spanned(
                path,
                format!(
                    "unknown option `{}` in `{key}(...)`; expected one of: {RETRY_OPTIONS}",
                    path_text(path)
                ),
            ));
            skip_value(&inner)?;
        }
        Ok(())
    })?;
    if let (Some(base), Some(max_delay)) = (retry.base, retry.max_delay) {
        if max_delay.millis < base.millis {
            errors.at(
                max_delay.span,
                format!(
                    "`max_delay` is shorter than `base`, so every retry would wait at most `max_delay`; make `max_delay` at least \"{}\"",
                    duration::literal(base.millis)
                ),
            );
        }
    }
    Ok(readable.then_some(retry))
}

/// A duration string literal; `None` (with an error added) when it is not one or is invalid.
pub(crate) fn duration_value(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    errors: &mut Errors,
) -> syn::Result<Option<DurationInput>> {
    let expr: Expr = meta.value()?.parse()?;
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = &expr
    else {
        errors.push(syn::Error::new_spanned(
            &expr,
            format!("`{key}` takes a duration string: {}", duration::EXPECTED),
        ));
        return Ok(None);
    };
    match duration::parse_millis(&lit.value()) {
        Ok(millis) => Ok(Some(DurationInput {
            span: lit.span(),
            millis,
        })),
        Err(reason) => {
            errors.at(lit.span(), format!("invalid `{key}`: {reason}"));
            Ok(None)
        }
    }
}

/// An integer literal that fits `T`; `None` (with an error added) otherwise.
pub(crate) fn integer_value<T>(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let expr: Expr = meta.value()?.parse()?;
    let Expr::Lit(ExprLit {
        lit: Lit::Int(lit), ..
    }) = &expr
    else {
        errors.push(syn::Error::new_spanned(
            &expr,
            format!("`{key}` takes a whole number, e.g. `{example}`"),
        ));
        return Ok(None);
    };
    match lit.base10_parse::<T>() {
        Ok(value) => Ok(Some(value)),
        Err(err) => {
            errors.at(lit.span(), format!("invalid `{key}`: {err}"));
            Ok(None)
        }
    }
}

/// What `action`, `compensate` and `probe` name, for error messages.
const ASYNC_FN: &str = "an async fn";
/// What `sleep_until` and `default` name, for error messages.
const PLAIN_FN: &str = "a fn (not async)";

/// The path of a function (`charge_card`, `payments::refund`, `Self::refund`); `None` (with an
/// error added) for anything else. `what` says which kind of function, e.g. [`ASYNC_FN`].
pub(crate) fn function_path(
    meta: &ParseNestedMeta<'_>,
    key: &str,
    what: &str,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<ExprPath>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Path(path) if path.attrs.is_empty() => Ok(Some(path)),
        other => {
            errors.push(syn::Error::new_spanned(
                &other,
                format!("`{key}` takes the path of {what}, e.g. `{example}`"),
            ));
            Ok(None)
        }
    }
}

/// Consumes the value of an option that is reported as an error, so that reading goes on.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// Sets `slot` unless it is already set, in which case the repetition is an error.
pub(crate) fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    path: &Path,
    place: &str,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.push(syn::Error::new_spanned(
            path,
            format!("`{}` is given twice in {place}; keep one", path_text(path)),
        ));
    } else {
        *slot = Some(value);
    }
}

/// A path as written, for messages (`crate`, `retries`, `a::b`).
pub(crate) fn path_text(path: &Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.unraw().to_string())
        .collect();
    segments.join("::")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: DeriveInput) -> (SagaInput, Vec<String>) {
        let mut errors = Errors::default();
        let saga = saga_input(&input, &mut errors);
        let messages = match errors.finish() {
            Ok(()) => Vec::new(),
            Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
        };
        (saga, messages)
    }

    #[test]
    fn reads_every_option_of_a_full_declaration() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "checkout", version = 3, input = Order, crate = ::my_saga)]
            #[step(reserve_stock, compensate = release_stock)]
            #[step(charge_card, action = payments::charge, compensate = Self::refund,
                   retry(max_attempts = 5, base = "200ms", max_delay = "5s"), timeout = "10s",
                   compensation_retry(max_attempts = 7), compensation_timeout = "1m")]
            #[step(send_receipt, irreversible)]
            struct Checkout;
        });
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(saga.name.map(|name| name.value()), Some("checkout".into()));
        assert_eq!(saga.version, Some(3));
        assert!(saga.input.is_some());
        assert!(saga.krate.is_some());
        let names: Vec<String> = saga.steps.iter().map(StepInput::name_text).collect();
        assert_eq!(names, ["reserve_stock", "charge_card", "send_receipt"]);
        let charge = &saga.steps[1];
        let retry = charge.retry.unwrap();
        assert_eq!(retry.max_attempts, Some(5));
        assert_eq!(retry.base.map(|d| d.millis), Some(200));
        assert_eq!(retry.max_delay.map(|d| d.millis), Some(5_000));
        assert_eq!(charge.timeout.map(|d| d.millis), Some(10_000));
        let compensation_retry = charge.compensation_retry.unwrap();
        assert_eq!(compensation_retry.max_attempts, Some(7));
        assert!(compensation_retry.base.is_none());
        assert_eq!(charge.compensation_timeout.map(|d| d.millis), Some(60_000));
        assert!(saga.steps[2].irreversible.is_some());
        assert!(saga.steps[2].compensate.is_none());
    }

    #[test]
    fn reads_the_wait_options_and_the_deadline() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "promotion", version = 1, input = Order, deadline = "2h")]
            #[step(remind_later, sleep = "24h")]
            #[step(remind_at, sleep_until = Self::remind_time)]
            #[step(payment_confirmed, await_signal = webhooks::Payment<u64>, timeout = "30m",
                   default = no_payment)]
            #[step(approve_budget, approval, timeout = "2h", pivot)]
            struct Promotion;
        });
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(saga.deadline.map(|d| d.millis), Some(7_200_000));
        let waits: Vec<&str> = saga
            .steps
            .iter()
            .filter_map(|step| step.wait.as_ref().map(|wait| wait.kind.key()))
            .collect();
        assert_eq!(waits, ["sleep", "sleep_until", "await_signal", "approval"]);
        let Some(WaitKindInput::Sleep(Some(length))) = saga.steps[0].wait.as_ref().map(|w| &w.kind)
        else {
            panic!("the first step sleeps");
        };
        assert_eq!(length.millis, 86_400_000);
        assert!(saga.steps[2].default.is_some());
        assert_eq!(saga.steps[2].timeout.map(|d| d.millis), Some(1_800_000));
        assert!(saga.steps[3].pivot.is_some());
        assert!(saga.steps[3].compensate.is_none() && saga.steps[3].irreversible.is_none());
    }

    #[test]
    fn wait_flags_take_no_value_and_durations_are_checked() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32, deadline = 2)]
            #[step(a, approval = true, pivot(yes))]
            #[step(b, sleep = "1.5h", default = || 0)]
            struct X;
        });
        assert_eq!(
            errors,
            [
                "`deadline` takes a duration string: write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "`approval` is a flag and takes no value; write just `approval`",
                "`pivot` is a flag and takes no value; write just `pivot`",
                "invalid `sleep`: `1.5h` is not a whole number; use a smaller unit instead, e.g. \"1500ms\" rather than \"1.5s\"",
                "`default` takes the path of a fn (not async), e.g. `default = no_payment`",
            ]
        );
        assert!(saga.steps[0].wait.is_some() && saga.steps[0].pivot.is_some());
        assert!(saga.steps[1].broken);
    }

    #[test]
    fn crate_may_be_a_string() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32, crate = "my_saga")]
            #[step(a, irreversible)]
            struct X;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            saga.krate.map(|path| path_text(&path)),
            Some("my_saga".into())
        );
    }

    #[test]
    fn unknown_options_list_the_known_ones() {
        let (_, errors) = read(syn::parse_quote! {
            #[saga(name = "x", versio = 1, input = u32)]
            #[step(a, retries(max_attempts = 3), irreversible)]
            #[step(b, irreversible, retry(attempts = 3))]
            struct X;
        });
        assert_eq!(
            errors,
            [
                "unknown saga option `versio`; expected one of: name, version, input, crate, deadline, dedup_window",
                "unknown step option `retries`; expected one of: action, compensate, probe, irreversible, transactional, retry, timeout, compensation_retry, compensation_timeout, sleep, sleep_until, await_signal, approval, default, child, child_input, pivot, group, cap, rate_limit, concurrency, retry_budget",
                "unknown option `attempts` in `retry(...)`; expected one of: max_attempts, base, max_delay",
            ]
        );
    }

    #[test]
    fn every_bad_value_is_reported_in_one_pass() {
        let (_, errors) = read(syn::parse_quote! {
            #[saga(name = "", version = "1", input = u32)]
            #[step(a, irreversible, timeout = "10 sec", retry(max_attempts = 0, base = "0ms"))]
            #[step(b, compensate = undo(), compensation_timeout = 5)]
            #[step(c, irreversible, retry = 3, timeout = "1s", timeout = "2s")]
            #[step(d, irreversible, compensation_retry())]
            struct X;
        });
        assert_eq!(
            errors,
            [
                "the saga name is empty; give the saga type a name, e.g. `name = \"checkout\"`",
                "`version` takes a whole number, e.g. `version = 1`",
                "invalid `timeout`: `10 sec` contains a space; write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "`max_attempts = 0` allows no attempt at all; it counts the first attempt, so use 1 for no retries",
                "invalid `base`: `0ms` is zero; give it a positive duration, e.g. \"1s\"",
                "`compensate` takes the path of an async fn, e.g. `compensate = refund`",
                "`compensation_timeout` takes a duration string: write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "`retry` takes a list: write e.g. `retry(max_attempts = 5, base = \"200ms\", max_delay = \"5s\")`",
                "`timeout` is given twice in step `c`; keep one",
                "`compensation_retry()` is empty; set at least one of max_attempts, base, max_delay, or remove it to keep the default policy",
            ]
        );
    }

    #[test]
    fn max_delay_shorter_than_base_is_refused() {
        let (_, errors) = read(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(a, irreversible, retry(base = "2s", max_delay = "500ms"))]
            struct X;
        });
        assert_eq!(
            errors,
            ["`max_delay` is shorter than `base`, so every retry would wait at most `max_delay`; make `max_delay` at least \"2s\""]
        );
    }

    #[test]
    fn a_step_must_start_with_its_name() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(compensate = undo)]
            #[step(irreversible)]
            #[step()]
            #[step(a, irreversible = true)]
            struct X;
        });
        let starts = "`#[step(...)]` starts with the step name, an identifier: write e.g. `#[step(reserve_stock, compensate = release_stock)]`";
        assert_eq!(
            errors,
            [
                starts,
                starts,
                "a step needs a name: write `#[step(step_name, compensate = undo_fn)]` or `#[step(step_name, irreversible)]`",
                "`irreversible` is a flag and takes no value; write just `irreversible`",
            ]
        );
        assert_eq!(saga.step_attrs, 4);
        assert_eq!(saga.steps.len(), 1);
    }

    #[test]
    fn raw_identifiers_name_steps_without_the_prefix() {
        let (saga, errors) = read(syn::parse_quote! {
            #[saga(name = "x", version = 1, input = u32)]
            #[step(r#match, irreversible)]
            struct X;
        });
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(saga.steps[0].name_text(), "match");
    }
}
