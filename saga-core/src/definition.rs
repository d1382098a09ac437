//! Saga definitions: the ordered steps of a saga type, each with its action, its compensation
//! (or an explicit `irreversible` mark), its retry policies and timeouts.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::context::StepContext;
use crate::error::{Error, Result};
use crate::id::{SagaType, StepName};
use crate::policy::{Policy, PolicyKind};
use crate::retry::RetryPolicy;
use crate::saga::Saga;
use crate::step::StepError;
use crate::wait::{Approval, Signal, StepKind};

/// Why a policy declaration cannot be used, in words that say how to fix it.
fn check_policy(step: &str, kind: &StepKind, policy: &Policy) -> std::result::Result<(), String> {
    let what = policy.describe();
    if kind.waits() {
        return Err(format!(
            "step `{step}` waits and calls nothing, so {what} has nothing to count; declare it on the step that calls"
        ));
    }
    if policy.name.trim().is_empty() || policy.name.contains(':') || policy.name.len() > 200 {
        return Err(format!(
            "step `{step}`: the policy name `{}` is empty, over 200 bytes or contains `:`; use a plain name like `email`",
            policy.name
        ));
    }
    if policy.kind != PolicyKind::Cap && policy.max == 0 {
        return Err(format!(
            "step `{step}`: {what} lets nothing through and would hold sagas forever; give it a max of at least 1"
        ));
    }
    if policy.kind != PolicyKind::Concurrency && policy.per.is_zero() {
        return Err(format!(
            "step `{step}`: {what} has a zero window; give it a positive duration"
        ));
    }
    Ok(())
}

/// Timeout of a step phase unless set: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type ActionFn<S> = Arc<
    dyn Fn(Arc<S>, StepContext<<S as Saga>::Input>) -> BoxFuture<'static, Result<Value, StepError>>
        + Send
        + Sync,
>;

pub(crate) type ProbeFn<S> = Arc<
    dyn Fn(
            Arc<S>,
            StepContext<<S as Saga>::Input>,
        ) -> BoxFuture<'static, std::result::Result<Option<Value>, StepError>>
        + Send
        + Sync,
>;

pub(crate) type WakeFn<S> = Arc<
    dyn Fn(&S, &StepContext<<S as Saga>::Input>) -> std::result::Result<Timestamp, StepError>
        + Send
        + Sync,
>;

/// The input of a child step's child saga, from the parent's input and earlier outputs.
pub(crate) type ChildInputFn<S> = Arc<
    dyn Fn(&S, &StepContext<<S as Saga>::Input>) -> std::result::Result<Value, StepError>
        + Send
        + Sync,
>;

thread_local! {
    /// The child saga types whose definition is being read for their name, innermost last.
    static NAMING: std::cell::RefCell<Vec<std::any::TypeId>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The registered name of child saga type `C`, read from its definition. A definition that
/// starts a child of its own type (directly, or through other types) is not read again while
/// its name is being read: the step inside gets the Rust type's name, and that definition is
/// only read for its name, which does not depend on it.
fn child_type_name<C: Saga>() -> SagaType {
    let id = std::any::TypeId::of::<C>();
    let reading = NAMING.with(|naming| naming.borrow().contains(&id));
    if reading {
        return SagaType::new(std::any::type_name::<C>());
    }
    NAMING.with(|naming| naming.borrow_mut().push(id));
    let name = C::definition().name().clone();
    NAMING.with(|naming| {
        naming.borrow_mut().pop();
    });
    name
}

/// Whether a signal payload decodes as a step's signal type (why not, when it does not).
pub(crate) type DecodeFn = fn(&Value) -> std::result::Result<(), String>;

pub(crate) type CompensationFn<S> = Arc<
    dyn Fn(
            Arc<S>,
            StepContext<<S as Saga>::Input>,
            Value,
        ) -> BoxFuture<'static, std::result::Result<(), StepError>>
        + Send
        + Sync,
>;

/// The static description of one step: what workers need to plan, with no code attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    /// Its name, unique in the saga.
    pub name: StepName,
    /// Whether it has a compensation (`false`: declared irreversible).
    pub compensable: bool,
    /// Retry policy of its action.
    pub retry: RetryPolicy,
    /// Timeout of one attempt of its action.
    pub timeout: Duration,
    /// Retry policy of its compensation.
    pub compensation_retry: RetryPolicy,
    /// Timeout of one attempt of its compensation.
    pub compensation_timeout: Duration,
    /// Whether its functions run inside a store transaction that also records their completion
    /// (see [`StepBuilder::transactional`]).
    pub transactional: bool,
    /// Whether the step declares a probe ([`StepBuilder::probe`]) that tells whether an attempt
    /// whose outcome is unknown took effect.
    pub probe: bool,
    /// Whether it calls its action or waits (a timer, a signal, an approval).
    pub kind: StepKind,
    /// Whether it is the saga's point of no return ([`StepBuilder::pivot`]).
    pub pivot: bool,
    /// The policies checked before each attempt of its action begins, in the order declared
    /// ([`StepBuilder::cap`], [`StepBuilder::rate_limit`], [`StepBuilder::concurrency`],
    /// [`StepBuilder::retry_budget`]).
    pub policies: Vec<Policy>,
    /// The parallel group the step belongs to, if any ([`SagaDefinition::parallel`]): the
    /// consecutive steps of one group run concurrently.
    pub group: Option<ParallelGroup>,
}

/// A parallel group: consecutive steps that run concurrently within one saga, at most `limit`
/// at a time, each with its own key, retries and timeout. The group completes when all its
/// steps complete; when one fails for good, none begins anew, the attempts in flight finish
/// (or time out), a step whose outcome is unknown is settled (its probe, or its next attempt
/// with the same key, or a person), and every step of the group whose action completed is
/// compensated, concurrently, before the steps before the group are compensated in reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParallelGroup {
    /// The group's name, unique in the saga.
    pub name: String,
    /// At most this many of its steps run at once.
    pub limit: u32,
}

