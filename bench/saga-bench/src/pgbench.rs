//! The database's limit for one durable step transition: pgbench running a custom script that
//! inserts a unique key and updates a status in one transaction, at the same concurrency; and,
//! with `--per-tx 16`, the ceiling for grouped writes: 16 such transitions per transaction, the
//! 16 keys in one INSERT and the 16 statuses in one UPDATE, one commit.

use std::process::Command;

use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

use crate::pgutil::{self, err, Meter, Res};

#[derive(clap::Args, Debug, Clone)]
pub struct PgbenchArgs {
    #[arg(long)]
    pub admin_url: String,
    /// The pgbench binary.
    #[arg(long, default_value = "pgbench")]
    pub pgbench: String,
    #[arg(long, default_value_t = 16)]
    pub inflight: usize,
    /// Seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Step transitions per transaction: 1 (the limit, `SCRIPT`) or more (the grouped ceiling,
    /// `grouped_script`).
    #[arg(long, default_value_t = 1)]
    pub per_tx: u32,
}

/// One step transition: the step's row with its unique idempotency key, and the saga's status,
/// in one transaction. `:client_id` gives each client a saga row of its own, as each saga in
/// flight has.
pub const SCRIPT: &str = "\
BEGIN;
INSERT INTO bench_steps (idempotency_key, saga_id, status) VALUES (gen_random_uuid()::text, :client_id, 'completed');
UPDATE bench_sagas SET status = 'running', updated_at = now() WHERE id = :client_id;
COMMIT;
";

/// `per_tx` step transitions in one transaction, as a writer grouping the transitions of
/// `per_tx` sagas would commit them: each client owns the saga rows `client_id * per_tx ..
/// client_id * per_tx + per_tx - 1` (no two clients update one row), one INSERT of `per_tx` rows
/// with unique keys, one UPDATE of those `per_tx` sagas, one commit.
pub fn grouped_script(per_tx: u32) -> String {
    let last = per_tx.saturating_sub(1);
    format!(
        "\\set base :client_id * {per_tx}
BEGIN;
INSERT INTO bench_steps (idempotency_key, saga_id, status) SELECT gen_random_uuid()::text, :base + g, 'completed' FROM generate_series(0, {last}) g;
UPDATE bench_sagas SET status = 'running', updated_at = now() WHERE id BETWEEN :base AND :base + {last};
COMMIT;
"
    )
}

pub async fn run(args: PgbenchArgs) -> Res<Value> {
    if args.per_tx == 0 {
        return Err("--per-tx must be at least 1".into());
    }
    let grouped = args.per_tx > 1;
    let script_text = if grouped {
        grouped_script(args.per_tx)
    } else {
        SCRIPT.to_owned()
    };
    let name = if grouped {
        format!("bench_pgbench_grouped{}_c{}", args.per_tx, args.inflight)
    } else {
        format!("bench_pgbench_c{}", args.inflight)
    };
    // One saga row per transition a transaction makes, for every client (at least 0..=1000).
    let saga_rows = (args.inflight as u64 * u64::from(args.per_tx)).max(1001);
    let url = pgutil::fresh_database(&args.admin_url, &name).await?;
    let mut conn = PgConnection::connect(&url).await.map_err(err("connect"))?;
    conn.execute(
        format!(
            "CREATE TABLE bench_steps (idempotency_key text PRIMARY KEY, saga_id int NOT NULL,
                 status text NOT NULL, at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE bench_sagas (id int PRIMARY KEY, status text NOT NULL,
                 updated_at timestamptz NOT NULL);
             INSERT INTO bench_sagas SELECT g, 'running', now() FROM generate_series(0, {}) g;",
            saga_rows - 1
        )
        .as_str(),
    )
    .await
    .map_err(err("creating the pgbench tables"))?;
    let _ = conn.close().await;
    let script = std::env::temp_dir().join(format!(
        "saga-bench-step{}-{}.sql",
        args.per_tx,
        std::process::id()
    ));
    std::fs::write(&script, &script_text).map_err(err("writing the pgbench script"))?;

    let meter = Meter::start(&url).await?;
    let cpu_before = pgutil::cpu();
    let threads = args.inflight.clamp(1, 2);
    let output = tokio::task::spawn_blocking({
        let pgbench = args.pgbench.clone();
        let script = script.clone();
        let url = url.clone();
        let (c, j, t) = (args.inflight, threads, args.duration);
        move || {
            Command::new(pgbench)
                .args([
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    &c.to_string(),
                    "-j",
                    &j.to_string(),
                ])
                .args(["-T", &t.to_string(), "-f"])
                .arg(&script)
                .arg(&url)
                .output()
        }
    })
    .await
    .map_err(err("pgbench task"))?
    .map_err(err("running pgbench"))?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let (commits, wal) = meter.finish().await?;
    // pgbench's CPU (a child, waited for) and the server's, over its run.
    let cpu = cpu_before.zip(pgutil::cpu()).map(|(a, b)| a.until(b));
    let field = |prefix: &str| -> Option<f64> {
        stdout.lines().find_map(|line| {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    };
    let tps = field("tps =").ok_or_else(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let processed = field("number of transactions actually processed:").unwrap_or(f64::NAN);
    Ok(json!({
        "engine": "pgbench",
        "backend": "pg",
        "workload": if grouped { "step_grouped" } else { "step" },
        "per_tx": args.per_tx,
        "inflight": args.inflight,
        "threads": threads,
        "transactions": processed,
        "elapsed_s": args.duration,
        "tps": tps,
        "transitions_per_s": tps * f64::from(args.per_tx),
        "latency_avg_ms": field("latency average ="),
        "commits_per_tx": commits as f64 / processed,
        "wal_bytes_per_tx": wal as f64 / processed,
        "client_cpu_ms_per_tx": cpu.map(|(_, pgbench, _)| pgbench * 1e3 / processed),
        "server_cpu_ms_per_tx": cpu.map(|(_, _, server)| server * 1e3 / processed),
        "script": script_text,
    }))
}
