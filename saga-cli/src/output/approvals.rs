//! What `saga approvals` prints: the approvals waiting, and each decision taken.

use saga::{Delivered, PendingApproval, SagaId};
use serde_json::{json, Value};

use super::{json_time, opt_time, table, time, Output};

/// Approved or rejected: what an operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Approve,
    Reject,
}

impl Decision {
    /// The verb, as a command names it.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }

    /// The past participle, as the output says it.
    fn done(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
        }
    }

    /// What a worker does next with the saga.
    fn next(self) -> &'static str {
        match self {
            Decision::Approve => "the step completes and the saga goes on",
            Decision::Reject => "the step fails and the saga compensates",
        }
    }
}

impl Output {
    pub(crate) fn approvals(&self, pending: &[PendingApproval]) {
        if self.json {
            let items: Vec<Value> = pending
                .iter()
                .map(|approval| {
                    json!({
                        "saga": approval.saga.id,
                        "type": approval.saga.saga_type.as_str(),
                        "step": approval.step.as_str(),
                        "until": approval.until.map(json_time),
                        "idempotency_key": approval.saga.idempotency_key.as_ref().map(|key| key.as_str()),
                        "created_at": json_time(approval.saga.created_at),
                    })
                })
                .collect();
            return self.print_json(&Value::Array(items));
        }
        let rows: Vec<Vec<String>> = pending
            .iter()
            .map(|approval| {
                vec![
                    approval.saga.id.to_string(),
                    approval.saga.saga_type.to_string(),
                    approval.step.to_string(),
                    opt_time(approval.until),
                    time(approval.saga.created_at),
                    approval
                        .saga
                        .idempotency_key
                        .as_ref()
                        .map_or("-".to_owned(), |key| key.to_string()),
                ]
            })
            .collect();
        emit!(
            "{}",
            table(&["SAGA", "TYPE", "STEP", "UNTIL", "CREATED", "KEY"], &rows)
        );
        emit!("({} waiting for an approval)", pending.len());
    }

    /// One decision, recorded (or found recorded already: a duplicate changes nothing).
    pub(crate) fn decided(&self, decision: Decision, delivered: Delivered, by: &str) {
        let duplicate = matches!(delivered, Delivered::Duplicate(_));
        let id = delivered.saga();
        if self.json {
            return self.print_json(&json!({
                "saga": id,
                "decision": decision.done(),
                "by": by,
                "duplicate": duplicate,
            }));
        }
        if duplicate {
            emit!(
                "saga {id}: already {} by {by}; nothing changed",
                decision.done()
            );
        } else {
            emit!(
                "saga {id}: {} by {by}; {} when a worker picks it up",
                decision.done(),
                decision.next()
            );
        }
    }

    /// The outcome of `approve --all`, saga by saga (a refusal as the message saying why).
    pub(crate) fn approved_all(&self, results: &[(SagaId, Result<Delivered, String>)], by: &str) {
        if self.json {
            let items: Vec<Value> = results
                .iter()
                .map(|(saga, outcome)| match outcome {
                    Ok(delivered) => json!({
                        "saga": saga,
                        "decision": "approved",
                        "by": by,
                        "duplicate": matches!(delivered, Delivered::Duplicate(_)),
                    }),
                    Err(message) => json!({ "saga": saga, "error": message }),
                })
                .collect();
            return self.print_json(&Value::Array(items));
        }
        for (saga, outcome) in results {
            match outcome {
                Ok(Delivered::New(_)) => emit!("saga {saga}: approved by {by}"),
                Ok(Delivered::Duplicate(_)) => {
                    emit!("saga {saga}: already approved by {by}; nothing changed")
                }
                Err(message) => emit!("saga {saga}: refused: {message}"),
            }
        }
        let refused = results
            .iter()
            .filter(|(_, outcome)| outcome.is_err())
            .count();
        emit!("({} approved, {refused} refused)", results.len() - refused);
    }
}
