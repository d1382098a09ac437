//! `saga approvals`: the approval steps sagas wait at, decided by the operators SAGA_APPROVERS
//! names for each saga type.

use std::sync::Arc;

use saga::{Admin, Approvers, Error, SagaFilter, SagaType, SignalKey, SignalRefusal};

use crate::args::ApprovalsCommand;
use crate::output::approvals::Decision;
use crate::output::Output;
use crate::{bad_input, operator, parse_saga_id, required_reason, Failure};

/// The environment variable holding who may decide which saga type's approvals.
const APPROVERS: &str = "SAGA_APPROVERS";

pub(crate) async fn run(
    admin: Admin,
    out: &Output,
    command: ApprovalsCommand,
) -> Result<u8, Failure> {
    match command {
        ApprovalsCommand::List { saga_type, limit } => {
            let filter = SagaFilter {
                saga_type: saga_type.map(SagaType::new),
                limit: Some(limit),
                ..SagaFilter::default()
            };
            out.approvals(&admin.approvals(&filter).await?);
        }
        ApprovalsCommand::Approve {
            id: Some(id),
            reason,
            by,
            ..
        } => decide(admin, out, Decision::Approve, &id, &reason, by).await?,
        ApprovalsCommand::Approve {
            id: None,
            all: true,
            max: Some(max),
            saga_type,
            reason,
            by,
        } => {
            let by = operator(by)?;
            let reason = required_reason(&reason)?;
            let admin = with_policy(admin, &by, "approve sagas")?;
            let filter = SagaFilter {
                saga_type: saga_type.map(SagaType::new),
                ..SagaFilter::default()
            };
            let results: Vec<_> = admin
                .approve_all(&filter, max, &by, reason)
                .await
                .map_err(over_the_bound)?
                .into_iter()
                .map(|(saga, outcome)| (saga, outcome.map_err(|err| refusal(err).message)))
                .collect();
            out.approved_all(&results, &by);
            if results.iter().any(|(_, outcome)| outcome.is_err()) {
                return Ok(4);
            }
        }
        ApprovalsCommand::Approve { .. } => {
            return Err(bad_input(
                "say which saga to approve: a saga id, or --all --max N".into(),
            ))
        }
        ApprovalsCommand::Reject { id, reason, by } => {
            decide(admin, out, Decision::Reject, &id, &reason, by).await?;
        }
    }
    Ok(0)
}

/// Approves or rejects the approval step saga `id` waits at.
async fn decide(
    admin: Admin,
    out: &Output,
    decision: Decision,
    id: &str,
    reason: &str,
    by: Option<String>,
) -> Result<(), Failure> {
    let id = parse_saga_id(id)?;
    let reason = required_reason(reason)?;
    let by = operator(by)?;
    let admin = with_policy(admin, &by, &format!("{} saga {id}", decision.verb()))?;
    let delivered = match decision {
        Decision::Approve => admin.approve(id, &by, reason).await,
        Decision::Reject => admin.reject(id, &by, reason).await,
    }
    .map_err(refusal)?;
    out.decided(decision, delivered, &by);
    Ok(())
}

/// `admin` with the approval policy of SAGA_APPROVERS when it is set (the console then lets
/// the operators it names decide); without it, decisions are refused when asked for. Bad input
/// (exit 2) when it is malformed.
pub(crate) fn optional_policy(admin: Admin) -> Result<Admin, Failure> {
    match std::env::var(APPROVERS) {
        Ok(text) if !text.trim().is_empty() => with_policy(admin, "", "decide"),
        _ => Ok(admin),
    }
}

/// `admin` with the approval policy of SAGA_APPROVERS; refused (exit 4) when it is unset or
/// blank, since then nobody may decide; bad input (exit 2) when it is malformed.
fn with_policy(admin: Admin, by: &str, action: &str) -> Result<Admin, Failure> {
    let text = match std::env::var(APPROVERS) {
        Ok(text) => text,
        Err(std::env::VarError::NotPresent) => String::new(),
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(bad_input(format!(
                "{APPROVERS} is not valid UTF-8; write it as `saga_type=name,name; *=name`"
            )))
        }
    };
    if text.trim().is_empty() {
        return Err(Failure {
            code: 4,
            message: format!(
                "{by} may not {action}: no approval policy is set, so nobody may decide; set {APPROVERS} to who may decide which saga type's approvals, e.g. {APPROVERS}='promotion=alice,bob; *=root' (`*`: every type); nothing was decided"
            ),
        });
    }
    let approvers: Approvers = text.parse().map_err(|reason| {
        bad_input(format!(
            "{APPROVERS} is malformed: {reason}; e.g. {APPROVERS}='promotion=alice,bob; *=root'"
        ))
    })?;
    Ok(admin.with_approvals(Arc::new(approvers)))
}

/// An approval refused, said as an operator reads it: a decision someone made first is named
/// by who made it, rather than by the signal key that records it.
fn refusal(err: Error) -> Failure {
    match err {
        Error::SignalRefused {
            target,
            refusal: SignalRefusal::AlreadyDelivered { key },
            ..
        } => Failure {
            code: 4,
            message: format!(
                "{target} was already decided ({}); a decision is taken once, nothing changed",
                decided_by(&key)
            ),
        },
        other => other.into(),
    }
}

/// `approve --all` refused as a whole: the reason and who were checked already, so an invalid
/// action is the bound; its message gains the flags that narrow the filter or raise the bound.
fn over_the_bound(err: Error) -> Failure {
    match err {
        Error::InvalidAction(message) => Failure {
            code: 4,
            message: format!("{message} (here: --type, --max)"),
        },
        other => refusal(other),
    }
}

/// Who decided, from the key the library delivers a decision with (`approve:alice`).
fn decided_by(key: &SignalKey) -> String {
    match key.as_str().split_once(':') {
        Some(("approve", who)) => format!("approved by {who}"),
        Some(("reject", who)) => format!("rejected by {who}"),
        _ => format!("decision key `{key}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::decided_by;
    use saga::SignalKey;

    #[test]
    fn a_decision_key_names_who_decided() {
        assert_eq!(
            decided_by(&SignalKey::new("approve:alice")),
            "approved by alice"
        );
        assert_eq!(
            decided_by(&SignalKey::new("reject:bob:ops")),
            "rejected by bob:ops"
        );
        assert_eq!(
            decided_by(&SignalKey::new("webhook-7")),
            "decision key `webhook-7`"
        );
    }
}
