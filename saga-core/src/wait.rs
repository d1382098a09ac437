//! Steps that wait: durable timers, signals and human approval.
//!
//! A waiting step is recorded `in_progress` when the wait begins, with the time it ends (its
//! step's `next_attempt_at`), and the saga records what it waits for (`waiting_for`) and gives its
//! lease back: a waiting saga holds no worker, no lease and no connection, and is due again at
//! that time, in any process. A signal is stored with the saga when it arrives — before the
//! saga reaches the waiting step, or while it waits — once per signal key, and makes a saga
//! waiting for it due at once. The waiting step completes with the signal's payload as its
//! output; a wait whose time runs out fails the step permanently (the saga compensates) unless
//! the step declares a default output.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::id::{IdempotencyKey, SagaId, SagaType, StepName};
use crate::status::SagaStatus;

/// What a step does: call its action, or wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StepKind {
    /// Call the step's action (with retries, timeouts, probe).
    #[default]
    Call,
    /// Sleep: for `duration` from when the wait begins, or (`None`) until the time the step's
    /// wake function computes from the input and earlier outputs. Completes with the wake time.
    Sleep {
        /// How long, when fixed.
        duration: Option<Duration>,
    },
    /// Wait for the signal `name`; completes with its payload.
    Signal {
        /// The signal's name.
        name: String,
        /// How long to wait at most (`None`: until the signal comes or the saga is cancelled).
        timeout: Option<Duration>,
        /// The output recorded when the wait times out; without one the step fails permanently
        /// and the saga compensates.
        default: Option<Value>,
    },
    /// Wait for a person's decision ([`Approval`]): approved completes the step with the
    /// decision; rejected, or no decision in time, fails it permanently (the saga compensates).
    Approval {
        /// How long to wait at most.
        timeout: Option<Duration>,
    },
    /// Start a child saga of type `saga_type` and wait for its end, holding no worker: its
    /// completion completes the step (with a [`ChildOutput`](crate::ChildOutput)); its
    /// compensation or cancel fails it for good. Compensating the step compensates the child
    /// (or cancels it while it runs).
    Child {
        /// The child's registered type.
        saga_type: SagaType,
    },
}

impl StepKind {
    /// Whether the step waits instead of calling an action.
    pub fn waits(&self) -> bool {
        !matches!(self, StepKind::Call)
    }

    /// The name of the signal the step waits for (an approval waits for
    /// `approval:<step>`), if any.
    pub fn signal_name(&self, step: &StepName) -> Option<String> {
        match self {
            StepKind::Signal { name, .. } => Some(name.clone()),
            StepKind::Approval { .. } => Some(approval_signal(step)),
            StepKind::Call | StepKind::Sleep { .. } | StepKind::Child { .. } => None,
        }
    }

    /// What a saga waiting at this step waits for, as recorded in
    /// [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for): `timer`, or `signal:<name>`.
    pub fn waiting_for(&self, step: &StepName) -> Option<String> {
        match self {
            StepKind::Call => None,
            StepKind::Sleep { .. } => Some(TIMER.to_owned()),
            StepKind::Child { .. } => Some(waiting_for_child(step)),
            StepKind::Signal { .. } | StepKind::Approval { .. } => {
                self.signal_name(step).map(|name| waiting_for_signal(&name))
            }
        }
    }

    /// How long the wait lasts at most, when fixed.
    pub fn limit(&self) -> Option<Duration> {
        match self {
            StepKind::Call | StepKind::Child { .. } => None,
            StepKind::Sleep { duration } => *duration,
            StepKind::Signal { timeout, .. } | StepKind::Approval { timeout } => *timeout,
        }
    }
}

/// [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for) of a sleeping saga.
pub const TIMER: &str = "timer";

/// [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for) of a saga waiting at step `step`
/// for the child saga it started.
pub fn waiting_for_child(step: &StepName) -> String {
    format!("{WAITING_FOR_CHILD}{step}")
}

/// The prefix of [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for) for sagas waiting
/// for a child saga.
pub const WAITING_FOR_CHILD: &str = "child:";

/// [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for) of a saga waiting for the signal
/// `name`.
pub fn waiting_for_signal(name: &str) -> String {
    format!("signal:{name}")
}

