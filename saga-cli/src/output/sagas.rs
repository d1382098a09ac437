//! What the CLI prints about sagas: lists, one saga with its steps, waits and signals, its
//! history, a cancel.

use saga::policy::PAUSED;
use saga::PauseScope;
use saga::{
    CancelOutcome, History, SagaId, SagaRecord, SagaSnapshot, SagaType, StepName, StepRecord,
    StepStatus,
};
use serde_json::{json, Value};

use super::pauses::resume_command;
use super::{clip, json_time, opt_time, table, time, Output};

/// The prefix of `waiting_for` of a saga a policy holds back (`policy:rate_limit:partner`).
const HELD_BY_POLICY: &str = "policy:";
/// The prefix of `waiting_for` of a saga waiting for a concurrency slot.
const HELD_BY_CONCURRENCY: &str = "policy:concurrency:";

/// Why a step was skipped: a policy (a cap reached) made it a recorded no-op, and the store
/// keeps the reason where a failed step keeps its error.
fn skip_reason(step: &StepRecord) -> Option<&str> {
    (step.status == StepStatus::Skipped)
        .then_some(step.last_error.as_deref())
        .flatten()
}

/// A step's last error: none for a skipped step, whose `last_error` holds why it was skipped.
fn last_error(step: &StepRecord) -> Option<&str> {
    (step.status != StepStatus::Skipped)
        .then_some(step.last_error.as_deref())
        .flatten()
}

/// A saga record as JSON (`sagas list`, and `show` with its steps and signals added).
fn saga_json(record: &SagaRecord) -> Value {
    json!({
        "id": record.id,
        "type": record.saga_type.as_str(),
        "version": record.version,
        "status": record.status,
        "reason": record.status_reason,
        "idempotency_key": record.idempotency_key.as_ref().map(|key| key.as_str()),
        "input": record.input,
        "next_run_at": record.next_run_at.map(json_time),
        "lease_owner": record.lease_owner.as_ref().map(|owner| owner.as_str()),
        "lease_expires_at": record.lease_expires_at.map(json_time),
        "cancel_requested": record.cancel_requested,
        "created_at": json_time(record.created_at),
        "updated_at": json_time(record.updated_at),
        "waiting_for": record.waiting_for,
        "signals_received": record.signals_received,
        "parent": record.parent.as_ref().map(|parent| json!({
            "saga": parent.saga,
            "step": parent.step.as_str(),
        })),
    })
}

/// Until when a saga waits: the end of its wait, or `-` while it waits for its signal alone.
fn until(record: &SagaRecord) -> String {
    match (&record.waiting_for, record.next_run_at) {
        (Some(_), Some(at)) => time(at),
        _ => "-".to_owned(),
    }
}

/// What a saga held back before a step waits for, as `saga show` says it: a pause lasts until an
/// operator lifts it, a concurrency slot until another saga frees it (the worker looks again at
/// `next_run_at` either way), a rate limit until its window lets an attempt through.
fn held_text(held: &str, record: &SagaRecord) -> String {
    let again = record
        .next_run_at
        .map(|at| format!("; checked again at {}", time(at)))
        .unwrap_or_default();
    if let Some(scope) = held.strip_prefix(PAUSED) {
        format!(
            "{held} until resumed (`{}`; `saga pauses` says who paused it and why){again}",
            resume_command(&paused_scope(scope))
        )
    } else if held.starts_with(HELD_BY_CONCURRENCY) {
        format!("{held} until a running saga frees a slot{again}")
    } else {
        match record.next_run_at {
            Some(at) => format!("{held} until {}", time(at)),
            None => format!("{held} (no end recorded)"),
        }
    }
}

/// The scope of a pause from what a saga it holds waits for, less the `paused:` prefix:
/// `checkout`, or `checkout/charge_card` for one step (the form `PauseScope::waiting_for` writes).
fn paused_scope(scope: &str) -> PauseScope {
    match scope.split_once('/') {
        Some((saga_type, step)) => PauseScope {
            saga_type: SagaType::new(saga_type),
            step: Some(StepName::new(step)),
        },
        None => PauseScope {
            saga_type: SagaType::new(scope),
            step: None,
        },
    }
}

/// Whether `waiting_for` says the saga is held back before a step (a pause, a policy) rather
/// than waiting at one (a timer, a signal, an approval).
fn is_held(waiting_for: &str) -> bool {
    waiting_for.starts_with(PAUSED) || waiting_for.starts_with(HELD_BY_POLICY)
}

