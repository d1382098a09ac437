//! The cost of waiting sagas: one database holds `sagas` orders (100,000 in the full run), each
//! waiting for its signal (`reserve` done, `await_signal` waiting, `ship` to come); another is
//! fresh. On each, side by side: the claim query's latency (the dispatcher's claims during W1,
//! and claims that find nothing due, timed alone), W1's throughput at 16 in flight, and the peak
//! RSS of the process running W1. A waiting saga holds no lease, no worker and no memory in any
//! process, and is not due: the ratios should be close to 1.
//!
//! The orders are started through the library by a process of their own (`waiting-fill`), with
//! its workers running, so each reaches its wait the way a real one does.

use std::time::{Duration, Instant};

use saga::{PgOptions, PgStore, Store, WorkerId};
use serde_json::{json, Value};
use sqlx::Row;

use crate::pgutil::{self, err, percentile, Res};
use crate::sagas::ORDER_WAITING_FOR;

mod fill;

pub use fill::{fill, FillArgs};

#[derive(clap::Args, Debug, Clone)]
pub struct WaitingArgs {
    #[arg(long)]
    pub admin_url: String,
    /// Waiting sagas in the loaded database.
    #[arg(long, default_value_t = 100_000)]
    pub sagas: u64,
    /// W1's sagas in flight.
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// W1's measured seconds per run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// W1's warm-up seconds per run.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// W1 runs per database, alternating between the two.
    #[arg(long, default_value_t = 2)]
    pub pairs: usize,
    /// Claims that find nothing due, timed one after the other: half on each database, in
    /// alternating quarters.
    #[arg(long, default_value_t = 1000)]
    pub probes: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Orders waiting for their signal.
async fn count_waiting(store: &PgStore) -> Res<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM saga.saga_instances WHERE status = 'running' AND waiting_for = $1",
    )
    .bind(ORDER_WAITING_FOR)
    .fetch_one(store.pool())
    .await
    .map_err(err("counting waiting sagas"))
}

/// A store for reading and probing only: no LISTEN, two connections.
async fn monitor(url: &str) -> Res<PgStore> {
    PgStore::connect_with(
        url,
        PgOptions {
            max_connections: 2,
            listen: false,
            ..PgOptions::default()
        },
    )
    .await
    .map_err(err("connecting (monitor)"))
}

