//! W1 with the same total number of sagas in flight spread over several worker processes on one
//! Postgres database: each process is a `saga-bench run` of its own (its own orchestrator and
//! pool, closed-loop clients starting and driving their sagas), all started at once on one
//! fresh database. The line sums their rates and gives each process's share of the work.

use std::process::Stdio;

use clap::Args;
use serde_json::{json, Value};

use crate::pgutil::{self, Res};

#[derive(Args)]
pub struct ProcessesArgs {
    /// URL of the server's maintenance database: the run creates its own database there.
    #[arg(long)]
    pub admin_url: String,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub processes: usize,
    /// Sagas in flight in all the processes together (each runs its share).
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Measured seconds (each process's window; the processes start together).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

pub async fn processes(args: ProcessesArgs) -> Res<Value> {
    if args.processes == 0 || args.inflight % args.processes != 0 {
        return Err(format!(
            "--inflight {} does not split evenly over --processes {}; give a multiple",
            args.inflight, args.processes
        ));
    }
    let name = format!("bench_saga_processes_{}_c{}", args.processes, args.inflight);
    let url = pgutil::fresh_database(&args.admin_url, &name).await?;
    // Migrated once here, so that the processes find the schema in place.
    let migrate = saga_store::PgStore::connect(&url)
        .await
        .map_err(|e| format!("migrating the database: {e}"))?;
    migrate.close().await;
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let each = args.inflight / args.processes;
    let mut children = Vec::with_capacity(args.processes);
    for _ in 0..args.processes {
        let child = tokio::process::Command::new(&exe)
            .args([
                "run",
                "--backend",
                "pg",
                "--url",
                &url,
                "--workload",
                "w1",
                "--inflight",
                &each.to_string(),
                "--duration",
                &args.duration.to_string(),
                "--warmup",
                &args.warmup.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting a worker process: {e}"))?;
        children.push(child);
    }
    let mut lines = Vec::with_capacity(children.len());
    for child in children {
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for a worker process: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .ok_or_else(|| format!("a worker process printed no result ({})", output.status))?;
        let value: Value = serde_json::from_str(line)
            .map_err(|e| format!("a worker process's result does not parse: {e}"))?;
        lines.push(value);
    }
    let sum = |key: &str| -> f64 { lines.iter().filter_map(|l| l[key].as_f64()).sum() };
    let shares: Vec<f64> = lines.iter().filter_map(|l| l["sagas"].as_f64()).collect();
    let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    let relative: Vec<f64> = shares
        .iter()
        .map(|share| if mean > 0.0 { share / mean } else { 0.0 })
        .collect();
    let errors: u64 = lines.iter().filter_map(|l| l["errors"].as_u64()).sum();
    let worst_p99 = lines
        .iter()
        .filter_map(|l| l["p99_ms"].as_f64())
        .fold(0.0_f64, f64::max);
    Ok(json!({
        "engine": "saga",
        "backend": "pg",
        "workload": format!("w1_processes_{}", args.processes),
        "processes": args.processes,
        "inflight": args.inflight,
        "sagas": sum("sagas"),
        "sagas_per_s": sum("sagas_per_s"),
        "transitions_per_s": sum("transitions_per_s"),
        "p99_ms": worst_p99,
        "shares": shares,
        "share_min_over_mean": relative.iter().copied().fold(f64::INFINITY, f64::min),
        "share_max_over_mean": relative.iter().copied().fold(0.0_f64, f64::max),
        "errors": errors,
    }))
}
