//! Observability: W3C trace context carried by each saga across workers and restarts, the names
//! of the spans and metrics the data path emits, and what may be logged.
//!
//! Spans (`tracing`): `saga` for each drive of a saga by a worker (fields `saga.id`, `saga.type`,
//! `trace_id`, `traceparent`, `fencing_token`), and `step` for each attempt (fields `step.name`,
//! `step.phase`, `attempt`, `idempotency_key`, `outcome`, `error`, `trace_id`). Every span of one
//! saga carries the `trace_id` captured when it started, on any worker and after any restart.
//!
//! Metrics (`metrics` facade; install any recorder, for example Prometheus):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `saga_started_total` | counter | `saga_type` |
//! | `saga_start_dedup_total` | counter | `saga_type` |
//! | `saga_finished_total` | counter | `saga_type`, `status` (completed, compensated) |
//! | `saga_compensations_started_total` | counter | `saga_type` |
//! | `saga_compensation_duration_seconds` | histogram | `saga_type`, `outcome` (compensated, needs_intervention) |
//! | `saga_escalated_total` | counter | `saga_type`, `kind` (compensation_failed, unresumable) |
//! | `saga_step_attempts_total` | counter | `saga_type`, `step`, `phase`, `outcome` (ok, transient, permanent) |
//! | `saga_step_retries_total` | counter | `saga_type`, `step`, `phase` |
//! | `saga_step_retries_exhausted_total` | counter | `saga_type`, `step`, `phase` |
//! | `saga_step_duration_seconds` | histogram | `saga_type`, `step`, `phase` |
//! | `saga_lease_takeovers_total` | counter | |
//! | `saga_claim_duration_seconds` | histogram | |
//! | `saga_claimed_total` | counter | |
//! | `saga_interventions_open` | gauge | |
//! | `saga_intervention_oldest_age_seconds` | gauge | |
//! | `saga_stuck_sagas` | gauge | `saga_type`, `step`, `phase` |
//! | `saga_policy_held_total` | counter | `saga_type`, `step`, `policy` (paused, rate_limit, concurrency) |
//! | `saga_policy_skips_total` | counter | `saga_type`, `step`, `policy` (the cap's name) |
//! | `saga_policy_budget_exhausted_total` | counter | `saga_type`, `step`, `policy` (the budget's name) |
//! | `saga_policy_throttled_total` | counter | `integration` |
//! | `saga_integration_duration_seconds` | histogram | `integration` (a step's rate limit name) |
//!
//! The gauges are sampled by every orchestrator every `Config::metrics_interval` with one
//! [`Store::overview`](crate::Store::overview) read of the queue and the stuck steps (no count
//! of all sagas): `saga_stuck_sagas` counts running or compensating sagas whose current step
//! phase (in progress, or pending a retry) began longer than `Config::stuck_after` ago, and
//! falls back to 0 for a step that is no longer stuck.
//!
//! `saga_compensations_started_total` counts each saga once, when it first moves to
//! `compensating`: in the worker that writes the move (a step failed for good, the deadline
//! passed, the saga's holder honoured a cancel), or, when an operator's action moves it in the
//! store (a cancel of a saga no worker held, an unknown outcome resolved as not applied), in the
//! process that called [`Admin`](crate::Admin). A saga an operator sends back to compensating
//! after a failed compensation is not counted again.
//!
//! `saga_compensation_duration_seconds` is observed by the worker that writes the end of a
//! compensation (`compensated`, or `needs_intervention` when a compensation fails for good or
//! the saga is parked), from when the saga began compensating as that worker knows it: the time
//! of the write that moved it, when that worker made it; else when the step whose failure started
//! it failed for good; else when its earliest compensation attempt still recorded started (which
//! leaves out the time a worker took to claim a saga an operator cancelled, and the earlier
//! attempts of a first compensation that was retried); else the saga's last write. A saga that
//! compensates again after an operator's retry is observed again, from the same start.

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use serde_json::Value;

use crate::clock::Timestamp;
use crate::status::{Phase, SagaStatus, StepStatus};
use crate::store::SagaSnapshot;

/// A W3C trace context (`traceparent`: `00-<trace id>-<parent span id>-<flags>`), stored with each
/// saga when it starts so that every later step attempt continues the caller's trace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    flags: String,
}

