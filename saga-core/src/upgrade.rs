//! The upgrade check, before a deploy: which sagas in flight the build about to ship could not
//! resume, read from the store and judged against that build's definitions.
//!
//! A worker resumes a saga on the definition registered for the saga's type and version, and
//! only if its fingerprint is the one the saga recorded at start; otherwise it parks the saga in
//! `needs_intervention`. [`check`] asks the same questions of every saga in flight, before any
//! worker of the new build does:
//!
//! - is the saga's type registered ([`FindingKind::TypeNotRegistered`]), and its version
//!   ([`FindingKind::VersionNotRegistered`])?
//! - is the fingerprint the one the saga recorded ([`FindingKind::FingerprintChanged`]: the
//!   definition changed without a version bump)? The finding names the first step the saga
//!   recorded that is no longer at its index, if any;
//! - does every step the saga recorded (began or finished) still sit at its index
//!   ([`FindingKind::StepsMoved`])? A computed fingerprint covers step names and order, so this
//!   only fails when a fingerprint was pinned by hand
//!   ([`SagaDefinition::with_fingerprint`](crate::SagaDefinition::with_fingerprint)) and the
//!   steps changed under it: a worker would then run the saga against the wrong steps;
//! - does the stored input decode as the definition's input type
//!   ([`FindingKind::InputUndecodable`])? The derive's fingerprint covers the input type's name,
//!   not its fields, and a hand-written definition's covers neither.
//!
//! Sagas in flight are those a worker may still pick up: [`IN_FLIGHT`] (`running`,
//! `compensating`, and `needs_intervention`, since an operator's retry sends a saga back to a
//! worker). Finished sagas (`completed`, `compensated`, `cancelled`) never run again and are not
//! read. The check reads the store page by page ([`Check::page_size`]) and keeps only counts and
//! a few example ids per finding, so it runs on a store of any size; it writes nothing. Each
//! saga whose version is registered is read with its steps (one read per saga, a few at once).
//!
//! ```
//! # use std::sync::Arc;
//! # use saga_core::{Config, MemoryStore, Orchestrator, Saga, SagaDefinition, Step, StepContext, StepError, Store};
//! use saga_core::upgrade::{self, Definitions, FindingKind};
//! # struct CheckoutV1;
//! # struct CheckoutV2;
//! # async fn reserve<S>(_: Arc<S>, _: StepContext<u32>) -> Result<(), StepError> { Ok(()) }
//! # impl Saga for CheckoutV1 {
//! #     type Input = u32;
//! #     fn definition() -> SagaDefinition<Self> {
//! #         SagaDefinition::new("checkout", 1).step(Step::new("reserve_stock", reserve).irreversible())
//! #     }
//! # }
//! # impl Saga for CheckoutV2 {
//! #     type Input = u32;
//! #     fn definition() -> SagaDefinition<Self> {
//! #         SagaDefinition::new("checkout", 2)
//! #             .step(Step::new("check_fraud", reserve).irreversible())
//! #             .step(Step::new("reserve_stock", reserve).irreversible())
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), saga_core::Error> {
//! let store = Arc::new(MemoryStore::new());
//! let running = Orchestrator::new(store.clone(), Config::default());
//! running.register(CheckoutV1)?;
//! running.start::<CheckoutV1>(&7).await?; // in flight on v1 (no worker runs here)
//!
//! // A build that dropped v1 strands it...
//! let report = upgrade::check(store.as_ref(), &Definitions::new().with::<CheckoutV2>()).await?;
//! assert_eq!(report.stranded, 1);
//! assert_eq!(report.groups[0].findings[0].kind, FindingKind::VersionNotRegistered);
//! assert_eq!(report.exit_code(), upgrade::STRANDED_EXIT_CODE);
//!
//! // ...one that keeps it registered beside v2 does not.
//! let both = Definitions::new().with::<CheckoutV1>().with::<CheckoutV2>();
//! let report = upgrade::check(store.as_ref(), &both).await?;
//! assert!(report.is_compatible());
//! assert_eq!(report.exit_code(), 0);
//! # Ok(())
//! # }
//! ```

mod definitions;
mod report;

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::Result;
use crate::id::{SagaId, SagaType, StepName};
use crate::status::SagaStatus;
use crate::store::{SagaFilter, SagaRecord, StepRecord, Store};

pub use definitions::{Definition, Definitions};
pub use report::{
    Finding, FindingKind, Group, StatusCounts, StepMismatch, UpgradeReport, STRANDED_EXIT_CODE,
};

/// The statuses of sagas in flight: those a worker may still pick up, directly or after an
/// operator's retry.
pub const IN_FLIGHT: [SagaStatus; 3] = [
    SagaStatus::Running,
    SagaStatus::Compensating,
    SagaStatus::NeedsIntervention,
];

/// How many sagas are read with their steps at once.
const LOADS_AT_ONCE: usize = 8;

/// Checks every saga in flight in `store` against `definitions`, the definitions of the build
/// about to ship, with the default settings of [`Check`]. Writes nothing.
///
/// # Errors
/// Store errors (reading a page of sagas or one saga's steps).
pub async fn check(store: &dyn Store, definitions: &Definitions) -> Result<UpgradeReport> {
    Check::default().run(store, definitions).await
}

/// The upgrade check with its settings: how many example ids per finding, how many sagas per
/// page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    examples: usize,
    page_size: u32,
}

