//! Step policies in `#[step(...)]` (`cap`, `rate_limit`, `concurrency`, `retry_budget`): read
//! and checked here, then expanded to the builder calls (`StepBuilder::cap` and the like) that
//! the worker checks before each attempt of the step's action.

use proc_macro2::{Group, Literal, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ExprPath, Ident, Index, Lit, LitStr, Member, Path, Type};

use crate::expand::duration;
use crate::function_paths::referenced;
use crate::parse::{
    duration_value, function_path, integer_value, path_text, set_once, skip_value, DurationInput,
    Errors,
};

/// The longest policy name the store accepts, in bytes.
const MAX_NAME_BYTES: usize = 200;

/// What a policy counts; the key it is written with is [`PolicyKind::key`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PolicyKind {
    /// `cap(...)`: at most `max` effects per key per `per`; the step is skipped past it.
    Cap,
    /// `rate_limit(...)`: at most `max` attempts per `per` across every saga naming it.
    RateLimit,
    /// `concurrency(...)`: at most `max` running sagas per key.
    Concurrency,
    /// `retry_budget(...)`: at most `max` retries per key per `per`.
    RetryBudget,
}

impl PolicyKind {
    /// The kind written as `path`, if `path` names one.
    pub(crate) fn from_path(path: &Path) -> Option<Self> {
        [
            PolicyKind::Cap,
            PolicyKind::RateLimit,
            PolicyKind::Concurrency,
            PolicyKind::RetryBudget,
        ]
        .into_iter()
        .find(|kind| path.is_ident(kind.key()))
    }

    /// The key it is written with, which is also the builder method it expands to.
    pub(crate) fn key(self) -> &'static str {
        match self {
            PolicyKind::Cap => "cap",
            PolicyKind::RateLimit => "rate_limit",
            PolicyKind::Concurrency => "concurrency",
            PolicyKind::RetryBudget => "retry_budget",
        }
    }

    /// Whether it counts per key of the input (all but a rate limit, keyed by its name alone).
    fn keyed(self) -> bool {
        self != PolicyKind::RateLimit
    }

    /// Whether it counts in a window `per` (all but concurrency, which counts running sagas).
    fn windowed(self) -> bool {
        self != PolicyKind::Concurrency
    }

    /// Its options, for error messages.
    fn options(self) -> &'static str {
        match self {
            PolicyKind::Cap | PolicyKind::RetryBudget => "name, key, key_fn, max, per",
            PolicyKind::RateLimit => "name, max, per",
            PolicyKind::Concurrency => "name, key, key_fn, max",
        }
    }

    /// A complete declaration, for error messages.
    fn example(self) -> &'static str {
        match self {
            PolicyKind::Cap => "cap(name = \"email\", key = customer, max = 1, per = \"24h\")",
            PolicyKind::RateLimit => "rate_limit(name = \"partner_api\", max = 50, per = \"1s\")",
            PolicyKind::Concurrency => "concurrency(name = \"cart\", key = cart_id, max = 1)",
            PolicyKind::RetryBudget => {
                "retry_budget(name = \"contact\", key = customer, max = 5, per = \"1h\")"
            }
        }
    }

    /// Why `max = 0` is refused, and what to write instead; `None` for a cap, which may be 0
    /// (its step is then always skipped).
    fn zero_max(self) -> Option<&'static str> {
        match self {
            PolicyKind::Cap => None,
            PolicyKind::RateLimit => Some(
                "`max = 0` in `rate_limit(...)` lets no attempt through, so every saga reaching the step would wait forever; give it at least 1",
            ),
            PolicyKind::Concurrency => Some(
                "`max = 0` in `concurrency(...)` lets no saga through, so every saga reaching the step would wait forever; give it at least 1",
            ),
            PolicyKind::RetryBudget => Some(
                "`max = 0` in `retry_budget(...)` allows no retry, so the step's first transient failure would fail it for good; give it at least 1, or write `retry(max_attempts = 1)` for a step that never retries",
            ),
        }
    }
}

/// One policy group as written in `#[step(...)]`.
pub(crate) struct PolicyInput {
    /// The group as written (`cap(...)`), where errors about the whole group point.
    pub(crate) written: TokenStream,
    /// What it counts.
    pub(crate) kind: PolicyKind,
    /// The policy, when every option was readable and the required ones present.
    pub(crate) readable: Option<PolicyModel>,
}