impl TraceContext {
    /// A new trace (random trace and span ids, sampled).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let trace: u128 = rng.random::<u128>().max(1);
        let span: u64 = rng.random::<u64>().max(1);
        Self {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{span:016x}"),
            flags: "01".to_owned(),
        }
    }

    /// Parses a `traceparent` header value; `None` when it is not a valid version-00 context.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |text: &str, len: usize| {
            text.len() == len
                && text
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        };
        let valid = parts.next().is_none()
            && version == "00"
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id.chars().any(|c| c != '0')
            && span_id.chars().any(|c| c != '0');
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// The trace id (32 hex digits): the same for every span of the saga.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The span id of the caller that started the saga (16 hex digits).
    pub fn span_id(&self) -> &str {
        &self.span_id
    }

    /// The caller's trace context when it can be read (with the `opentelemetry` feature, from
    /// the current span), else a new trace.
    pub fn current_or_new() -> Self {
        #[cfg(feature = "opentelemetry")]
        if let Some(current) = otel::current() {
            return current;
        }
        Self::generate()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// Removes or masks fields of a saga input or step output before it is logged.
pub type Redactor = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// What the data path may log. Nothing secret by default: inputs and outputs are not logged
/// unless `log_payloads` is set, and then only after `redact` ran on them.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Record saga inputs and step outputs on the spans (default false).
    pub log_payloads: bool,
    /// Applied to every input and output before it is recorded.
    pub redact: Option<Redactor>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("log_payloads", &self.log_payloads)
            .field("redact", &self.redact.is_some())
            .finish()
    }
}

impl Telemetry {
    /// A payload as it may appear in logs: `None` unless payloads are logged; redacted.
    pub fn loggable(&self, value: &Value) -> Option<String> {
        if !self.log_payloads {
            return None;
        }
        let mut value = value.clone();
        if let Some(redact) = &self.redact {
            redact(&mut value);
        }
        Some(value.to_string())
    }
}

/// Metric names, in one place.
pub(crate) mod names {
    pub(crate) const STARTED: &str = "saga_started_total";
    pub(crate) const START_DEDUP: &str = "saga_start_dedup_total";
    pub(crate) const FINISHED: &str = "saga_finished_total";
    /// Sagas that moved to `compensating` for the first time (see the module docs).
    pub(crate) const COMPENSATIONS_STARTED: &str = "saga_compensations_started_total";
    /// From the start of a saga's compensation to `compensated` or `needs_intervention` (label
    /// `outcome`); see the module docs for where the start is read.
    pub(crate) const COMPENSATION_DURATION: &str = "saga_compensation_duration_seconds";
    pub(crate) const ESCALATED: &str = "saga_escalated_total";
    pub(crate) const STEP_ATTEMPTS: &str = "saga_step_attempts_total";
    pub(crate) const STEP_RETRIES: &str = "saga_step_retries_total";
    pub(crate) const STEP_EXHAUSTED: &str = "saga_step_retries_exhausted_total";
    pub(crate) const STEP_DURATION: &str = "saga_step_duration_seconds";
    pub(crate) const TAKEOVERS: &str = "saga_lease_takeovers_total";
    pub(crate) const CLAIM_DURATION: &str = "saga_claim_duration_seconds";
    pub(crate) const CLAIMED: &str = "saga_claimed_total";
    pub(crate) const INTERVENTIONS_OPEN: &str = "saga_interventions_open";
    /// How long the oldest open intervention item has waited (0 when none is open).
    pub(crate) const INTERVENTION_OLDEST_AGE: &str = "saga_intervention_oldest_age_seconds";
    /// Sagas whose current step phase began longer than `Config::stuck_after` ago.
    pub(crate) const STUCK_SAGAS: &str = "saga_stuck_sagas";
    pub(crate) const POLICY_HELD: &str = "saga_policy_held_total";
    pub(crate) const POLICY_SKIPS: &str = "saga_policy_skips_total";
    pub(crate) const POLICY_BUDGET_EXHAUSTED: &str = "saga_policy_budget_exhausted_total";
    pub(crate) const POLICY_THROTTLED: &str = "saga_policy_throttled_total";
    pub(crate) const INTEGRATION_DURATION: &str = "saga_integration_duration_seconds";
}

/// Counts a saga that moved to `compensating` for the first time.
pub(crate) fn count_compensation_start(saga_type: &str) {
    metrics::counter!(names::COMPENSATIONS_STARTED, "saga_type" => saga_type.to_owned())
        .increment(1);
}

/// When the saga of `snapshot`, compensating, began compensating, as far as its rows tell: when
/// an action failed for good (the write that records it, or the next one, moves the saga to
/// `compensating`), else when its earliest compensation attempt still recorded started (the
/// first compensation begins in the write that moves the saga), else its last write (a saga an
/// operator moved, with nothing compensated yet). `None` when it is not compensating.
pub(crate) fn compensation_began(snapshot: &SagaSnapshot) -> Option<Timestamp> {
    if snapshot.record.status != SagaStatus::Compensating {
        return None;
    }
    let failed = snapshot
        .steps
        .iter()
        .filter(|step| step.phase == Phase::Action && step.status == StepStatus::Failed)
        .filter_map(|step| step.finished_at);
    let compensations = snapshot
        .steps
        .iter()
        .filter(|step| step.phase == Phase::Compensation)
        .filter_map(|step| step.started_at);
    Some(
        failed
            .chain(compensations)
            .min()
            .unwrap_or(snapshot.record.updated_at),
    )
}