/// One step of a typed saga definition: built by [`Step::new`], finished by
/// [`StepBuilder::compensate`] or [`StepBuilder::irreversible`].
pub struct Step<S: Saga> {
    spec: StepSpec,
    irreversible: bool,
    action: ActionFn<S>,
    compensation: Option<CompensationFn<S>>,
    probe: Option<ProbeFn<S>>,
    /// A sleep's end, computed (`Step::sleep_until`).
    wake: Option<WakeFn<S>>,
    /// Whether a signal payload decodes as the step's signal type.
    decodes: Option<DecodeFn>,
    /// A child step's child type and input (`Step::child`).
    child: Option<(std::any::TypeId, ChildInputFn<S>)>,
    /// Why the declaration cannot be used (reported by `validate`), e.g. a default output
    /// that does not serialize.
    unusable: Option<String>,
    /// The key function of each policy in `spec.policies` (`None`: a rate limit, keyed by its
    /// name alone).
    policy_keys: Vec<Option<KeyFn<S>>>,
}

/// The key (entity) a policy counts a saga under, from its input: a customer, a cart.
pub(crate) type KeyFn<S> = Arc<dyn Fn(&<S as Saga>::Input) -> String + Send + Sync>;

/// A step while it is being declared, typed by its output `O` so that its compensation receives
/// that output.
pub struct StepBuilder<S: Saga, O> {
    step: Step<S>,
    _output: std::marker::PhantomData<fn() -> O>,
}

impl<S: Saga> Step<S> {
    /// Declares a step named `name` whose action is `action`. Its output (any serde type) is
    /// stored when it completes, passed to later steps (see [`StepContext::output`]) and to its own
    /// compensation.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use saga_core::{Saga, SagaDefinition, Step, StepContext, StepError};
    /// struct Greeter;
    /// impl Saga for Greeter {
    ///     type Input = String;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("greet", 1).step(
    ///             Step::new("say_hello", |_: Arc<Greeter>, ctx: StepContext<String>| async move {
    ///                 Ok::<_, StepError>(format!("hello {}", ctx.input()))
    ///             })
    ///             .irreversible(),
    ///         )
    ///     }
    /// }
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new<O, F, Fut>(name: &str, action: F) -> StepBuilder<S, O>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(Arc<S>, StepContext<S::Input>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, StepError>> + Send + 'static,
    {
        let step_name = name.to_owned();
        let action: ActionFn<S> = Arc::new(move |saga, ctx| {
            let future = action(saga, ctx);
            let step_name = step_name.clone();
            Box::pin(async move {
                let output = future.await?;
                // The step returned `Ok`: its effect happened, but cannot be recorded.
                serde_json::to_value(&output).map_err(|err| {
                    StepError::unknown(format!(
                        "output of step `{step_name}` does not serialize ({err}), so it cannot be recorded though the step took effect"
                    ))
                })
            })
        });
        StepBuilder {
            step: Step {
                spec: StepSpec {
                    name: StepName::new(name),
                    compensable: false,
                    retry: RetryPolicy::default(),
                    timeout: DEFAULT_TIMEOUT,
                    compensation_retry: RetryPolicy::default(),
                    compensation_timeout: DEFAULT_TIMEOUT,
                    transactional: false,
                    probe: false,
                    kind: StepKind::Call,
                    pivot: false,
                    policies: Vec::new(),
                    group: None,
                },
                irreversible: false,
                action,
                compensation: None,
                probe: None,
                wake: None,
                decodes: None,
                child: None,
                unusable: None,
                policy_keys: Vec::new(),
            },
            _output: std::marker::PhantomData,
        }
    }

    /// A waiting step of `kind`: it calls no action.
    fn waiting<O>(name: &str, kind: StepKind) -> StepBuilder<S, O>
    where
        O: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut builder = Step::new(name, |_: Arc<S>, ctx: StepContext<S::Input>| async move {
            Err::<O, _>(StepError::permanent(format!(
                "step `{}` waits; it has no action to call",
                ctx.step()
            )))
        });
        builder.step.spec.kind = kind;
        builder
    }

    /// A durable timer: the step sleeps for `duration` from when the saga reaches it, holding no
    /// worker, lease or connection, and completes with its wake time (on the store's clock). A
    /// restart mid-sleep changes nothing: the wake time is recorded when the sleep begins.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use saga_core::{Saga, SagaDefinition, Step};
    /// # struct Reminder;
    /// # impl Saga for Reminder {
    /// #     type Input = String;
    /// #     fn definition() -> SagaDefinition<Self> {
    /// SagaDefinition::new("reminder", 1).step(Step::sleep("wait_a_day", Duration::from_secs(86_400)))
    /// #     }
    /// # }
    /// ```
    pub fn sleep(name: &str, duration: Duration) -> StepBuilder<S, Timestamp> {
        Self::waiting(
            name,
            StepKind::Sleep {
                duration: Some(duration),
            },
        )
    }

    /// A durable timer until a time computed from the input and earlier outputs when the saga
    /// reaches the step (`Err` fails the step permanently, as a known failure). The computed
    /// time is recorded then, so a restart mid-sleep does not compute it again.
    pub fn sleep_until<F>(name: &str, wake: F) -> StepBuilder<S, Timestamp>
    where
        F: Fn(&S, &StepContext<S::Input>) -> std::result::Result<Timestamp, StepError>
            + Send
            + Sync
            + 'static,
    {
        let mut builder = Self::waiting(name, StepKind::Sleep { duration: None });
        builder.step.wake = Some(Arc::new(wake));
        builder
    }