/// What a saga waits for and until when, as `saga show` says it.
fn waiting_text(waiting: &str, record: &SagaRecord) -> String {
    let until = match record.next_run_at {
        Some(at) => format!("until {}", time(at)),
        None if waiting.starts_with("signal:") => "until its signal comes".to_owned(),
        None => "(no end recorded)".to_owned(),
    };
    if waiting.starts_with(saga::wait::WAITING_FOR_APPROVAL) {
        format!(
            "{waiting} {until} (decide with `saga approvals approve|reject {}`)",
            record.id
        )
    } else {
        format!("{waiting} {until}")
    }
}

impl Output {
    pub(crate) fn sagas(&self, sagas: &[SagaRecord]) {
        if self.json {
            return self.print_json(&Value::Array(sagas.iter().map(saga_json).collect()));
        }
        // What a saga waits for, in two more columns, only when some listed saga waits.
        let waits = sagas.iter().any(|record| record.waiting_for.is_some());
        let rows: Vec<Vec<String>> = sagas
            .iter()
            .map(|record| {
                let mut row = vec![
                    record.id.to_string(),
                    record.saga_type.to_string(),
                    record.version.to_string(),
                    record.status.to_string(),
                ];
                if waits {
                    row.push(record.waiting_for.clone().unwrap_or_else(|| "-".into()));
                    row.push(until(record));
                }
                row.push(time(record.created_at));
                row.push(
                    record
                        .idempotency_key
                        .as_ref()
                        .map_or("-".to_owned(), |key| key.to_string()),
                );
                row
            })
            .collect();
        let header: &[&str] = if waits {
            &[
                "ID",
                "TYPE",
                "V",
                "STATUS",
                "WAITING FOR",
                "UNTIL",
                "CREATED",
                "KEY",
            ]
        } else {
            &["ID", "TYPE", "V", "STATUS", "CREATED", "KEY"]
        };
        emit!("{}", table(header, &rows));
        emit!(
            "({} saga{})",
            sagas.len(),
            if sagas.len() == 1 { "" } else { "s" }
        );
    }

    /// One saga whole: its fields, its parent and children, its steps and signals.
    pub(crate) fn saga(&self, snapshot: &SagaSnapshot, children: &[SagaRecord]) {
        let record = &snapshot.record;
        if self.json {
            let mut value = saga_json(record);
            value["children"] = Value::Array(
                children
                    .iter()
                    .map(|child| {
                        json!({
                            "id": child.id,
                            "type": child.saga_type.as_str(),
                            "status": child.status,
                            "step": child.parent.as_ref().map(|parent| parent.step.as_str()),
                        })
                    })
                    .collect(),
            );
            value["steps"] = Value::Array(
                snapshot
                    .steps
                    .iter()
                    .map(|step| {
                        json!({
                            "index": step.index.0,
                            "step": step.name.as_str(),
                            "phase": step.phase,
                            "status": step.status,
                            "attempt": step.attempt.0,
                            "idempotency_key": step.idempotency_key.as_str(),
                            "output": step.output,
                            "last_error": last_error(step),
                            "skip_reason": skip_reason(step),
                            "next_attempt_at": step.next_attempt_at.map(json_time),
                            "started_at": step.started_at.map(json_time),
                            "finished_at": step.finished_at.map(json_time),
                        })
                    })
                    .collect(),
            );
            value["signals"] = Value::Array(
                snapshot
                    .signals
                    .iter()
                    .map(|signal| {
                        json!({
                            "name": signal.name,
                            "key": signal.key.as_str(),
                            "payload": signal.payload,
                            "received_at": json_time(signal.received_at),
                        })
                    })
                    .collect(),
            );
            return self.print_json(&value);
        }
        let lease = match (&record.lease_owner, record.lease_expires_at) {
            (Some(owner), Some(until)) => format!("{owner} until {}", time(until)),
            _ => "none".to_owned(),
        };
        let fields = [
            ("saga", record.id.to_string()),
            ("type", format!("{} v{}", record.saga_type, record.version)),
            ("status", record.status.to_string()),
            (
                "reason",
                record.status_reason.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "key",
                record
                    .idempotency_key
                    .as_ref()
                    .map_or("-".to_owned(), |key| key.to_string()),
            ),
            ("input", clip(&record.input.to_string(), 100)),
            ("created", time(record.created_at)),
            ("updated", time(record.updated_at)),
            ("next run", opt_time(record.next_run_at)),
            ("lease", lease),
        ];
        for (name, value) in fields {
            emit!("{name:<9} {value}");
        }
        if let Some(request) = &record.cancel_requested {
            emit!("{:<9} {request}", "cancel");
        }
        if let Some(parent) = &record.parent {
            emit!(
                "{:<9} saga {} (its step {})",
                "parent",
                parent.saga,
                parent.step
            );
        }
        match record.waiting_for.as_deref() {
            Some(held) if is_held(held) => emit!("{:<9} {}", "held", held_text(held, record)),
            Some(waiting) => emit!("{:<9} {}", "waiting", waiting_text(waiting, record)),
            None => {}
        }
        emit!();
        let rows: Vec<Vec<String>> = snapshot
            .steps
            .iter()
            .map(|step| {
                vec![
                    step.name.to_string(),
                    step.phase.to_string(),
                    step.status.to_string(),
                    step.attempt.to_string(),
                    step.output
                        .as_ref()
                        .map_or("-".to_owned(), |output| clip(&output.to_string(), 40)),
                    last_error(step).unwrap_or("-").to_owned(),
                ]
            })
            .collect();
        emit!(
            "{}",
            table(
                &["STEP", "PHASE", "STATUS", "ATTEMPT", "OUTPUT", "LAST ERROR"],
                &rows
            )
        );
        if !children.is_empty() {
            let rows: Vec<Vec<String>> = children
                .iter()
                .map(|child| {
                    vec![
                        child
                            .parent
                            .as_ref()
                            .map_or("-".to_owned(), |parent| parent.step.to_string()),
                        child.id.to_string(),
                        child.saga_type.to_string(),
                        child.status.to_string(),
                    ]
                })
                .collect();
            emit!();
            emit!("{}", table(&["STEP", "CHILD", "TYPE", "STATUS"], &rows));
        }
        let skipped: Vec<Vec<String>> = snapshot
            .steps
            .iter()
            .filter(|step| step.status == StepStatus::Skipped)
            .map(|step| {
                vec![
                    step.name.to_string(),
                    skip_reason(step).unwrap_or("-").to_owned(),
                ]
            })
            .collect();
        if !skipped.is_empty() {
            emit!();
            emit!("{}", table(&["SKIPPED", "WHY"], &skipped));
        }
        if !snapshot.signals.is_empty() {
            let rows: Vec<Vec<String>> = snapshot
                .signals
                .iter()
                .map(|signal| {
                    vec![
                        signal.name.clone(),
                        time(signal.received_at),
                        clip(signal.key.as_str(), 60),
                    ]
                })
                .collect();
            emit!();
            emit!("{}", table(&["SIGNAL", "RECEIVED", "KEY"], &rows));
        }
    }

