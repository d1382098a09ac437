//! Signal-to-step latency: `sagas` orders (`reserve` -> wait for the signal `paid` -> `ship`)
//! are started and brought to their wait by a worker orchestrator; then a second orchestrator,
//! on a store (pool and connections) of its own and never running workers — a web service
//! receiving payment webhooks — sends each its signal at a steady rate. Measured: from the
//! `signal` call returning (the delivery committed) to the `ship` step's entry in the worker.
//! The worker polls only every `poll_ms` (5 s), so a latency far below that is the `NOTIFY` the
//! delivery sends, received by the worker's `LISTEN`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga::{Config, Orchestrator, PgOptions, PgStore, SagaId, SagaStatus, SignalKey, Store};
use serde_json::{json, Value};

use crate::pgutil::{self, err, percentile, Res};
use crate::sagas::{Order, Paid, ORDER_WAITING_FOR};
use crate::track::{Tracker, TrackingStore};

#[derive(clap::Args, Debug, Clone)]
pub struct SignalArgs {
    #[arg(long)]
    pub admin_url: String,
    /// Orders started, then signalled.
    #[arg(long, default_value_t = 10_000)]
    pub sagas: u64,
    /// Signals sent per second (open loop: each is sent at its time, whatever the others do).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// The worker's concurrency.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// The worker's poll interval, in ms.
    #[arg(long, default_value_t = 5_000)]
    pub poll_ms: u64,
    /// The worker does not LISTEN (a control run: wake-ups then come only from its polls).
    #[arg(long)]
    pub no_listen: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
}

/// The time a signal was sent and the time its `signal` call returned.
struct Sent {
    id: SagaId,
    called: Instant,
    returned: Instant,
}

async fn waiting(monitor: &PgStore) -> Res<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM saga.saga_instances WHERE status = 'running' AND waiting_for = $1",
    )
    .bind(ORDER_WAITING_FOR)
    .fetch_one(monitor.pool())
    .await
    .map_err(err("counting waiting sagas"))
}