impl Default for Check {
    fn default() -> Self {
        Self {
            examples: 5,
            page_size: 500,
        }
    }
}

impl Check {
    /// At most this many example saga ids per finding (default 5).
    pub fn examples(mut self, examples: usize) -> Self {
        self.examples = examples;
        self
    }

    /// Sagas read per page (default 500, at least 1).
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// Checks every saga in flight in `store` against `definitions`. The store keeps changing
    /// while the check reads it: a saga that finishes meanwhile may or may not be counted, and
    /// one that changes status between the passes (one per status in [`IN_FLIGHT`]) may be
    /// counted twice.
    ///
    /// # Errors
    /// Store errors (reading a page of sagas or one saga's steps).
    pub async fn run(&self, store: &dyn Store, definitions: &Definitions) -> Result<UpgradeReport> {
        let mut tally = Tally::default();
        for status in IN_FLIGHT {
            let mut after = None;
            loop {
                let page = store
                    .list(&SagaFilter {
                        status: Some(status),
                        after,
                        limit: Some(self.page_size),
                        ..SagaFilter::default()
                    })
                    .await?;
                let Some(last) = page.last() else {
                    break;
                };
                after = Some(last.id);
                let full = page.len() >= usize::try_from(self.page_size).unwrap_or(usize::MAX);
                let judged: Vec<Option<Judged>> = stream::iter(page)
                    .map(|record| judge(store, definitions, record))
                    .buffered(LOADS_AT_ONCE)
                    .try_collect()
                    .await?;
                for judged in judged.into_iter().flatten() {
                    tally.add(judged, self.examples);
                }
                if !full {
                    break;
                }
            }
        }
        Ok(tally.report())
    }
}

/// One saga in flight and what keeps the new build from resuming it, if anything.
struct Judged {
    id: SagaId,
    saga_type: SagaType,
    version: u32,
    fingerprint: String,
    status: SagaStatus,
    verdict: Option<Verdict>,
}

/// What keeps the new build from resuming one saga.
struct Verdict {
    kind: FindingKind,
    step: Option<StepMismatch>,
    reason: String,
}

