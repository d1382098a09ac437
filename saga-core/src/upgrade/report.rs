//! What the upgrade check found: the sagas in flight grouped by (type, version, fingerprint),
//! each group with what would keep the new build from resuming it; for people (`Display`) and
//! for pipelines (serde).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{SagaId, SagaType, StepName};
use crate::status::SagaStatus;

/// The exit code of a check that found sagas the new build would strand: distinct from the
/// `saga` CLI's codes (1 anything else, 2 bad input, 3 not found, 4 refused, 5 store
/// unavailable), so a pipeline tells "this deploy would strand sagas" from "the check could not
/// run".
pub const STRANDED_EXIT_CODE: u8 = 6;

/// The result of [`check`](super::check): every group of sagas in flight, and what would keep
/// the new build from resuming each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct UpgradeReport {
    /// Sagas in flight read (see [`IN_FLIGHT`](super::IN_FLIGHT)).
    pub in_flight: u64,
    /// Of those, sagas the new build could not resume.
    pub stranded: u64,
    /// The sagas in flight by (type, version, fingerprint), sorted so.
    pub groups: Vec<Group>,
}

impl UpgradeReport {
    /// True when the new build can resume every saga in flight.
    pub fn is_compatible(&self) -> bool {
        self.stranded == 0
    }

    /// 0 when compatible, else [`STRANDED_EXIT_CODE`] (6).
    pub fn exit_code(&self) -> u8 {
        if self.is_compatible() {
            0
        } else {
            STRANDED_EXIT_CODE
        }
    }

    /// Every finding, with its group.
    pub fn findings(&self) -> impl Iterator<Item = (&Group, &Finding)> {
        self.groups
            .iter()
            .flat_map(|group| group.findings.iter().map(move |finding| (group, finding)))
    }
}

/// The sagas in flight of one type, version and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Group {
    /// Their type.
    pub saga_type: SagaType,
    /// The version they started on.
    pub version: u32,
    /// The fingerprint they recorded at start.
    pub fingerprint: String,
    /// How many, by status.
    pub in_flight: StatusCounts,
    /// What would strand them, sagas by reason; empty when the new build resumes them all.
    pub findings: Vec<Finding>,
}

impl Group {
    /// How many of them the new build could not resume.
    pub fn stranded(&self) -> u64 {
        self.findings.iter().map(|finding| finding.sagas).sum()
    }
}

/// Sagas in flight by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusCounts {
    /// Running forward.
    pub running: u64,
    /// Compensating.
    pub compensating: u64,
    /// Waiting for an operator, who may send them back to a worker.
    pub needs_intervention: u64,
}

impl StatusCounts {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.running + self.compensating + self.needs_intervention
    }

    pub(crate) fn count(&mut self, status: SagaStatus) {
        match status {
            SagaStatus::Running => self.running += 1,
            SagaStatus::Compensating => self.compensating += 1,
            SagaStatus::NeedsIntervention => self.needs_intervention += 1,
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Cancelled => {}
        }
    }
}

/// Why sagas of a group could not be resumed, with how many and a few of their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Finding {
    /// What is wrong.
    pub kind: FindingKind,
    /// The recorded step that no longer lines up, when steps were removed or reordered behind
    /// the sagas' position.
    pub step: Option<StepMismatch>,
    /// What is wrong and what to do, in words.
    pub reason: String,
    /// How many sagas.
    pub sagas: u64,
    /// Some of their ids, in id order (creation order), at most as many as the check was asked
    /// for.
    pub examples: Vec<SagaId>,
}

/// What keeps the new build from resuming a saga; a worker of the new build would park it in
/// `needs_intervention` for each but [`FindingKind::StepsMoved`], which is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// The new build registers no version of the saga's type.
    TypeNotRegistered,
    /// The new build registers the type, but not the version the saga started on.
    VersionNotRegistered,
    /// The version is registered with another fingerprint: its definition changed without a
    /// version bump.
    FingerprintChanged,
    /// The fingerprint is the same (it was pinned by hand), yet a step the saga recorded is no
    /// longer at its index: a worker would run the saga against the wrong steps.
    StepsMoved,
    /// The stored input no longer decodes as the definition's input type.
    InputUndecodable,
}

impl FindingKind {
    /// The kind as text, as in JSON (`type_not_registered`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::TypeNotRegistered => "type_not_registered",
            FindingKind::VersionNotRegistered => "version_not_registered",
            FindingKind::FingerprintChanged => "fingerprint_changed",
            FindingKind::StepsMoved => "steps_moved",
            FindingKind::InputUndecodable => "input_undecodable",
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step a saga recorded (began or finished) that the new definition no longer has at the same
/// index: the first such, by index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepMismatch {
    /// The index the saga recorded the step at.
    pub index: u32,
    /// The step it recorded there.
    pub recorded: StepName,
    /// The new definition's step at that index (`None`: it has fewer steps).
    pub now_there: Option<StepName>,
    /// Where the recorded step is in the new definition (`None`: removed).
    pub now_at: Option<u32>,
}