    /// A step that waits for the signal `T` (sent with
    /// [`Orchestrator::signal`](crate::Orchestrator::signal)) and completes with its payload as
    /// its output. A signal sent before the saga reaches the step is kept and consumed when it
    /// gets there. Bound the wait with [`StepBuilder::timeout`]; at the timeout the step fails
    /// permanently (the saga compensates) unless [`StepBuilder::or_default`] gives an output.
    pub fn signal<T: Signal>(name: &str) -> StepBuilder<S, T> {
        let mut builder = Self::waiting(
            name,
            StepKind::Signal {
                name: T::NAME.to_owned(),
                timeout: None,
                default: None,
            },
        );
        builder.step.decodes = Some(|value| {
            serde_json::from_value::<T>(value.clone())
                .map(drop)
                .map_err(|err| err.to_string())
        });
        builder
    }

    /// A step that waits for a person's decision ([`Admin::approve`](crate::Admin::approve) or
    /// [`Admin::reject`](crate::Admin::reject), by someone the approval policy allows). Approved,
    /// it completes with the [`Approval`] (who and why); rejected, or undecided at its
    /// [`StepBuilder::timeout`], it fails permanently and the saga compensates.
    pub fn approval(name: &str) -> StepBuilder<S, Approval> {
        Self::waiting(name, StepKind::Approval { timeout: None })
    }

    /// A step that starts a child saga of type `C` — with the input `input` computes from the
    /// saga's input and earlier outputs (`Err` fails the step permanently, with no child
    /// started) — and waits for its end, holding no worker. The child is started in the same
    /// write that records the step `in_progress`, with a start key derived from the step's own
    /// key ([`child_key`](crate::child::child_key)), so a step run again never starts a second
    /// child. `C` must be registered with the orchestrator that runs this saga.
    ///
    /// The child's end decides the step: completed, the step completes with a
    /// [`ChildOutput`](crate::ChildOutput) (the child's step outputs); compensated or cancelled,
    /// the step fails for good and this saga compensates. While the child runs, compensates or
    /// waits for a person, this saga waits. Compensating the step compensates the child (a
    /// completed child undoes its steps in reverse); a cancel or a deadline while the child runs
    /// cancels it, and this saga compensates once the child ended. The step takes no
    /// compensation, probe, `.irreversible()` or `.pivot()` of its own.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use saga_core::{ChildOutput, Saga, SagaDefinition, Step, StepContext, StepError};
    /// struct Shipment;
    /// impl Saga for Shipment {
    ///     type Input = String;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("shipment", 1).step(
    ///             Step::new("label", |_: Arc<Shipment>, ctx: StepContext<String>| async move {
    ///                 Ok::<_, StepError>(format!("label for {}", ctx.input()))
    ///             })
    ///             .irreversible(),
    ///         )
    ///     }
    /// }
    /// struct Order;
    /// impl Saga for Order {
    ///     type Input = String;
    ///     fn definition() -> SagaDefinition<Self> {
    ///         SagaDefinition::new("order", 1)
    ///             .step(Step::<Order>::child::<Shipment, _>("ship", |_, ctx| {
    ///                 Ok(ctx.input().clone())
    ///             }))
    ///     }
    /// }
    /// ```
    pub fn child<C, F>(name: &str, input: F) -> StepBuilder<S, crate::ChildOutput>
    where
        C: Saga,
        F: Fn(&S, &StepContext<S::Input>) -> std::result::Result<C::Input, StepError>
            + Send
            + Sync
            + 'static,
    {
        let saga_type = child_type_name::<C>();
        let mut builder = Self::waiting(name, StepKind::Child { saga_type });
        builder.step.spec.compensable = true;
        let input: ChildInputFn<S> = Arc::new(move |saga, ctx| {
            let input = input(saga, ctx)?;
            serde_json::to_value(&input).map_err(|err| {
                StepError::permanent(format!(
                    "the child's input does not serialize ({err}); no child was started"
                ))
            })
        });
        builder.step.child = Some((std::any::TypeId::of::<C>(), input));
        builder
    }

    /// The static description of this step.
    pub fn spec(&self) -> &StepSpec {
        &self.spec
    }
}

