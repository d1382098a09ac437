//! Policies checked before a step's side effect, shared by every process on one store: frequency
//! caps per entity, rate limits per integration, per-key concurrency, retry budgets, and pauses.
//!
//! A step declares its policies ([`StepBuilder::cap`](crate::StepBuilder::cap),
//! [`rate_limit`](crate::StepBuilder::rate_limit),
//! [`concurrency`](crate::StepBuilder::concurrency),
//! [`retry_budget`](crate::StepBuilder::retry_budget)). Before an attempt of its action begins,
//! the worker asks the store for a permit ([`Store::permit`](crate::Store::permit)). The store
//! reads what the policies counted so far ([`PolicyState`]), under a lock per counted key, lets
//! [`decide_permit`] decide, and records the uses the decision takes, in one transaction. So a
//! cap of one email per customer holds across all sagas and processes.
//!
//! What a permit decides ([`Permit`]):
//!
//! - **granted**: the attempt begins; its uses are counted (a cap's use once per step, whatever
//!   the attempt; a rate limit's and a budget's once per attempt; a concurrency slot once per
//!   saga, held until the saga ends);
//! - **wait**: the saga gives its lease back and is due again when the limit, the slot or the
//!   integration's back-off allows, holding no worker; no attempt is spent;
//! - **skip**: a cap is reached; the step is recorded `skipped` with the reason (a structured
//!   no-op: never compensated, no output) and the saga goes on;
//! - **fail**: the entity's retry budget is spent; the step fails for good (a known failure, the
//!   attempt never began), and the saga compensates.
//!
//! Counting a use and beginning the attempt are two writes: should the second not happen (the
//! worker dies between them, a cancel request refuses the step), the use stays counted. That
//! errs on the side of fewer effects, never more: a use is keyed by saga, step and attempt, so
//! whoever begins the same step later finds its use counted already and is not refused by it.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{self, Timestamp};
use crate::id::{Attempt, SagaId, SagaType, StepIndex, StepName};

/// How often a saga held back by a pause or a concurrency limit looks again, at the latest (a
/// resume wakes paused sagas at once; a freed slot is found at the next look).
pub const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// How often a saga held by a pause looks again, at the latest: a resume wakes the sagas it held
/// at once (and a worker about to hold a saga on a pause reads the pauses from the store first,
/// so a lifted pause holds nothing), so this only bounds the wait should a resume and a hold
/// cross each other.
pub const PAUSE_RECHECK: Duration = Duration::from_secs(30);

/// What a policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// At most `max` effects per entity per `per`: a step over it is skipped.
    Cap,
    /// At most `max` attempts per `per` in any window, across every saga using the named
    /// integration: an attempt over it waits.
    RateLimit,
    /// At most `max` running sagas per key: the excess waits.
    Concurrency,
    /// At most `max` retries per entity per `per`: past it the step fails for good.
    RetryBudget,
}

impl PolicyKind {
    /// The persisted form.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Cap => "cap",
            PolicyKind::RateLimit => "rate_limit",
            PolicyKind::Concurrency => "concurrency",
            PolicyKind::RetryBudget => "retry_budget",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One policy a step declares: what it counts, under which name, and its bound. The key a use
/// is counted under (the entity: a customer, a cart) comes from the saga's input, through the
/// function given with the declaration; a rate limit has none (the integration is the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What it counts.
    pub kind: PolicyKind,
    /// Its name, shared by every step and saga type that declares it (`"email"`, `"partner_api"`).
    pub name: String,
    /// The bound.
    pub max: u32,
    /// The window (`Duration::ZERO` for concurrency, which counts running sagas).
    pub per: Duration,
}

impl Policy {
    /// Words for the history: "cap `email`: 1 per 24h".
    pub fn describe(&self) -> String {
        match self.kind {
            PolicyKind::Concurrency => {
                format!("concurrency `{}`: {} running per key", self.name, self.max)
            }
            kind => format!(
                "{} `{}`: {} per {}",
                kind.as_str().replace('_', " "),
                self.name,
                self.max,
                human(self.per)
            ),
        }
    }
}

/// A duration in words for the history ("24h", "500ms", "90s").
pub fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms % 86_400_000 == 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// One use a permit asks for: a policy with the key it counts under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUse {
    /// The policy.
    pub policy: Policy,
    /// The key (entity) it is counted under; empty for a rate limit.
    pub key: String,
}

