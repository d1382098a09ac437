//! `saga pause`, `saga resume`, `saga pauses`: stop a saga type, or one of its steps, in every
//! process while something it calls is broken, and lift the pause once it is fixed.

use saga::PauseScope;
use saga::{Admin, Error, SagaType, StepName};

use crate::output::pauses::resume_command;
use crate::output::Output;
use crate::{bad_input, operator, required_reason, Failure};

/// What `saga pause` and `saga resume` act on, as typed: a saga type, maybe one step of it.
pub(crate) struct Target {
    pub(crate) saga_type: String,
    pub(crate) step: Option<String>,
}

impl Target {
    /// The scope named, refused as bad input when the type or the step is blank.
    fn scope(self, verb: &str) -> Result<PauseScope, Failure> {
        if self.saga_type.trim().is_empty() {
            return Err(bad_input(format!(
                "name the saga type to {verb}, e.g. `saga {verb} checkout`; `saga sagas list` shows the types"
            )));
        }
        if self
            .step
            .as_deref()
            .is_some_and(|step| step.trim().is_empty())
        {
            return Err(bad_input(format!(
                "--step is blank; name one step of `{}`, or drop --step to {verb} every step",
                self.saga_type
            )));
        }
        Ok(PauseScope {
            saga_type: SagaType::new(self.saga_type),
            step: self.step.map(StepName::new),
        })
    }
}

/// Pauses `target`; saying so, or that it was paused already, both exit 0.
pub(crate) async fn pause(
    admin: &Admin,
    out: &Output,
    target: Target,
    reason: &str,
    by: Option<String>,
) -> Result<u8, Failure> {
    let scope = target.scope("pause")?;
    let reason = required_reason(reason)?;
    let by = operator(by)?;
    let (pause, new) = admin.pause(scope, &by, reason).await?;
    out.paused(&pause, new);
    Ok(0)
}

/// Lifts the pause on `target`; nothing paused there is refused (exit 4), naming the pauses in
/// force on the same type, if any, and the command that lifts each.
pub(crate) async fn resume(
    admin: &Admin,
    out: &Output,
    target: Target,
    reason: &str,
    by: Option<String>,
) -> Result<u8, Failure> {
    let scope = target.scope("resume")?;
    let reason = required_reason(reason)?;
    let by = operator(by)?;
    match admin.resume(scope.clone(), &by, reason).await {
        Ok((pause, woken)) => {
            out.resumed(&pause, woken);
            Ok(0)
        }
        Err(Error::InvalidAction(message)) => {
            let mut failure = Failure::from(Error::InvalidAction(message));
            failure
                .message
                .push_str(&others_in_force(admin, &scope).await);
            Err(failure)
        }
        Err(err) => Err(err.into()),
    }
}

/// The pauses in force on the type of `scope` (another step, or the whole type), as a hint to
/// append to "not paused": `; in force on `checkout`: ...`. Empty when there are none, or when
/// they cannot be read (the refusal stands on its own).
async fn others_in_force(admin: &Admin, scope: &PauseScope) -> String {
    let Ok(pauses) = admin.pauses(false).await else {
        return String::new();
    };
    let others: Vec<String> = pauses
        .iter()
        .filter(|pause| pause.scope.saga_type == scope.saga_type)
        .map(|pause| {
            format!(
                "{} (lift it with `{}`)",
                pause.scope,
                resume_command(&pause.scope)
            )
        })
        .collect();
    if others.is_empty() {
        String::new()
    } else {
        format!("; paused on `{}`: {}", scope.saga_type, others.join(", "))
    }
}

/// Lists the pauses in force, or (`all`) also the lifted ones.
pub(crate) async fn list(admin: &Admin, out: &Output, all: bool) -> Result<u8, Failure> {
    out.pauses(&admin.pauses(all).await?, all);
    Ok(0)
}
