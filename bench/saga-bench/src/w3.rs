//! W3, recovery: a worker process starts 10,000 W1 sagas, then drives them; it is killed with
//! SIGKILL once 30% are settled; a new process is started: how long until every saga is
//! settled. Also the peak RSS of a process with 10,000 sagas in flight at once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga::{Config, Orchestrator, PgOptions, PgStore, SagaStatus, Store};
use serde_json::{json, Value};
use sqlx::Row;

use crate::pgutil::{self, err, Res};
use crate::sagas::W1;

#[derive(clap::Args, Debug, Clone)]
pub struct W3Args {
    #[arg(long)]
    pub admin_url: String,
    #[arg(long, default_value_t = 10_000)]
    pub sagas: u64,
    /// The worker's concurrency (sagas driven at once).
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Kill the first process once this fraction of the sagas is settled.
    #[arg(long, default_value_t = 0.3)]
    pub kill_at: f64,
    /// Lease TTL of both processes, in ms (default: the library's default).
    #[arg(long)]
    pub lease_ttl_ms: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
    /// Start the new process under a new worker id (a different machine taking over): it takes
    /// the killed process's leases over once it sees that process's presence lock gone (its
    /// session ended), without waiting for them to expire. By default it restarts under the
    /// killed process's id and takes those leases back at once.
    #[arg(long)]
    pub new_id: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The worker id (default: a generated one).
    #[arg(long)]
    pub worker_id: Option<String>,
    #[arg(long)]
    pub url: String,
    /// Sagas to start (then print `created`); 0 starts none.
    #[arg(long, default_value_t = 0)]
    pub create: u64,
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    #[arg(long)]
    pub lease_ttl_ms: Option<u64>,
    /// Exit (printing a JSON line) once no saga is active.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Start the sagas before the workers run (all of them in flight at once when the
    /// concurrency allows).
    #[arg(long)]
    pub create_first: bool,
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
    #[arg(long)]
    pub pool: Option<u32>,
    /// Stop (without waiting for the sagas) after this many seconds of running; 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_run_s: u64,
    /// Start calls issued at once (tasks each starting sagas until `create` are started).
    #[arg(long, default_value_t = 32)]
    pub creators: u64,
}

fn config(inflight: usize, lease_ttl_ms: Option<u64>, worker_id: Option<&str>) -> Config {
    let mut config = Config::default().concurrency(inflight);
    if let Some(id) = worker_id {
        config = config.worker_id(saga::WorkerId::new(id));
    }
    match lease_ttl_ms {
        Some(ms) => config.lease_ttl(Duration::from_millis(ms)),
        None => config,
    }
}

async fn active(store: &PgStore) -> Res<(u64, u64)> {
    let counts = store
        .count_by_status()
        .await
        .map_err(err("count_by_status"))?;
    let active = counts
        .iter()
        .filter(|(s, _)| s.is_active())
        .map(|(_, n)| n)
        .sum();
    let settled = counts
        .iter()
        .filter(|(s, _)| s.is_settled())
        .map(|(_, n)| n)
        .sum();
    Ok((active, settled))
}

async fn create_sagas(orchestrator: &Orchestrator, n: u64, creators_at_once: u64) -> Res<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..creators_at_once.max(1) {
        let orchestrator = orchestrator.clone();
        let next = Arc::clone(&next);
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), String>(());
                }
                orchestrator.start::<W1>(&i).await.map_err(err("start"))?;
            }
        });
    }
    while let Some(joined) = creators.join_next().await {
        joined.map_err(err("creator"))??;
    }
    Ok(())
}

/// The worker process (run by `w3` and `rss`).
pub async fn worker(args: WorkerArgs) -> Res<()> {
    let process_start = Instant::now();
    let mut options = PgOptions {
        max_connections: args.pool.unwrap_or(args.inflight.min(64) as u32 + 2),
        ..PgOptions::default()
    };
    crate::run::writers_from_env(&mut options);
    let store = Arc::new(
        PgStore::connect_with(&args.url, options)
            .await
            .map_err(err("connect"))?,
    );
    let dyn_store: Arc<dyn Store> = store.clone();
    let orchestrator = Orchestrator::new(
        dyn_store,
        config(args.inflight, args.lease_ttl_ms, args.worker_id.as_deref()),
    );
    orchestrator.register(W1(None)).map_err(err("register"))?;
    let rss_before = pgutil::peak_rss_mb();
    if args.create_first && args.create > 0 {
        create_sagas(&orchestrator, args.create, args.creators).await?;
        println!("created {:.3}", process_start.elapsed().as_secs_f64());
    }
    let run_start = Instant::now();
    orchestrator.run();
    if !args.create_first && args.create > 0 {
        create_sagas(&orchestrator, args.create, args.creators).await?;
        println!("created {:.3}", process_start.elapsed().as_secs_f64());
    }
    // Progress is watched through connections of its own, so that it never waits behind the
    // workers for the pool (with 10,000 drives in flight the pool is always busy).
    let monitor = PgStore::connect_with(
        &args.url,
        PgOptions {
            max_connections: 2,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connect (monitor)"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut partial = false;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if args.max_run_s > 0 && run_start.elapsed() >= Duration::from_secs(args.max_run_s) {
            partial = true;
            break;
        }
        if args.exit_when_done {
            match active(&monitor).await {
                Ok((0, _)) => break,
                Ok(_) => {}
                Err(e) => eprintln!("progress check failed (retrying): {e}"),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("worker gave up after {} s", args.timeout));
        }
    }
    let done = run_start.elapsed().as_secs_f64();
    let rss = pgutil::peak_rss_mb();
    let settled = if partial {
        orchestrator.kill();
        active(&monitor)
            .await
            .map(|(_, settled)| settled)
            .unwrap_or(0)
    } else {
        orchestrator.shutdown().await;
        args.create
    };
    println!(
        "{}",
        json!({
            "partial": partial,
            "settled": settled,
            "done_after_s": done,
            "since_process_start_s": process_start.elapsed().as_secs_f64(),
            "rss_mb": rss,
            "rss_before_run_mb": rss_before,
        })
    );
    Ok(())
}