impl PolicyUse {
    /// The attempt a use of this kind is counted for: a cap once per step (0), a concurrency
    /// slot once per saga (0), a rate limit and a retry budget once per attempt.
    pub fn counted_attempt(&self, attempt: Attempt) -> u32 {
        match self.policy.kind {
            PolicyKind::Cap | PolicyKind::Concurrency => 0,
            PolicyKind::RateLimit | PolicyKind::RetryBudget => attempt.0,
        }
    }

    /// The step index a use is counted for: a concurrency slot belongs to the saga (0).
    pub fn counted_step(&self, step: StepIndex) -> StepIndex {
        match self.policy.kind {
            PolicyKind::Concurrency => StepIndex(0),
            _ => step,
        }
    }

    /// Whether this attempt counts against the policy at all: a retry budget counts retries
    /// (the second attempt on); the rest count every attempt.
    pub fn applies_to(&self, attempt: Attempt) -> bool {
        match self.policy.kind {
            PolicyKind::RetryBudget => attempt.0 > 1,
            _ => true,
        }
    }
}

/// What a worker asks the store before an attempt of a step's action begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitRequest {
    /// The saga.
    pub saga: SagaId,
    /// Its type.
    pub saga_type: SagaType,
    /// The step.
    pub index: StepIndex,
    /// Its name.
    pub step: StepName,
    /// The attempt about to begin.
    pub attempt: Attempt,
    /// The uses to count, in the step's order of declaration.
    pub uses: Vec<PolicyUse>,
}

/// What a store read for one use of a [`PermitRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UseState {
    /// Whether this saga's use (same saga, step and counted attempt) is recorded already.
    pub mine: bool,
    /// How many other uses count now: in the window (caps, budgets), or held by sagas that have
    /// not ended (concurrency).
    pub counted: u32,
    /// When the earliest of the counted uses leaves the window (caps, budgets).
    pub frees_at: Option<Timestamp>,
    /// A rate limit's state.
    pub limit: LimitState,
    /// One saga holding a slot (concurrency), for the history.
    pub holder: Option<SagaId>,
}

/// A rate limit as stored: one row per integration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitState {
    /// When the next call may be granted (`None`: now).
    pub next_at: Option<Timestamp>,
    /// Until when the integration backs off because a step reported throttling.
    pub backoff_until: Option<Timestamp>,
}

/// The interval a rate limit spaces calls by: `per / max`. Calls granted at least this far
/// apart never number more than `max` in any window of `per`, in every process together.
pub fn spacing(policy: &Policy) -> Duration {
    policy.per / policy.max.max(1)
}

/// How far ahead of `now` a rate limit's next free time may be and a call still be granted:
/// none while the spacing is a millisecond or more (the precision of the stores' clocks), else
/// the grants of one millisecond (a limit over 1,000 per second is kept to within one
/// millisecond's worth of calls).
pub fn tolerance(policy: &Policy) -> Duration {
    let spacing = spacing(policy);
    if spacing >= Duration::from_millis(1) || spacing.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(1).saturating_sub(spacing)
}

/// A rate limit's grant at `now`: the limit's next free time once granted, or the permit that
/// holds the call (the back-off or the limit). The one rule every backend applies: a call is
/// granted when neither the back-off nor the spacing since the last grant forbids it, and the
/// next call may come one spacing after the later of the last next-free time and now.
///
/// # Errors
/// The [`Permit::Wait`] that holds the call.
pub fn take_limit(
    policy: &Policy,
    state: &LimitState,
    now: Timestamp,
) -> std::result::Result<Timestamp, Permit> {
    let waiting_for = format!("policy:rate_limit:{}", policy.name);
    if let Some(until) = state.backoff_until.filter(|until| *until > now) {
        return Err(Permit::Wait {
            until,
            waiting_for,
            reason: format!(
                "integration `{}` backs off until {} (a step reported throttling)",
                policy.name,
                until.to_rfc3339()
            ),
        });
    }
    if let Some(until) = state
        .next_at
        .filter(|next| *next > now + tolerance_of(policy))
    {
        return Err(Permit::Wait {
            until,
            waiting_for,
            reason: format!("{} reached", policy.describe()),
        });
    }
    let from = state.next_at.map_or(now, |next| next.max(now));
    // Not rounded to the millisecond: a spacing under one adds up.
    Ok(chrono::Duration::from_std(spacing(policy))
        .ok()
        .and_then(|spacing| from.checked_add_signed(spacing))
        .unwrap_or(from))
}

fn tolerance_of(policy: &Policy) -> chrono::Duration {
    chrono::Duration::from_std(tolerance(policy)).unwrap_or_default()
}