/// A checked policy, ready to expand.
pub(crate) struct PolicyModel {
    /// Where its key (`cap`, ...) was written; the builder call carries it.
    pub(crate) span: Span,
    /// What it counts.
    pub(crate) kind: PolicyKind,
    /// `name = "..."`: neither empty nor containing `:`.
    pub(crate) name: LitStr,
    /// `max = N`: at least 1, but for a cap.
    pub(crate) max: u32,
    /// `per = "..."`: present exactly when the kind has a window.
    pub(crate) per: Option<DurationInput>,
    /// `key = field` or `key_fn = path`: present exactly when the kind is keyed.
    pub(crate) key: Option<PolicyKey>,
}

/// What a keyed policy counts a saga under.
pub(crate) enum PolicyKey {
    /// `key = field`: a field of the input, turned into text with `ToString`.
    Field(Member),
    /// `key_fn = path`: a `fn(&Input) -> String`.
    Function(ExprPath),
}

/// The options of one group while it is read.
#[derive(Default)]
struct Options {
    name: Option<LitStr>,
    max: Option<u32>,
    per: Option<DurationInput>,
    key: Option<PolicyKey>,
    /// Every option written, readable or not: one whose value is wrong is not also missing.
    written: Vec<String>,
    /// An option was unknown, misplaced or unreadable.
    unreadable: bool,
}

/// Reads `kind(...)` (`meta` is its key), adding every problem to `errors`.
pub(crate) fn policy_input(
    meta: &ParseNestedMeta<'_>,
    kind: PolicyKind,
    errors: &mut Errors,
) -> syn::Result<PolicyInput> {
    let group_key = kind.key();
    let path = &meta.path;
    let mut input = PolicyInput {
        written: path.to_token_stream(),
        kind,
        readable: None,
    };
    let Ok(group) = meta.input.fork().parse::<Group>() else {
        errors.push(syn::Error::new_spanned(
            path,
            format!(
                "`{group_key}` takes a list: write e.g. `{}`",
                kind.example()
            ),
        ));
        skip_value(meta)?;
        return Ok(input);
    };
    let empty = group.stream().is_empty();
    input.written.extend([proc_macro2::TokenTree::Group(group)]);

    let mut options = Options::default();
    let place = format!("`{group_key}(...)`");
    if empty {
        // Nothing to read (`parse_nested_meta` refuses an empty list); each option is missing.
        skip_value(meta)?;
    } else {
        meta.parse_nested_meta(|inner| policy_option(&inner, kind, &place, &mut options, errors))?;
    }
    let Options {
        name,
        max,
        per,
        key,
        written,
        mut unreadable,
    } = options;

    let is_written = |key: &str| written.iter().any(|option| option == key);
    let mut missing = |what: String| {
        unreadable = true;
        errors.push(syn::Error::new_spanned(&input.written, what));
    };
    if name.is_none() && !is_written("name") {
        missing(format!(
            "{place} is missing `name`, which every step and saga sharing the {} uses; add e.g. `name = \"{}\"`",
            noun(kind),
            example_name(kind)
        ));
    }
    if max.is_none() && !is_written("max") {
        missing(format!(
            "{place} is missing `max`, its bound; add e.g. `max = 1`"
        ));
    }
    if kind.windowed() && per.is_none() && !is_written("per") {
        missing(format!(
            "{place} is missing `per`, the window it counts in; add e.g. `per = \"24h\"`"
        ));
    }
    if kind.keyed() && key.is_none() && !is_written("key") && !is_written("key_fn") {
        missing(format!(
            "{place} is missing the key it counts under; add `key = field` (a field of the saga's input, e.g. `key = customer`) or `key_fn = path` (a `fn(&Input) -> String`)"
        ));
    }
    if let (false, Some(name), Some(max)) = (unreadable, name, max) {
        input.readable = Some(PolicyModel {
            span: path.span(),
            kind,
            name,
            max,
            per,
            key,
        });
    }
    Ok(input)
}

