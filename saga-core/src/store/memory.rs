//! MemoryStore: a real backend kept in process memory. It passes the same conformance suite as
//! SQLite and Postgres; use it in unit tests and single-process tools that need no durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::{self, Timestamp};
use crate::error::{Error, Result};
use crate::id::StepIndex;
use crate::id::{FencingToken, IdempotencyKey, InterventionId, SagaId, SagaType, WorkerId};
use crate::policy::{
    decide_permit, use_expires_at, LimitState, Pause, PauseRequest, Permit, PermitRequest,
    PolicyKind, PolicyState, UseState,
};
use crate::status::{SagaStatus, StepStatus};

use super::overview::{OverviewParts, OverviewQuery, SeriesKind, StuckStep};
use super::write::{
    admit, decide_cancel, decide_settle, decide_signal, decide_stop_child, CreationPlan, WritePlan,
};
use super::{
    CancelOutcome, Change, Created, Event, EventData, EventKind, Intervention, InterventionStatus,
    Lease, NewSaga, ParentLink, SagaFilter, SagaRecord, SagaSnapshot, Settlement, Store,
};
use crate::wait::{Delivered, SignalDelivery};

/// An in-memory [`Store`]. Cloning is not supported; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sagas: BTreeMap<SagaId, SagaSnapshot>,
    keys: HashMap<IdempotencyKey, SagaId>,
    events: Vec<Event>,
    interventions: BTreeMap<InterventionId, Intervention>,
    /// Policy uses counted: (kind, name, key) -> the uses.
    uses: HashMap<(PolicyKind, String, String), Vec<UseRow>>,
    /// Rate limits: name -> their state.
    limits: HashMap<String, LimitState>,
    pauses: Vec<Pause>,
    /// Sagas kept from pruning until their start key's dedup window ends.
    windows: HashMap<SagaId, Timestamp>,
}

/// One counted use of a policy.
#[derive(Debug, Clone)]
struct UseRow {
    saga: SagaId,
    step: StepIndex,
    attempt: u32,
    expires_at: Option<Timestamp>,
}

impl State {
    fn push_event(&mut self, saga_id: SagaId, at: Timestamp, data: EventData) {
        let seq = i64::try_from(self.events.len()).unwrap_or(i64::MAX) + 1;
        self.events.push(Event {
            seq,
            saga_id,
            at,
            kind: data.kind,
            step: data.step,
            phase: data.phase,
            attempt: data.attempt,
            detail: data.detail,
        });
    }
}