/// What a store read for a permit: one [`UseState`] per use, in the request's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    /// The state of each use.
    pub uses: Vec<UseState>,
}

/// Why an attempt does not begin now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// It begins.
    Granted,
    /// It waits until `until`, holding no worker; no attempt is spent.
    Wait {
        /// When to look again.
        until: Timestamp,
        /// What it waits for, shown as the saga's `waiting_for` (`policy:rate_limit:partner`).
        waiting_for: String,
        /// Why, in words, for the history.
        reason: String,
    },
    /// A cap is reached: the step is skipped, with the reason.
    Skip {
        /// Why.
        reason: String,
    },
    /// The retry budget is spent: the step fails for good, with the reason.
    Fail {
        /// Why.
        reason: String,
    },
}

/// A permit decided, and what it writes (empty unless granted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermitWrite {
    /// The decision.
    pub permit: Permit,
    /// The counted uses to record (positions in [`PermitRequest::uses`]).
    pub record: Vec<usize>,
    /// The rate limits granted, with their next free time (positions in the request's uses).
    pub limits: Vec<(usize, Timestamp)>,
}

/// The order in which a permit looks at its uses: a concurrency slot first (a saga held back
/// does nothing else), then caps (a capped step calls nothing, so no limit applies), retry
/// budgets, and rate limits last.
pub fn precedence(kind: PolicyKind) -> u8 {
    match kind {
        PolicyKind::Concurrency => 0,
        PolicyKind::Cap => 1,
        PolicyKind::RetryBudget => 2,
        PolicyKind::RateLimit => 3,
    }
}

/// The positions of the request's uses that count for its attempt, in [`precedence`] order.
pub fn in_precedence(request: &PermitRequest) -> Vec<usize> {
    let mut order: Vec<usize> = (0..request.uses.len())
        .filter(|position| request.uses[*position].applies_to(request.attempt))
        .collect();
    order.sort_by_key(|position| precedence(request.uses[*position].policy.kind));
    order
}

/// What one counted use (a cap, a budget, a concurrency slot) decides on what was read: `None`
/// when it lets the attempt through, else the permit that stops it. (A rate limit decides with
/// [`take_limit`].)
pub fn judge(
    request: &PermitRequest,
    wanted: &PolicyUse,
    read: &UseState,
    now: Timestamp,
) -> Option<Permit> {
    if read.mine || read.counted < wanted.policy.max {
        return None;
    }
    match wanted.policy.kind {
        PolicyKind::Concurrency => Some(Permit::Wait {
            until: clock::after(now, HOLD_RECHECK),
            waiting_for: format!("policy:concurrency:{}:{}", wanted.policy.name, wanted.key),
            reason: format!(
                "{} held by {} running saga(s) for key `{}`{}",
                wanted.policy.describe(),
                read.counted,
                wanted.key,
                read.holder
                    .map(|holder| format!(" (one is {holder})"))
                    .unwrap_or_default()
            ),
        }),
        PolicyKind::Cap => Some(Permit::Skip {
            reason: format!(
                "{} reached for key `{}` ({} counted{}); step skipped, nothing was called",
                wanted.policy.describe(),
                wanted.key,
                read.counted,
                read.frees_at
                    .map(|at| format!(", the next frees at {}", at.to_rfc3339()))
                    .unwrap_or_default()
            ),
        }),
        PolicyKind::RetryBudget => Some(Permit::Fail {
            reason: format!(
                "{} spent for key `{}` ({} retries counted); attempt {} of step `{}` not begun",
                wanted.policy.describe(),
                wanted.key,
                read.counted,
                request.attempt,
                request.step
            ),
        }),
        PolicyKind::RateLimit => None,
    }
}

/// Decides a permit on what the store read, at `now`, looking at the uses in [`precedence`]
/// order: the first that stops the attempt decides; else it is granted, and the write counts
/// the uses not counted yet and moves the rate limits on. A backend that reads everything
/// under one lock (SQLite, memory) writes this; one that takes each use atomically on its own
/// (Postgres) applies [`judge`] and [`take_limit`] use by use in the same order.
pub fn decide_permit(request: &PermitRequest, state: &PolicyState, now: Timestamp) -> PermitWrite {
    let unread = UseState::default();
    let refuse = |permit| PermitWrite {
        permit,
        record: Vec::new(),
        limits: Vec::new(),
    };
    let mut granted = PermitWrite {
        permit: Permit::Granted,
        record: Vec::new(),
        limits: Vec::new(),
    };
    for position in in_precedence(request) {
        let wanted = &request.uses[position];
        let read = state.uses.get(position).unwrap_or(&unread);
        if wanted.policy.kind == PolicyKind::RateLimit {
            match take_limit(&wanted.policy, &read.limit, now) {
                Ok(next_at) => granted.limits.push((position, next_at)),
                Err(permit) => return refuse(permit),
            }
            continue;
        }
        if let Some(permit) = judge(request, wanted, read, now) {
            return refuse(permit);
        }
        if !read.mine {
            granted.record.push(position);
        }
    }
    granted.record.sort_unstable();
    granted
}