/// One option inside `kind(...)`, read into `options`.
fn policy_option(
    inner: &ParseNestedMeta<'_>,
    kind: PolicyKind,
    place: &str,
    options: &mut Options,
    errors: &mut Errors,
) -> syn::Result<()> {
    let option = &inner.path;
    let option_text = path_text(option);
    options.written.push(option_text.clone());
    match option_text.as_str() {
        "name" => match name_value(inner, errors)? {
            Some(name) => set_once(&mut options.name, name, option, place, errors),
            None => options.unreadable = true,
        },
        "max" => match (
            integer_value::<u32>(inner, "max", "max = 1", errors)?,
            kind.zero_max(),
        ) {
            (Some(0), Some(why)) => {
                options.unreadable = true;
                errors.push(syn::Error::new_spanned(option, why));
            }
            (Some(max), _) => set_once(&mut options.max, max, option, place, errors),
            (None, _) => options.unreadable = true,
        },
        "per" if kind.windowed() => match duration_value(inner, "per", errors)? {
            Some(per) => set_once(&mut options.per, per, option, place, errors),
            None => options.unreadable = true,
        },
        "key" | "key_fn" if kind.keyed() => {
            let other = if option_text == "key" {
                "key_fn"
            } else {
                "key"
            };
            if options.written.iter().any(|earlier| earlier == other) {
                options.unreadable = true;
                errors.push(syn::Error::new_spanned(
                    option,
                    format!(
                        "{place} has both `key` and `key_fn`; keep one: `key = field` counts under a field of the saga's input, `key_fn = path` under what that function returns"
                    ),
                ));
                skip_value(inner)?;
            } else {
                let key = if option_text == "key" {
                    field_value(inner, errors)?.map(PolicyKey::Field)
                } else {
                    function_path(
                        inner,
                        "key_fn",
                        "a `fn(&Input) -> String`",
                        "key_fn = customer_of",
                        errors,
                    )?
                    .map(PolicyKey::Function)
                };
                match key {
                    Some(key) => set_once(&mut options.key, key, option, place, errors),
                    None => options.unreadable = true,
                }
            }
        }
        "key" | "key_fn" => {
            options.unreadable = true;
            errors.push(syn::Error::new_spanned(
                option,
                format!(
                    "`rate_limit(...)` takes no `{option_text}`: it counts the attempts of every saga that names the integration, whatever their input; remove `{option_text}` (for a limit per customer or cart, use `cap(...)` or `concurrency(...)`)"
                ),
            ));
            skip_value(inner)?;
        }
        "per" => {
            options.unreadable = true;
            errors.push(syn::Error::new_spanned(
                option,
                "`concurrency(...)` takes no `per`: it counts the sagas running now, not uses in a window; remove `per`",
            ));
            skip_value(inner)?;
        }
        _ => {
            options.unreadable = true;
            errors.push(syn::Error::new_spanned(
                option,
                format!(
                    "unknown option `{option_text}` in {place}; expected one of: {}",
                    kind.options()
                ),
            ));
            skip_value(inner)?;
        }
    }
    Ok(())
}

/// What the policy is called in words, for error messages.
fn noun(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Cap => "cap",
        PolicyKind::RateLimit => "rate limit",
        PolicyKind::Concurrency => "concurrency limit",
        PolicyKind::RetryBudget => "retry budget",
    }
}

/// A name fit for an example of the kind.
fn example_name(kind: PolicyKind) -> &'static str {
    match kind {
        PolicyKind::Cap => "email",
        PolicyKind::RateLimit => "partner_api",
        PolicyKind::Concurrency => "cart",
        PolicyKind::RetryBudget => "contact",
    }
}

/// `name = "..."`: a string that is not empty, has no `:` and fits the store; `None` (with an
/// error added) otherwise.
fn name_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = expr
    else {
        errors.push(syn::Error::new_spanned(
            &expr,
            "`name` takes a string, e.g. `name = \"email\"`",
        ));
        return Ok(None);
    };
    let name = lit.value();
    let problem = if name.trim().is_empty() {
        Some("the policy name is empty; name it, e.g. `name = \"email\"`".to_owned())
    } else if name.contains(':') {
        Some(format!(
            "the policy name `{name}` contains `:`, which separates the parts of what a held saga waits for (`policy:<kind>:<name>:<key>`); use a plain name, e.g. `{}`",
            name.replace(':', "_")
        ))
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!(
            "the policy name is {} bytes long and the store keeps at most {MAX_NAME_BYTES}; use a shorter name",
            name.len()
        ))
    } else {
        None
    };
    match problem {
        Some(problem) => {
            errors.at(lit.span(), problem);
            Ok(None)
        }
        None => Ok(Some(lit)),
    }
}

