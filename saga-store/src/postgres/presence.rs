//! Presence: a worker that claims through this store holds a session-level advisory lock, on a
//! connection of its own, for as long as its process lives. The server releases the lock when
//! the session ends — the process was killed (SIGKILL, OOM) or its connection dropped — so the
//! other processes see at once that the holder of a lease is gone and take its sagas over,
//! without waiting out the lease. A frozen process (SIGSTOP) keeps its session, its lock and its
//! leases until they expire; fencing refuses whatever it writes after a takeover.
//!
//! The lock's keys are `hashtext('saga-worker')` and `hashtext('<schema>/<worker id>')`. Two
//! worker ids that hash alike make each other look alive: their sagas then wait for the lease,
//! as without presence.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use saga_core::WorkerId;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// How often a process looks for sagas whose holder's session ended (at most once per claim).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The advisory lock's first key (the second is the worker's).
pub(crate) const LOCK_CLASS: &str = "saga-worker";

/// The presence locks this store holds, one per worker id that claimed through it.
pub(crate) struct Presence {
    connect: PgConnectOptions,
    schema: String,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    held: HashMap<String, PgConnection>,
    last_check: Option<Instant>,
    closed: bool,
}

impl Presence {
    pub(crate) fn new(connect: PgConnectOptions, schema: String) -> Self {
        Self {
            connect,
            schema,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// The schema whose worker ids the locks name.
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }

    /// Makes sure `owner`'s presence is held (without checking that its session still lives:
    /// [`Presence::check_due`] does, once a second).
    pub(crate) async fn ensure(&self, owner: &WorkerId) {
        let mut state = self.state.lock().await;
        if state.closed || state.held.contains_key(owner.as_str()) {
            return;
        }
        self.take(&mut state, owner).await;
    }

    async fn take(&self, state: &mut State, owner: &WorkerId) {
        match self.acquire(owner).await {
            Ok(Some(connection)) => {
                state.held.insert(owner.as_str().to_owned(), connection);
            }
            Ok(None) => {
                tracing::warn!(worker = %owner, "another session holds this worker id's presence (two processes under one worker id?); its sagas are taken over only once their leases expire");
            }
            Err(err) => {
                tracing::warn!(worker = %owner, error = %err, "could not take this worker's presence lock; if this process dies, its sagas wait for their leases to expire");
            }
        }
    }

    /// Whether to look for orphaned sagas now (at most once per [`CHECK_EVERY`]); first makes
    /// sure `owner`'s presence is held, reconnecting if its session ended.
    pub(crate) async fn check_due(&self, owner: &WorkerId) -> bool {
        let mut state = self.state.lock().await;
        if state.closed
            || state
                .last_check
                .is_some_and(|at| at.elapsed() < CHECK_EVERY)
        {
            return false;
        }
        state.last_check = Some(Instant::now());
        let alive = match state.held.get_mut(owner.as_str()) {
            Some(connection) => sqlx::query("SELECT 1").execute(connection).await.is_ok(),
            None => false,
        };
        if !alive {
            state.held.remove(owner.as_str());
            self.take(&mut state, owner).await;
        }
        true
    }

    async fn acquire(&self, owner: &WorkerId) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut connection = PgConnection::connect_with(&self.connect).await?;
        let held: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2 || '/' || $3))",
        )
        .bind(LOCK_CLASS)
        .bind(&self.schema)
        .bind(owner.as_str())
        .fetch_one(&mut connection)
        .await?;
        Ok(held.then_some(connection))
    }

    /// Ends every presence session: this store's workers are gone.
    pub(crate) async fn close(&self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        for (_, connection) in state.held.drain() {
            let _ = connection.close().await;
        }
    }
}
