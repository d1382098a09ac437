//! The rows of many sagas' step writes in a few statements: one `UPDATE` of all their saga
//! rows, one `INSERT` of the step phases they begin, one `UPDATE` of the phases they change.
//! Each statement says which rows it wrote (`RETURNING`), so a refusal anywhere is seen; the
//! caller then rolls the whole group back and writes each saga alone, where the refusal is
//! told apart. Same conditions as [`write_rows`](super::write_rows), row for row.

use std::collections::HashSet;

use saga_core::store::write::{
    CancelRequest, CreationPlan, LeaseChange, Precondition, StepWrite, WritePlan,
};
use saga_core::{Lease, NewSaga, Result, Timestamp};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::json_text;
use super::rows::millis;
use crate::error::classify;

/// Writes the rows (saga, step phases, interventions) of `writes`, each fenced by its lease,
/// the events aside. `Ok(false)`: one of them was refused; roll the transaction back.
/// The sagas must be distinct.
pub(super) async fn write_rows(
    conn: &mut SqliteConnection,
    writes: &[(&Lease, &WritePlan)],
    now: Timestamp,
) -> Result<bool> {
    if !update_sagas(conn, writes, now).await? {
        return Ok(false);
    }
    let steps: Vec<(String, &StepWrite)> = writes
        .iter()
        .flat_map(|(lease, plan)| {
            let saga = lease.saga.to_string();
            plan.steps.iter().map(move |step| (saga.clone(), step))
        })
        .collect();
    let inserted = insert_steps(conn, &steps, now).await?;
    let rest: Vec<&(String, &StepWrite)> = steps
        .iter()
        .filter(|(saga, step)| {
            !inserted.contains(&(saga.clone(), step.index.0, step.phase.as_str().to_owned()))
        })
        .collect();
    if !update_steps(conn, &rest, now).await? {
        return Ok(false);
    }
    for (lease, plan) in writes {
        for item in &plan.interventions {
            super::insert_intervention(conn, lease.saga, item, now).await?;
        }
    }
    Ok(true)
}

/// One `UPDATE` of every saga row, each under its own fence; `Ok(false)`: one did not hold.
async fn update_sagas(
    conn: &mut SqliteConnection,
    writes: &[(&Lease, &WritePlan)],
    now: Timestamp,
) -> Result<bool> {
    let mut update = QueryBuilder::<Sqlite>::new(
        "WITH v (v_id, v_now, v_set_status, v_status, v_reason, v_cancel, v_request, v_release,
                 v_revoke, v_set_next, v_next, v_owner, v_token, v_forward, v_wake_seen,
                 v_set_waiting, v_waiting, v_at_most) AS (",
    );
    update.push_values(writes, |mut row, (lease, plan)| {
        let saga = &plan.saga;
        let (set_status, status, reason) = match &saga.status {
            Some((status, reason)) => (true, Some(status.as_str()), reason.clone()),
            None => (false, None, None),
        };
        let (cancel, request) = match &saga.cancel {
            CancelRequest::Keep => ("keep", None),
            CancelRequest::Clear => ("clear", None),
            CancelRequest::Set(request) => ("set", Some(request.as_str().to_owned())),
        };
        row.push_bind(lease.saga.to_string())
            .push_bind(millis(now))
            .push_bind(set_status)
            .push_bind(status)
            .push_bind(reason)
            .push_bind(cancel)
            .push_bind(request)
            .push_bind(saga.lease != LeaseChange::Keep)
            .push_bind(i64::from(saga.lease == LeaseChange::Revoke))
            .push_bind(saga.next_run_at.is_some())
            .push_bind(saga.next_run_at.flatten().map(millis))
            .push_bind(lease.owner.as_str().to_owned())
            .push_bind(lease.token.0)
            .push_bind(plan.begins_forward)
            .push_bind(
                saga.wake_if_signalled
                    .map(|seen| i64::try_from(seen).unwrap_or(i64::MAX)),
            )
            .push_bind(saga.waiting.is_some())
            .push_bind(saga.waiting.clone().flatten())
            .push_bind(
                plan.signals_at_most
                    .map(|at_most| i64::try_from(at_most).unwrap_or(i64::MAX)),
            );
    });
    update.push(
        ")
        UPDATE saga_instances
           SET updated_at = v_now,
               status = CASE WHEN v_set_status THEN v_status ELSE status END,
               status_reason = CASE WHEN v_set_status THEN v_reason ELSE status_reason END,
               cancel_requested = CASE v_cancel WHEN 'clear' THEN NULL WHEN 'set' THEN v_request
                                  ELSE cancel_requested END,
               lease_owner = CASE WHEN v_release THEN NULL ELSE lease_owner END,
               lease_expires_at = CASE WHEN v_release THEN NULL ELSE lease_expires_at END,
               fencing_token = fencing_token + v_revoke,
               next_run_at = CASE WHEN NOT v_set_next THEN next_run_at
                                  WHEN v_wake_seen IS NOT NULL AND signals_received > v_wake_seen
                                       THEN v_now
                                  ELSE v_next END,
               waiting_for = CASE WHEN v_set_waiting THEN v_waiting ELSE waiting_for END
          FROM v
         WHERE id = v_id
           AND lease_owner = v_owner AND fencing_token = v_token
           AND (NOT v_forward OR cancel_requested IS NULL)
           AND (v_at_most IS NULL OR signals_received <= v_at_most)
     RETURNING id",
    );
    let fenced = update
        .build()
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(fenced.len() == writes.len())
}