impl<S: Saga, O> StepBuilder<S, O>
where
    O: Serialize + DeserializeOwned + Send + 'static,
{
    /// Sets the compensation: it undoes the action and receives the action's output.
    pub fn compensate<F, Fut>(mut self, compensation: F) -> Self
    where
        F: Fn(Arc<S>, StepContext<S::Input>, O) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), StepError>> + Send + 'static,
    {
        let step_name = self.step.spec.name.clone();
        self.step.compensation =
            Some(Arc::new(
                move |saga, ctx, output: Value| match serde_json::from_value::<O>(output) {
                    Ok(output) => Box::pin(compensation(saga, ctx, output)),
                    Err(err) => {
                        let message = format!(
                        "stored output of step `{step_name}` does not match its output type: {err}"
                    );
                        Box::pin(async move { Err(StepError::permanent(message)) })
                    }
                },
            ));
        self.step.spec.compensable = true;
        self
    }

    /// Declares the step irreversible: it has no compensation, on purpose. A step with neither a
    /// compensation nor this mark is refused at registration, so a forgotten compensation is
    /// never silent.
    pub fn irreversible(mut self) -> Self {
        self.step.irreversible = true;
        self
    }

    /// Declares the step's probe (check before acting again): called with the action's context
    /// and idempotency key when an attempt's outcome is unknown (it timed out, its worker died,
    /// its answer was lost, it returned [`StepError::unknown`]), it answers `Some(output)` when
    /// the effect happened (the step is recorded completed with that output, and compensated like
    /// any other) or `None` when it did not (the step is retried or fails as a known failure). A
    /// probe that errors is retried per the step's retry policy; when it still cannot tell, the
    /// saga waits for a person with an `unknown_outcome` item. Without a probe, an unknown
    /// outcome is retried with the same key while attempts are left, then escalated.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use saga_core::{Saga, SagaDefinition, Step, StepContext, StepError};
    /// # struct Payments;
    /// # impl Saga for Payments {
    /// #     type Input = u64;
    /// #     fn definition() -> SagaDefinition<Self> {
    /// #         SagaDefinition::new("payments", 1).step(
    /// Step::new("charge", |_: Arc<Payments>, ctx: StepContext<u64>| async move {
    ///     Ok::<_, StepError>(format!("charge-{}", ctx.key()))
    /// })
    /// .compensate(|_, _, _charge: String| async { Ok(()) })
    /// // Ask the provider for a charge made with this key.
    /// .probe(|_: Arc<Payments>, ctx: StepContext<u64>| async move {
    ///     Ok::<_, StepError>(Some(format!("charge-{}", ctx.key())))
    /// })
    /// #         )
    /// #     }
    /// # }
    /// ```
    pub fn probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn(Arc<S>, StepContext<S::Input>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Option<O>, StepError>> + Send + 'static,
    {
        let step_name = self.step.spec.name.clone();
        self.step.probe = Some(Arc::new(move |saga, ctx| {
            let future = probe(saga, ctx);
            let step_name = step_name.clone();
            Box::pin(async move {
                match future.await? {
                    Some(output) => serde_json::to_value(&output).map(Some).map_err(|err| {
                        StepError::unknown(format!(
                            "the probe of step `{step_name}` found an output that does not serialize: {err}"
                        ))
                    }),
                    None => Ok(None),
                }
            })
        }));
        self.step.spec.probe = true;
        self
    }

    /// Runs the step's action and compensation inside a store transaction: the step reaches it
    /// through its context (with Postgres, `saga_store::pg_transaction(&ctx)`), makes its own
    /// writes in it, and the worker commits those writes together with the step's `completed`
    /// record — both or neither. A failed or interrupted attempt rolls them back, so effects
    /// local to the database happen exactly once. On a store without such transactions the
    /// attempt fails permanently with a message saying so.
    pub fn transactional(mut self) -> Self {
        self.step.spec.transactional = true;
        self
    }

    /// Sets the retry policy of the action.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.step.spec.retry = policy;
        self
    }

    /// Sets the timeout of one attempt of the action; for a step waiting for a signal or an
    /// approval, how long it waits at most.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        match &mut self.step.spec.kind {
            StepKind::Signal { timeout: limit, .. } | StepKind::Approval { timeout: limit } => {
                *limit = Some(timeout);
            }
            StepKind::Call | StepKind::Sleep { .. } | StepKind::Child { .. } => {
                self.step.spec.timeout = timeout;
            }
        }
        self
    }

    /// The output a signal step records when its wait times out, instead of failing.
    pub fn or_default(mut self, output: O) -> Self {
        let name = self.step.spec.name.clone();
        match (&mut self.step.spec.kind, serde_json::to_value(&output)) {
            (StepKind::Signal { default, .. }, Ok(value)) => *default = Some(value),
            (StepKind::Signal { .. }, Err(err)) => {
                self.step.unusable = Some(format!(
                    "the default output of step `{name}` does not serialize ({err}); give one that does"
                ));
            }
            _ => {
                self.step.unusable = Some(format!(
                    "step `{name}` has a default output but waits for no signal; a default is what a signal step records when its wait times out"
                ));
            }
        }
        self
    }

    /// Makes the step the saga's point of no return: once it completed, a later failure never
    /// compensates it or the steps before it. The steps after it retry forward within their
    /// policy and, when they give up, the saga waits for a person (a `past_pivot` item) instead
    /// of compensating; a cancel or a deadline past it does the same. A pivot step has no
    /// compensation (declare it `.irreversible()`).
    pub fn pivot(mut self) -> Self {
        self.step.spec.pivot = true;
        self
    }

    /// Puts the step in the parallel group `name` (at most `limit` of its steps at once): what
    /// [`SagaDefinition::parallel`] does to each of its steps, and what `#[derive(Saga)]` writes
    /// for `group = name`. The group's steps must be consecutive and give the same limit.
    pub fn group(mut self, name: &str, limit: u32) -> Self {
        self.step.spec.group = Some(ParallelGroup {
            name: name.to_owned(),
            limit,
        });
        self
    }

    fn with_policy(
        mut self,
        kind: PolicyKind,
        name: &str,
        max: u32,
        per: Duration,
        key: Option<KeyFn<S>>,
    ) -> Self {
        self.step.spec.policies.push(Policy {
            kind,
            name: name.to_owned(),
            max,
            per,
        });
        self.step.policy_keys.push(key);
        self
    }

    /// A frequency cap: at most `max` effects of the cap `name` per entity (the `key` of the
    /// saga's input: a customer, a cart) in any window of `per`, across every saga, step and
    /// process on the store. Checked and counted before the action's first attempt; once the cap
    /// is reached the step is **skipped**: recorded as a no-op with the reason (in the history,
    /// `saga show`, and the `saga_policy_skips_total` metric), never compensated, and the saga
    /// goes on with its next step. A step counts once, however many attempts it takes.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use saga_core::{Saga, SagaDefinition, Step, StepContext, StepError};
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Cart { customer: String }
    /// # struct Recovery;
    /// # impl Saga for Recovery {
    /// #     type Input = Cart;
    /// #     fn definition() -> SagaDefinition<Self> {
    /// #         SagaDefinition::new("recovery", 1).step(
    /// Step::new("send_email", |_: Arc<Recovery>, _ctx: StepContext<Cart>| async {
    ///     Ok::<_, StepError>(())
    /// })
    /// .irreversible()
    /// // One email per customer per day, whatever else is running.
    /// .cap("email", 1, Duration::from_secs(86_400), |cart: &Cart| cart.customer.clone())
    /// #         )
    /// #     }
    /// # }
    /// ```
    pub fn cap<K>(self, name: &str, max: u32, per: Duration, key: K) -> Self
    where
        K: Fn(&S::Input) -> String + Send + Sync + 'static,
    {
        self.with_policy(PolicyKind::Cap, name, max, per, Some(Arc::new(key)))
    }

    /// A rate limit on the integration `name` (a partner's API): at most `max` attempts in any
    /// window of `per`, shared by every step, saga type and process that names it. An attempt
    /// over the limit waits (the saga gives its worker back) without spending an attempt. When a
    /// step of the integration returns [`StepError::throttled`], the whole integration backs off
    /// until the time the partner asked for.
    pub fn rate_limit(self, name: &str, max: u32, per: Duration) -> Self {
        self.with_policy(PolicyKind::RateLimit, name, max, per, None)
    }

    /// Per-key concurrency: at most `max` sagas that passed this step, per key of the input, run
    /// at once (the slot is taken before the step's first attempt and held until the saga ends:
    /// completed, compensated, cancelled). The excess waits in the store, holding no worker,
    /// and goes on when a slot frees. Declare it on the first step to bound whole sagas ("one
    /// recovery flow per cart").
    pub fn concurrency<K>(self, name: &str, max: u32, key: K) -> Self
    where
        K: Fn(&S::Input) -> String + Send + Sync + 'static,
    {
        self.with_policy(
            PolicyKind::Concurrency,
            name,
            max,
            Duration::ZERO,
            Some(Arc::new(key)),
        )
    }

    /// A retry budget per entity: besides the step's own attempts, at most `max` retries (second
    /// and later attempts) counted under `name` per key in any window of `per`, across every
    /// saga and process, so that one noisy entity cannot take every worker. When it is spent the
    /// step fails for good (a known failure: the attempt never began) and the saga compensates;
    /// the `saga_policy_budget_exhausted_total` metric counts it.
    pub fn retry_budget<K>(self, name: &str, max: u32, per: Duration, key: K) -> Self
    where
        K: Fn(&S::Input) -> String + Send + Sync + 'static,
    {
        self.with_policy(PolicyKind::RetryBudget, name, max, per, Some(Arc::new(key)))
    }

    /// Sets the retry policy of the compensation.
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.step.spec.compensation_retry = policy;
        self
    }

    /// Sets the timeout of one attempt of the compensation.
    pub fn compensation_timeout(mut self, timeout: Duration) -> Self {
        self.step.spec.compensation_timeout = timeout;
        self
    }
}

