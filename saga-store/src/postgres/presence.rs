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

/// How often a process looks for sagas whose holder's session ended (at most once per claim),
/// and how often it checks that each of its own presence sessions still lives.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The advisory lock's first key (the second is the worker's).
pub(crate) const LOCK_CLASS: &str = "saga-worker";

/// How long opening a presence session, or checking one, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long no takeover is made after one of this store's own sessions was found ended, when
/// the claim does not say how long its leases are.
const QUIET_DEFAULT: Duration = Duration::from_secs(30);

/// The longest quiet period, whatever the leases' length.
const QUIET_LONGEST: Duration = Duration::from_secs(3_600);

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

/// One worker id's presence.
enum Held {
    /// Its lock, held on this session; checked alive at `checked`.
    Lock {
        session: PgConnection,
        checked: Instant,
    },
    /// Another session holds the lock (a second store, or a second process, under the same
    /// worker id): that session keeps the id present. Tried again after `CHECK_EVERY`.
    Elsewhere { tried: Instant },
}

#[derive(Default)]
struct State {
    held: HashMap<String, Held>,
    last_scan: Option<Instant>,
    /// No takeover before this: one of this store's own sessions was found ended, so the
    /// server may have restarted (or reset connections), ending every process's session at
    /// once; live processes take their locks again only at their next claim.
    quiet_until: Option<Instant>,
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

    /// Makes sure `owner` is present before it holds a lease: takes its lock if this store does
    /// not hold it, and at most once per [`CHECK_EVERY`] checks that the session holding it
    /// still lives (taking it again if not). With `scan` (a claim, whose leases last that
    /// long), returns whether it is time for this store to look for sagas whose holder's
    /// session ended: once per [`CHECK_EVERY`], and not within `scan` of finding one of this
    /// store's own sessions ended (the server may have restarted: every process's lock is gone
    /// for a moment, the live ones' too).
    ///
    /// # Errors
    /// The lock could not be taken (the server refused a connection, or did not answer in
    /// time): the worker must not take leases it could not be seen to hold, since they would
    /// look orphaned to every other process.
    pub(crate) async fn keep(
        &self,
        owner: &WorkerId,
        scan: Option<Duration>,
    ) -> Result<bool, sqlx::Error> {
        let mut state = self.state.lock().await;
        if state.closed {
            return Ok(false);
        }
        let stale = match state.held.get_mut(owner.as_str()) {
            None => true,
            Some(Held::Elsewhere { tried }) => tried.elapsed() >= CHECK_EVERY,
            Some(Held::Lock { session, checked }) => {
                if checked.elapsed() < CHECK_EVERY {
                    false
                } else if matches!(
                    tokio::time::timeout(
                        IO_TIMEOUT,
                        sqlx::query("SELECT 1").execute(&mut *session)
                    )
                    .await,
                    Ok(Ok(_))
                ) {
                    *checked = Instant::now();
                    false
                } else {
                    tracing::warn!(worker = %owner, "this worker's presence session ended; taking its lock again, and taking no saga over for a lease's length (the server may have restarted); meanwhile other processes may have taken this worker's sagas over, and fencing refuses its late writes");
                    // Bounded: a lease of years would otherwise overflow the instant.
                    let quiet = scan.unwrap_or(QUIET_DEFAULT).min(QUIET_LONGEST);
                    state.quiet_until = Some(Instant::now() + quiet);
                    true
                }
            }
        };
        if stale {
            state.held.remove(owner.as_str());
            let held = self.acquire(owner).await?;
            state.held.insert(owner.as_str().to_owned(), held);
        }
        if scan.is_none()
            || state
                .quiet_until
                .is_some_and(|until| Instant::now() < until)
        {
            return Ok(false);
        }
        let due = state.last_scan.is_none_or(|at| at.elapsed() >= CHECK_EVERY);
        if due {
            state.last_scan = Some(Instant::now());
        }
        Ok(due)
    }

    async fn acquire(&self, owner: &WorkerId) -> Result<Held, sqlx::Error> {
        let late = || sqlx::Error::PoolTimedOut;
        let mut session =
            tokio::time::timeout(IO_TIMEOUT, PgConnection::connect_with(&self.connect))
                .await
                .map_err(|_| late())??;
        let locked: bool = tokio::time::timeout(
            IO_TIMEOUT,
            sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2 || '/' || $3))",
            )
            .bind(LOCK_CLASS)
            .bind(&self.schema)
            .bind(owner.as_str())
            .fetch_one(&mut session),
        )
        .await
        .map_err(|_| late())??;
        if locked {
            return Ok(Held::Lock {
                session,
                checked: Instant::now(),
            });
        }
        let _ = session.close().await;
        tracing::debug!(worker = %owner, "another session holds this worker id's presence lock (a second store or process under one worker id); it keeps the id present");
        Ok(Held::Elsewhere {
            tried: Instant::now(),
        })
    }

    /// Ends every presence session: this store's workers are gone.
    pub(crate) async fn close(&self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        for (_, held) in state.held.drain() {
            if let Held::Lock { session, .. } = held {
                let _ = session.close().await;
            }
        }
    }
}