/// One `INSERT` of the phases the writes may insert (those with a key); returns the phases
/// it inserted (saga, index, phase): the others exist already.
async fn insert_steps(
    conn: &mut SqliteConnection,
    steps: &[(String, &StepWrite)],
    now: Timestamp,
) -> Result<HashSet<(String, u32, String)>> {
    let keyed: Vec<&(String, &StepWrite)> = steps
        .iter()
        .filter(|(_, step)| step.key.is_some())
        .collect();
    if keyed.is_empty() {
        return Ok(HashSet::new());
    }
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO saga_steps (saga_id, step_index, phase, name, status, attempt,
             idempotency_key, output, last_error, next_attempt_at, started_at, finished_at) ",
    );
    insert.push_values(&keyed, |mut row, (saga, step)| {
        let output = step
            .output
            .as_ref()
            .and_then(|output| output.as_ref().map(json_text));
        row.push_bind(saga.clone())
            .push_bind(i64::from(step.index.0))
            .push_bind(step.phase.as_str())
            .push_bind(step.name.as_str().to_owned())
            .push_bind(step.status.as_str())
            .push_bind(i64::from(step.attempt.map_or(0, |attempt| attempt.0)))
            .push_bind(step.key.as_ref().map(|key| key.as_str().to_owned()))
            .push_bind(output)
            .push_bind(step.error.clone())
            .push_bind(step.next_attempt_at.map(millis))
            .push_bind(step.began.then_some(millis(now)))
            .push_bind(step.finished.then_some(millis(now)));
    });
    insert.push(
        " ON CONFLICT (saga_id, step_index, phase) DO NOTHING RETURNING saga_id, step_index, phase",
    );
    let rows = insert
        .build()
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?;
    let mut inserted = HashSet::with_capacity(rows.len());
    for row in &rows {
        let saga: String = row.try_get("saga_id").map_err(classify)?;
        let index: i64 = row.try_get("step_index").map_err(classify)?;
        let phase: String = row.try_get("phase").map_err(classify)?;
        inserted.insert((saga, u32::try_from(index).unwrap_or(u32::MAX), phase));
    }
    Ok(inserted)
}