impl<S: Saga, O> From<StepBuilder<S, O>> for Step<S> {
    fn from(builder: StepBuilder<S, O>) -> Self {
        builder.step
    }
}

/// The ordered steps of a saga type at one version: what [`Saga::definition`] returns.
pub struct SagaDefinition<S: Saga> {
    name: SagaType,
    version: u32,
    steps: Vec<Step<S>>,
    fingerprint_extra: Vec<String>,
    fingerprint_fixed: Option<String>,
    deadline: Option<Duration>,
    dedup_window: Option<Duration>,
}

impl<S: Saga> SagaDefinition<S> {
    /// An empty definition of saga type `name` at `version`.
    pub fn new(name: &str, version: u32) -> Self {
        Self {
            name: SagaType::new(name),
            version,
            steps: Vec::new(),
            fingerprint_extra: Vec::new(),
            fingerprint_fixed: None,
            deadline: None,
            dedup_window: None,
        }
    }

    /// Sets the saga's deadline, counted from its start: past it, no new forward step begins
    /// (a waiting step stops waiting) and the saga compensates, with the reason in its history.
    /// A saga past its pivot step goes on forward instead.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The saga's deadline, counted from its start, if any.
    pub fn deadline_after_start(&self) -> Option<Duration> {
        self.deadline
    }

