//! The filling process of `saga-bench waiting`: starts orders through the library, its workers
//! running, and returns once every one waits for its signal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{Config, Orchestrator, PgOptions, PgStore};
use serde_json::{json, Value};

use super::{count_waiting, monitor};
use crate::pgutil::{self, err, Res};
use crate::sagas::Order;

#[derive(clap::Args, Debug, Clone)]
pub struct FillArgs {
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value_t = 100_000)]
    pub sagas: u64,
    /// The filling worker's concurrency.
    #[arg(long, default_value_t = 256)]
    pub inflight: usize,
    /// Tasks starting orders at once.
    #[arg(long, default_value_t = 64)]
    pub creators: usize,
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
}

/// The filling process: starts `sagas` orders with its workers running and returns once every
/// one waits for its signal.
pub async fn fill(args: FillArgs) -> Res<Value> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.timeout);
    let store = PgStore::connect_with(
        &args.url,
        PgOptions {
            max_connections: 16,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connecting"))?;
    let pg = store.clone();
    let orchestrator = Orchestrator::new(
        Arc::new(store),
        Config::default().concurrency(args.inflight),
    );
    orchestrator
        .register(Order(None))
        .map_err(err("register"))?;
    orchestrator.run();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..args.creators.max(1) {
        let orchestrator = orchestrator.clone();
        let next = Arc::clone(&next);
        let n = args.sagas;
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                orchestrator
                    .start::<Order>(&i)
                    .await
                    .map_err(err("start"))?;
            }
        });
    }
    while let Some(joined) = creators.join_next().await {
        joined.map_err(err("creator"))??;
    }
    let created_s = t0.elapsed().as_secs_f64();
    let monitor = monitor(&args.url).await?;
    loop {
        let n = count_waiting(&monitor).await?;
        if n >= args.sagas as i64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {n} of {} orders reached their wait in {} s",
                args.sagas, args.timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting_s = t0.elapsed().as_secs_f64();
    if tokio::time::timeout(Duration::from_secs(15), orchestrator.shutdown())
        .await
        .is_err()
    {
        orchestrator.kill();
    }
    pg.close().await;
    monitor.close().await;
    Ok(json!({
        "sagas": args.sagas,
        "created_s": created_s,
        "waiting_s": waiting_s,
        "rss_mb": pgutil::peak_rss_mb(),
    }))
}
