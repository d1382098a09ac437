//! `saga`: the operator CLI. Finds and reads sagas, works the manual-intervention queue, decides
//! approvals and pauses or resumes saga types on any store, by URL (`--db` or
//! `SAGA_DATABASE_URL`).
//!
//! No command creates or migrates the schema except `saga migrate`: the others check that the
//! store's schema is this CLI's and otherwise stop, saying which version they found.
//!
//! Exit codes scripts can rely on: 0 done; 2 bad input (arguments, ids, durations, store URL,
//! login, schema version, a malformed SAGA_APPROVERS, an unconfirmed large prune or heavy
//! migration); 3 no such saga or item; 4 refused (already settled, not applicable now: a resume
//! where nothing is paused; not authorized: SAGA_APPROVERS unset or not naming who decides, an
//! approval someone else already decided, more approvals waiting than `--max`); 5 store
//! unavailable; 1 anything else.

mod approvals;
mod args;
mod migrate;
mod output;
mod pauses;
mod prune;
mod serve;
mod store;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use saga::{Admin, Error, InterventionId, SagaFilter, SagaId, SagaStatus, SagaType, SignalRefusal};

use args::{Cli, Command, InterventionsCommand, SagasCommand};
use output::Output;
use store::Target;

/// A failure with the exit code it maps to.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::SagaNotFound(_) | Error::InterventionNotFound(_) => 3,
            Error::SignalRefused {
                refusal: SignalRefusal::UnknownStartKey(_),
                ..
            } => 3,
            Error::InterventionSettled(_)
            | Error::InvalidAction(_)
            | Error::Conflict { .. }
            | Error::NotAuthorized { .. }
            | Error::SignalRefused { .. } => 4,
            Error::StoreUnavailable(_) => 5,
            Error::Configuration(_) => 2,
            _ => 1,
        };
        let message = match &err {
            // The library names its policy hook; the CLI's policy is an environment variable.
            Error::NotAuthorized { .. } => format!(
                "{err}; this CLI reads the policy from SAGA_APPROVERS (`saga_type=name,name; *=name`)"
            ),
            _ => err.to_string(),
        };
        Failure { code, message }
    }
}

/// Bad input (exit 2): `message` says what was wrong and what to do.
pub(crate) fn bad_input(message: String) -> Failure {
    Failure { code: 2, message }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let target = Target::new(cli.db, cli.schema)?;
    let out = Output::new(cli.json);
    if let Command::Migrate { yes } = cli.command {
        return migrate::migrate(&target, &out, yes).await;
    }
    let admin = Admin::new(target.open_current().await?);
    match cli.command {
        Command::Sagas(SagasCommand::List {
            status,
            saga_type,
            key,
            older_than,
            limit,
            after,
            waiting,
            parent,
        }) => {
            let filter = SagaFilter {
                status: status.as_deref().map(parse_status).transpose()?,
                saga_type: saga_type.map(SagaType::new),
                idempotency_key: key.map(saga::IdempotencyKey::new),
                after: after.as_deref().map(parse_saga_id).transpose()?,
                limit: Some(limit),
                created_before: None,
                // The empty prefix: waiting for anything.
                waiting_for: waiting.then(String::new),
                parent: parent.as_deref().map(parse_saga_id).transpose()?,
            };
            let sagas = match older_than {
                Some(age) => admin.list_older_than(parse_age(&age)?, &filter).await?,
                None => admin.list(&filter).await?,
            };
            out.sagas(&sagas);
        }
        Command::Sagas(SagasCommand::Cancel { id, reason, by }) => {
            let id = parse_saga_id(&id)?;
            let outcome = admin
                .cancel_saga(id, &operator(by)?, required_reason(&reason)?)
                .await?;
            out.cancelled(id, outcome);
        }
        Command::Show { id } => {
            let id = parse_saga_id(&id)?;
            let snapshot = admin.show(id).await?;
            let children = admin
                .list(&SagaFilter {
                    parent: Some(id),
                    limit: Some(1000),
                    ..SagaFilter::default()
                })
                .await?;
            out.saga(&snapshot, &children);
        }
        Command::History { id } => {
            let id = parse_saga_id(&id)?;
            out.history(id, &admin.history(id).await?);
        }
        Command::Interventions(command) => return interventions(&admin, &out, command).await,
        Command::Approvals(command) => return approvals::run(admin, &out, command).await,
        Command::Pause {
            saga_type,
            step,
            reason,
            by,
        } => {
            let target = pauses::Target { saga_type, step };
            return pauses::pause(&admin, &out, target, &reason, by).await;
        }
        Command::Resume {
            saga_type,
            step,
            reason,
            by,
        } => {
            let target = pauses::Target { saga_type, step };
            return pauses::resume(&admin, &out, target, &reason, by).await;
        }
        Command::Pauses { all } => return pauses::list(&admin, &out, all).await,
        Command::Prune {
            older_than,
            limit,
            dry_run,
            yes,
        } => {
            let age = parse_age(&older_than)?;
            let request = prune::Prune {
                age,
                limit,
                dry_run,
                yes,
            };
            return prune::prune(&admin, &out, request).await;
        }
        // Handled before the store is opened for the other commands.
        Command::Serve {
            listen,
            tokens,
            anonymous_loopback,
            redact,
            secure_cookies,
            public_origin,
        } => {
            let admin = approvals::optional_policy(admin)?;
            return serve::run(
                admin,
                serve::Settings {
                    listen,
                    tokens,
                    anonymous_loopback,
                    redact,
                    secure_cookies,
                    public_origin,
                },
            )
            .await;
        }
        Command::Migrate { .. } => {}
    }
    Ok(0)
}