pub async fn signal(args: SignalArgs) -> Res<Value> {
    let name = if args.no_listen {
        "bench_saga_signal_poll"
    } else {
        "bench_saga_signal"
    };
    let url = pgutil::fresh_database(&args.admin_url, name).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let tracker = Arc::new(Tracker::default());

    // The worker: drives the orders; idle, it polls every `poll_ms` unless woken.
    let worker_store = PgStore::connect_with(
        &url,
        PgOptions {
            max_connections: 16,
            listen: !args.no_listen,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connecting (worker)"))?;
    let worker_pg = worker_store.clone();
    let tracked: Arc<dyn Store> = Arc::new(TrackingStore::new(
        Arc::new(worker_store),
        Arc::clone(&tracker),
    ));
    let poll = Duration::from_millis(args.poll_ms);
    let worker = Orchestrator::new(
        tracked,
        Config::default()
            .concurrency(args.inflight)
            .poll_interval(poll),
    );
    worker
        .register(Order(Some(Arc::clone(&tracker))))
        .map_err(err("register"))?;
    worker.run();

    // The sender: a store of its own, no workers (it never calls `run`), no LISTEN.
    let sender_store = PgStore::connect_with(
        &url,
        PgOptions {
            max_connections: 16,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connecting (sender)"))?;
    let sender_pg = sender_store.clone();
    let sender = Orchestrator::new(Arc::new(sender_store), Config::default());
    sender.register(Order(None)).map_err(err("register"))?;

    let monitor = PgStore::connect_with(
        &url,
        PgOptions {
            max_connections: 2,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connecting (monitor)"))?;

    // Start the orders through the worker, and wait until every one waits for its signal.
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let worker = worker.clone();
        let next = Arc::clone(&next);
        let n = args.sagas;
        creators.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(ids);
                }
                ids.push(worker.start::<Order>(&i).await.map_err(err("start"))?);
            }
        });
    }
    let mut ids = Vec::new();
    while let Some(joined) = creators.join_next().await {
        ids.append(&mut joined.map_err(err("creator"))??);
    }
    loop {
        let n = waiting(&monitor).await?;
        if n >= args.sagas as i64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {n} of {} orders reached their wait in time",
                args.sagas
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let to_wait_s = t0.elapsed().as_secs_f64();
    // Let the worker go idle (its last claims and writes done) before the first signal.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Send each its signal at a steady rate, from the sender.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::new(Mutex::new(Vec::with_capacity(ids.len())));
    let send_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let start = tokio::time::Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for (i, id) in ids.iter().copied().enumerate() {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let sender = sender.clone();
        let sent = Arc::clone(&sent);
        let send_errors = Arc::clone(&send_errors);
        senders.spawn(async move {
            let called = Instant::now();
            let paid = Paid { n: i as u64 };
            match sender
                .signal(id, &paid, SignalKey::new(format!("evt-{i}")))
                .await
            {
                Ok(_) => {
                    let returned = Instant::now();
                    if let Ok(mut sent) = sent.lock() {
                        sent.push(Sent {
                            id,
                            called,
                            returned,
                        });
                    }
                }
                Err(e) => {
                    send_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("signal to {id} failed: {e}");
                }
            }
        });
        // Reap finished sends as we go, so that the set stays small.
        while senders.try_join_next().is_some() {}
    }
    while senders.join_next().await.is_some() {}
    let send_s = start.elapsed().as_secs_f64();

    // Every order settles once shipped.
    let sent = std::mem::take(&mut *sent.lock().map_err(|_| "poisoned")?);
    let mut latencies = Vec::with_capacity(sent.len());
    let mut from_call = Vec::with_capacity(sent.len());
    let mut call_ms = Vec::with_capacity(sent.len());
    let mut unshipped = 0u64;
    for s in &sent {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match tracker.wait(s.id, left).await {
            Some((_, SagaStatus::Completed)) => {}
            _ => {
                unshipped += 1;
                continue;
            }
        }
        // reserve, then ship (the waiting step calls no function).
        let steps = tracker.take_steps(s.id);
        let Some(ship) = steps.get(1) else {
            unshipped += 1;
            continue;
        };
        latencies.push(signed_ms(*ship, s.returned));
        from_call.push(signed_ms(*ship, s.called));
        call_ms.push((s.returned - s.called).as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    from_call.sort_by(f64::total_cmp);
    call_ms.sort_by(f64::total_cmp);
    let claims = tracker.claims();

    if tokio::time::timeout(Duration::from_secs(15), worker.shutdown())
        .await
        .is_err()
    {
        worker.kill();
    }
    worker_pg.close().await;
    sender_pg.close().await;
    monitor.close().await;

    let errors = send_errors.load(std::sync::atomic::Ordering::Relaxed) + unshipped;
    Ok(json!({
        "engine": "saga",
        "backend": "pg",
        "workload": "signal",
        "inflight": args.inflight,
        "sagas": args.sagas,
        "rate": args.rate,
        "poll_interval_ms": args.poll_ms,
        "listen": !args.no_listen,
        "to_wait_s": to_wait_s,
        "send_s": send_s,
        "signalled": sent.len(),
        "latency_p50_ms": percentile(&latencies, 0.50),
        "latency_p90_ms": percentile(&latencies, 0.90),
        "latency_p99_ms": percentile(&latencies, 0.99),
        "latency_max_ms": latencies.last().copied(),
        "from_call_p50_ms": percentile(&from_call, 0.50),
        "from_call_p99_ms": percentile(&from_call, 0.99),
        "signal_call_p50_ms": percentile(&call_ms, 0.50),
        "signal_call_p99_ms": percentile(&call_ms, 0.99),
        "worker_claims": claims.len(),
        "worker_claims_nonempty": claims.iter().filter(|c| c.claimed > 0).count(),
        "rss_mb": pgutil::peak_rss_mb(),
        "errors": errors,
    }))
}

/// `later - earlier` in ms, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier - later).as_secs_f64() * 1e3,
    }
}
