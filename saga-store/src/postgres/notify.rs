//! LISTEN/NOTIFY: wakes this process's idle workers when any process starts or releases a saga.

use std::sync::Arc;
use std::time::Duration;

use saga_core::Result;
use sqlx::postgres::{PgListener, PgPool};
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
    /// Listens on `channel` with a dedicated connection (reconnected if lost).
    pub(super) async fn listen(pool: &PgPool, channel: &str) -> Result<Self> {
        let mut listener = PgListener::connect_with(pool).await.map_err(classify)?;
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