/// When a recorded use stops counting: at the end of its window (caps, limits, budgets); a
/// concurrency slot (`None`) counts while its saga has not ended.
pub fn use_expires_at(policy: &Policy, at: Timestamp) -> Option<Timestamp> {
    match policy.kind {
        PolicyKind::Concurrency => None,
        _ => Some(clock::after(at, policy.per)),
    }
}

/// The lock name of a counted key, the same in every process: `kind/name/key`.
pub fn lock_name(policy_use: &PolicyUse) -> String {
    format!(
        "{}/{}/{}",
        policy_use.policy.kind, policy_use.policy.name, policy_use.key
    )
}

/// What a pause stops: every attempt of a saga type's steps, or of one step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PauseScope {
    /// The saga type.
    pub saga_type: SagaType,
    /// One step of it; `None`: all of its steps.
    pub step: Option<StepName>,
}

impl PauseScope {
    /// Whether the scope covers step `step` of `saga_type`.
    pub fn covers(&self, saga_type: &SagaType, step: &StepName) -> bool {
        self.saga_type == *saga_type && self.step.as_ref().is_none_or(|own| own == step)
    }

    /// What a saga held by this pause waits for: `paused:<type>` or `paused:<type>/<step>`.
    pub fn waiting_for(&self) -> String {
        match &self.step {
            Some(step) => format!("{PAUSED}{}/{step}", self.saga_type),
            None => format!("{PAUSED}{}", self.saga_type),
        }
    }
}

impl fmt::Display for PauseScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "step `{step}` of `{}`", self.saga_type),
            None => write!(f, "saga type `{}`", self.saga_type),
        }
    }
}

/// The prefix of `waiting_for` of a saga held by a pause.
pub const PAUSED: &str = "paused:";

/// An operator's pause, as stored: who, when and why; and, once lifted, who lifted it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// Its id in the store.
    pub id: i64,
    /// What it stops.
    pub scope: PauseScope,
    /// Who paused.
    pub paused_by: String,
    /// Why.
    pub reason: String,
    /// When.
    pub paused_at: Timestamp,
    /// When it was lifted (`None`: in force).
    pub resumed_at: Option<Timestamp>,
    /// Who lifted it.
    pub resumed_by: Option<String>,
    /// Why it was lifted.
    pub resume_reason: Option<String>,
}

/// An operator's request to pause or resume a scope, with who and why (both required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseRequest {
    /// What to pause or resume.
    pub scope: PauseScope,
    /// Who asks.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// The pause in force among `pauses` that covers step `step` of `saga_type`, if any.