/// One `UPDATE` of the phases not inserted, each under its precondition; `Ok(false)`: one did
/// not meet it (or is absent).
async fn update_steps(
    conn: &mut SqliteConnection,
    steps: &[&(String, &StepWrite)],
    now: Timestamp,
) -> Result<bool> {
    if steps.is_empty() {
        return Ok(true);
    }
    let mut update = QueryBuilder::<Sqlite>::new(
        "WITH v (v_saga, v_index, v_phase, v_status, v_attempt, v_set_output, v_output, v_error,
                 v_next, v_began, v_now, v_finished, v_not_completed) AS (",
    );
    update.push_values(steps, |mut row, (saga, step)| {
        let output = step
            .output
            .as_ref()
            .map(|output| output.as_ref().map(json_text));
        row.push_bind(saga.clone())
            .push_bind(i64::from(step.index.0))
            .push_bind(step.phase.as_str())
            .push_bind(step.status.as_str())
            .push_bind(step.attempt.map(|attempt| i64::from(attempt.0)))
            .push_bind(output.is_some())
            .push_bind(output.flatten())
            .push_bind(step.error.clone())
            .push_bind(step.next_attempt_at.map(millis))
            .push_bind(step.began)
            .push_bind(millis(now))
            .push_bind(step.finished)
            .push_bind(step.requires == Precondition::NotCompleted);
    });
    update.push(
        ")
        UPDATE saga_steps
           SET status = v_status, attempt = COALESCE(v_attempt, attempt),
               output = CASE WHEN v_set_output THEN v_output ELSE output END,
               last_error = COALESCE(v_error, last_error), next_attempt_at = v_next,
               started_at = CASE WHEN v_began THEN v_now ELSE started_at END,
               finished_at = CASE WHEN v_finished THEN v_now END
          FROM v
         WHERE saga_id = v_saga AND step_index = v_index AND phase = v_phase
           AND (NOT v_not_completed OR status <> 'completed')
     RETURNING saga_id",
    );
    let updated = update
        .build()
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(updated.len() == steps.len())
}

/// Stores the rows of `creations` (sagas without a start key, so none can exist already) in
/// two statements: one `INSERT` of the saga rows, one of the step phases they begin; the
/// events aside. `Ok(false)`: a step phase was not inserted (nothing to keep; roll back).
pub(super) async fn create_rows(
    conn: &mut SqliteConnection,
    creations: &[(&NewSaga, &CreationPlan)],
    now: Timestamp,
) -> Result<bool> {
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO saga_instances (id, saga_type, version, fingerprint, status, input,
             input_hash, idempotency_key, next_run_at, fencing_token, trace_context,
             created_at, updated_at, lease_owner, lease_expires_at, deadline_at, parent_id,
             parent_step) ",
    );
    insert.push_values(creations, |mut row, (saga, plan)| {
        row.push_bind(saga.id.to_string())
            .push_bind(saga.saga_type.as_str().to_owned())
            .push_bind(i64::from(saga.version))
            .push_bind(saga.fingerprint.clone())
            .push_bind("running")
            .push_bind(json_text(&saga.input))
            .push_bind(saga.input_hash.clone())
            .push_bind(None::<String>)
            .push_bind(millis(now))
            .push_bind(plan.token.0)
            .push_bind(saga.trace_context.clone())
            .push_bind(millis(now))
            .push_bind(millis(now))
            .push_bind(
                saga.lease
                    .as_ref()
                    .map(|(owner, _)| owner.as_str().to_owned()),
            )
            .push_bind(saga.lease.as_ref().map(|(_, until)| millis(*until)))
            .push_bind(saga.deadline.map(millis))
            .push_bind(saga.parent.as_ref().map(|parent| parent.saga.to_string()))
            .push_bind(
                saga.parent
                    .as_ref()
                    .map(|parent| parent.step.as_str().to_owned()),
            );
    });
    insert.build().execute(&mut *conn).await.map_err(classify)?;
    let steps: Vec<(String, &StepWrite)> = creations
        .iter()
        .flat_map(|(saga, plan)| {
            let id = saga.id.to_string();
            plan.steps.iter().map(move |step| (id.clone(), step))
        })
        .collect();
    let inserted = insert_steps(conn, &steps, now).await?;
    Ok(inserted.len() == steps.len())
}