    /// A dedup window for starts with a key: a start with a key inside `window` from the
    /// creation of the saga holding it returns that saga; after the window the key starts a
    /// new saga ("one recovery flow per customer and store per 5 minutes": derive the key from
    /// the customer and the store). The saga is kept from pruning until its window ends. Without
    /// one, a key dedups for as long as its saga is kept.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window);
        self
    }

    /// The dedup window of starts with a key, if any.
    pub fn dedup_window_of_starts(&self) -> Option<Duration> {
        self.dedup_window
    }

    /// Appends a step; steps run in the order they are added.
    pub fn step(mut self, step: impl Into<Step<S>>) -> Self {
        self.steps.push(step.into());
        self
    }

    /// Appends a parallel group named `name`: `steps` run concurrently, at most `limit` at once
    /// (see [`ParallelGroup`]), after the steps added before and before the steps added after.
    /// A group's steps call actions (no waits), are not transactional, not the pivot, and
    /// declare no policies; [`SagaDefinition::validate`] says which rule a group breaks.
    ///
    /// ```
    /// # use saga_core::{SagaDefinition, Saga, Step, StepContext, StepError};
    /// # use std::sync::Arc;
    /// # struct Trip;
    /// # async fn book(_: Arc<Trip>, _: StepContext<String>) -> Result<String, StepError> { Ok("ref".into()) }
    /// # async fn cancel(_: Arc<Trip>, _: StepContext<String>, _: String) -> Result<(), StepError> { Ok(()) }
    /// # impl Saga for Trip { type Input = String;
    /// fn definition() -> SagaDefinition<Self> {
    ///     SagaDefinition::new("trip", 1)
    ///         .parallel("book", 3, [
    ///             Step::new("flight", book).compensate(cancel).into(),
    ///             Step::new("hotel", book).compensate(cancel).into(),
    ///             Step::new("car", book).compensate(cancel).into(),
    ///         ])
    ///         .step(Step::new("charge", book).compensate(cancel))
    /// }
    /// # }
    /// # assert!(Trip::definition().validate().is_ok());
    /// ```
    pub fn parallel(
        mut self,
        name: &str,
        limit: u32,
        steps: impl IntoIterator<Item = Step<S>>,
    ) -> Self {
        for mut step in steps {
            step.spec.group = Some(ParallelGroup {
                name: name.to_owned(),
                limit,
            });
            self.steps.push(step);
        }
        self
    }

    /// Adds text to the fingerprint (the derive adds input and output type names).
    pub fn fingerprint_part(mut self, part: impl Into<String>) -> Self {
        self.fingerprint_extra.push(part.into());
        self
    }

    /// Sets the fingerprint outright (`#[derive(Saga)]` computes it at compile time from the
    /// declaration: step names, order, compensations, input and output type names).
    pub fn with_fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint_fixed = Some(fingerprint.into());
        self
    }

    /// The saga type.
    pub fn name(&self) -> &SagaType {
        &self.name
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The static description of every step, in order.
    pub fn specs(&self) -> Vec<StepSpec> {
        self.steps.iter().map(|step| step.spec.clone()).collect()
    }

    /// Fingerprint of the step graph: step names, order, and which steps are compensable. A saga
    /// records it at start; resuming it on a definition with another fingerprint parks it.
    pub fn fingerprint(&self) -> String {
        if let Some(fixed) = &self.fingerprint_fixed {
            return fixed.clone();
        }
        let mut hasher = Sha256::new();
        hasher.update(self.name.as_str().as_bytes());
        for step in &self.steps {
            hasher.update(b"\x1f");
            hasher.update(step.spec.name.as_str().as_bytes());
            hasher.update(if step.spec.compensable { b"+c" } else { b"-c" });
            // Only what steps of calls did not have, so that their fingerprints stay as they were.
            if step.spec.kind != StepKind::Call {
                hasher.update(format!("{:?}", step.spec.kind).as_bytes());
            }
            if step.spec.pivot {
                hasher.update(b"+pivot");
            }
            if let Some(group) = &step.spec.group {
                hasher.update(b"+group:");
                hasher.update(group.name.as_bytes());
            }
        }
        for part in &self.fingerprint_extra {
            hasher.update(b"\x1e");
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        digest
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Checks the definition: at least one step, unique non-empty names, every step either
    /// compensable or declared irreversible, positive timeouts, at least one attempt.
    ///
    /// # Errors
    /// [`Error::InvalidDefinition`] naming the first problem and how to fix it.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Error::InvalidDefinition {
            saga: self.name.clone(),
            reason,
        };
        if self.name.as_str().trim().is_empty() {
            return Err(invalid("the saga name is empty; give it a name".into()));
        }
        if self.steps.is_empty() {
            return Err(invalid("it has no steps; add at least one step".into()));
        }
        let mut seen = HashSet::new();
        let mut signals = HashSet::new();
        for step in &self.steps {
            let name = step.spec.name.as_str();
            if let Some(reason) = &step.unusable {
                return Err(invalid(reason.clone()));
            }
            if let Some(signal) = step.spec.kind.signal_name(&step.spec.name) {
                if !signals.insert(signal.clone()) {
                    return Err(invalid(format!(
                        "step `{name}` waits for the signal `{signal}`, which an earlier step waits for already; a saga receives each signal once, so give each waiting step a signal of its own"
                    )));
                }
            }
            if name.trim().is_empty() || name.contains(':') {
                return Err(invalid(format!(
                    "step name `{name}` is empty or contains `:`; use a plain identifier"
                )));
            }
            if !seen.insert(name) {
                return Err(invalid(format!(
                    "step name `{name}` is used twice; give each step its own name"
                )));
            }
            if step.compensation.is_none() && !step.irreversible && !step.spec.kind.waits() {
                return Err(invalid(format!(
                    "step `{name}` has no compensation; add `.compensate(..)` or declare it `.irreversible()`"
                )));
            }
            if step.spec.timeout.is_zero() || step.spec.compensation_timeout.is_zero() {
                return Err(invalid(format!(
                    "step `{name}` has a zero timeout; give each attempt some time"
                )));
            }
            if step.spec.pivot && step.compensation.is_some() {
                return Err(invalid(format!(
                    "step `{name}` is the pivot (the point of no return) and has a compensation, which would never run; declare it `.irreversible()`"
                )));
            }
            if let StepKind::Signal { name: signal, .. } = &step.spec.kind {
                crate::wait::check_signal_name(signal)
                    .map_err(|reason| invalid(format!("step `{name}`: {reason}")))?;
            }
            if step.spec.kind.limit().is_some_and(|limit| limit.is_zero()) {
                return Err(invalid(format!(
                    "step `{name}` waits for zero time; give it a positive duration"
                )));
            }
            for policy in &step.spec.policies {
                check_policy(name, &step.spec.kind, policy).map_err(invalid)?;
            }
            if let Some(group) = &step.spec.group {
                check_member(name, group, &step.spec).map_err(invalid)?;
            }
            if step.child.is_some()
                && (step.compensation.is_some()
                    || step.probe.is_some()
                    || step.spec.transactional
                    || step.irreversible
                    || step.spec.pivot)
            {
                return Err(invalid(format!(
                    "step `{name}` starts a child saga and also has a compensation, a probe, `.transactional()`, `.irreversible()` or `.pivot()`; a child step is undone by compensating its child and settled by reading it, so drop those (make a step of the child the pivot instead)"
                )));
            }
            if step.child.is_some()
                && (step.spec.retry != RetryPolicy::default()
                    || step.spec.compensation_retry != RetryPolicy::default()
                    || step.spec.timeout != DEFAULT_TIMEOUT
                    || step.spec.compensation_timeout != DEFAULT_TIMEOUT)
            {
                return Err(invalid(format!(
                    "step `{name}` starts a child saga and sets a retry policy or a timeout, which it never uses: it calls nothing and waits for its child; set them on the child's steps, and bound the wait with the saga's deadline"
                )));
            }
            if step.spec.retry.max_attempts == 0 || step.spec.compensation_retry.max_attempts == 0 {
                return Err(invalid(format!(
                    "step `{name}` allows zero attempts; max_attempts counts the first attempt and must be at least 1"
                )));
            }
        }
        check_groups(&self.steps).map_err(invalid)?;
        Ok(())
    }

    /// The keys the policies of step `index` count this input under (empty for a rate limit),
    /// in the order of [`StepSpec::policies`].
    pub(crate) fn policy_keys(&self, index: usize, input: &S::Input) -> Vec<String> {
        self.steps.get(index).map_or_else(Vec::new, |step| {
            step.policy_keys
                .iter()
                .map(|key| key.as_ref().map_or_else(String::new, |key| key(input)))
                .collect()
        })
    }

    pub(crate) fn action(&self, index: usize) -> Option<&ActionFn<S>> {
        self.steps.get(index).map(|step| &step.action)
    }

    pub(crate) fn wake(&self, index: usize) -> Option<&WakeFn<S>> {
        self.steps.get(index).and_then(|step| step.wake.as_ref())
    }

    pub(crate) fn child(&self, index: usize) -> Option<&(std::any::TypeId, ChildInputFn<S>)> {
        self.steps.get(index).and_then(|step| step.child.as_ref())
    }

    pub(crate) fn decodes(&self, index: usize) -> Option<DecodeFn> {
        self.steps.get(index).and_then(|step| step.decodes)
    }

    pub(crate) fn probe(&self, index: usize) -> Option<&ProbeFn<S>> {
        self.steps.get(index).and_then(|step| step.probe.as_ref())
    }

    pub(crate) fn compensation(&self, index: usize) -> Option<&CompensationFn<S>> {
        self.steps
            .get(index)
            .and_then(|step| step.compensation.as_ref())
    }
}