/// A worker process, killed when dropped: a measurement that fails half-way (any `?`) leaves
/// no worker driving sagas into the next one.
struct Worker(std::process::Child);

impl std::ops::Deref for Worker {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(url: &str, extra: &[String]) -> Res<Worker> {
    let exe = std::env::current_exe().map_err(err("own path"))?;
    Command::new(exe)
        .arg("w3-worker")
        .args(["--url", url])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map(Worker)
        .map_err(err("spawning a worker process"))
}

pub async fn w3(args: W3Args) -> Res<Value> {
    let name = format!("bench_saga_w3_pg_c{}", args.inflight);
    let url = pgutil::fresh_database(&args.admin_url, &name).await?;
    let store = PgStore::connect_with(
        &url,
        PgOptions {
            max_connections: 2,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connect"))?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut common = vec!["--inflight".to_owned(), args.inflight.to_string()];
    if let Some(ms) = args.lease_ttl_ms {
        common.extend(["--lease-ttl-ms".to_owned(), ms.to_string()]);
    }

    // First process: starts the sagas while driving them.
    let mut first_args = common.clone();
    first_args.extend(["--worker-id".to_owned(), "w3-worker-0".to_owned()]);
    // All sagas exist before any runs, so that the kill at 30% settled leaves 70% interrupted
    // or not yet begun (started while driving, most would be settled by the time the last is
    // created).
    first_args.extend(["--create".to_owned(), args.sagas.to_string()]);
    first_args.push("--create-first".to_owned());
    first_args.extend(["--timeout".to_owned(), args.timeout.to_string()]);
    let mut first = spawn_worker(&url, &first_args)?;
    let stdout = first.stdout.take().ok_or("no stdout")?;
    let created = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("created"))
    });
    let created = tokio::time::timeout(Duration::from_secs(args.timeout), created)
        .await
        .map_err(|_| "the first worker did not start its sagas in time".to_owned())?
        .map_err(err("reading the first worker"))?
        .ok_or("the first worker exited before starting its sagas")?;
    let created_s: f64 = created
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let kill_at = (args.sagas as f64 * args.kill_at) as u64;
    loop {
        let (_, settled) = active(&store).await?;
        if settled >= kill_at {
            break;
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            return Err("W3: the first worker made too little progress".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().map_err(err("SIGKILL"))?;
    let _ = first.wait();
    let (active_at_kill, settled_at_kill) = active(&store).await?;
    let row = sqlx::query(
        "SELECT COUNT(*) AS leased,
                COALESCE(EXTRACT(EPOCH FROM MAX(lease_expires_at) - now()), 0)::float8 AS left_s
           FROM saga.saga_instances
          WHERE status IN ('running', 'compensating') AND lease_expires_at > now()",
    )
    .fetch_one(store.pool())
    .await
    .map_err(err("reading leases"))?;
    let leased: i64 = row.try_get("leased").map_err(err("leased"))?;
    let lease_left_s: f64 = row.try_get("left_s").map_err(err("left_s"))?;

    // Second process: recovers.
    let t0 = Instant::now();
    let mut second_args = common.clone();
    let second_id = if args.new_id {
        "w3-worker-1"
    } else {
        "w3-worker-0"
    };
    second_args.extend(["--worker-id".to_owned(), second_id.to_owned()]);
    second_args.push("--exit-when-done".to_owned());
    second_args.extend(["--timeout".to_owned(), args.timeout.to_string()]);
    let mut second = spawn_worker(&url, &second_args)?;
    let mut drain_s = None;
    let recovery_s = loop {
        let (active, _) = active(&store).await?;
        let elapsed = t0.elapsed().as_secs_f64();
        if drain_s.is_none() && active <= leased as u64 {
            drain_s = Some(elapsed);
        }
        if active == 0 {
            break elapsed;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            return Err(format!(
                "W3: {active} sagas still active after {} s",
                args.timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stdout = second.stdout.take().ok_or("no stdout")?;
    let report = tokio::task::spawn_blocking(move || {
        let line = BufReader::new(stdout).lines().map_while(Result::ok).last();
        let _ = second.wait();
        line
    })
    .await
    .map_err(err("reading the second worker"))?
    .and_then(|line| serde_json::from_str::<Value>(&line).ok())
    .unwrap_or(Value::Null);
    let counts = store.count_by_status().await.map_err(err("count"))?;
    let completed = counts
        .iter()
        .find(|(s, _)| *s == SagaStatus::Completed)
        .map_or(0, |(_, n)| *n);
    store.close().await;
    let lease_ttl_s = args
        .lease_ttl_ms
        .map_or(Config::default().lease_ttl.as_secs_f64(), |ms| {
            ms as f64 / 1e3
        });
    Ok(json!({
        "engine": "saga",
        "backend": "pg",
        "workload": "w3",
        "inflight": args.inflight,
        "sagas": args.sagas,
        "lease_ttl_s": lease_ttl_s,
        "restart": if args.new_id { "new_id" } else { "same_id" },
        "created_after_s": created_s,
        "settled_at_kill": settled_at_kill,
        "active_at_kill": active_at_kill,
        "leased_at_kill": leased,
        "lease_left_at_kill_s": lease_left_s,
        "recovery_s": recovery_s,
        "drain_s": drain_s,
        "completed": completed,
        "rss_mb": report.get("rss_mb").cloned().unwrap_or(Value::Null),
        "worker_done_after_s": report.get("done_after_s").cloned().unwrap_or(Value::Null),
        "errors": args.sagas - completed,
    }))
}

#[derive(clap::Args, Debug, Clone)]
pub struct RssArgs {
    #[arg(long)]
    pub admin_url: String,
    #[arg(long, default_value_t = 10_000)]
    pub sagas: u64,
    #[arg(long, default_value_t = 32)]
    pub pool: u32,
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
    /// Observe for this many seconds only (quick runs); 0: until every saga is settled.
    #[arg(long, default_value_t = 0)]
    pub max_run_s: u64,
    /// Start calls issued at once, all while the workers run (default: the sagas are started
    /// before the workers run, 32 calls at a time, with every one in flight at once).
    #[arg(long)]
    pub starts_at_once: Option<u64>,
    /// The workers' concurrency with --starts-at-once.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
}

/// Peak RSS of a worker process driving `sagas` sagas at once (concurrency = sagas).
pub async fn rss(args: RssArgs) -> Res<Value> {
    let url = pgutil::fresh_database(&args.admin_url, "bench_saga_rss").await?;
    // Migrate first, so that the worker's start-up is the same as any restart.
    let store = PgStore::connect(&url).await.map_err(err("connect"))?;
    store.close().await;
    drop(store);
    let t0 = Instant::now();
    let (first, inflight, creators) = match args.starts_at_once {
        None => (vec!["--create-first".to_owned()], args.sagas, 32),
        Some(at_once) => (Vec::new(), args.inflight as u64, at_once),
    };
    let mut worker_args = first;
    worker_args.extend([
        "--create".to_owned(),
        args.sagas.to_string(),
        "--creators".to_owned(),
        creators.to_string(),
        "--inflight".to_owned(),
        inflight.to_string(),
        "--pool".to_owned(),
        args.pool.to_string(),
        "--exit-when-done".to_owned(),
        "--timeout".to_owned(),
        args.timeout.to_string(),
        "--max-run-s".to_owned(),
        args.max_run_s.to_string(),
    ]);
    let mut child = spawn_worker(&url, &worker_args)?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let timeout = Duration::from_secs(args.timeout + 10);
    let lines = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || {
            let lines: Vec<String> = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect();
            let status = child.wait();
            (lines, status)
        }),
    )
    .await
    .map_err(|_| "the 10k worker did not finish in time".to_owned())?
    .map_err(err("rss worker"))?;
    let (lines, status) = lines;
    let status = status.map_err(err("rss worker"))?;
    if !status.success() {
        return Err(format!("the rss worker failed: {status}"));
    }
    let report = lines
        .last()
        .and_then(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or(Value::Null);
    Ok(json!({
        "engine": "saga",
        "backend": "pg",
        "workload": match args.starts_at_once {
            None => "rss10k".to_owned(),
            Some(at_once) => format!("starts_at_once_{at_once}"),
        },
        "inflight": if args.starts_at_once.is_some() { args.inflight as u64 } else { args.sagas },
        "sagas": args.sagas,
        "pool": args.pool,
        "rss_mb": report.get("rss_mb").cloned().unwrap_or(Value::Null),
        "rss_before_run_mb": report.get("rss_before_run_mb").cloned().unwrap_or(Value::Null),
        "run_s": report.get("done_after_s").cloned().unwrap_or(Value::Null),
        "partial": report.get("partial").cloned().unwrap_or(Value::Null),
        "settled": report.get("settled").cloned().unwrap_or(Value::Null),
        "total_s": t0.elapsed().as_secs_f64(),
    }))
}
