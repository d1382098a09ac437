//! W1 / W2 in a closed loop: `inflight` clients each start a saga, wait until it is settled,
//! and start the next one, so that exactly `inflight` sagas are in flight; the orchestrator
//! drives up to `inflight` at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{Config, Orchestrator, PgOptions, PgStore, SagaStatus, SqliteStore, Store};
use serde_json::{json, Value};

use crate::pgutil::{self, err, percentile, Meter, Res};
use crate::sagas::{transitions_per_saga, Order, W1Cap, W1Limit, W1, W2};
use crate::track::{Tracker, TrackingStore};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// pg or sqlite
    #[arg(long, default_value = "pg")]
    pub backend: String,
    /// w1, w2, w1cap (W1 with a cap on each step) or w1limit (W1 with a rate limit on each step)
    #[arg(long, default_value = "w1")]
    pub workload: String,
    /// Sagas in flight (clients, and the orchestrator's concurrency).
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring (counted in commits/WAL per saga, not in rates).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// URL of the server's maintenance database (pg): the run creates its own database there.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Directory for the SQLite file (sqlite).
    #[arg(long, default_value = "/tmp")]
    pub dir: String,
    /// Pool size (pg); default: in flight + 2.
    #[arg(long)]
    pub pool: Option<u32>,
    /// Run exactly this many sagas instead of for a duration (for profiling).
    #[arg(long)]
    pub sagas: Option<u64>,
    /// The workload's name in the result line (default: the workload), to tell a run measured
    /// beside others (the W1 of the policies section) from the main one.
    #[arg(long)]
    pub label: Option<String>,
    /// Use this existing database (pg, migrated) instead of creating one; the order saga type
    /// (`bench_order`, whose sagas may be waiting there) is registered too.
    #[arg(long)]
    pub url: Option<String>,
    /// Finished sagas (completed W1 sagas with their steps and events) to keep in the tables
    /// before the run, to measure the write path against a long history.
    #[arg(long, default_value_t = 0)]
    pub history: u64,
}

struct Sample {
    started: Instant,
    settled: Instant,
    status: SagaStatus,
    steps: Vec<Instant>,
}