impl State {
    /// Writes `plan` to the saga `id` (its admission already checked): all of it, or nothing
    /// when a step phase refuses it.
    fn write(&mut self, id: SagaId, plan: &WritePlan, now: Timestamp) -> Result<()> {
        let snap = self.sagas.get_mut(&id).ok_or(Error::SagaNotFound(id))?;
        snap.apply_plan(plan, now)?;
        for item in &plan.interventions {
            self.interventions
                .entry(item.id)
                .or_insert_with(|| Intervention {
                    saga_id: id,
                    item: item.clone(),
                    status: InterventionStatus::Open,
                    opened_at: now,
                    resolved_at: None,
                    resolved_by: None,
                    resolution: None,
                    resolution_reason: None,
                });
        }
        for event in &plan.events {
            self.push_event(id, now, event.clone());
        }
        for child in &plan.children {
            // A child whose key is stored already (this step began before) is that child.
            let plan = CreationPlan::compile(child)?;
            match self.create(child, plan, now) {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        if let Some(parent) = &plan.wake_parent {
            if let Some(snap) = self.sagas.get_mut(&parent.saga) {
                let record = &mut snap.record;
                record.signals_received += 1;
                if matches!(
                    record.status,
                    SagaStatus::Running | SagaStatus::Compensating
                ) && record.waiting_for.as_deref() == Some(parent.waiting_for().as_str())
                {
                    record.next_run_at = Some(now);
                }
            }
        }
        Ok(())
    }

    /// Stores a new saga as `plan` compiled it, unless its start key is held (then the saga that
    /// holds it, or a conflict when its input differs).
    fn create(&mut self, saga: &NewSaga, plan: CreationPlan, now: Timestamp) -> Result<Created> {
        if let (Some(key), Some(window)) = (&saga.idempotency_key, saga.dedup_window) {
            // A saga holding the key since before the window gives it up.
            let expired = self.keys.get(key).copied().filter(|existing| {
                self.sagas
                    .get(existing)
                    .is_some_and(|found| clock::after(found.record.created_at, window) <= now)
            });
            if let Some(existing) = expired {
                self.keys.remove(key);
                if let Some(found) = self.sagas.get_mut(&existing) {
                    found.record.idempotency_key = Some(super::retired_key(key, existing));
                }
            }
        }
        if let Some(key) = &saga.idempotency_key {
            if let Some(existing) = self.keys.get(key).copied() {
                let same = self
                    .sagas
                    .get(&existing)
                    .is_some_and(|found| found.record.input_hash == saga.input_hash);
                return if same {
                    Ok(Created::Existing(existing))
                } else {
                    Err(Error::Conflict {
                        key: key.clone(),
                        existing,
                    })
                };
            }
            self.keys.insert(key.clone(), saga.id);
        }
        if let Some(window) = saga.dedup_window.filter(|_| saga.idempotency_key.is_some()) {
            self.windows.insert(saga.id, clock::after(now, window));
        }
        self.sagas.insert(saga.id, plan.snapshot(saga, now));
        for event in plan.events {
            self.push_event(saga.id, now, event);
        }
        Ok(Created::New(saga.id))
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| {
            Error::Store("memory store lock poisoned by a panic in another thread".into())
        })
    }

    /// Lets `decide` judge saga `id` as stored, and writes the plan decided at `now`, if any:
    /// an operator's cancel, a parent's request that its child stop.
    fn decide_and_write<T>(
        &self,
        id: SagaId,
        now: Timestamp,
        decide: impl FnOnce(&SagaSnapshot) -> Result<(T, Option<WritePlan>)>,
    ) -> Result<T> {
        let mut state = self.state()?;
        let stored = state.sagas.get(&id).ok_or(Error::SagaNotFound(id))?;
        let (outcome, plan) = decide(stored)?;
        if let Some(plan) = plan {
            state.write(id, &plan, now)?;
        }
        Ok(outcome)
    }

    /// Claims up to `limit` active, due sagas that pass `eligible`, oldest due first.
    fn claim_where(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
        eligible: impl Fn(&SagaRecord) -> bool,
    ) -> Result<Vec<Lease>> {
        let mut state = self.state()?;
        let mut due: Vec<(Timestamp, SagaId)> = state
            .sagas
            .values()
            .filter(|snap| {
                let record = &snap.record;
                record.status.is_active()
                    && record.next_run_at.is_some_and(|at| at <= now)
                    && eligible(record)
            })
            .filter_map(|snap| snap.record.next_run_at.map(|at| (at, snap.record.id)))
            .collect();
        due.sort();
        due.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let expires_at = clock::after(now, lease_for);
        let mut leases = Vec::with_capacity(due.len());
        for (_, id) in due {
            let Some(snap) = state.sagas.get_mut(&id) else {
                continue;
            };
            let previous = snap.record.lease_owner.replace(owner.clone());
            snap.record.lease_expires_at = Some(expires_at);
            snap.record.fencing_token = FencingToken(snap.record.fencing_token.0 + 1);
            let token = snap.record.fencing_token;
            if let Some(previous) = previous.clone() {
                state.push_event(
                    id,
                    now,
                    EventData {
                        kind: EventKind::LeaseTakenOver,
                        step: None,
                        phase: None,
                        attempt: None,
                        detail: Some(format!("{owner} took over from {previous}")),
                    },
                );
            }
            leases.push(Lease {
                saga: id,
                owner: owner.clone(),
                token,
                expires_at,
                taken_over_from: previous,
            });
        }
        Ok(leases)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, saga: NewSaga) -> Result<Created> {
        let plan = CreationPlan::compile(&saga)?;
        let mut state = self.state()?;
        state.create(&saga, plan, clock::now())
    }

    async fn claim(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        self.claim_where(owner, now, lease_for, limit, |record| {
            record.lease_expires_at.is_none_or(|expiry| expiry < now)
        })
    }

    async fn claim_loaded(
        &self,
        owner: &WorkerId,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<(Lease, Option<Result<SagaSnapshot>>)>> {
        let leases = self.claim(owner, now, lease_for, limit).await?;
        let state = self.state()?;
        Ok(leases
            .into_iter()
            .map(|lease| {
                let snapshot = state.sagas.get(&lease.saga).cloned().map(Ok);
                (lease, snapshot)
            })
            .collect())
    }

    async fn reclaim(
        &self,
        owner: &WorkerId,
        granted_before: Timestamp,
        now: Timestamp,
        lease_for: Duration,
        limit: u32,
    ) -> Result<Vec<Lease>> {
        self.claim_where(owner, now, lease_for, limit, |record| {
            record.lease_owner.as_ref() == Some(owner)
                && record
                    .lease_expires_at
                    .is_some_and(|expiry| expiry < granted_before)
        })
    }

    async fn heartbeat(&self, lease: &Lease, expires_at: Timestamp) -> Result<Lease> {
        let mut state = self.state()?;
        let snap = state
            .sagas
            .get_mut(&lease.saga)
            .ok_or(Error::SagaNotFound(lease.saga))?;
        if !holds(&snap.record, lease) {
            return Err(Error::LeaseLost(lease.saga));
        }
        snap.record.lease_expires_at = Some(expires_at);
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    async fn apply(&self, lease: &Lease, changes: &[Change]) -> Result<()> {
        let compiled = WritePlan::compile(changes);
        let mut state = self.state()?;
        let now = clock::now();
        let snap = state
            .sagas
            .get(&lease.saga)
            .ok_or(Error::SagaNotFound(lease.saga))?;
        let plan = admit(snap, lease, &compiled)?;
        state.write(lease.saga, plan, now)
    }

    async fn load(&self, id: SagaId) -> Result<Option<SagaSnapshot>> {
        Ok(self.state()?.sagas.get(&id).cloned())
    }

    async fn list(&self, filter: &SagaFilter) -> Result<Vec<SagaRecord>> {
        let limit = usize::try_from(filter.limit_or_default()).unwrap_or(usize::MAX);
        Ok(self
            .state()?
            .sagas
            .values()
            .map(|snap| &snap.record)
            .filter(|record| filter.matches(record))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn count_by_status(&self) -> Result<Vec<(SagaStatus, u64)>> {
        let state = self.state()?;
        let mut counts: BTreeMap<&'static str, (SagaStatus, u64)> = BTreeMap::new();
        for snap in state.sagas.values() {
            let entry = counts
                .entry(snap.record.status.as_str())
                .or_insert((snap.record.status, 0));
            entry.1 += 1;
        }
        Ok(counts.into_values().collect())
    }

    async fn overview(&self, query: &OverviewQuery) -> Result<OverviewParts> {
        let state = self.state()?;
        let mut counts: BTreeMap<(String, &'static str), (SagaType, SagaStatus, u64)> =
            BTreeMap::new();
        let mut series: BTreeMap<(SeriesKind, usize), u64> = BTreeMap::new();
        let mut stuck: BTreeMap<(String, String, &'static str), StuckStep> = BTreeMap::new();
        let stuck_before = query.stuck_before();
        for snap in state.sagas.values() {
            let record = &snap.record;
            if query.totals {
                counts
                    .entry((record.saga_type.as_str().to_owned(), record.status.as_str()))
                    .or_insert((record.saga_type.clone(), record.status, 0))
                    .2 += 1;
                if let Some(bucket) = query.bucket_of(record.created_at) {
                    *series.entry((SeriesKind::Started, bucket)).or_default() += 1;
                }
                let ended = match record.status {
                    SagaStatus::Completed => Some(SeriesKind::Completed),
                    SagaStatus::Compensated => Some(SeriesKind::Compensated),
                    _ => None,
                };
                if let Some((kind, bucket)) =
                    ended.and_then(|kind| Some((kind, query.bucket_of(record.updated_at)?)))
                {
                    *series.entry((kind, bucket)).or_default() += 1;
                }
            }
            if !matches!(
                record.status,
                SagaStatus::Running | SagaStatus::Compensating
            ) {
                continue;
            }
            for step in &snap.steps {
                let Some(began) = step.started_at else {
                    continue;
                };
                if !matches!(step.status, StepStatus::InProgress | StepStatus::Pending)
                    || began >= stuck_before
                {
                    continue;
                }
                let entry = stuck
                    .entry((
                        record.saga_type.as_str().to_owned(),
                        step.name.as_str().to_owned(),
                        step.phase.as_str(),
                    ))
                    .or_insert_with(|| StuckStep {
                        saga_type: record.saga_type.clone(),
                        step: step.name.clone(),
                        phase: step.phase,
                        sagas: 0,
                        since: began,
                    });
                entry.sagas += 1;
                entry.since = entry.since.min(began);
            }
        }
        let mut open_interventions = 0;
        let mut oldest_open_intervention: Option<Timestamp> = None;
        for item in state.interventions.values() {
            if let Some(bucket) = query.bucket_of(item.opened_at).filter(|_| query.totals) {
                *series.entry((SeriesKind::Escalated, bucket)).or_default() += 1;
            }
            if item.status == InterventionStatus::Open {
                open_interventions += 1;
                oldest_open_intervention = Some(
                    oldest_open_intervention.map_or(item.opened_at, |at| at.min(item.opened_at)),
                );
            }
        }
        Ok(OverviewParts {
            counts: counts.into_values().collect(),
            series: series
                .into_iter()
                .map(|((kind, bucket), count)| (kind, bucket, count))
                .collect(),
            stuck: stuck.into_values().collect(),
            open_interventions,
            oldest_open_intervention,
        })
    }

    async fn history(&self, id: SagaId) -> Result<Vec<Event>> {
        Ok(self
            .state()?
            .events
            .iter()
            .filter(|event| event.saga_id == id)
            .cloned()
            .collect())
    }

    async fn intervention(&self, id: InterventionId) -> Result<Option<Intervention>> {
        Ok(self.state()?.interventions.get(&id).cloned())
    }

    async fn settle(&self, settlement: &Settlement) -> Result<SagaStatus> {
        let mut state = self.state()?;
        let now = clock::now();
        let item = state
            .interventions
            .get(&settlement.intervention)
            .cloned()
            .ok_or(Error::InterventionNotFound(settlement.intervention))?;
        if item.status != InterventionStatus::Open {
            return Err(Error::InterventionSettled(settlement.intervention));
        }
        let snap = state
            .sagas
            .get(&item.saga_id)
            .ok_or(Error::SagaNotFound(item.saga_id))?;
        let (status, plan) = decide_settle(&item, snap, settlement, now)?;
        state.write(item.saga_id, &plan, now)?;
        if let Some(open) = state.interventions.get_mut(&settlement.intervention) {
            open.status = InterventionStatus::Resolved;
            open.resolved_at = Some(now);
            open.resolved_by = Some(settlement.by.clone());
            open.resolution = Some(settlement.action.as_str().to_owned());
            open.resolution_reason = Some(settlement.reason.clone());
        }
        Ok(status)
    }

    async fn request_cancel(
        &self,
        id: SagaId,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<CancelOutcome> {
        self.decide_and_write(id, now, |stored| decide_cancel(stored, by, reason, now))
    }

    async fn stop_child(
        &self,
        child: SagaId,
        parent: &ParentLink,
        reason: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.decide_and_write(child, now, |stored| {
            decide_stop_child(stored, parent, reason, now).map(|plan| ((), plan))
        })
    }

    async fn deliver_signal(&self, delivery: &SignalDelivery) -> Result<Delivered> {
        let mut state = self.state()?;
        let now = clock::now();
        let id = delivery.saga;
        let snap = state.sagas.get_mut(&id).ok_or(Error::SagaNotFound(id))?;
        let Some(write) = decide_signal(snap, delivery)? else {
            return Ok(Delivered::Duplicate(id));
        };
        write.apply_to(snap, delivery, now);
        state.push_event(id, now, write.event);
        Ok(Delivered::New(id))
    }

    async fn prune(&self, before: Timestamp, limit: u32) -> Result<u64> {
        let mut state = self.state()?;
        let doomed: Vec<SagaId> = state
            .sagas
            .values()
            .filter(|snap| snap.record.status.is_terminal() && snap.record.updated_at < before)
            // A child is kept while its parent may still read it.
            .filter(|snap| {
                snap.record.parent.as_ref().is_none_or(|parent| {
                    state
                        .sagas
                        .get(&parent.saga)
                        .is_none_or(|parent| parent.record.status.is_terminal())
                })
            })
            .filter(|snap| {
                state
                    .windows
                    .get(&snap.record.id)
                    .is_none_or(|until| *until <= clock::now())
            })
            .map(|snap| snap.record.id)
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        let now = clock::now();
        state.windows.retain(|_, until| *until > now);
        // Policy uses that count no more: their window ended.
        for rows in state.uses.values_mut() {
            rows.retain(|row| row.expires_at.is_none_or(|expires| expires > now));
        }
        state.uses.retain(|_, rows| !rows.is_empty());
        for id in &doomed {
            if let Some(snap) = state.sagas.remove(id) {
                if let Some(key) = snap.record.idempotency_key {
                    state.keys.remove(&key);
                }
            }
        }
        state
            .events
            .retain(|event| !doomed.contains(&event.saga_id));
        state
            .interventions
            .retain(|_, item| !doomed.contains(&item.saga_id));
        Ok(u64::try_from(doomed.len()).unwrap_or(u64::MAX))
    }

    async fn permit(&self, request: &PermitRequest, now: Timestamp) -> Result<Permit> {
        let mut state = self.state()?;
        // Read under the lock: a time read before waiting for it would let grants bunch.
        let now = now.max(clock::now());
        let mut read = PolicyState::default();
        for wanted in &request.uses {
            let group = (
                wanted.policy.kind,
                wanted.policy.name.clone(),
                wanted.key.clone(),
            );
            let live: Vec<UseRow> = state
                .uses
                .get(&group)
                .map(|rows| {
                    rows.iter()
                        .filter(|row| match row.expires_at {
                            Some(expires) => expires > now,
                            None => state
                                .sagas
                                .get(&row.saga)
                                .is_some_and(|snap| !snap.record.status.is_terminal()),
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let (step, attempt) = (
                wanted.counted_step(request.index),
                wanted.counted_attempt(request.attempt),
            );
            let is_mine = |row: &UseRow| {
                row.saga == request.saga && row.step == step && row.attempt == attempt
            };
            let others: Vec<&UseRow> = live
                .iter()
                .filter(|row| {
                    let own_slot =
                        wanted.policy.kind == PolicyKind::Concurrency && row.saga == request.saga;
                    !(is_mine(row) || own_slot)
                })
                .collect();
            read.uses.push(UseState {
                mine: live.iter().any(is_mine)
                    || (wanted.policy.kind == PolicyKind::Concurrency
                        && live.iter().any(|row| row.saga == request.saga)),
                counted: u32::try_from(others.len()).unwrap_or(u32::MAX),
                frees_at: others.iter().filter_map(|row| row.expires_at).min(),
                limit: state
                    .limits
                    .get(&wanted.policy.name)
                    .copied()
                    .unwrap_or_default(),
                holder: others.first().map(|row| row.saga),
            });
            state.uses.insert(group, live);
        }
        let decided = decide_permit(request, &read, now);
        for (position, next_at) in &decided.limits {
            if let Some(wanted) = request.uses.get(*position) {
                state
                    .limits
                    .entry(wanted.policy.name.clone())
                    .or_default()
                    .next_at = Some(*next_at);
            }
        }
        for position in &decided.record {
            let Some(wanted) = request.uses.get(*position) else {
                continue;
            };
            state
                .uses
                .entry((
                    wanted.policy.kind,
                    wanted.policy.name.clone(),
                    wanted.key.clone(),
                ))
                .or_default()
                .push(UseRow {
                    saga: request.saga,
                    step: wanted.counted_step(request.index),
                    attempt: wanted.counted_attempt(request.attempt),
                    expires_at: use_expires_at(&wanted.policy, now),
                });
        }
        Ok(decided.permit)
    }

    async fn throttle(&self, name: &str, until: Timestamp) -> Result<()> {
        let mut state = self.state()?;
        let limit = state.limits.entry(name.to_owned()).or_default();
        limit.backoff_until = Some(limit.backoff_until.map_or(until, |known| known.max(until)));
        Ok(())
    }

    async fn pause(&self, request: &PauseRequest, now: Timestamp) -> Result<(Pause, bool)> {
        let mut state = self.state()?;
        if let Some(existing) = state
            .pauses
            .iter()
            .find(|pause| pause.resumed_at.is_none() && pause.scope == request.scope)
        {
            return Ok((existing.clone(), false));
        }
        let pause = Pause {
            id: i64::try_from(state.pauses.len()).unwrap_or(i64::MAX) + 1,
            scope: request.scope.clone(),
            paused_by: request.by.clone(),
            reason: request.reason.clone(),
            paused_at: now,
            resumed_at: None,
            resumed_by: None,
            resume_reason: None,
        };
        state.pauses.push(pause.clone());
        Ok((pause, true))
    }

    async fn resume(&self, request: &PauseRequest, now: Timestamp) -> Result<Option<(Pause, u64)>> {
        let mut state = self.state()?;
        let Some(pause) = state
            .pauses
            .iter_mut()
            .find(|pause| pause.resumed_at.is_none() && pause.scope == request.scope)
        else {
            return Ok(None);
        };
        pause.resumed_at = Some(now);
        pause.resumed_by = Some(request.by.clone());
        pause.resume_reason = Some(request.reason.clone());
        let lifted = pause.clone();
        let held = request.scope.waiting_for();
        let mut woken = 0;
        for snap in state.sagas.values_mut() {
            let record = &mut snap.record;
            if record.status.is_active()
                && record.waiting_for.as_deref() == Some(held.as_str())
                && record.lease_owner.is_none()
            {
                record.next_run_at = Some(now);
                woken += 1;
            }
        }
        Ok(Some((lifted, woken)))
    }

    async fn pauses(&self, all: bool) -> Result<Vec<Pause>> {
        Ok(self
            .state()?
            .pauses
            .iter()
            .filter(|pause| all || pause.resumed_at.is_none())
            .cloned()
            .collect())
    }

    async fn interventions(&self, open_only: bool) -> Result<Vec<Intervention>> {
        Ok(self
            .state()?
            .interventions
            .values()
            .filter(|item| !open_only || item.status == InterventionStatus::Open)
            .cloned()
            .collect())
    }
}

fn holds(record: &SagaRecord, lease: &Lease) -> bool {
    record.fencing_token == lease.token && record.lease_owner.as_ref() == Some(&lease.owner)
}
