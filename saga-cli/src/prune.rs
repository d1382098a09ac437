//! `saga prune`: counts before it deletes, deletes nothing with `--dry-run`, and asks for
//! `--yes` before deleting more than [`CONFIRM_ABOVE`] sagas.

use std::time::Duration;

use saga::{Admin, Error, SagaFilter, SagaStatus};
use serde_json::json;

use crate::output::Output;
use crate::{bad_input, Failure};

/// Above this many sagas, `prune` deletes only with `--yes`.
pub(crate) const CONFIRM_ABOVE: u64 = 1_000;

/// The statuses `prune` deletes.
const FINISHED: [SagaStatus; 3] = [
    SagaStatus::Completed,
    SagaStatus::Compensated,
    SagaStatus::Cancelled,
];

/// Sagas read per page while counting.
const PAGE: u32 = 1_000;

/// What `saga prune` was asked.
pub(crate) struct Prune {
    pub(crate) age: Duration,
    pub(crate) limit: u32,
    pub(crate) dry_run: bool,
    pub(crate) yes: bool,
}

/// Runs `saga prune`.
pub(crate) async fn prune(admin: &Admin, out: &Output, prune: Prune) -> Result<u8, Failure> {
    if prune.dry_run {
        let count = prunable(admin, prune.age, prune.limit).await?;
        if out.is_json() {
            out.print_json(&json!({ "would_prune": count }));
        } else {
            out.line(&format!(
                "would prune {count} finished saga{}; nothing deleted (run without --dry-run to delete)",
                plural(count)
            ));
        }
        return Ok(0);
    }
    if !prune.yes {
        let doomed = prunable(admin, prune.age, prune.limit).await?;
        if doomed > CONFIRM_ABOVE {
            return Err(bad_input(format!(
                "prune would delete {doomed} sagas, more than {CONFIRM_ABOVE} at once; look first with --dry-run, then pass --yes to delete them (or lower --limit)"
            )));
        }
    }
    let deleted = admin.prune(prune.age, prune.limit).await?;
    if out.is_json() {
        out.print_json(&json!({ "pruned": deleted }));
    } else {
        out.line(&format!(
            "pruned {deleted} finished saga{}",
            plural(deleted)
        ));
    }
    Ok(0)
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// How many sagas `Admin::prune(age, limit)` would delete now: finished ones last changed more
/// than `age` ago, at most `limit`. Listed by creation time, which is never after the last
/// change, then counted by the last change, as prune does.
async fn prunable(admin: &Admin, age: Duration, limit: u32) -> Result<u64, Error> {
    let cutoff = saga::before(saga::now(), age);
    let limit = u64::from(limit);
    let mut count = 0;
    for status in FINISHED {
        let mut after = None;
        while count < limit {
            let page = admin
                .list_older_than(
                    age,
                    &SagaFilter {
                        status: Some(status),
                        after,
                        limit: Some(PAGE),
                        ..SagaFilter::default()
                    },
                )
                .await?;
            count += page
                .iter()
                .filter(|record| record.updated_at < cutoff)
                .count() as u64;
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(last.id),
                _ => break,
            }
        }
    }
    Ok(count.min(limit))
}