/// Judges one saga as a worker of the new build would, before it runs anything; `None` when the
/// saga finished or was pruned since it was listed.
async fn judge(
    store: &dyn Store,
    definitions: &Definitions,
    record: SagaRecord,
) -> Result<Option<Judged>> {
    let judged = |record: SagaRecord, verdict| Judged {
        id: record.id,
        saga_type: record.saga_type,
        version: record.version,
        fingerprint: record.fingerprint,
        status: record.status,
        verdict,
    };
    let Some(definition) = definitions.get(&record.saga_type, record.version) else {
        let versions = definitions.versions(&record.saga_type);
        let verdict = if versions.is_empty() {
            Verdict {
                kind: FindingKind::TypeNotRegistered,
                step: None,
                reason: format!(
                    "saga type `{}` is not registered in this build; keep registering it (every version sagas are in flight on) until they finish, or settle them first (`saga sagas list --type {}`)",
                    record.saga_type, record.saga_type
                ),
            }
        } else {
            Verdict {
                kind: FindingKind::VersionNotRegistered,
                step: None,
                reason: format!(
                    "version {} of `{}` is not registered in this build (it registers {}); keep registering the type that declares version {} until its sagas finish",
                    record.version,
                    record.saga_type,
                    list_versions(&versions),
                    record.version
                ),
            }
        };
        return Ok(Some(judged(record, Some(verdict))));
    };
    // The steps it recorded, read now: a saga moves on while the check runs.
    let Some(snapshot) = store.load(record.id).await? else {
        return Ok(None);
    };
    if !IN_FLIGHT.contains(&snapshot.record.status) {
        return Ok(None);
    }
    let record = snapshot.record;
    let moved = first_mismatch(&snapshot.steps, definition.steps());
    let verdict = if definition.fingerprint() != record.fingerprint {
        let what = match &moved {
            Some(moved) => moved.to_string(),
            None => "the steps these sagas recorded still line up, so what changed is a step past their position, a compensation, a wait, the input type or an action".to_owned(),
        };
        Some(Verdict {
            kind: FindingKind::FingerprintChanged,
            step: moved,
            reason: format!(
                "`{}` v{} changed without a version bump (fingerprint {} in the store, {} in this build): {what}; register the definition these sagas started on as version {} and give the changed one a new version",
                record.saga_type,
                record.version,
                record.fingerprint,
                definition.fingerprint(),
                record.version
            ),
        })
    } else if let Some(moved) = moved {
        Some(Verdict {
            kind: FindingKind::StepsMoved,
            reason: format!(
                "`{}` v{} kept its fingerprint ({}) but {moved}, so a worker would run these sagas against the wrong steps; a pinned fingerprint (`with_fingerprint`) must change with the steps: register the old steps as version {} and the new ones under a new version",
                record.saga_type, record.version, record.fingerprint, record.version
            ),
            step: Some(moved),
        })
    } else if let Err(err) = definition.decode_input(&record.input) {
        Some(Verdict {
            kind: FindingKind::InputUndecodable,
            step: None,
            reason: format!(
                "the stored input does not decode as the input type of `{}` v{} in this build (first seen: {err}); keep the type able to read old inputs (new fields optional or `#[serde(default)]`), or register the old definition as version {} and the new one under a new version",
                record.saga_type, record.version, record.version
            ),
        })
    } else {
        None
    };
    Ok(Some(judged(record, verdict)))
}

/// Versions as text: `2`, `2 and 3`, `1, 2 and 3`.
fn list_versions(versions: &[u32]) -> String {
    let words: Vec<String> = versions
        .iter()
        .map(|version| format!("v{version}"))
        .collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "none".to_owned(),
    }
}

/// The first step (by index) a saga recorded that `steps` no longer has at the same index.
fn first_mismatch(recorded: &[StepRecord], steps: &[StepName]) -> Option<StepMismatch> {
    let mut recorded: Vec<&StepRecord> = recorded.iter().collect();
    recorded.sort_by_key(|step| step.index);
    recorded.into_iter().find_map(|step| {
        let now_there = usize::try_from(step.index.0)
            .ok()
            .and_then(|index| steps.get(index));
        (now_there != Some(&step.name)).then(|| StepMismatch {
            index: step.index.0,
            recorded: step.name.clone(),
            now_there: now_there.cloned(),
            now_at: steps
                .iter()
                .position(|name| name == &step.name)
                .and_then(|at| u32::try_from(at).ok()),
        })
    })
}

/// What the check has read so far: counts and a few ids, never the sagas themselves.
#[derive(Default)]
struct Tally {
    groups: BTreeMap<(SagaType, u32, String), GroupTally>,
}

