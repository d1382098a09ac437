//! Orchestrator settings, with defaults suited to a service.

use std::time::Duration;

use crate::id::WorkerId;
use crate::telemetry::Telemetry;

/// How an [`Orchestrator`](crate::Orchestrator) runs its workers.
#[derive(Clone)]
pub struct Config {
    /// The name recorded as the owner of this orchestrator's leases.
    pub worker_id: WorkerId,
    /// How many sagas this orchestrator drives at once. While sagas started here keep every
    /// slot busy, it still claims one saga waiting in the store per poll interval and drives
    /// it above this limit, so that retries and takeovers are not put off indefinitely.
    pub concurrency: usize,
    /// How long a claim lasts without a heartbeat; heartbeats renew it every third of this.
    /// After a crash, the sagas this worker held resume elsewhere once it lapses.
    pub lease_ttl: Duration,
    /// How often an idle worker looks for due sagas when nothing wakes it.
    pub poll_interval: Duration,
    /// Largest serialized saga input or step output accepted.
    pub max_payload_bytes: usize,
    /// How long [`Orchestrator::shutdown`](crate::Orchestrator::shutdown) lets running steps finish.
    pub shutdown_grace: Duration,
    /// What may be logged (inputs and outputs only when asked, redacted).
    pub telemetry: Telemetry,
    /// How often gauges (the intervention queue, stuck steps) are sampled.
    pub metrics_interval: Duration,
    /// A step phase begun longer ago than this is counted as stuck (gauge `saga_stuck_sagas`).
    pub stuck_after: Duration,
    /// Most sagas claimed in one store call.
    pub claim_batch: usize,
    /// Most starts in progress at once in this process (writing their saga). Further calls to
    /// [`Orchestrator::start`](crate::Orchestrator::start) and its kin wait their turn, in the
    /// order they came, holding little memory meanwhile: a burst of starts queues in the
    /// callers, not in the store's writers.
    pub max_starts_in_progress: usize,
    /// A hook around every step call (the test kit's faults); `None` in production.
    pub intercept: Option<std::sync::Arc<dyn crate::intercept::Intercept>>,
    /// How far this process's clock is off, simulated (tests of clock skew only; zero).
    #[doc(hidden)]
    pub simulated_clock_skew: chrono::Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("worker_id", &self.worker_id)
            .field("concurrency", &self.concurrency)
            .field("lease_ttl", &self.lease_ttl)
            .field("poll_interval", &self.poll_interval)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("telemetry", &self.telemetry)
            .field("metrics_interval", &self.metrics_interval)
            .field("stuck_after", &self.stuck_after)
            .field("claim_batch", &self.claim_batch)
            .field("max_starts_in_progress", &self.max_starts_in_progress)
            .field("intercept", &self.intercept.is_some())
            .field("simulated_clock_skew", &self.simulated_clock_skew)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_id: WorkerId::generate(),
            concurrency: 16,
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            max_payload_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            telemetry: Telemetry::default(),
            metrics_interval: Duration::from_secs(10),
            stuck_after: Duration::from_secs(15 * 60),
            claim_batch: 64,
            max_starts_in_progress: 1024,
            simulated_clock_skew: chrono::Duration::zero(),
            intercept: None,
        }
    }
}

impl Config {
    /// Sets how many sagas run at once (at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the lease duration.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = lease_ttl;
        self
    }

    /// Sets the idle poll interval.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Sets the worker name.
    pub fn worker_id(mut self, worker_id: WorkerId) -> Self {
        self.worker_id = worker_id;
        self
    }

    /// Sets the payload limit in bytes.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets what may be logged.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Sets the most sagas claimed in one store call (at least 1).
    pub fn claim_batch(mut self, batch: usize) -> Self {
        self.claim_batch = batch.max(1);
        self
    }

    /// Sets the most starts in progress at once (at least 1; default 1,024).
    pub fn max_starts_in_progress(mut self, starts: usize) -> Self {
        self.max_starts_in_progress = starts.max(1);
        self
    }

    /// Sets how often gauges are sampled.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    /// Sets the age past which a running step phase counts as stuck (default 15 minutes).
    pub fn stuck_after(mut self, age: Duration) -> Self {
        self.stuck_after = age;
        self
    }

    /// Runs every step call through `hook` (what [`crate::testing`] injects faults with).
    pub fn intercept(mut self, hook: std::sync::Arc<dyn crate::intercept::Intercept>) -> Self {
        self.intercept = Some(hook);
        self
    }

    /// Simulates a process clock that is `skew` off (ahead when positive), to test that
    /// workers schedule by the store's clock. Not for production use.
    #[doc(hidden)]
    pub fn simulate_clock_skew(mut self, skew: chrono::Duration) -> Self {
        self.simulated_clock_skew = skew;
        self
    }

    /// Sets the shutdown grace period.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
}