pub fn pause_covering<'p>(
    pauses: &'p [Pause],
    saga_type: &SagaType,
    step: &StepName,
) -> Option<&'p Pause> {
    pauses
        .iter()
        .filter(|pause| pause.resumed_at.is_none())
        .find(|pause| pause.scope.covers(saga_type, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uses: Vec<PolicyUse>, attempt: u32) -> PermitRequest {
        PermitRequest {
            saga: SagaId::new(),
            saga_type: SagaType::new("cart"),
            index: StepIndex(1),
            step: StepName::new("send_email"),
            attempt: Attempt(attempt),
            uses,
        }
    }

    fn policy_use(kind: PolicyKind, max: u32) -> PolicyUse {
        PolicyUse {
            policy: Policy {
                kind,
                name: "p".into(),
                max,
                per: Duration::from_secs(60),
            },
            key: "k".into(),
        }
    }

    fn state(counted: &[u32]) -> PolicyState {
        PolicyState {
            uses: counted
                .iter()
                .map(|counted| UseState {
                    counted: *counted,
                    ..UseState::default()
                })
                .collect(),
        }
    }

    #[test]
    fn a_cap_under_its_bound_grants_and_counts_the_use() {
        let request = request(vec![policy_use(PolicyKind::Cap, 1)], 1);
        let decided = decide_permit(&request, &state(&[0]), clock::now());
        assert_eq!(decided.permit, Permit::Granted);
        assert_eq!(decided.record, vec![0]);
    }

    #[test]
    fn a_cap_reached_skips_and_counts_nothing() {
        let request = request(vec![policy_use(PolicyKind::Cap, 1)], 1);
        let decided = decide_permit(&request, &state(&[1]), clock::now());
        assert!(
            matches!(decided.permit, Permit::Skip { ref reason } if reason.contains("cap `p`: 1 per 1m"))
        );
        assert!(decided.record.is_empty());
    }

    #[test]
    fn a_use_counted_already_for_this_step_is_not_refused_by_itself() {
        let request = request(vec![policy_use(PolicyKind::Cap, 1)], 2);
        let mut read = state(&[1]);
        read.uses[0].mine = true;
        let decided = decide_permit(&request, &read, clock::now());
        assert_eq!(decided.permit, Permit::Granted);
        assert!(decided.record.is_empty(), "nothing counted twice");
    }

    #[test]
    fn a_rate_limit_spaces_grants_by_its_window_over_its_bound() {
        let now = clock::now();
        let request = request(vec![policy_use(PolicyKind::RateLimit, 2)], 1);
        // 2 per minute: 30 s apart.
        let first = decide_permit(&request, &state(&[0]), now);
        let next = clock::after(now, Duration::from_secs(30));
        assert_eq!(first.limits, vec![(0, next)]);
        let mut read = state(&[0]);
        read.uses[0].limit.next_at = Some(next);
        let second = decide_permit(&request, &read, clock::after(now, Duration::from_secs(1)));
        assert!(matches!(second.permit, Permit::Wait { until, .. } if until == next));
        assert!(second.limits.is_empty());
        // Granted at its time, the next one is one spacing on.
        let third = decide_permit(&request, &read, next);
        assert_eq!(
            third.limits,
            vec![(0, clock::after(next, Duration::from_secs(30)))]
        );
    }

    #[test]
    fn a_throttled_integration_waits_out_its_back_off_under_its_bound() {
        let now = clock::now();
        let until = clock::after(now, Duration::from_secs(5));
        let request = request(vec![policy_use(PolicyKind::RateLimit, 50)], 1);
        let mut read = state(&[0]);
        read.uses[0].limit.backoff_until = Some(until);
        let decided = decide_permit(&request, &read, now);
        assert!(
            matches!(decided.permit, Permit::Wait { until: at, ref reason, .. } if at == until && reason.contains("throttling"))
        );
    }

    #[test]
    fn a_retry_budget_counts_retries_only_and_fails_when_spent() {
        let budget = || policy_use(PolicyKind::RetryBudget, 5);
        let first = decide_permit(&request(vec![budget()], 1), &state(&[5]), clock::now());
        assert_eq!(first.permit, Permit::Granted);
        assert!(first.record.is_empty(), "a first attempt is no retry");
        let retry = decide_permit(&request(vec![budget()], 2), &state(&[5]), clock::now());
        assert!(matches!(retry.permit, Permit::Fail { ref reason } if reason.contains("spent")));
    }

    #[test]
    fn a_full_concurrency_slot_holds_the_saga_before_a_cap_is_looked_at() {
        let request = request(
            vec![
                policy_use(PolicyKind::Cap, 1),
                policy_use(PolicyKind::Concurrency, 1),
            ],
            1,
        );
        let decided = decide_permit(&request, &state(&[1, 1]), clock::now());
        assert!(
            matches!(decided.permit, Permit::Wait { ref waiting_for, .. } if waiting_for == "policy:concurrency:p:k")
        );
    }

    #[test]
    fn a_pause_of_a_type_covers_its_steps_and_a_lifted_one_nothing() {
        let scope = PauseScope {
            saga_type: SagaType::new("cart"),
            step: None,
        };
        let mut pause = Pause {
            id: 1,
            scope,
            paused_by: "alice".into(),
            reason: "runaway".into(),
            paused_at: clock::now(),
            resumed_at: None,
            resumed_by: None,
            resume_reason: None,
        };
        let (cart, email) = (SagaType::new("cart"), StepName::new("send_email"));
        assert!(pause_covering(std::slice::from_ref(&pause), &cart, &email).is_some());
        assert!(pause_covering(
            std::slice::from_ref(&pause),
            &SagaType::new("order"),
            &email
        )
        .is_none());
        pause.resumed_at = Some(clock::now());
        assert!(pause_covering(&[pause], &cart, &email).is_none());
    }
}