/// The prefix of [`SagaRecord::waiting_for`](crate::SagaRecord::waiting_for) for sagas waiting
/// for a person's approval (list them with [`SagaFilter::waiting_for`](crate::SagaFilter)).
pub const WAITING_FOR_APPROVAL: &str = "signal:approval:";

/// The signal an approval step waits for.
pub fn approval_signal(step: &StepName) -> String {
    format!("approval:{step}")
}

/// Checks a signal key: non-empty, at most 200 bytes, no NUL character.
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn check_signal_key(key: &SignalKey) -> Result<(), String> {
    let key = key.as_str();
    if key.is_empty() || key.len() > 200 || key.contains('\0') {
        return Err(format!(
            "signal key `{}` must be 1 to 200 bytes long, without NUL characters; use the sender's event or delivery id",
            crate::step::bounded_text(key, 200)
        ));
    }
    Ok(())
}

/// Checks a signal name: non-empty, at most 100 bytes, letters, digits, `_`, `-` and `.` only
/// (`:` is kept for the library's own names, such as approvals').
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn check_signal_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!("signal name `{name}` must be 1 to 100 bytes long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "signal name `{name}` may only hold ASCII letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// A signal type: its payload, and the name a step waits for it by.
///
/// ```
/// use saga_core::Signal;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct PaymentWebhook { charge_id: String, amount: u64 }
///
/// impl Signal for PaymentWebhook {
///     const NAME: &'static str = "payment_webhook";
/// }
/// ```
pub trait Signal: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The signal's name (see [`check_signal_name`]).
    const NAME: &'static str;
}

/// The key that makes a signal's delivery happen once: a provider's event id, a webhook's
/// delivery id. A second delivery with the same key is a duplicate, never a second signal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SignalKey(String);

impl SignalKey {
    /// A key from any text.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SignalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which saga a signal is for: its id, or the key it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The saga with this id.
    Saga(SagaId),
    /// The saga started with this start key.
    StartKey(IdempotencyKey),
}

impl From<SagaId> for SignalTarget {
    fn from(id: SagaId) -> Self {
        SignalTarget::Saga(id)
    }
}

impl From<IdempotencyKey> for SignalTarget {
    fn from(key: IdempotencyKey) -> Self {
        SignalTarget::StartKey(key)
    }
}

impl fmt::Display for SignalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalTarget::Saga(id) => write!(f, "saga {id}"),
            SignalTarget::StartKey(key) => write!(f, "the saga started with key `{key}`"),
        }
    }
}

/// A signal to store with one saga ([`Store::deliver_signal`](crate::Store::deliver_signal)).
#[derive(Debug, Clone, PartialEq)]
pub struct SignalDelivery {
    /// The saga.
    pub saga: SagaId,
    /// The signal's name.
    pub name: String,
    /// Its delivery key.
    pub key: SignalKey,
    /// Its payload.
    pub payload: Value,
}

/// A signal as stored with its saga.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRecord {
    /// The signal's name.
    pub name: String,
    /// Its delivery key.
    pub key: SignalKey,
    /// Its payload.
    pub payload: Value,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The signal was stored; the saga consumes it at (or is woken for) its waiting step.
    New(SagaId),
    /// A signal with this name and key was stored already: nothing changed.
    Duplicate(SagaId),
}

impl Delivered {
    /// The saga the signal is for.
    pub fn saga(self) -> SagaId {
        match self {
            Delivered::New(id) | Delivered::Duplicate(id) => id,
        }
    }
}

/// Why a signal was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalRefusal {
    /// No saga was started with this start key.
    UnknownStartKey(IdempotencyKey),
    /// The saga is finished (completed, compensated or cancelled): it waits for nothing.
    Finished(SagaStatus),
    /// The saga is compensating: it waits for nothing any more.
    Compensating,
    /// The saga's type has no step waiting for a signal of this name.
    NotAwaited {
        /// The saga's type.
        saga_type: SagaType,
        /// The signal's name.
        name: String,
    },
    /// The payload does not decode as the waiting step's signal type.
    Payload(String),
    /// A signal of this name was already delivered to the saga, with another key: each name
    /// is delivered once.
    AlreadyDelivered {
        /// The key it was delivered with.
        key: SignalKey,
    },
    /// The signal name is malformed.
    BadName(String),
    /// The signal key is empty, over 200 bytes, or holds a NUL character.
    BadKey(String),
    /// The step that waits for this signal is already settled (completed — by a default at its
    /// timeout, say — or failed): the signal would change nothing.
    TooLate {
        /// The step.
        step: StepName,
    },
}