pub async fn run(args: RunArgs) -> Res<Value> {
    let tracker = Arc::new(Tracker::default());
    let name = format!(
        "bench_saga_{}_{}_c{}",
        args.workload, args.backend, args.inflight
    );
    let mut history_load_s = None;
    let (store, meter, pool): (Arc<dyn Store>, Option<Meter>, Option<PgStore>) =
        match args.backend.as_str() {
            "pg" => {
                let url = match &args.url {
                    Some(url) => url.clone(),
                    None => {
                        let admin = args
                            .admin_url
                            .as_deref()
                            .ok_or("--admin-url or --url is required for pg")?;
                        pgutil::fresh_database(admin, &name).await?
                    }
                };
                let mut options = PgOptions {
                    max_connections: args.pool.unwrap_or(args.inflight as u32 + 2),
                    ..PgOptions::default()
                };
                writers_from_env(&mut options);
                // Migrate on a store of its own, closed before measuring.
                let migrate = PgStore::connect_with(&url, options.clone())
                    .await
                    .map_err(err("connecting (migrations)"))?;
                migrate.close().await;
                drop(migrate);
                if args.history > 0 {
                    history_load_s = Some(crate::history::preload_pg(&url, args.history).await?);
                }
                let meter = Meter::start(&url).await?;
                let pg = PgStore::connect_with(&url, options)
                    .await
                    .map_err(err("connecting"))?;
                let closer = pg.clone();
                (Arc::new(pg), Some(meter), Some(closer))
            }
            "sqlite" => {
                let path = format!("{}/{name}.db", args.dir);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
                let sqlite = SqliteStore::connect(&format!("sqlite://{path}"))
                    .await
                    .map_err(err("opening SQLite"))?;
                if args.history > 0 {
                    history_load_s = Some(
                        crate::history::preload_sqlite(sqlite.pool(), args.history).await?,
                    );
                }
                (Arc::new(sqlite), None, None)
            }
            other => return Err(format!("unknown backend {other}")),
        };
    let cpu_before = pgutil::cpu();
    let store: Arc<dyn Store> = Arc::new(TrackingStore::new(store, Arc::clone(&tracker)));
    let orchestrator = Orchestrator::new(store, Config::default().concurrency(args.inflight));
    match args.workload.as_str() {
        "w1" => orchestrator.register(W1(Some(Arc::clone(&tracker)))),
        "w2" => orchestrator.register(W2(Some(Arc::clone(&tracker)))),
        "w1cap" => orchestrator.register(W1Cap(Some(Arc::clone(&tracker)))),
        "w1limit" => orchestrator.register(W1Limit(Some(Arc::clone(&tracker)))),
        other => return Err(format!("unknown workload {other}")),
    }
    .map_err(err("register"))?;
    if args.url.is_some() {
        orchestrator
            .register(Order(None))
            .map_err(err("register"))?;
    }
    orchestrator.run();

    let begin = Instant::now();
    let window_start = begin + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let quota = args
        .sagas
        .map(|n| Arc::new(std::sync::atomic::AtomicI64::new(n as i64)));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.inflight {
        let orchestrator = orchestrator.clone();
        let tracker = Arc::clone(&tracker);
        let workload = args.workload.clone();
        let quota = quota.clone();
        clients.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut n = client as u64;
            loop {
                match &quota {
                    Some(left) => {
                        if left.fetch_sub(1, Ordering::Relaxed) <= 0 {
                            break;
                        }
                    }
                    None => {
                        if Instant::now() >= window_end {
                            break;
                        }
                    }
                }
                let started = Instant::now();
                let id = match workload.as_str() {
                    "w2" => orchestrator.start::<W2>(&n).await,
                    "w1cap" => orchestrator.start::<W1Cap>(&n).await,
                    "w1limit" => orchestrator.start::<W1Limit>(&n).await,
                    _ => orchestrator.start::<W1>(&n).await,
                };
                n += 1 << 20;
                let id = match id {
                    Ok(id) => id,
                    Err(e) => {
                        errors += 1;
                        eprintln!("start failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Bounded: a saga not settled 30 s after the end of the run counts as an error.
                let limit = (window_end + Duration::from_secs(30))
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                let limit = if quota.is_some() {
                    Duration::from_secs(120)
                } else {
                    limit
                };
                match tracker.wait(id, limit).await {
                    Some((settled, status)) => samples.push(Sample {
                        started,
                        settled,
                        status,
                        steps: tracker.take_steps(id),
                    }),
                    None => {
                        errors += 1;
                        eprintln!("saga {id} not settled in time");
                    }
                }
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(joined) = clients.join_next().await {
        let (mut s, e) = joined.map_err(err("client task"))?;
        samples.append(&mut s);
        errors += e;
    }
    let last = Instant::now();
    if tokio::time::timeout(Duration::from_secs(15), orchestrator.shutdown())
        .await
        .is_err()
    {
        eprintln!("orchestrator shutdown took over 15 s; killing it");
        orchestrator.kill();
    }
    drop(orchestrator);
    if let Some(pg) = &pool {
        pg.close().await;
    }
    let (commits, wal) = match &meter {
        Some(meter) => {
            let (c, w) = meter.finish().await?;
            (Some(c), Some(w))
        }
        None => (None, None),
    };
    // Client (this process) and server CPU over the whole run, warm-up included, per saga.
    let cpu = cpu_before.zip(pgutil::cpu()).map(|(a, b)| a.until(b));

    let expected = match args.workload.as_str() {
        "w2" => SagaStatus::Compensated,
        _ => SagaStatus::Completed,
    };
    let wrong = samples.iter().filter(|s| s.status != expected).count();
    let total = samples.len() as f64;
    // Rates over the measured window (or the whole run for a fixed number of sagas).
    let (from, to) = if args.sagas.is_some() {
        (begin, last)
    } else {
        (window_start, window_end)
    };
    // Only sagas that ended as the workload says count as done (the others are errors).
    let in_window = samples
        .iter()
        .filter(|s| s.status == expected && s.settled >= from && s.settled <= to)
        .count() as f64;
    let seconds = (to - from).as_secs_f64();
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .map(|s| (s.settled - s.started).as_secs_f64() * 1e3)
        .collect();
    latencies.sort_by(f64::total_cmp);
    // Added latency per step: time from one step function's entry to the next one's (the steps
    // do nothing, so all of it is the orchestrator's: record completion, record the next start).
    let mut gaps: Vec<f64> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .flat_map(|s| {
            s.steps
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
                .collect::<Vec<_>>()
        })
        .collect();
    gaps.sort_by(f64::total_cmp);
    let mut first: Vec<f64> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .filter_map(|s| {
            s.steps
                .first()
                .map(|f| (*f - s.started).as_secs_f64() * 1e3)
        })
        .collect();
    first.sort_by(f64::total_cmp);
    let mut last_to_settled: Vec<f64> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .filter_map(|s| s.steps.last().map(|l| (s.settled - *l).as_secs_f64() * 1e3))
        .collect();
    last_to_settled.sort_by(f64::total_cmp);

    let per_saga = |n: u64| {
        if total > 0.0 {
            n as f64 / total
        } else {
            f64::NAN
        }
    };
    // The dispatcher's claims in the window (`saga_claim_duration_seconds`): at 16 in flight
    // sagas started here are driven without one, so these are the polls and the wake-ups.
    let claims: Vec<_> = tracker
        .claims()
        .into_iter()
        .filter(|c| c.at >= from && c.at < to)
        .collect();
    let mut claim_ms: Vec<f64> = claims.iter().map(|c| c.seconds * 1e3).collect();
    claim_ms.sort_by(f64::total_cmp);
    let calls = &tracker.calls;
    let sagas_per_s = in_window / seconds;
    Ok(json!({
        "engine": "saga",
        "backend": args.backend,
        "workload": args.label.clone().unwrap_or_else(|| args.workload.clone()),
        "history": args.history,
        "history_load_s": history_load_s,
        "inflight": args.inflight,
        "sagas": in_window,
        "total_sagas": total,
        "elapsed_s": seconds,
        "sagas_per_s": sagas_per_s,
        "transitions_per_s": sagas_per_s * transitions_per_saga(&args.workload) as f64,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "step_p50_ms": percentile(&gaps, 0.50),
        "step_p99_ms": percentile(&gaps, 0.99),
        "start_to_first_step_p50_ms": percentile(&first, 0.50),
        "last_step_to_settled_p50_ms": percentile(&last_to_settled, 0.50),
        "commits_per_saga": commits.map(|c| c as f64 / total),
        "wal_bytes_per_saga": wal.map(|w| w as f64 / total),
        "client_cpu_ms_per_saga": cpu.map(|(own, _, _)| own * 1e3 / total),
        "server_cpu_ms_per_saga": cpu
            .filter(|_| args.backend == "pg")
            .map(|(_, _, server)| server * 1e3 / total),
        "rss_mb": pgutil::peak_rss_mb(),
        "claims": claims.len(),
        "claims_nonempty": claims.iter().filter(|c| c.claimed > 0).count(),
        "claim_p50_ms": percentile(&claim_ms, 0.50),
        "claim_p99_ms": percentile(&claim_ms, 0.99),
        "claim_ms": claim_ms,
        "store_calls_per_saga": {
            "create": per_saga(calls.create.load(Ordering::Relaxed)),
            "claim": per_saga(calls.claim.load(Ordering::Relaxed)),
            "claimed": per_saga(calls.claimed.load(Ordering::Relaxed)),
            "load": per_saga(calls.load.load(Ordering::Relaxed)),
            "apply": per_saga(calls.apply.load(Ordering::Relaxed)),
            "heartbeat": per_saga(calls.heartbeat.load(Ordering::Relaxed)),
            "other": per_saga(calls.other.load(Ordering::Relaxed)),
        },
        "pool": if args.backend == "pg" { json!(args.pool.unwrap_or(args.inflight as u32 + 2)) } else { Value::Null },
        "errors": errors + wrong as u64,
    }))
}

/// BENCH_PG_WRITERS: the store's `writers` setting, to compare groupings.
pub fn writers_from_env(options: &mut PgOptions) {
    if let Some(writers) = std::env::var("BENCH_PG_WRITERS")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        options.writers = writers;
    }
}