/// What a step may not be inside a parallel group, and why.
fn check_member(
    name: &str,
    group: &ParallelGroup,
    spec: &StepSpec,
) -> std::result::Result<(), String> {
    let in_group = format!("step `{name}` is in the parallel group `{}`", group.name);
    if group.name.trim().is_empty() {
        return Err(format!(
            "step `{name}` is in a parallel group with an empty name; name the group"
        ));
    }
    if group.limit == 0 {
        return Err(format!(
            "the parallel group `{}` runs at most 0 steps at once; give it a limit of at least 1",
            group.name
        ));
    }
    if spec.kind.waits() {
        return Err(format!(
            "{in_group} and waits (a timer, a signal, an approval); a group's steps call actions, so put the wait before or after the group"
        ));
    }
    if spec.transactional {
        return Err(format!(
            "{in_group} and is transactional; a saga has one step transaction at a time, so move it out of the group or drop `transactional`"
        ));
    }
    if spec.pivot {
        return Err(format!(
            "{in_group} and is the pivot; the point of no return must be one step, so move it out of the group"
        ));
    }
    if !spec.policies.is_empty() {
        return Err(format!(
            "{in_group} and declares policies; policies are not yet supported in groups, so move the step out of the group or drop its policies"
        ));
    }
    Ok(())
}