async fn interventions(
    admin: &Admin,
    out: &Output,
    command: InterventionsCommand,
) -> Result<u8, Failure> {
    match command {
        InterventionsCommand::List { all } => out.interventions(&admin.interventions(!all).await?),
        InterventionsCommand::Show { id } => {
            out.intervention(&admin.intervention(parse_item_id(&id)?).await?)
        }
        InterventionsCommand::Retry {
            id: Some(id),
            reason,
            by,
            ..
        } => {
            let id = parse_item_id(&id)?;
            let status = admin
                .retry(id, &operator(by)?, required_reason(&reason)?)
                .await?;
            out.settled(id, "retry", status);
        }
        InterventionsCommand::Retry {
            id: None,
            all: true,
            max: Some(max),
            reason,
            by,
        } => {
            let results = admin
                .retry_batch(max, &operator(by)?, required_reason(&reason)?)
                .await?;
            out.batch(&results);
            if results.iter().any(|result| result.outcome.is_err()) {
                return Ok(4);
            }
        }
        InterventionsCommand::Retry { .. } => {
            return Err(bad_input(
                "say which item to retry: an item id, or --all --max N".into(),
            ))
        }
        InterventionsCommand::Resolve {
            id,
            not_applied,
            reason,
            by,
        } => {
            let id = parse_item_id(&id)?;
            let unknown =
                admin.intervention(id).await?.item.kind == saga::InterventionKind::UnknownOutcome;
            if unknown && !not_applied {
                return Err(bad_input(format!(
                    "item {id} is an unknown outcome: the action may have taken effect. If you checked and it did not, say so with --not-applied (the saga then compensates what completed before it); to run it again with the same key, use `retry`"
                )));
            }
            if not_applied && !unknown {
                return Err(bad_input(format!(
                    "--not-applied is for unknown_outcome items; item {id} is not one: drop the flag to mark its compensation done by hand"
                )));
            }
            let status = admin
                .resolve(id, &operator(by)?, required_reason(&reason)?)
                .await?;
            out.settled(id, "resolve", status);
        }
        InterventionsCommand::Cancel { id, reason, by } => {
            let id = parse_item_id(&id)?;
            let status = admin
                .cancel(id, &operator(by)?, required_reason(&reason)?)
                .await?;
            out.settled(id, "cancel", status);
        }
    }
    Ok(0)
}

/// The reason an action needs: recorded in the saga's history, so it may not be blank.
pub(crate) fn required_reason(text: &str) -> Result<&str, Failure> {
    if text.trim().is_empty() {
        Err(bad_input(
            "give a reason with --reason; it is recorded in the saga's history for whoever looks next".into(),
        ))
    } else {
        Ok(text)
    }
}

pub(crate) fn operator(by: Option<String>) -> Result<String, Failure> {
    by.or_else(|| std::env::var("SAGA_OPERATOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|name| !name.trim().is_empty())
        .ok_or_else(|| {
            bad_input("say who is acting: --by NAME (or set SAGA_OPERATOR); it is recorded in the saga's history".into())
        })
}

pub(crate) fn parse_saga_id(text: &str) -> Result<SagaId, Failure> {
    text.parse().map_err(|_| {
        bad_input(format!(
            "`{text}` is not a saga id (a UUID); `saga sagas list` shows them"
        ))
    })
}

fn parse_item_id(text: &str) -> Result<InterventionId, Failure> {
    text.parse().map_err(|_| {
        bad_input(format!(
            "`{text}` is not an intervention id (a UUID); `saga interventions list` shows them"
        ))
    })
}

fn parse_status(text: &str) -> Result<SagaStatus, Failure> {
    text.parse().map_err(|_| {
        bad_input(format!(
            "`{text}` is not a saga status; use one of: running, compensating, completed, compensated, needs_intervention, cancelled"
        ))
    })
}

/// `30d`, `12h`, `15m`, `90s`, `0s`.
fn parse_age(text: &str) -> Result<Duration, Failure> {
    saga::parse_age(text).map_err(bad_input)
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_age("90s").ok(), Some(Duration::from_secs(90)));
        assert_eq!(parse_age("15m").ok(), Some(Duration::from_secs(900)));
        assert_eq!(
            parse_age("30d").ok(),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_age("0s").ok(), Some(Duration::ZERO));
        for bad in ["", "10", "m", "1.5h", "10y", "-1s", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
