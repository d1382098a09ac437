//! What `saga pause`, `saga resume` and `saga pauses` print: a pause with who, when and why,
//! and, once lifted, who lifted it and why.

use saga::{Pause, PauseScope};
use serde_json::{json, Value};

use super::{clip, json_time, opt_time, table, time, Output};

/// The command that lifts a pause on `scope`, as an operator types it.
pub(crate) fn resume_command(scope: &PauseScope) -> String {
    match &scope.step {
        Some(step) => format!("saga resume {} --step {step}", scope.saga_type),
        None => format!("saga resume {}", scope.saga_type),
    }
}

/// A pause as JSON (`pauses`, and `pause` / `resume` with their outcome added).
fn pause_json(pause: &Pause) -> Value {
    json!({
        "id": pause.id,
        "type": pause.scope.saga_type.as_str(),
        "step": pause.scope.step.as_ref().map(|step| step.as_str()),
        "in_force": pause.resumed_at.is_none(),
        "paused_by": pause.paused_by,
        "reason": pause.reason,
        "paused_at": json_time(pause.paused_at),
        "resumed_at": pause.resumed_at.map(json_time),
        "resumed_by": pause.resumed_by,
        "resume_reason": pause.resume_reason,
    })
}

/// `1 saga`, `2 sagas`.
fn sagas(count: u64) -> String {
    format!("{count} saga{}", if count == 1 { "" } else { "s" })
}

impl Output {
    /// A pause this call made (`new`), or the one found in force already.
    pub(crate) fn paused(&self, pause: &Pause, new: bool) {
        if self.json {
            let mut value = pause_json(pause);
            value["already_paused"] = Value::Bool(!new);
            return self.print_json(&value);
        }
        let Pause {
            scope,
            paused_by,
            reason,
            paused_at,
            ..
        } = pause;
        if new {
            emit!(
                "{scope} paused by {paused_by} at {}: {reason}",
                time(*paused_at)
            );
            emit!(
                "no new attempt of it begins; sagas that reach it wait until `{}`",
                resume_command(scope)
            );
        } else {
            emit!(
                "{scope} was paused already, by {paused_by} at {}: {reason}; nothing changed",
                time(*paused_at)
            );
        }
    }

    /// A pause lifted, and how many held sagas it made due.
    pub(crate) fn resumed(&self, pause: &Pause, woken: u64) {
        if self.json {
            let mut value = pause_json(pause);
            value["woken"] = Value::from(woken);
            return self.print_json(&value);
        }
        let by = pause.resumed_by.as_deref().unwrap_or("-");
        let why = pause.resume_reason.as_deref().unwrap_or("-");
        emit!(
            "{} resumed by {by} at {}: {why}",
            pause.scope,
            opt_time(pause.resumed_at)
        );
        emit!(
            "{} woken; it was paused by {} at {}: {}",
            sagas(woken),
            pause.paused_by,
            time(pause.paused_at),
            pause.reason
        );
    }

    /// The pauses in force, or (`all`) every pause, oldest first.
    pub(crate) fn pauses(&self, pauses: &[Pause], all: bool) {
        if self.json {
            return self.print_json(&Value::Array(pauses.iter().map(pause_json).collect()));
        }
        let rows: Vec<Vec<String>> = pauses
            .iter()
            .map(|pause| {
                let mut row = vec![
                    pause.scope.saga_type.to_string(),
                    pause
                        .scope
                        .step
                        .as_ref()
                        .map_or("*".to_owned(), ToString::to_string),
                    time(pause.paused_at),
                    pause.paused_by.clone(),
                ];
                if all {
                    // Not the last column: clipped, so that the resume columns stay readable.
                    row.push(clip(&pause.reason, 40));
                    row.push(opt_time(pause.resumed_at));
                    row.push(pause.resumed_by.clone().unwrap_or_else(|| "-".into()));
                    row.push(pause.resume_reason.clone().unwrap_or_else(|| "-".into()));
                } else {
                    row.push(pause.reason.clone());
                }
                row
            })
            .collect();
        let header: &[&str] = if all {
            &[
                "TYPE",
                "STEP",
                "PAUSED",
                "BY",
                "WHY",
                "RESUMED",
                "RESUMED BY",
                "WHY RESUMED",
            ]
        } else {
            &["TYPE", "STEP", "PAUSED", "BY", "WHY"]
        };
        emit!("{}", table(header, &rows));
        let in_force = pauses
            .iter()
            .filter(|pause| pause.resumed_at.is_none())
            .count();
        if all {
            emit!(
                "({} pause{}, {in_force} in force)",
                pauses.len(),
                if pauses.len() == 1 { "" } else { "s" }
            );
        } else {
            emit!(
                "({in_force} pause{} in force)",
                if in_force == 1 { "" } else { "s" }
            );
        }
    }
}
