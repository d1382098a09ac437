//! # saga-macros
//!
//! `#[derive(Saga)]` for the `saga` orchestrator: declare a saga's name, version, input type and
//! ordered steps as attributes, and get the `Saga` implementation a person would write with the
//! builder, checked at compile time. Use it through the facade (`use saga::Saga;`, feature
//! `derive`, on by default) rather than depending on this crate directly.

mod constants;
mod duration;
mod expand;
mod fingerprint;
mod function_paths;
mod parse;
mod policy;
mod validate;
mod wait;

use proc_macro::TokenStream;

/// Implements `Saga` from a declaration: `#[saga(...)]` names the saga, and one `#[step(...)]`
/// per step lists the steps in the order they run.
///
/// The value of the deriving type (a struct, a tuple or unit struct, or an enum) is the one
/// registered with the orchestrator; every step function receives it as `Arc<Self>`, so it is the
/// place for clients of downstream services.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use saga::{Config, MemoryStore, Orchestrator, Saga, SagaStatus, StepContext, StepError};
/// # use saga_macros::Saga; // with the `saga` facade, `use saga::Saga` brings the derive too
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Order { sku: String, cents: u64 }
///
/// #[derive(Saga)]
/// #[saga(name = "checkout", version = 1, input = Order)]
/// #[step(reserve_stock, compensate = release_stock)]
/// #[step(charge_card, compensate = refund, retry(max_attempts = 5, base = "200ms", max_delay = "5s"), timeout = "10s")]
/// #[step(send_receipt, irreversible)]
/// struct Checkout {
///     card_limit_cents: u64,
/// }
///
/// async fn reserve_stock(_: Arc<Checkout>, ctx: StepContext<Order>) -> Result<String, StepError> {
///     Ok(format!("reservation-{}", ctx.input().sku))
/// }
/// async fn release_stock(_: Arc<Checkout>, _: StepContext<Order>, reservation: String) -> Result<(), StepError> {
///     assert!(reservation.starts_with("reservation-"));
///     Ok(())
/// }
/// async fn charge_card(saga: Arc<Checkout>, ctx: StepContext<Order>) -> Result<u64, StepError> {
///     if ctx.input().cents > saga.card_limit_cents {
///         return Err(StepError::permanent("card declined"));
///     }
///     Ok(ctx.input().cents)
/// }
/// async fn refund(_: Arc<Checkout>, _: StepContext<Order>, _charged_cents: u64) -> Result<(), StepError> {
///     Ok(())
/// }
/// async fn send_receipt(_: Arc<Checkout>, ctx: StepContext<Order>) -> Result<(), StepError> {
///     let charged: u64 = ctx.output(Checkout::CHARGE_CARD)?; // the output of an earlier step
///     assert_eq!(charged, ctx.input().cents);
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), saga::Error> {
/// let definition = Checkout::definition();
/// assert_eq!(definition.name().as_str(), "checkout");
/// assert_eq!(definition.specs()[1].timeout, Duration::from_secs(10));
///
/// let orchestrator = Orchestrator::new(Arc::new(MemoryStore::new()), Config::default());
/// orchestrator.register(Checkout { card_limit_cents: 10_000 })?;
/// orchestrator.run();
/// let ok = orchestrator.start::<Checkout>(&Order { sku: "mug".into(), cents: 1_200 }).await?;
/// let declined = orchestrator.start::<Checkout>(&Order { sku: "car".into(), cents: 90_000 }).await?;
/// let wait = Duration::from_secs(10);
/// assert_eq!(orchestrator.wait(ok, wait).await?.status, SagaStatus::Completed);
/// assert_eq!(orchestrator.wait(declined, wait).await?.status, SagaStatus::Compensated);
/// orchestrator.shutdown().await;
/// # Ok(())
/// # }
/// ```
///
/// # `#[saga(...)]`
///
/// | key | required | meaning |
/// |---|---|---|
/// | `name = "checkout"` | yes | the saga type name, stored with every saga |
/// | `version = 1` | yes | the definition version; bump it when the steps change (see below) |
/// | `input = Order` | yes | the input type: `Serialize + DeserializeOwned + Send + Sync + 'static` |
/// | `crate = path` | no | the path of the `saga` crate if it was renamed, e.g. `crate = ::my_saga` (default `::saga`) |
/// | `deadline = "2h"` | no | how long the saga may run, from its start (`SagaDefinition::deadline`) |
/// | `dedup_window = "5m"` | no | how long a start key dedups starts (`SagaDefinition::dedup_window`) |
///
/// # `#[step(...)]`
///
/// The first item is the step name, an identifier unique in the saga. The others:
///
/// | option | meaning |
/// |---|---|
/// | `action = path` | the action; default: the function named like the step |
/// | `compensate = path` | the compensation, which undoes the action |
/// | `irreversible` | the step has no compensation, on purpose |
/// | `transactional` | the step runs in the store's transaction, committed with its completion (see `StepBuilder::transactional`) |
/// | `retry(max_attempts = 5, base = "200ms", max_delay = "5s")` | retry policy of the action; give at least one key, the others keep their defaults |
/// | `timeout = "10s"` | timeout of one attempt of the action |
/// | `compensation_retry(...)` | retry policy of the compensation, same keys as `retry` |
/// | `compensation_timeout = "10s"` | timeout of one attempt of the compensation |
/// | `pivot` | the step is the saga's point of no return (`StepBuilder::pivot`); it has no `compensate` |
/// | `cap(...)`, `rate_limit(...)`, `concurrency(...)`, `retry_budget(...)` | policies checked before each attempt of the action (see [Step policies](#step-policies)) |
///
/// Every step that calls an action has exactly one of `compensate` and `irreversible`, so a
/// forgotten compensation is a compile error rather than a silent gap; an `irreversible` step
/// takes no `compensation_*` options. Unset options keep the builder's defaults
/// (`RetryPolicy::default()`: 3 attempts, 100 ms base, 30 s cap; timeouts of 30 s).
/// `max_attempts` counts the first attempt and is at least 1. Durations are string literals of a
/// whole number and a unit, `ms`, `s`, `m` or `h`, checked at compile time.
///
/// The functions have these shapes, where `S` is the deriving type, `I` the input type and `O`
/// the action's output (`Serialize + DeserializeOwned + Send + 'static`; stored when the step
/// completes, handed to its compensation and readable by later steps through
/// `StepContext::output`):
///
/// ```text
/// async fn action(saga: Arc<S>, ctx: StepContext<I>) -> Result<O, StepError>
/// async fn compensation(saga: Arc<S>, ctx: StepContext<I>, output: O) -> Result<(), StepError>
/// ```
///
/// # Waiting steps
///
/// A step with one of these options waits instead of calling an action; it holds no worker
/// while it waits:
///
/// | option | the step | its output |
/// |---|---|---|
/// | `sleep = "24h"` | sleeps this long from when the saga reaches it (`Step::sleep`) | its wake time |
/// | `sleep_until = path` | sleeps until the time `path` computes then (`Step::sleep_until`) | its wake time |
/// | `await_signal = Type` | waits for the signal `Type`, which implements `Signal` (`Step::signal`) | the signal's payload |
/// | `approval` | waits for a person's decision (`Step::approval`) | the `Approval` |
///
/// `timeout = "30m"` bounds the wait of an `await_signal` or `approval` step: at the timeout it
/// fails and the saga compensates, unless an `await_signal` step has `default = path`, a
/// `fn() -> Type` whose value is then its output. A sleep takes no `timeout` (its length is its
/// duration). A waiting step needs neither `compensate` nor `irreversible` and takes none of an
/// action's options (`action`, `probe`, `retry`, `transactional`); an `await_signal` step may
/// have `compensate = path`, whose compensation receives the signal's payload. It may be the
/// `pivot`. The functions have these shapes:
///
/// ```text
/// fn wake_time(saga: &S, ctx: &StepContext<I>) -> Result<Timestamp, StepError>   // sleep_until
/// fn default_payload() -> Type                                                     // default
/// async fn compensation(saga: Arc<S>, ctx: StepContext<I>, payload: Type) -> Result<(), StepError>
/// ```
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use saga::{Saga, Signal, StepContext, StepError, StepKind, Timestamp};
/// # use saga_macros::Saga;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct PaymentWebhook { paid: bool }
/// impl Signal for PaymentWebhook {
///     const NAME: &'static str = "payment_webhook";
/// }
///
/// #[derive(Saga)]
/// #[saga(name = "promotion", version = 1, input = u64, deadline = "72h")]
/// #[step(remind_later, sleep = "24h")]
/// #[step(payment_confirmed, await_signal = PaymentWebhook, timeout = "30m", default = unpaid)]
/// #[step(approve_budget, approval, timeout = "2h")]
/// #[step(publish, irreversible, pivot)]
/// struct Promotion;
///
/// fn unpaid() -> PaymentWebhook {
///     PaymentWebhook { paid: false }
/// }
/// async fn publish(_: Arc<Promotion>, ctx: StepContext<u64>) -> Result<(), StepError> {
///     let _woke_at: Timestamp = ctx.output(Promotion::REMIND_LATER)?;
///     let _payment: PaymentWebhook = ctx.output(Promotion::PAYMENT_CONFIRMED)?;
///     Ok(())
/// }
///
/// let definition = Promotion::definition();
/// assert_eq!(definition.deadline_after_start(), Some(Duration::from_secs(72 * 3_600)));
/// let specs = definition.specs();
/// assert_eq!(specs[0].kind, StepKind::Sleep { duration: Some(Duration::from_secs(86_400)) });
/// assert!(specs[3].pivot);
/// ```
///
/// # Step policies
///
/// A step that calls an action may declare policies, which the worker checks against the store
/// before each attempt of the action, across every saga and process on the store (the builder
/// calls in the table say what each counts). Write one group per policy, several per step if
/// need be, in any order; a step may have several caps.
///
/// | group | builder call | past the bound |
/// |---|---|---|
/// | `cap(name = "email", key = customer, max = 1, per = "24h")` | `StepBuilder::cap` | the step is skipped (`StepStatus::Skipped`) and the saga goes on |
/// | `rate_limit(name = "partner_api", max = 50, per = "1s")` | `StepBuilder::rate_limit` | the attempt waits, holding no worker |
/// | `concurrency(name = "cart", key = cart_id, max = 1)` | `StepBuilder::concurrency` | the saga waits for a running one to end |
/// | `retry_budget(name = "contact", key = customer, max = 5, per = "1h")` | `StepBuilder::retry_budget` | the step fails for good and the saga compensates |
///
/// `name` is shared by every step and saga type that declares it: a string, not empty and
/// without `:`. `max` is the bound, at least 1 (a cap may be 0: its step is always skipped).
/// `per` is the window, a duration string; `concurrency` has none, since it counts the sagas
/// running now. A cap, a concurrency limit and a retry budget count per key of the input, given
/// as exactly one of `key = field`, a field of the input type whose value is turned into text
/// with `ToString`, and `key_fn = path`, a `fn(&Input) -> String`. A rate limit counts per
/// integration, so it takes neither. A waiting step calls nothing and takes no policy.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use saga::{Policy, PolicyKind, Saga, StepContext, StepError};
/// # use saga_macros::Saga;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Cart { customer: String, cart_id: u64 }
///
/// fn contact_of(cart: &Cart) -> String {
///     cart.customer.to_lowercase()
/// }
///
/// #[derive(Saga)]
/// #[saga(name = "cart_recovery", version = 1, input = Cart)]
/// #[step(hold_cart, irreversible, concurrency(name = "cart", key = cart_id, max = 1))]
/// #[step(send_email, irreversible,
///        cap(name = "email", key = customer, max = 1, per = "24h"),
///        rate_limit(name = "partner_api", max = 50, per = "1s"),
///        retry_budget(name = "contact", key_fn = contact_of, max = 5, per = "1h"))]
/// struct CartRecovery;
///
/// async fn hold_cart(_: Arc<CartRecovery>, _: StepContext<Cart>) -> Result<(), StepError> {
///     Ok(())
/// }
/// async fn send_email(_: Arc<CartRecovery>, _: StepContext<Cart>) -> Result<(), StepError> {
///     Ok(())
/// }
///
/// let specs = CartRecovery::definition().specs();
/// assert_eq!(
///     specs[1].policies[0],
///     Policy { kind: PolicyKind::Cap, name: "email".into(), max: 1, per: Duration::from_secs(86_400) },
/// );
/// ```
///
/// Paths may name functions in other modules (`payments::refund`), associated functions
/// (`Self::refund`) or generic functions (`post::<C>`). Generic types work: the impl carries the
/// type's generics and where clause.
///
/// # Reading an earlier step's output
///
/// The derive adds one associated constant per step to the deriving type, holding the step's
/// name: the name in upper case, without `r#` (`reserve_stock` → `Checkout::RESERVE_STOCK`), with
/// the type's visibility. Pass it to `StepContext::output`, which decodes the output of an
/// earlier, completed step:
///
/// ```text
/// let reservation: String = ctx.output(Checkout::RESERVE_STOCK)?;
/// ```
///
/// A misspelt constant does not compile, and the compiler suggests the closest one; a misspelt
/// string, `ctx.output("reserve_stok")`, which still works, compiles and fails the step at run
/// time. The type `T` of `ctx.output::<T>` is checked when the step runs, not at compile time:
/// it must decode what the earlier step's action returned. For a generic type, name the
/// parameters: `Ledger::<C>::POST`. Two step names that differ only in case would share a
/// constant, and are refused.
///
/// # Versions and the fingerprint
///
/// The derive computes a fingerprint of the step graph at compile time: the saga name, the input
/// type as written, and per step its name, order, whether it is compensable and its action's path
/// as written. Each saga records the fingerprint it started with; a saga whose definition changed
/// without a version bump is parked with a readable reason rather than run against other steps.
/// Read it with `Checkout::definition().fingerprint()`. Retry policies, step policies (`cap`,
/// `rate_limit`, `concurrency`, `retry_budget`) and the timeouts of actions are not part of it:
/// changing them is safe for sagas in flight. Waiting steps, pivots
/// and a deadline are, where declared: what a step waits for (a sleep's length, the path of
/// `sleep_until`, the signal type as written, whether it has a `default`), the `timeout` of its
/// wait, the `pivot` mark and the saga's `deadline`. A saga that declares none of them keeps the
/// fingerprint it had before they existed.
///
/// # Errors
///
/// Every mistake in a declaration is reported in one build, on the offending token, with how to
/// fix it: a missing `#[saga(...)]` key, an unknown option, an invalid duration, `max_attempts =
/// 0`, a saga with no steps, two steps with one name, a step with both or neither of `compensate`
/// and `irreversible`, a waiting step with two wait kinds or with an option it does not take
/// (an action's options, `compensate` on a sleep or an approval, `timeout` on a sleep),
/// `default` without `await_signal`, a `pivot` with `compensate`, a policy with an unknown or a
/// missing option, `max = 0` (but in a cap), a name that is empty or contains `:`, both `key`
/// and `key_fn`, or on a waiting step. Those are then the only errors: the derive still implements `Saga` (with
/// no steps) and the constants of the steps it could read, so code using the type does not add
/// "no function `definition` found" and the like.
///
/// Mistakes in the step functions are reported by the compiler on the function's path in
/// `#[step(...)]`: a function that does not exist ("cannot find value"), one with the wrong
/// signature, including one written for another saga type (expected `fn(Arc<Checkout>, ...)`,
/// found `fn(Arc<Other>, ...)`), and an action whose output does not implement `Serialize` or
/// `DeserializeOwned`. Likewise a `sleep_until` or `default` function with the wrong signature,
/// and an `await_signal` type that does not implement `Signal`, are reported on the token.
#[proc_macro_derive(Saga, attributes(saga, step, group))]
pub fn derive_saga(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand::derive(&input).into()
}