/// `key = field`: a field of the input, by name (`customer`) or position (`0`); `None` (with an
/// error added) otherwise.
fn field_value(meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<Option<Member>> {
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Path(path) if path.attrs.is_empty() && path.qself.is_none() => {
            if let Some(ident) = path.path.get_ident() {
                return Ok(Some(Member::Named(ident.clone())));
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) if lit.suffix().is_empty() => {
            if let Ok(index) = lit.base10_parse::<u32>() {
                return Ok(Some(Member::Unnamed(Index {
                    index,
                    span: lit.span(),
                })));
            }
        }
        _ => {}
    }
    errors.push(syn::Error::new_spanned(
        &expr,
        "`key` takes the name of a field of the saga's input, e.g. `key = customer`; to count under anything else, write `key_fn = path`, naming a `fn(&Input) -> String`",
    ));
    Ok(None)
}

/// The arguments of `policy`'s builder call after the step, e.g. for `StepBuilder::cap`:
/// `"email", 1, Duration::from_secs(86400), |input: &Order| ToString::to_string(&input.customer)`,
/// where `input` is the saga's input type. A field key is read on the field's span, and a key
/// function is coerced to `fn(&Input) -> String` on its path, so that a missing field or a wrong
/// signature is reported on the `#[step(...)]` token.
pub(crate) fn arguments(
    policy: &PolicyModel,
    input: &Type,
    private: &TokenStream,
    functions: &[&Ident],
) -> TokenStream {
    let name = &policy.name;
    let max = Literal::u32_unsuffixed(policy.max);
    let per = policy.per.as_ref().map(|per| {
        let per = duration(per, private);
        quote!(, #per)
    });
    let key = policy.key.as_ref().map(|key| {
        let key = match key {
            PolicyKey::Field(member) => {
                let span = member.span();
                quote_spanned! {span=>
                    |input: &#input| ::std::string::ToString::to_string(&input.#member)
                }
            }
            PolicyKey::Function(path) => {
                let span = path.span();
                let path = referenced(path, functions);
                quote_spanned! {span=>
                    {
                        let key: fn(&#input) -> ::std::string::String = #path;
                        key
                    }
                }
            }
        };
        quote!(, #key)
    });
    quote!(#name, #max #per #key)
}

#[cfg(test)]
mod tests {
    use crate::parse::{self, Errors};
    use crate::validate::{self, SagaModel};

    use super::*;

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
    fn reads_every_kind_in_the_order_written() {
        let model = check(syn::parse_quote! {
            #[saga(name = "outreach", version = 1, input = Contact)]
            #[step(send_email, irreversible,
                   cap(name = "email", key = customer, max = 1, per = "24h"),
                   rate_limit(per = "1s", max = 50, name = "partner_api"),
                   concurrency(name = "cart", key_fn = carts::key, max = 1),
                   retry_budget(name = "contact", key = 0, max = 5, per = "1h"),
                   cap(name = "email_weekly", key = customer, max = 0, per = "168h"))]
            struct Outreach;
        })
        .unwrap_or_else(|errors| panic!("{errors:?}"));
        let policies = &model.steps[0].policies;
        let read: Vec<(PolicyKind, String, u32, Option<u64>, &str)> = policies
            .iter()
            .map(|policy| {
                let key = match &policy.key {
                    None => "none",
                    Some(PolicyKey::Field(Member::Named(_))) => "named field",
                    Some(PolicyKey::Field(Member::Unnamed(_))) => "unnamed field",
                    Some(PolicyKey::Function(_)) => "function",
                };
                (
                    policy.kind,
                    policy.name.value(),
                    policy.max,
                    policy.per.map(|per| per.millis),
                    key,
                )
            })
            .collect();
        assert_eq!(
            read,
            [
                (
                    PolicyKind::Cap,
                    "email".into(),
                    1,
                    Some(86_400_000),
                    "named field"
                ),
                (
                    PolicyKind::RateLimit,
                    "partner_api".into(),
                    50,
                    Some(1_000),
                    "none"
                ),
                (PolicyKind::Concurrency, "cart".into(), 1, None, "function"),
                (
                    PolicyKind::RetryBudget,
                    "contact".into(),
                    5,
                    Some(3_600_000),
                    "unnamed field"
                ),
                (
                    PolicyKind::Cap,
                    "email_weekly".into(),
                    0,
                    Some(604_800_000),
                    "named field"
                ),
            ]
        );
    }

    #[test]
    fn unknown_misplaced_and_missing_options_are_reported() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = Contact)]
                #[step(a, irreversible, cap(name = "email", key = customer, maximum = 1, per = "1h"))]
                #[step(b, irreversible, rate_limit(name = "api", key = customer, max = 5, per = "1s"))]
                #[step(c, irreversible, concurrency(name = "cart", key = cart, max = 1, per = "1h"))]
                #[step(d, irreversible, retry_budget(max = 5))]
                #[step(e, irreversible, cap = 1, concurrency())]
                struct X;
            }),
            [
                "unknown option `maximum` in `cap(...)`; expected one of: name, key, key_fn, max, per",
                "`cap(...)` is missing `max`, its bound; add e.g. `max = 1`",
                "`rate_limit(...)` takes no `key`: it counts the attempts of every saga that names the integration, whatever their input; remove `key` (for a limit per customer or cart, use `cap(...)` or `concurrency(...)`)",
                "`concurrency(...)` takes no `per`: it counts the sagas running now, not uses in a window; remove `per`",
                "`retry_budget(...)` is missing `name`, which every step and saga sharing the retry budget uses; add e.g. `name = \"contact\"`",
                "`retry_budget(...)` is missing `per`, the window it counts in; add e.g. `per = \"24h\"`",
                "`retry_budget(...)` is missing the key it counts under; add `key = field` (a field of the saga's input, e.g. `key = customer`) or `key_fn = path` (a `fn(&Input) -> String`)",
                "`cap` takes a list: write e.g. `cap(name = \"email\", key = customer, max = 1, per = \"24h\")`",
                "`concurrency(...)` is missing `name`, which every step and saga sharing the concurrency limit uses; add e.g. `name = \"cart\"`",
                "`concurrency(...)` is missing `max`, its bound; add e.g. `max = 1`",
                "`concurrency(...)` is missing the key it counts under; add `key = field` (a field of the saga's input, e.g. `key = customer`) or `key_fn = path` (a `fn(&Input) -> String`)",
            ]
        );
    }

    #[test]
    fn bad_values_are_reported_and_not_also_missing() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = Contact)]
                #[step(a, irreversible, rate_limit(name = "", max = 0, per = "0s"))]
                #[step(b, irreversible, concurrency(name = "cart:1", key = input.cart, max = 0))]
                #[step(c, irreversible, retry_budget(name = 5, key_fn = "key", max = 0, per = "1 h"))]
                #[step(d, irreversible, cap(name = "email", key = customer, key_fn = key, max = 1, per = "1h"))]
                struct X;
            }),
            [
                "the policy name is empty; name it, e.g. `name = \"email\"`",
                "`max = 0` in `rate_limit(...)` lets no attempt through, so every saga reaching the step would wait forever; give it at least 1",
                "invalid `per`: `0s` is zero; give it a positive duration, e.g. \"1s\"",
                "the policy name `cart:1` contains `:`, which separates the parts of what a held saga waits for (`policy:<kind>:<name>:<key>`); use a plain name, e.g. `cart_1`",
                "`key` takes the name of a field of the saga's input, e.g. `key = customer`; to count under anything else, write `key_fn = path`, naming a `fn(&Input) -> String`",
                "`max = 0` in `concurrency(...)` lets no saga through, so every saga reaching the step would wait forever; give it at least 1",
                "`name` takes a string, e.g. `name = \"email\"`",
                "`key_fn` takes the path of a `fn(&Input) -> String`, e.g. `key_fn = customer_of`",
                "`max = 0` in `retry_budget(...)` allows no retry, so the step's first transient failure would fail it for good; give it at least 1, or write `retry(max_attempts = 1)` for a step that never retries",
                "invalid `per`: `1 h` contains a space; write a whole number followed by a unit (ms, s, m or h), e.g. \"200ms\", \"10s\" or \"1m\"",
                "`cap(...)` has both `key` and `key_fn`; keep one: `key = field` counts under a field of the saga's input, `key_fn = path` under what that function returns",
            ]
        );
    }

    #[test]
    fn a_repeated_option_is_refused() {
        assert_eq!(
            errors_of(syn::parse_quote! {
                #[saga(name = "x", version = 1, input = Contact)]
                #[step(a, irreversible, cap(name = "a", name = "b", key = customer, key = cart, max = 1, per = "1h"))]
                struct X;
            }),
            [
                "`name` is given twice in `cap(...)`; keep one",
                "`key` is given twice in `cap(...)`; keep one",
            ]
        );
    }

    #[test]
    fn a_long_name_is_refused() {
        let name = "n".repeat(201);
        let input: syn::DeriveInput = syn::parse_quote! {
            #[saga(name = "x", version = 1, input = Contact)]
            #[step(a, irreversible, rate_limit(name = #name, max = 1, per = "1s"))]
            struct X;
        };
        assert_eq!(
            errors_of(input),
            ["the policy name is 201 bytes long and the store keeps at most 200; use a shorter name"]
        );
    }
}