impl fmt::Display for StepMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            index,
            recorded,
            now_there,
            now_at,
        } = self;
        match now_at {
            Some(at) => write!(
                f,
                "step `{recorded}`, recorded at index {index}, is now at index {at}"
            )?,
            None => write!(
                f,
                "step `{recorded}`, recorded at index {index}, was removed"
            )?,
        }
        match now_there {
            Some(there) => write!(f, " (index {index} is now `{there}`)"),
            None => write!(f, " (the definition now ends before index {index})"),
        }
    }
}

impl fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.groups.is_empty() {
            return writeln!(f, "No saga in flight: this build strands nothing (exit 0).");
        }
        for group in &self.groups {
            let counts = group.in_flight;
            let statuses: Vec<String> = [
                ("running", counts.running),
                ("compensating", counts.compensating),
                ("needs_intervention", counts.needs_intervention),
            ]
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(status, count)| format!("{count} {status}"))
            .collect();
            let verdict = match group.stranded() {
                0 => "resumable".to_owned(),
                stranded if stranded == counts.total() => "STRANDED".to_owned(),
                stranded => format!("{stranded} STRANDED"),
            };
            writeln!(
                f,
                "{} v{} (fingerprint {}): {} in flight ({}): {verdict}",
                group.saga_type,
                group.version,
                group.fingerprint,
                counts.total(),
                statuses.join(", "),
            )?;
            for finding in &group.findings {
                writeln!(
                    f,
                    "  {} × {}: {}",
                    finding.sagas, finding.kind, finding.reason
                )?;
                let examples: Vec<String> =
                    finding.examples.iter().map(ToString::to_string).collect();
                if !examples.is_empty() {
                    let more = finding.sagas.saturating_sub(examples.len() as u64);
                    let more = if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    };
                    writeln!(f, "    e.g. {}{more}", examples.join(", "))?;
                }
            }
        }
        writeln!(f)?;
        if self.is_compatible() {
            writeln!(
                f,
                "Compatible: this build resumes all {} sagas in flight (exit 0).",
                self.in_flight
            )
        } else {
            writeln!(
                f,
                "This build would strand {} of {} sagas in flight (exit {STRANDED_EXIT_CODE}); deploy it once the findings above are fixed.",
                self.stranded, self.in_flight
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SagaId {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn a_report_reads_group_by_group_with_reasons_and_examples() {
        let report = UpgradeReport {
            in_flight: 5,
            stranded: 3,
            groups: vec![
                Group {
                    saga_type: SagaType::new("checkout"),
                    version: 1,
                    fingerprint: "f1".into(),
                    in_flight: StatusCounts {
                        running: 2,
                        compensating: 0,
                        needs_intervention: 1,
                    },
                    findings: vec![Finding {
                        kind: FindingKind::VersionNotRegistered,
                        step: None,
                        reason: "version 1 of `checkout` is not registered".into(),
                        sagas: 3,
                        examples: vec![
                            id("01a24cbd-3f2c-70af-92c7-560a8a032440"),
                            id("01a24cbd-3f34-72a1-9c08-c39ebb89ba1c"),
                        ],
                    }],
                },
                Group {
                    saga_type: SagaType::new("refund"),
                    version: 2,
                    fingerprint: "f2".into(),
                    in_flight: StatusCounts {
                        running: 0,
                        compensating: 2,
                        needs_intervention: 0,
                    },
                    findings: Vec::new(),
                },
            ],
        };
        assert_eq!(
            report.to_string(),
            "\
checkout v1 (fingerprint f1): 3 in flight (2 running, 1 needs_intervention): STRANDED
  3 × version_not_registered: version 1 of `checkout` is not registered
    e.g. 01a24cbd-3f2c-70af-92c7-560a8a032440, 01a24cbd-3f34-72a1-9c08-c39ebb89ba1c and 1 more
refund v2 (fingerprint f2): 2 in flight (2 compensating): resumable

This build would strand 3 of 5 sagas in flight (exit 6); deploy it once the findings above are fixed.
"
        );
        assert_eq!((report.is_compatible(), report.exit_code()), (false, 6));
        assert_eq!(
            UpgradeReport::default().to_string(),
            "No saga in flight: this build strands nothing (exit 0).\n"
        );
    }
}
