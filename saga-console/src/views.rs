//! What the console sends: stable JSON shapes of the store's records, redacted.

use chrono::SecondsFormat;
use saga_core::{
    Event, Intervention, PendingApproval, SagaRecord, SagaSnapshot, StepRecord, Timestamp,
};
use serde::Serialize;
use serde_json::Value;

use crate::redact::{redact_text, Redactor};

pub(crate) fn time(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(at: Option<Timestamp>) -> Option<String> {
    at.map(time)
}

fn redacted(redactor: &dyn Redactor, value: &Value) -> Value {
    let mut value = value.clone();
    redactor.redact(&mut value);
    value
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(context: Option<&str>) -> Option<String> {
    let mut parts = context?.split('-');
    let (_, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32).then(|| trace.to_owned())
}

#[derive(Debug, Serialize)]
pub(crate) struct SagaView {
    pub(crate) id: String,
    pub(crate) saga_type: String,
    pub(crate) version: u32,
    pub(crate) status: &'static str,
    pub(crate) status_reason: Option<String>,
    pub(crate) input: Value,
    pub(crate) start_key: Option<String>,
    pub(crate) waiting_for: Option<String>,
    pub(crate) cancel_requested: Option<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) next_run_at: Option<String>,
    pub(crate) lease_owner: Option<String>,
    pub(crate) deadline: Option<String>,
    pub(crate) trace_id: Option<String>,
    /// For a child saga: the saga whose step started it.
    pub(crate) parent_id: Option<String>,
    /// For a child saga: that step.
    pub(crate) parent_step: Option<String>,
}

impl SagaView {
    pub(crate) fn new(record: &SagaRecord, redactor: &dyn Redactor) -> Self {
        Self {
            id: record.id.to_string(),
            saga_type: record.saga_type.as_str().to_owned(),
            version: record.version,
            status: record.status.as_str(),
            status_reason: record
                .status_reason
                .as_deref()
                .map(|r| redact_text(redactor, r)),
            input: redacted(redactor, &record.input),
            start_key: record
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            waiting_for: record.waiting_for.clone(),
            cancel_requested: record
                .cancel_requested
                .as_deref()
                .map(|r| redact_text(redactor, r)),
            created_at: time(record.created_at),
            updated_at: time(record.updated_at),
            next_run_at: opt_time(record.next_run_at),
            lease_owner: record.lease_owner.as_ref().map(|w| w.as_str().to_owned()),
            deadline: opt_time(record.deadline),
            trace_id: trace_id(record.trace_context.as_deref()),
            parent_id: record.parent.as_ref().map(|parent| parent.saga.to_string()),
            parent_step: record
                .parent
                .as_ref()
                .map(|parent| parent.step.as_str().to_owned()),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct StepView {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) phase: &'static str,
    pub(crate) status: &'static str,
    pub(crate) attempt: u32,
    pub(crate) key: String,
    pub(crate) output: Option<Value>,
    pub(crate) last_error: Option<String>,
    pub(crate) next_attempt_at: Option<String>,
    pub(crate) started_at: Option<String>,
    pub(crate) finished_at: Option<String>,
    pub(crate) duration_ms: Option<i64>,
}

impl StepView {
    pub(crate) fn new(step: &StepRecord, redactor: &dyn Redactor) -> Self {
        Self {
            index: step.index.0,
            name: step.name.as_str().to_owned(),
            phase: step.phase.as_str(),
            status: step.status.as_str(),
            attempt: step.attempt.0,
            key: step.idempotency_key.as_str().to_owned(),
            output: step.output.as_ref().map(|v| redacted(redactor, v)),
            last_error: step.last_error.as_deref().map(|e| redact_text(redactor, e)),
            next_attempt_at: opt_time(step.next_attempt_at),
            started_at: opt_time(step.started_at),
            finished_at: opt_time(step.finished_at),
            duration_ms: step
                .started_at
                .zip(step.finished_at)
                .map(|(start, end)| (end - start).num_milliseconds()),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct SagaDetail {
    pub(crate) saga: SagaView,
    pub(crate) steps: Vec<StepView>,
}

impl SagaDetail {
    pub(crate) fn new(snapshot: &SagaSnapshot, redactor: &dyn Redactor) -> Self {
        Self {
            saga: SagaView::new(&snapshot.record, redactor),
            steps: snapshot
                .steps
                .iter()
                .map(|step| StepView::new(step, redactor))
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct EventView {
    pub(crate) seq: i64,
    pub(crate) at: String,
    pub(crate) kind: &'static str,
    pub(crate) step: Option<String>,
    pub(crate) phase: Option<&'static str>,
    pub(crate) attempt: Option<u32>,
    pub(crate) detail: Option<String>,
}

impl EventView {
    pub(crate) fn new(event: &Event, redactor: &dyn Redactor) -> Self {
        Self {
            seq: event.seq,
            at: time(event.at),
            kind: event.kind.as_str(),
            step: event.step.as_ref().map(|s| s.as_str().to_owned()),
            phase: event.phase.map(|p| p.as_str()),
            attempt: event.attempt.map(|a| a.0),
            detail: event.detail.as_deref().map(|d| redact_text(redactor, d)),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct InterventionView {
    pub(crate) id: String,
    pub(crate) saga_id: String,
    pub(crate) kind: &'static str,
    pub(crate) status: &'static str,
    pub(crate) step: Option<String>,
    pub(crate) step_index: Option<u32>,
    pub(crate) phase: Option<&'static str>,
    pub(crate) key: Option<String>,
    pub(crate) input: Option<Value>,
    pub(crate) output: Option<Value>,
    pub(crate) error: String,
    pub(crate) attempts: Option<u32>,
    pub(crate) trace_id: Option<String>,
    pub(crate) opened_at: String,
    pub(crate) resolved_at: Option<String>,
    pub(crate) resolved_by: Option<String>,
    pub(crate) resolution: Option<String>,
    pub(crate) resolution_reason: Option<String>,
}

impl InterventionView {
    /// `saga`, when loaded, gives the attempts of the item's step and the trace id.
    pub(crate) fn new(
        item: &Intervention,
        saga: Option<&SagaSnapshot>,
        redactor: &dyn Redactor,
    ) -> Self {
        let attempts = saga.and_then(|saga| {
            let (index, _) = item.item.step.as_ref()?;
            let phase = item.item.phase?;
            Some(saga.step(*index, phase)?.attempt.0)
        });
        Self {
            id: item.item.id.to_string(),
            saga_id: item.saga_id.to_string(),
            kind: item.item.kind.as_str(),
            status: item.status.as_str(),
            step: item
                .item
                .step
                .as_ref()
                .map(|(_, name)| name.as_str().to_owned()),
            step_index: item.item.step.as_ref().map(|(index, _)| index.0),
            phase: item.item.phase.map(|p| p.as_str()),
            key: item
                .item
                .idempotency_key
                .as_ref()
                .map(|k| k.as_str().to_owned()),
            input: item.item.input.as_ref().map(|v| redacted(redactor, v)),
            output: item.item.output.as_ref().map(|v| redacted(redactor, v)),
            error: redact_text(redactor, &item.item.error),
            attempts,
            trace_id: saga.and_then(|s| trace_id(s.record.trace_context.as_deref())),
            opened_at: time(item.opened_at),
            resolved_at: opt_time(item.resolved_at),
            resolved_by: item.resolved_by.clone(),
            resolution: item.resolution.clone(),
            resolution_reason: item.resolution_reason.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ApprovalView {
    pub(crate) saga: SagaView,
    pub(crate) step: String,
    pub(crate) until: Option<String>,
}

impl ApprovalView {
    pub(crate) fn new(approval: &PendingApproval, redactor: &dyn Redactor) -> Self {
        Self {
            saga: SagaView::new(&approval.saga, redactor),
            step: approval.step.as_str().to_owned(),
            until: opt_time(approval.until),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct PauseView {
    pub(crate) id: i64,
    pub(crate) saga_type: String,
    pub(crate) step: Option<String>,
    pub(crate) paused_by: String,
    pub(crate) reason: String,
    pub(crate) paused_at: String,
    pub(crate) resumed_at: Option<String>,
    pub(crate) resumed_by: Option<String>,
    pub(crate) resume_reason: Option<String>,
}

impl PauseView {
    pub(crate) fn new(pause: &saga_core::policy::Pause) -> Self {
        Self {
            id: pause.id,
            saga_type: pause.scope.saga_type.as_str().to_owned(),
            step: pause.scope.step.as_ref().map(|s| s.as_str().to_owned()),
            paused_by: pause.paused_by.clone(),
            reason: pause.reason.clone(),
            paused_at: time(pause.paused_at),
            resumed_at: opt_time(pause.resumed_at),
            resumed_by: pause.resumed_by.clone(),
            resume_reason: pause.resume_reason.clone(),
        }
    }
}