impl fmt::Display for SignalRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalRefusal::UnknownStartKey(key) => write!(
                f,
                "no saga was started with key `{key}`; check the key, or signal the saga by id"
            ),
            SignalRefusal::Finished(status) => write!(
                f,
                "the saga is already {status} and waits for nothing; a late signal changes nothing"
            ),
            SignalRefusal::Compensating => write!(
                f,
                "the saga is compensating and waits for nothing any more"
            ),
            SignalRefusal::NotAwaited { saga_type, name } => write!(
                f,
                "no step of saga type `{saga_type}` waits for a signal named `{name}`; check the name"
            ),
            SignalRefusal::Payload(reason) => write!(
                f,
                "the payload does not decode as the waiting step's signal type: {reason}"
            ),
            SignalRefusal::AlreadyDelivered { key } => write!(
                f,
                "a signal of this name was already delivered with key `{key}`; each signal is delivered once (send it again with that key to be told it is a duplicate)"
            ),
            SignalRefusal::BadName(reason) | SignalRefusal::BadKey(reason) => f.write_str(reason),
            SignalRefusal::TooLate { step } => write!(
                f,
                "step `{step}`, which waits for it, is already settled (its wait ended); the signal would change nothing"
            ),
        }
    }
}

/// A person's decision on an approval step: what an approved step's output holds, and what a
/// rejection's reason is recorded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Approved (`true`) or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Why.
    pub reason: String,
}

/// Who may approve or reject which saga type's approval steps: the authorization hook of
/// [`Admin::approve`](crate::Admin::approve). Implemented for closures
/// `Fn(&str, &SagaType, &StepName) -> bool` and by [`Approvers`].
pub trait ApprovalPolicy: Send + Sync + 'static {
    /// Whether `who` may decide approval step `step` of a saga of type `saga_type`.
    fn may_decide(&self, who: &str, saga_type: &SagaType, step: &StepName) -> bool;
}

impl<F> ApprovalPolicy for F
where
    F: Fn(&str, &SagaType, &StepName) -> bool + Send + Sync + 'static,
{
    fn may_decide(&self, who: &str, saga_type: &SagaType, step: &StepName) -> bool {
        self(who, saga_type, step)
    }
}

/// A table of approvers per saga type (`*`: any type), read from text such as
/// `promotion=alice,bob;refund=carol;*=root`.
///
/// ```
/// use saga_core::{ApprovalPolicy, Approvers, SagaType, StepName};
///
/// let approvers: Approvers = "promotion=alice,bob; *=root".parse()?;
/// let step = StepName::new("approve_budget");
/// assert!(approvers.may_decide("alice", &SagaType::new("promotion"), &step));
/// assert!(!approvers.may_decide("alice", &SagaType::new("refund"), &step));
/// assert!(approvers.may_decide("root", &SagaType::new("refund"), &step));
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approvers {
    by_type: BTreeMap<String, Vec<String>>,
}

impl std::str::FromStr for Approvers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((saga_type, names)) = entry.split_once('=') else {
                return Err(format!(
                    "approvers entry `{entry}` has no `=`; write `saga_type=name,name` (or `*=name` for every type), entries separated by `;`"
                ));
            };
            let names: Vec<String> = names
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect();
            if saga_type.trim().is_empty() || names.is_empty() {
                return Err(format!(
                    "approvers entry `{entry}` needs a saga type and at least one name"
                ));
            }
            by_type
                .entry(saga_type.trim().to_owned())
                .or_default()
                .extend(names);
        }
        Ok(Self { by_type })
    }
}

impl ApprovalPolicy for Approvers {
    fn may_decide(&self, who: &str, saga_type: &SagaType, _step: &StepName) -> bool {
        [saga_type.as_str(), "*"].iter().any(|key| {
            self.by_type
                .get(*key)
                .is_some_and(|names| names.iter().any(|name| name == who))
        })
    }
}