/// A group's steps are consecutive and at least two.
fn check_groups<S: Saga>(steps: &[Step<S>]) -> std::result::Result<(), String> {
    let mut closed: HashSet<&str> = HashSet::new();
    let mut position = 0;
    while let Some(step) = steps.get(position) {
        let Some(group) = &step.spec.group else {
            position += 1;
            continue;
        };
        if closed.contains(group.name.as_str()) {
            return Err(format!(
                "the steps of the parallel group `{}` are not consecutive (step `{}` comes after another step); put a group's steps next to each other",
                group.name, step.spec.name
            ));
        }
        let in_group =
            |next: &&Step<S>| next.spec.group.as_ref().map(|g| &g.name) == Some(&group.name);
        let members = steps.iter().skip(position).take_while(in_group).count();
        if members < 2 {
            return Err(format!(
                "the parallel group `{}` has one step (`{}`); a group needs at least two, or make it a plain step",
                group.name, step.spec.name
            ));
        }
        if let Some(other) = steps
            .iter()
            .skip(position)
            .take(members)
            .find(|member| member.spec.group.as_ref().map(|g| g.limit) != Some(group.limit))
        {
            return Err(format!(
                "the steps of the parallel group `{}` give different limits (step `{}`); give the group one limit",
                group.name, other.spec.name
            ));
        }
        closed.insert(group.name.as_str());
        position += members;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Paid;

    impl Signal for Paid {
        const NAME: &'static str = "paid";
    }

    struct Twice;

    impl Saga for Twice {
        type Input = u32;
        fn definition() -> SagaDefinition<Self> {
            SagaDefinition::new("twice", 1)
                .step(Step::signal::<Paid>("first"))
                .step(Step::signal::<Paid>("second"))
        }
    }

    #[test]
    fn a_child_step_starts_its_type_compensably_and_takes_no_options_of_its_own() {
        let child = || {
            Step::<Twice>::child::<Twice, _>("spawn", |_: &Twice, ctx: &StepContext<u32>| {
                Ok(*ctx.input())
            })
        };
        let valid = SagaDefinition::<Twice>::new("parent", 1).step(child());
        assert!(valid.validate().is_ok());
        let spec = &valid.specs()[0];
        assert!(spec.compensable, "a child step is undone by its child");
        assert_eq!(
            spec.kind,
            StepKind::Child {
                saga_type: SagaType::new("twice")
            }
        );
        let refused: [(&str, Step<Twice>); 3] = [
            ("irreversible", child().irreversible().into()),
            ("pivot", child().pivot().into()),
            (
                "compensate",
                child()
                    .compensate(|_: Arc<Twice>, _: StepContext<u32>, _| async { Ok(()) })
                    .into(),
            ),
        ];
        for (what, step) in refused {
            let definition = SagaDefinition::<Twice>::new("parent", 1).step(step);
            let Err(Error::InvalidDefinition { reason, .. }) = definition.validate() else {
                panic!("a child step with `{what}` must be refused");
            };
            assert!(reason.contains("starts a child saga"), "{what}: {reason}");
        }
    }

    /// A saga whose step starts a child of its own type (a tree, split at each level).
    struct Splits;

    impl Saga for Splits {
        type Input = u32;
        fn definition() -> SagaDefinition<Self> {
            SagaDefinition::new("splits", 1).step(Step::child::<Splits, _>(
                "split",
                |_: &Splits, ctx: &StepContext<u32>| Ok(ctx.input() / 2),
            ))
        }
    }

    #[test]
    fn a_saga_that_starts_a_child_of_its_own_type_is_defined_without_recursing_forever() {
        let definition = Splits::definition();
        assert!(definition.validate().is_ok());
        assert_eq!(
            definition.specs()[0].kind,
            StepKind::Child {
                saga_type: SagaType::new("splits")
            }
        );
    }

    #[test]
    fn a_child_step_with_a_retry_or_a_timeout_is_refused() {
        let child = || {
            Step::<Twice>::child::<Twice, _>("spawn", |_: &Twice, ctx: &StepContext<u32>| {
                Ok(*ctx.input())
            })
        };
        for step in [
            child().timeout(Duration::from_secs(1)),
            child().retry(RetryPolicy::exponential(5, Duration::from_millis(10))),
        ] {
            let definition = SagaDefinition::<Twice>::new("parent", 1).step(step);
            let Err(Error::InvalidDefinition { reason, .. }) = definition.validate() else {
                panic!("a child step with a retry or a timeout must be refused");
            };
            assert!(reason.contains("never uses"), "{reason}");
        }
    }

    #[test]
    fn two_steps_waiting_for_one_signal_are_refused() {
        let Err(Error::InvalidDefinition { reason, .. }) = Twice::definition().validate() else {
            panic!("two waits for one signal must be refused");
        };
        assert!(reason.contains("signal `paid`"), "{reason}");
    }

    #[test]
    fn a_default_on_a_step_that_waits_for_no_signal_is_refused() {
        let definition = SagaDefinition::<Twice>::new("default", 1).step(
            Step::approval("approve").or_default(Approval {
                approved: true,
                by: "nobody".into(),
                reason: "default".into(),
            }),
        );
        assert!(matches!(
            definition.validate(),
            Err(Error::InvalidDefinition { .. })
        ));
    }

    async fn booked(_: Arc<Twice>, _: crate::StepContext<u32>) -> Result<u32, crate::StepError> {
        Ok(1)
    }

    async fn cancelled(
        _: Arc<Twice>,
        _: crate::StepContext<u32>,
        _: u32,
    ) -> Result<(), crate::StepError> {
        Ok(())
    }

    fn booking(name: &str) -> Step<Twice> {
        Step::new(name, booked).compensate(cancelled).into()
    }

    fn reason_of(definition: &SagaDefinition<Twice>) -> String {
        match definition.validate() {
            Err(Error::InvalidDefinition { reason, .. }) => reason,
            other => format!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_parallel_group_marks_its_steps_and_validates() {
        let definition = SagaDefinition::<Twice>::new("trip", 1)
            .step(booking("budget"))
            .parallel("book", 2, ["flight", "hotel", "car"].map(booking))
            .step(booking("charge"));
        assert!(definition.validate().is_ok());
        let groups: Vec<_> = definition
            .specs()
            .iter()
            .map(|spec| spec.group.as_ref().map(|g| (g.name.clone(), g.limit)))
            .collect();
        let book = Some(("book".to_owned(), 2));
        assert_eq!(groups, [None, book.clone(), book.clone(), book, None]);
        let plain = SagaDefinition::<Twice>::new("trip", 1)
            .step(booking("budget"))
            .step(booking("flight"))
            .step(booking("hotel"))
            .step(booking("car"))
            .step(booking("charge"));
        assert_ne!(
            definition.fingerprint(),
            plain.fingerprint(),
            "grouping steps changes what the saga does"
        );
    }

    #[test]
    fn groups_that_break_a_rule_are_refused_with_the_rule() {
        let one = SagaDefinition::<Twice>::new("trip", 1).parallel("book", 2, [booking("flight")]);
        assert!(
            reason_of(&one).contains("has one step"),
            "{}",
            reason_of(&one)
        );
        let split = SagaDefinition::<Twice>::new("trip", 1)
            .parallel("book", 2, [booking("flight"), booking("hotel")])
            .step(booking("charge"))
            .parallel("book", 2, [booking("car"), booking("train")]);
        assert!(
            reason_of(&split).contains("not consecutive"),
            "{}",
            reason_of(&split)
        );
        let zero = SagaDefinition::<Twice>::new("trip", 1).parallel(
            "book",
            0,
            [booking("flight"), booking("hotel")],
        );
        assert!(
            reason_of(&zero).contains("at least 1"),
            "{}",
            reason_of(&zero)
        );
        let transactional = SagaDefinition::<Twice>::new("trip", 1).parallel(
            "book",
            2,
            [
                Step::new("flight", booked)
                    .compensate(cancelled)
                    .transactional()
                    .into(),
                booking("hotel"),
            ],
        );
        assert!(
            reason_of(&transactional).contains("transactional"),
            "{}",
            reason_of(&transactional)
        );
        let waits = SagaDefinition::<Twice>::new("trip", 1).parallel(
            "book",
            2,
            [booking("flight"), Step::signal::<Paid>("paid").into()],
        );
        assert!(reason_of(&waits).contains("waits"), "{}", reason_of(&waits));
        let limits = SagaDefinition::<Twice>::new("trip", 1)
            .step(
                Step::new("flight", booked)
                    .compensate(cancelled)
                    .group("book", 2),
            )
            .step(
                Step::new("hotel", booked)
                    .compensate(cancelled)
                    .group("book", 3),
            );
        assert!(
            reason_of(&limits).contains("different limits"),
            "{}",
            reason_of(&limits)
        );
    }
}
