//! A saga's history as an operator reads it, and a stable text rendering for tests and tools.

use std::fmt::Write as _;

use crate::store::{Event, EventKind};

/// The events of one saga, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// The events.
    pub events: Vec<Event>,
}

impl History {
    /// One line per event, leaving out ids, timestamps and worker names so that the text is the
    /// same on every run and every backend.
    ///
    /// ```text
    /// saga started  checkout v1
    /// reserve_stock  action  started  attempt=1
    /// reserve_stock  action  completed  attempt=1
    /// ```
    pub fn render(&self) -> String {
        self.lines(false)
    }

    /// [`render`](Self::render), but with the ids of related sagas kept (a child a step
    /// started, the parent that started this saga), so that an operator can follow them.
    pub fn render_with_ids(&self) -> String {
        self.lines(true)
    }

    fn lines(&self, ids: bool) -> String {
        let mut out = String::new();
        for event in &self.events {
            let step = event.step.as_ref().map_or("", |step| step.as_str());
            let phase = event.phase.map_or("", |phase| phase.as_str());
            let attempt = event.attempt.map_or(0, |attempt| attempt.0);
            let detail = event.detail.as_deref().unwrap_or("");
            let detail = &if ids {
                detail.to_owned()
            } else {
                without_ids(detail)
            };
            let line = match event.kind {
                EventKind::SagaStarted => format!("saga started  {detail}"),
                EventKind::StepStarted => format!("{step}  {phase}  started  attempt={attempt}"),
                EventKind::StepCompleted => {
                    format!("{step}  {phase}  completed  attempt={attempt}")
                }
                EventKind::RetryScheduled => {
                    format!("{step}  {phase}  retry  attempt={attempt}  {detail}")
                }
                EventKind::StepFailed => {
                    format!("{step}  {phase}  failed  attempt={attempt}  {detail}")
                }
                EventKind::StatusChanged => format!("saga {detail}"),
                EventKind::InterventionOpened => format!("intervention opened  {detail}"),
                EventKind::LeaseTakenOver => "lease taken over".to_owned(),
                EventKind::OperatorAction => format!("operator {detail}"),
                EventKind::OutcomeUnknown => {
                    format!("{step}  {phase}  outcome unknown  attempt={attempt}  {detail}")
                }
                EventKind::Waiting => format!("{step}  waiting  {detail}"),
                EventKind::SignalReceived => format!("signal received  {detail}"),
                EventKind::StepSkipped => format!("{step}  {phase}  skipped  {detail}"),
                EventKind::Held => format!("held  {step}  {detail}"),
                EventKind::ChildStarted => format!("{step}  child started  {detail}"),
            };
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// `detail` with every saga id (a child's, a parent's) written `<id>`.
fn without_ids(detail: &str) -> String {
    detail
        .split(' ')
        .map(|word| {
            let bare = word.trim_end_matches([',', ')', ':', '.']);
            if bare.len() == 36 && bare.parse::<uuid::Uuid>().is_ok() {
                word.replacen(bare, "<id>", 1)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
