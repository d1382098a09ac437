//! The peer benchmark: the same W1 and W2 as the saga benchmark, on underway ("durable step
//! functions via Postgres", crates.io). underway has no compensation, so W2 is written as extra
//! steps: steps 1..3 succeed, step 4 "fails" (it decides so and hands over to the compensation
//! chain), then compensations 3, 2, 1 run as steps 5, 6, 7. Same closed loop: N clients each
//! enqueue a job and wait until its last step has run; the worker's concurrency limit is N.
//!
//! underway commits each step's completion after the step function returns, so the latency and
//! the completion time measured here (at the last step's return) leave out the last commit: this
//! favours underway slightly.

#[path = "../../saga-bench/src/pgutil.rs"]
#[allow(dead_code)]
mod pgutil;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;
use jiff::ToSpan;
use underway::{Job, To};

use pgutil::{err, percentile, Meter, Res};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    admin_url: String,
    #[arg(long, default_value = "w1")]
    workload: String,
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Pool size; default 2 x in flight + 4 (underway holds a transaction per running step and
    /// uses other connections to dequeue and for heartbeats).
    #[arg(long)]
    pool: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct Fwd {
    n: u64,
}

#[derive(Serialize, Deserialize)]
struct Comp {
    n: u64,
}

#[derive(Default)]
struct Track {
    waiters: Mutex<HashMap<u64, oneshot::Sender<Instant>>>,
    done: Mutex<HashMap<u64, Instant>>,
    steps: Mutex<HashMap<u64, Vec<Instant>>>,
}

impl Track {
    fn step(&self, n: u64) {
        let now = Instant::now();
        if let Ok(mut steps) = self.steps.lock() {
            steps.entry(n).or_default().push(now);
        }
    }

    fn finish(&self, n: u64) {
        let now = Instant::now();
        let Ok(mut waiters) = self.waiters.lock() else {
            return;
        };
        match waiters.remove(&n) {
            Some(sender) => {
                let _ = sender.send(now);
            }
            None => {
                // Under the waiters' lock, so that a client registering now sees it.
                if let Ok(mut done) = self.done.lock() {
                    done.insert(n, now);
                }
            }
        }
    }

    async fn wait(&self, n: u64, max: Duration) -> Option<Instant> {
        let receiver = {
            let mut waiters = self.waiters.lock().ok()?;
            if let Some(at) = self.done.lock().ok()?.remove(&n) {
                return Some(at);
            }
            let (sender, receiver) = oneshot::channel();
            waiters.insert(n, sender);
            receiver
        };
        tokio::time::timeout(max, receiver).await.ok()?.ok()
    }
}

type State = Arc<Track>;

async fn w1_job(pool: sqlx::PgPool, track: State) -> Res<Job<Fwd, State>> {
    Job::<Fwd, State>::builder()
        .state(track)
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            cx.state.finish(n);
            To::done()
        })
        .name("bench_w1")
        .pool(pool)
        .build()
        .await
        .map_err(err("building the underway job"))
}

async fn w2_job(pool: sqlx::PgPool, track: State) -> Res<Job<Fwd, State>> {
    Job::<Fwd, State>::builder()
        .state(track)
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Fwd { n })
        })
        // Step 4 fails for good: no retry; hand over to the compensations of steps 3..1.
        .step(|cx, Fwd { n }| async move {
            cx.state.step(n);
            To::next(Comp { n })
        })
        .step(|cx, Comp { n }| async move {
            cx.state.step(n);
            To::next(Comp { n })
        })
        .step(|cx, Comp { n }| async move {
            cx.state.step(n);
            To::next(Comp { n })
        })
        .step(|cx, Comp { n }| async move {
            cx.state.step(n);
            cx.state.finish(n);
            To::done()
        })
        .name("bench_w2")
        .pool(pool)
        .build()
        .await
        .map_err(err("building the underway job"))
}

struct Sample {
    started: Instant,
    settled: Instant,
    steps: Vec<Instant>,
}

