//! Identifiers: every id and key is a newtype; raw strings and integers stop at the store boundary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::status::Phase;

/// Identity of one saga instance: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SagaId(Uuid);

impl SagaId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a UUID read back from a store.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SagaId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Name of a saga type, as registered with the orchestrator (for example `checkout`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SagaType(String);

impl SagaType {
    /// Wraps a saga type name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SagaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Name of a step inside a saga definition (for example `charge_card`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepName(String);

impl StepName {
    /// Wraps a step name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of a step in its saga definition, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepIndex(pub u32);

impl fmt::Display for StepIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Attempt number of one step phase; the first attempt is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attempt(pub u32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Attempt = Attempt(1);

    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Idempotency key of a step phase, derived only from (saga, step, phase): identical on every
/// attempt and after every restart. Pass it downstream (an `Idempotency-Key` header, a unique column).
///
/// Also used, with a caller-chosen value, as the start key of a saga (see [`IdempotencyKey::new`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A caller-chosen key, for example the `Idempotency-Key` header of the request that starts a saga.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key of one step phase of one saga.
    pub fn for_step(saga: SagaId, step: &StepName, phase: Phase) -> Self {
        Self(format!("{saga}:{step}:{}", phase.as_str()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Fencing token of a lease: grows by one on every claim of a saga. A write carrying an older
/// token than the saga's current one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identity of one worker (one orchestrator instance), recorded as the owner of the leases it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(String);

impl WorkerId {
    /// Wraps a worker name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// A unique name for this process: host-independent, `worker-<pid>-<random>`.
    pub fn generate() -> Self {
        let suffix = Uuid::now_v7().simple().to_string();
        let tail = suffix
            .get(suffix.len().saturating_sub(8)..)
            .unwrap_or(&suffix);
        Self(format!("worker-{}-{tail}", std::process::id()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identity of one manual-intervention item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InterventionId(Uuid);

impl InterventionId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps a UUID read back from a store.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for InterventionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for InterventionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for InterventionId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_key_depends_only_on_saga_step_and_phase() {
        let saga = SagaId::new();
        let step = StepName::new("charge_card");
        let a = IdempotencyKey::for_step(saga, &step, Phase::Action);
        let b = IdempotencyKey::for_step(saga, &step, Phase::Action);
        let c = IdempotencyKey::for_step(saga, &step, Phase::Compensation);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str(), format!("{saga}:charge_card:action"));
    }

    #[test]
    fn saga_ids_sort_by_creation() {
        let first = SagaId::new();
        let second = SagaId::new();
        assert!(first < second);
        assert_eq!(first, first.to_string().parse().unwrap());
    }
}