    pub(crate) fn history(&self, id: SagaId, history: &History) {
        if self.json {
            let events: Vec<Value> = history
                .events
                .iter()
                .map(|event| {
                    json!({
                        "seq": event.seq,
                        "at": json_time(event.at),
                        "kind": event.kind.as_str(),
                        "step": event.step.as_ref().map(|step| step.as_str()),
                        "phase": event.phase,
                        "attempt": event.attempt.map(|attempt| attempt.0),
                        "detail": event.detail,
                    })
                })
                .collect();
            return self.print_json(&json!({ "saga": id, "events": events }));
        }
        let rendered = history.render_with_ids();
        for (event, line) in history.events.iter().zip(rendered.lines()) {
            emit!("{}  {line}", time(event.at));
        }
    }

    pub(crate) fn cancelled(&self, id: SagaId, outcome: CancelOutcome) {
        let text = match outcome {
            CancelOutcome::Compensating => "compensating now",
            CancelOutcome::Requested => {
                "cancel requested; the worker holding it begins no further step and compensates"
            }
            CancelOutcome::AlreadyCompensating => "already compensating; nothing to do",
        };
        if self.json {
            return self.print_json(&json!({ "saga": id, "outcome": text }));
        }
        emit!("saga {id}: {text}");
    }
}

#[cfg(test)]
mod tests {
    use super::{is_held, paused_scope};
    use saga::PauseScope;

    #[test]
    fn a_pause_is_read_back_from_what_the_sagas_it_holds_wait_for() {
        for scope in [
            PauseScope {
                saga_type: saga::SagaType::new("checkout"),
                step: None,
            },
            PauseScope {
                saga_type: saga::SagaType::new("checkout"),
                step: Some(saga::StepName::new("charge_card")),
            },
        ] {
            let waiting_for = scope.waiting_for();
            assert!(is_held(&waiting_for), "{waiting_for}");
            let rest = waiting_for.strip_prefix("paused:").unwrap_or_default();
            assert_eq!(paused_scope(rest), scope);
        }
    }

    #[test]
    fn policies_hold_and_waits_at_a_step_do_not() {
        assert!(is_held("policy:rate_limit:partner"));
        assert!(is_held("policy:concurrency:cart:42"));
        for waiting in ["signal:approval:approve_budget", "signal:paid", "timer"] {
            assert!(!is_held(waiting), "{waiting}");
        }
    }
}