async fn run(args: Args) -> Res<serde_json::Value> {
    let name = format!("bench_underway_{}_c{}", args.workload, args.inflight);
    let url = pgutil::fresh_database(&args.admin_url, &name).await?;
    let pool_size = args.pool.unwrap_or(2 * args.inflight as u32 + 4);
    {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .map_err(err("connect"))?;
        underway::run_migrations(&pool).await.map_err(err("underway migrations"))?;
        pool.close().await;
    }
    let meter = Meter::start(&url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(&url)
        .await
        .map_err(err("connect"))?;
    let track: State = Arc::new(Track::default());
    // Two instances of the job: one the worker runs, one that only enqueues. underway 0.2.0
    // starts a newly enqueued job at the step index that its Job instance last advanced to
    // (`Job::first_job_input` reads the shared `current_index`), so enqueueing through the
    // instance the worker runs makes concurrent jobs skip steps.
    let (job, enqueuer) = match args.workload.as_str() {
        "w1" => (
            w1_job(pool.clone(), Arc::clone(&track)).await?,
            w1_job(pool.clone(), Arc::clone(&track)).await?,
        ),
        "w2" => (
            w2_job(pool.clone(), Arc::clone(&track)).await?,
            w2_job(pool.clone(), Arc::clone(&track)).await?,
        ),
        other => return Err(format!("unknown workload {other}")),
    };
    let mut worker = job.worker();
    worker.set_concurrency_limit(args.inflight);
    let stopper = worker.clone();
    // Polls every 500 ms besides its LISTEN (the saga orchestrator's default poll interval;
    // underway's default is one minute).
    let worker_task = tokio::spawn(async move { worker.run_every(500.milliseconds()).await });
    // Let the worker LISTEN before the first enqueue.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let begin = Instant::now();
    let window_start = begin + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.inflight {
        let job = enqueuer.clone();
        let track = Arc::clone(&track);
        let expected_steps = if args.workload == "w2" { 7 } else { 5 };
        clients.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            let mut n = client as u64;
            while Instant::now() < window_end {
                let started = Instant::now();
                if let Err(e) = job.enqueue(&Fwd { n }).await {
                    errors += 1;
                    eprintln!("enqueue failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match track.wait(n, Duration::from_secs(60)).await {
                    Some(settled) => {
                        let steps = track.steps.lock().ok().and_then(|mut s| s.remove(&n)).unwrap_or_default();
                        if steps.len() != expected_steps {
                            errors += 1;
                        }
                        samples.push(Sample { started, settled, steps });
                    }
                    None => {
                        errors += 1;
                        eprintln!("job {n} not done within 60 s");
                    }
                }
                n += 1 << 20;
            }
            (samples, errors)
        });
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    while let Some(joined) = clients.join_next().await {
        let (mut s, e) = joined.map_err(err("client"))?;
        samples.append(&mut s);
        errors += e;
    }
    // Let the last steps' commits land, then stop the worker.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stopper.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker_task).await;
    drop(job);
    drop(enqueuer);
    pool.close().await;
    let (commits, wal) = meter.finish().await?;

    let total = samples.len() as f64;
    let in_window = samples
        .iter()
        .filter(|s| s.settled >= window_start && s.settled <= window_end)
        .count() as f64;
    let seconds = (window_end - window_start).as_secs_f64();
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= window_start && s.started < window_end)
        .collect();
    let mut latencies: Vec<f64> = measured
        .iter()
        .map(|s| (s.settled - s.started).as_secs_f64() * 1e3)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = measured
        .iter()
        .flat_map(|s| s.steps.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect::<Vec<_>>())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let transitions = if args.workload == "w2" { 7.0 } else { 5.0 };
    let sagas_per_s = in_window / seconds;
    Ok(json!({
        "engine": "underway",
        "backend": "pg",
        "workload": args.workload,
        "inflight": args.inflight,
        "sagas": in_window,
        "total_sagas": total,
        "elapsed_s": seconds,
        "sagas_per_s": sagas_per_s,
        "transitions_per_s": sagas_per_s * transitions,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "step_p50_ms": percentile(&gaps, 0.5),
        "step_p99_ms": percentile(&gaps, 0.99),
        "commits_per_saga": commits as f64 / total,
        "wal_bytes_per_saga": wal as f64 / total,
        "rss_mb": pgutil::peak_rss_mb(),
        "pool": pool_size,
        "errors": errors,
        "note": "latency and completion at the last step's return (its commit follows)",
    }))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(value) => {
            println!("{value}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("underway-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