#[derive(Default)]
struct GroupTally {
    in_flight: StatusCounts,
    /// By kind and step: sagas parked for one reason, alike.
    findings: BTreeMap<(FindingKind, Option<StepMismatch>), Finding>,
}

impl Tally {
    fn add(&mut self, judged: Judged, examples: usize) {
        let group = self
            .groups
            .entry((judged.saga_type, judged.version, judged.fingerprint))
            .or_default();
        group.in_flight.count(judged.status);
        let Some(verdict) = judged.verdict else {
            return;
        };
        let finding = group
            .findings
            .entry((verdict.kind, verdict.step.clone()))
            .or_insert_with(|| Finding {
                kind: verdict.kind,
                step: verdict.step,
                reason: verdict.reason,
                sagas: 0,
                examples: Vec::new(),
            });
        finding.sagas += 1;
        if finding.examples.len() < examples && !finding.examples.contains(&judged.id) {
            finding.examples.push(judged.id);
        }
    }

    fn report(self) -> UpgradeReport {
        let groups: Vec<Group> = self
            .groups
            .into_iter()
            .map(|((saga_type, version, fingerprint), tally)| Group {
                saga_type,
                version,
                fingerprint,
                in_flight: tally.in_flight,
                findings: tally.findings.into_values().collect(),
            })
            .collect();
        UpgradeReport {
            in_flight: groups.iter().map(|group| group.in_flight.total()).sum(),
            stranded: groups.iter().map(Group::stranded).sum(),
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Attempt, IdempotencyKey, StepIndex};
    use crate::status::{Phase, StepStatus};

    fn recorded(index: u32, name: &str) -> StepRecord {
        StepRecord {
            index: StepIndex(index),
            phase: Phase::Action,
            name: StepName::new(name),
            status: StepStatus::Completed,
            attempt: Attempt(1),
            idempotency_key: IdempotencyKey::new(format!("k-{name}")),
            output: None,
            last_error: None,
            next_attempt_at: None,
            started_at: None,
            finished_at: None,
        }
    }

    fn names(names: &[&str]) -> Vec<StepName> {
        names.iter().map(|name| StepName::new(*name)).collect()
    }

    #[test]
    fn steps_that_line_up_or_were_added_past_the_position_match() {
        let recorded = [recorded(0, "reserve"), recorded(1, "charge")];
        assert_eq!(
            first_mismatch(&recorded, &names(&["reserve", "charge"])),
            None
        );
        assert_eq!(
            first_mismatch(&recorded, &names(&["reserve", "charge", "email"])),
            None
        );
        assert_eq!(first_mismatch(&[], &names(&["other"])), None);
    }

    #[test]
    fn a_step_inserted_before_the_position_moves_the_recorded_ones() {
        let recorded = [recorded(1, "charge"), recorded(0, "reserve")];
        let moved = first_mismatch(&recorded, &names(&["fraud", "reserve", "charge"]));
        assert_eq!(
            moved,
            Some(StepMismatch {
                index: 0,
                recorded: StepName::new("reserve"),
                now_there: Some(StepName::new("fraud")),
                now_at: Some(1),
            })
        );
        assert_eq!(
            moved.map(|moved| moved.to_string()).as_deref(),
            Some("step `reserve`, recorded at index 0, is now at index 1 (index 0 is now `fraud`)")
        );
    }

    #[test]
    fn a_removed_step_is_named_removed() {
        let recorded = [recorded(0, "reserve"), recorded(1, "charge")];
        let removed = first_mismatch(&recorded, &names(&["reserve"]));
        assert_eq!(
            removed.map(|removed| removed.to_string()).as_deref(),
            Some("step `charge`, recorded at index 1, was removed (the definition now ends before index 1)")
        );
    }

    #[test]
    fn versions_read_as_a_list() {
        assert_eq!(list_versions(&[2]), "v2");
        assert_eq!(list_versions(&[2, 3]), "v2 and v3");
        assert_eq!(list_versions(&[1, 2, 3]), "v1, v2 and v3");
    }
}
