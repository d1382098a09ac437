//! LISTEN/NOTIFY: wakes this process's idle workers when any process starts or releases a saga.

use std::sync::Arc;
use std::time::Duration;

use saga_core::Result;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::classify;

/// Wake-ups received on the store's channel; the listening task stops when this is dropped.
#[derive(Debug)]
pub(super) struct Wakeup {
    notify: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl Wakeup {
    /// Listens on `channel` with a dedicated connection (reconnected if lost), from a pool of
    /// its own: a listener holds its connection for good, and one taken from the store's pool
    /// would keep `pool.close()` waiting forever.
    pub(super) async fn listen(connect: &PgConnectOptions, channel: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(connect.clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(classify)?;
        listener.listen(channel).await.map_err(classify)?;
        let notify = Arc::new(Notify::new());
        let wake = Arc::clone(&notify);
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => wake.notify_one(),
                    Err(err) => {
                        // The connection was lost; workers poll meanwhile. Wake them once, in
                        // case a notification was missed, and try again shortly.
                        tracing::warn!(error = %err, "saga wake-up listener lost its connection; reconnecting");
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self {
            notify,
            task: Some(task),
        })
    }

    /// No listening: waiting just sleeps.
    pub(super) fn none() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            task: None,
        }
    }

    /// Stops listening (its connection closes as the task ends); waiting then just sleeps.
    pub(super) fn stop(&self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }

    /// Returns on a wake-up or after `max`.
    pub(super) async fn wait(&self, max: Duration) {
        tokio::select! {
            () = self.notify.notified() => {}
            () = tokio::time::sleep(max) => {}
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