/// Runs `saga-bench <args>` as a process of its own, bounded in time; its last JSON line.
async fn child(args: &[String], limit: Duration) -> Res<Value> {
    let exe = std::env::current_exe().map_err(err("own path"))?;
    let run = tokio::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("`saga-bench {}` did not finish in time", args.join(" ")))?
        .map_err(err("running a child process"))?;
    if !output.status.success() {
        return Err(format!(
            "`saga-bench {}` failed: {}",
            args.join(" "),
            output.status
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .ok_or_else(|| format!("`saga-bench {}` printed no result", args.join(" ")))
}

async fn database_bytes(store: &PgStore) -> Res<i64> {
    sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(store.pool())
        .await
        .map_err(err("pg_database_size"))
}

/// `probes` claims, one after the other, on a database where nothing is due: the cost of the
/// claim query itself. Returns the sorted latencies in ms and how many sagas they claimed
/// (should be none).
async fn probe_claims(store: &PgStore, probes: usize) -> Res<(Vec<f64>, usize)> {
    let owner = WorkerId::new("waiting-probe");
    let mut ms = Vec::with_capacity(probes);
    let mut claimed = 0;
    for _ in 0..probes {
        let now = store.clock().await.map_err(err("clock"))?;
        let t = Instant::now();
        let got = store
            .claim_loaded(&owner, now, Duration::from_secs(30), 16)
            .await
            .map_err(err("claim"))?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        claimed += got.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms, claimed))
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|x| x.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The median over the runs of one figure of W1's result lines.
fn median_of(runs: &[Value], key: &str) -> Option<f64> {
    median(
        runs.iter()
            .filter_map(|r| r.get(key).and_then(Value::as_f64))
            .collect(),
    )
}

fn ratio(loaded: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (loaded, base) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub async fn waiting(args: WaitingArgs) -> Res<Value> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.timeout);
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    };

    // The loaded database: `sagas` orders waiting for their signal.
    let loaded_url = pgutil::fresh_database(&args.admin_url, "bench_saga_waiting_loaded").await?;
    let loaded = monitor(&loaded_url).await?; // migrates
    let empty_bytes = database_bytes(&loaded).await?;
    let fill = child(
        &[
            "waiting-fill".to_owned(),
            "--url".to_owned(),
            loaded_url.clone(),
            "--sagas".to_owned(),
            args.sagas.to_string(),
            "--timeout".to_owned(),
            left().as_secs().to_string(),
        ],
        left(),
    )
    .await?;
    let waiting_before = count_waiting(&loaded).await?;
    // As a database that has held them a while would be: vacuumed, analysed, checkpointed.
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(loaded.pool())
        .await
        .map_err(err("VACUUM ANALYZE"))?;
    let filled_bytes = database_bytes(&loaded).await?;
    let _ = sqlx::raw_sql("CHECKPOINT").execute(loaded.pool()).await;

    // The baseline: a fresh database (migrated), on the same server, in the same run.
    let base_url = pgutil::fresh_database(&args.admin_url, "bench_saga_waiting_base").await?;
    let base = monitor(&base_url).await?;
    let _ = sqlx::raw_sql("ANALYZE").execute(base.pool()).await;

    // Claims that find nothing due, alternating between the databases.
    let mut probe_base = Vec::new();
    let mut probe_loaded = Vec::new();
    let mut probe_claimed = 0;
    let quarter = (args.probes / 4).max(1);
    for _ in 0..2 {
        let (ms, n) = probe_claims(&base, quarter).await?;
        probe_base.extend(ms);
        probe_claimed += n;
        let (ms, n) = probe_claims(&loaded, quarter).await?;
        probe_loaded.extend(ms);
        probe_claimed += n;
    }
    probe_base.sort_by(f64::total_cmp);
    probe_loaded.sort_by(f64::total_cmp);

    // W1 at `inflight`, each run a process of its own, alternating: base, loaded, loaded, base...
    let w1 = |url: &str| {
        vec![
            "run".to_owned(),
            "--backend".to_owned(),
            "pg".to_owned(),
            "--url".to_owned(),
            url.to_owned(),
            "--workload".to_owned(),
            "w1".to_owned(),
            "--inflight".to_owned(),
            args.inflight.to_string(),
            "--duration".to_owned(),
            args.duration.to_string(),
            "--warmup".to_owned(),
            args.warmup.to_string(),
        ]
    };
    let mut base_runs = Vec::new();
    let mut loaded_runs = Vec::new();
    for pair in 0..args.pairs.max(1) {
        // Each pair starts from both databases vacuumed and analysed, so that autovacuum (which
        // W1's inserts trigger on either, at its own time) rarely lands inside a run.
        for db in [&base, &loaded] {
            sqlx::raw_sql("VACUUM ANALYZE")
                .execute(db.pool())
                .await
                .map_err(err("VACUUM ANALYZE"))?;
        }
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_waiting in order {
            let url = if with_waiting { &loaded_url } else { &base_url };
            let run = child(&w1(url), left()).await?;
            if with_waiting {
                loaded_runs.push(run);
            } else {
                base_runs.push(run);
            }
        }
    }
    // Each pair's ratio (its two runs were taken seconds apart); the figure is their median.
    let pair_ratios = |key: &str| -> Vec<f64> {
        base_runs
            .iter()
            .zip(&loaded_runs)
            .filter_map(|(b, l)| {
                ratio(
                    l.get(key).and_then(Value::as_f64),
                    b.get(key).and_then(Value::as_f64),
                )
            })
            .collect()
    };
    let w1_ratios = pair_ratios("sagas_per_s");
    let rss_ratios = pair_ratios("rss_mb");
    // The dispatcher's claims are few per run (its polls): pooled over the runs of each side.
    let pooled_claims = |runs: &[Value]| {
        let mut ms: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.get("claim_ms").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    };
    let w1_claims_base = pooled_claims(&base_runs);
    let w1_claims_loaded = pooled_claims(&loaded_runs);
    let waiting_after = count_waiting(&loaded).await?;
    let table_bytes: i64 =
        sqlx::query("SELECT pg_total_relation_size('saga.saga_instances') AS bytes")
            .fetch_one(loaded.pool())
            .await
            .and_then(|row| row.try_get("bytes"))
            .map_err(err("pg_total_relation_size"))?;
    loaded.close().await;
    base.close().await;

    let w1_errors: u64 = base_runs
        .iter()
        .chain(&loaded_runs)
        .filter_map(|r| r.get("errors").and_then(Value::as_u64))
        .sum();
    // A waiting order lost or woken during the measurement is an error too.
    let lost = (args.sagas as i64 - waiting_before).max(0) + (waiting_before - waiting_after).abs();
    let figures = |runs: &[Value], claims: &[f64]| {
        json!({
            "sagas_per_s": median_of(runs, "sagas_per_s"),
            "p50_ms": median_of(runs, "p50_ms"),
            "claim_p50_ms": percentile(claims, 0.50),
            "claim_p99_ms": percentile(claims, 0.99),
            "claims": claims.len(),
            "rss_mb": median_of(runs, "rss_mb"),
            "runs": runs,
        })
    };
    Ok(json!({
        "engine": "saga",
        "backend": "pg",
        "workload": "waiting",
        "inflight": args.inflight,
        "sagas": args.sagas,
        "pairs": args.pairs.max(1),
        "w1_duration_s": args.duration,
        "fill_s": fill.get("waiting_s").cloned().unwrap_or(Value::Null),
        "fill_created_s": fill.get("created_s").cloned().unwrap_or(Value::Null),
        "fill_rss_mb": fill.get("rss_mb").cloned().unwrap_or(Value::Null),
        "waiting_before": waiting_before,
        "waiting_after": waiting_after,
        "db_bytes_per_saga": (filled_bytes - empty_bytes) as f64 / args.sagas.max(1) as f64,
        "instances_bytes": table_bytes,
        "probe_claims": probe_base.len(),
        "probe_claimed": probe_claimed,
        "probe_claim_p50_ms_base": percentile(&probe_base, 0.50),
        "probe_claim_p99_ms_base": percentile(&probe_base, 0.99),
        "probe_claim_p50_ms": percentile(&probe_loaded, 0.50),
        "probe_claim_p99_ms": percentile(&probe_loaded, 0.99),
        "base": figures(&base_runs, &w1_claims_base),
        "loaded": figures(&loaded_runs, &w1_claims_loaded),
        "probe_claim_p50_ratio": ratio(
            Some(percentile(&probe_loaded, 0.50)),
            Some(percentile(&probe_base, 0.50)),
        ),
        "probe_claim_p99_ratio": ratio(
            Some(percentile(&probe_loaded, 0.99)),
            Some(percentile(&probe_base, 0.99)),
        ),
        "w1_claim_p50_ratio": ratio(
            Some(percentile(&w1_claims_loaded, 0.50)),
            Some(percentile(&w1_claims_base, 0.50)),
        ),
        "w1_ratio": median(w1_ratios.clone()),
        "w1_ratios": w1_ratios,
        "rss_ratio": median(rss_ratios.clone()),
        "rss_ratios": rss_ratios,
        "total_s": t0.elapsed().as_secs_f64(),
        "errors": w1_errors + lost as u64 + probe_claimed as u64,
    }))
}