#[cfg(feature = "opentelemetry")]
pub(crate) mod otel {
    //! Bridges the stored trace context to OpenTelemetry spans (feature `opentelemetry`).

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// The current span's OpenTelemetry context, if it has a valid one.
    pub(crate) fn current() -> Option<TraceContext> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| {
            TraceContext::parse(&format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            ))
        })?
    }

    /// Makes `span` a child of the stored remote context.
    pub(crate) fn set_parent(span: &tracing::Span, trace: &TraceContext) {
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(trace.trace_id()),
            SpanId::from_hex(trace.span_id()),
        ) else {
            return;
        };
        let remote = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_headers() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.to_string(), header);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let fresh = TraceContext::generate();
        assert_eq!(TraceContext::parse(&fresh.to_string()), Some(fresh));
    }

    /// A compensating saga last written at `updated_at`, with step rows (index, phase, status,
    /// started, finished).
    fn compensating(
        updated_at: Timestamp,
        rows: &[(u32, Phase, StepStatus, Timestamp, Option<Timestamp>)],
    ) -> SagaSnapshot {
        use crate::id::{Attempt, FencingToken, SagaId, SagaType, StepIndex, StepName};
        let id = SagaId::new();
        let steps = rows
            .iter()
            .map(|&(index, phase, status, started, finished)| {
                let name = StepName::new(format!("step{index}"));
                crate::store::StepRecord {
                    index: StepIndex(index),
                    phase,
                    idempotency_key: crate::IdempotencyKey::for_step(id, &name, phase),
                    name,
                    status,
                    attempt: Attempt::FIRST,
                    output: None,
                    last_error: None,
                    next_attempt_at: None,
                    started_at: Some(started),
                    finished_at: finished,
                }
            })
            .collect();
        SagaSnapshot {
            record: crate::store::SagaRecord {
                id,
                saga_type: SagaType::new("checkout"),
                version: 1,
                fingerprint: "f".into(),
                status: SagaStatus::Compensating,
                status_reason: None,
                input: serde_json::json!(1),
                input_hash: "h".into(),
                idempotency_key: None,
                next_run_at: None,
                lease_owner: None,
                lease_expires_at: None,
                fencing_token: FencingToken(1),
                trace_context: None,
                cancel_requested: None,
                created_at: updated_at,
                updated_at,
                waiting_for: None,
                deadline: None,
                signals_received: 0,
                parent: None,
            },
            steps,
            signals: Vec::new(),
        }
    }

    #[test]
    fn compensation_begins_at_the_failure_else_the_first_compensation_else_the_last_write() {
        use Phase::{Action, Compensation};
        use StepStatus::{Completed, Failed, InProgress};
        let at = |ms: i64| crate::clock::now() + chrono::Duration::milliseconds(ms);
        let (t0, t1, t2, t3, t4) = (at(0), at(10), at(20), at(30), at(40));

        // A step failed for good at t1; compensations started at t2 and t3; last write at t4.
        let failed = compensating(
            t4,
            &[
                (0, Action, Completed, t0, Some(t0)),
                (1, Action, Completed, t0, Some(t0)),
                (2, Action, Failed, t0, Some(t1)),
                (1, Compensation, Completed, t2, Some(t2)),
                (0, Compensation, InProgress, t3, None),
            ],
        );
        assert_eq!(compensation_began(&failed), Some(t1));

        // Cancelled: no failure; the earliest compensation attempt.
        let cancelled = compensating(
            t4,
            &[
                (0, Action, Completed, t0, Some(t0)),
                (1, Action, Completed, t0, Some(t0)),
                (0, Compensation, Completed, t3, Some(t3)),
                (1, Compensation, Completed, t2, Some(t2)),
            ],
        );
        assert_eq!(compensation_began(&cancelled), Some(t2));

        // Moved by an operator, nothing compensated yet: its last write.
        let mut moved = compensating(t4, &[(0, Action, Completed, t0, Some(t0))]);
        assert_eq!(compensation_began(&moved), Some(t4));

        // Not compensating: no start.
        moved.record.status = SagaStatus::Running;
        assert_eq!(compensation_began(&moved), None);
    }

    #[test]
    fn payloads_are_not_logged_unless_asked_and_then_redacted() {
        let value = serde_json::json!({"card": "4242", "sku": "A"});
        assert_eq!(Telemetry::default().loggable(&value), None);
        let telemetry = Telemetry {
            log_payloads: true,
            redact: Some(Arc::new(|value: &mut Value| {
                if let Some(map) = value.as_object_mut() {
                    map.insert("card".into(), Value::String("***".into()));
                }
            })),
        };
        assert_eq!(
            telemetry.loggable(&value).as_deref(),
            Some(r#"{"card":"***","sku":"A"}"#)
        );
    }
}
