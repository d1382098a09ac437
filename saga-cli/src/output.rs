//! What the CLI prints: aligned tables for people, JSON (`--json`) for scripts. Sagas are
//! printed in `sagas`, approvals in `approvals`, pauses in `pauses`, the intervention queue here.

use chrono::SecondsFormat;
use saga::{BatchResult, Intervention, InterventionId, SagaStatus, Timestamp};
use serde_json::{json, Value};

/// Writes a line to stdout; a closed pipe (`saga ... | head`) ends the output quietly instead
/// of panicking the way `println!` does.
macro_rules! emit {
    () => {
        emit!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub(crate) mod approvals;
pub(crate) mod pauses;
mod sagas;

/// Prints results as tables or JSON.
pub(crate) struct Output {
    json: bool,
}

/// A time in a table: UTC, to the millisecond.
fn time(at: Timestamp) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// A time in JSON: RFC 3339 with its offset (`2026-12-06T09:00:00.000Z`), so that scripts
/// need not guess the zone.
fn json_time(at: Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn opt_time(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), time)
}

/// At most `max` characters of `text`, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Rows padded into columns; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (n, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if n == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn item_json(item: &Intervention) -> Value {
    json!({
        "id": item.item.id,
        "saga_id": item.saga_id,
        "kind": item.item.kind.as_str(),
        "step": item.item.step.as_ref().map(|(_, name)| name.as_str()),
        "phase": item.item.phase,
        "idempotency_key": item.item.idempotency_key.as_ref().map(|key| key.as_str()),
        "input": item.item.input,
        "output": item.item.output,
        "error": item.item.error,
        "status": item.status.as_str(),
        "opened_at": json_time(item.opened_at),
        "resolved_at": item.resolved_at.map(json_time),
        "resolved_by": item.resolved_by,
        "resolution": item.resolution,
        "resolution_reason": item.resolution_reason,
    })
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether results print as JSON.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints one line of text.
    pub(crate) fn line(&self, text: &str) {
        emit!("{text}");
    }

    /// Prints a JSON value, pretty.
    pub(crate) fn print_json(&self, value: &Value) {
        emit!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }

    pub(crate) fn interventions(&self, items: &[Intervention]) {
        if self.json {
            return self.print_json(&Value::Array(items.iter().map(item_json).collect()));
        }
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|item| {
                vec![
                    item.item.id.to_string(),
                    item.saga_id.to_string(),
                    item.item.kind.as_str().to_owned(),
                    item.item
                        .step
                        .as_ref()
                        .map_or("-".to_owned(), |(_, name)| name.to_string()),
                    item.status.as_str().to_owned(),
                    time(item.opened_at),
                    clip(&item.item.error, 80),
                ]
            })
            .collect();
        emit!(
            "{}",
            table(
                &["ID", "SAGA", "KIND", "STEP", "STATUS", "OPENED", "ERROR"],
                &rows
            )
        );
        emit!(
            "({} item{})",
            items.len(),
            if items.len() == 1 { "" } else { "s" }
        );
    }

    pub(crate) fn intervention(&self, item: &Intervention) {
        if self.json {
            return self.print_json(&item_json(item));
        }
        let pretty = |value: &Option<Value>| {
            value.as_ref().map_or("-".to_owned(), |value| {
                serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
            })
        };
        let fields = [
            ("item", item.item.id.to_string()),
            ("saga", item.saga_id.to_string()),
            ("kind", item.item.kind.as_str().to_owned()),
            ("status", item.status.as_str().to_owned()),
            (
                "step",
                match (&item.item.step, item.item.phase) {
                    (Some((_, name)), Some(phase)) => format!("{name} ({phase})"),
                    (Some((_, name)), None) => name.to_string(),
                    _ => "-".to_owned(),
                },
            ),
            (
                "key",
                item.item
                    .idempotency_key
                    .as_ref()
                    .map_or("-".to_owned(), |key| key.to_string()),
            ),
            ("error", item.item.error.clone()),
            ("opened", time(item.opened_at)),
            ("settled", opt_time(item.resolved_at)),
            ("by", item.resolved_by.clone().unwrap_or_else(|| "-".into())),
            ("how", item.resolution.clone().unwrap_or_else(|| "-".into())),
            (
                "why",
                item.resolution_reason.clone().unwrap_or_else(|| "-".into()),
            ),
            ("input", pretty(&item.item.input)),
            ("output", pretty(&item.item.output)),
        ];
        for (name, value) in fields {
            emit!("{name:<8} {value}");
        }
    }

    pub(crate) fn settled(&self, id: InterventionId, action: &str, status: SagaStatus) {
        if self.json {
            return self.print_json(
                &json!({ "intervention": id, "action": action, "saga_status": status }),
            );
        }
        emit!("intervention {id}: {action} recorded; the saga is now {status}");
    }

    pub(crate) fn batch(&self, results: &[BatchResult]) {
        if self.json {
            let items: Vec<Value> = results
                .iter()
                .map(|result| match &result.outcome {
                    Ok(status) => json!({ "intervention": result.intervention, "saga": result.saga, "saga_status": status }),
                    Err(err) => json!({ "intervention": result.intervention, "saga": result.saga, "error": err.to_string() }),
                })
                .collect();
            return self.print_json(&Value::Array(items));
        }
        for result in results {
            match &result.outcome {
                Ok(status) => emit!(
                    "intervention {}: retry recorded; saga {} is now {status}",
                    result.intervention,
                    result.saga
                ),
                Err(err) => emit!("intervention {}: refused: {err}", result.intervention),
            }
        }
        let refused = results
            .iter()
            .filter(|result| result.outcome.is_err())
            .count();
        emit!("({} retried, {refused} refused)", results.len() - refused);
    }
}
