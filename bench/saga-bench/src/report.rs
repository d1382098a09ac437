//! The results table and the machine-readable `name=value` lines, from the JSON lines that the
//! runs wrote.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::pgutil::{err, Res};

mod policies;
mod waiting;

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The JSON lines file the runs appended to.
    #[arg(long)]
    pub results: String,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn fmt(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_owned(),
    }
}

/// The round a result line was measured in (lines without one: round 1).
fn round_of(v: &Value) -> u64 {
    v.get("round").and_then(Value::as_u64).unwrap_or(1)
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
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

/// One row standing for the rounds of a workload: each number the median of its rounds (taken
/// separately), everything else from the first round, and `rounds` the count.
fn merged(rows: &[&Value]) -> Option<Value> {
    let first = rows.first()?;
    let mut out = (*first).clone();
    if let Some(object) = out.as_object_mut() {
        let keys: Vec<String> = object.keys().cloned().collect();
        for key in keys {
            let values: Vec<f64> = rows.iter().filter_map(|r| num(r, &key)).collect();
            if values.len() == rows.len() {
                if let Some(m) = median(values).and_then(serde_json::Number::from_f64) {
                    object.insert(key, Value::Number(m));
                }
            }
        }
        object.insert("rounds".into(), Value::from(rows.len()));
    }
    Some(out)
}

/// The value for a name=value line: a number, or `unavailable`.
fn kv(x: Option<f64>, decimals: usize) -> String {
    match x {
        Some(x) => format!("{x:.decimals$}"),
        None => "unavailable".to_owned(),
    }
}

pub fn report(args: ReportArgs) -> Res<()> {
    let content = std::fs::read_to_string(&args.results).map_err(err("reading results"))?;
    let rows: Vec<Value> = content
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let meta = rows.iter().find(|r| r.get("meta").is_some()).cloned();
    // Every round of a workload at a level, in round order (a round measured twice: its last).
    let find_all = |engine: &str, workload: &str, backend: &str, inflight: u64| -> Vec<&Value> {
        let mut by_round: BTreeMap<u64, &Value> = BTreeMap::new();
        for r in rows.iter().filter(|r| {
            text(r, "engine") == engine
                && text(r, "workload") == workload
                && (backend.is_empty() || text(r, "backend") == backend)
                && r.get("inflight").and_then(Value::as_u64) == Some(inflight)
                && r.get("unavailable").is_none()
        }) {
            by_round.insert(round_of(r), r);
        }
        by_round.into_values().collect()
    };
    let find = |engine: &str, workload: &str, backend: &str, inflight: u64| -> Option<Value> {
        merged(&find_all(engine, workload, backend, inflight))
    };
    let unavailable: BTreeMap<String, String> = rows
        .iter()
        .filter_map(|r| {
            r.get("unavailable").map(|why| {
                (
                    text(r, "engine").to_owned(),
                    why.as_str().unwrap_or("").to_owned(),
                )
            })
        })
        .collect();
    let levels: Vec<u64> = {
        let mut l: Vec<u64> = rows
            .iter()
            .filter(|r| matches!(text(r, "workload"), "w1" | "w2" | "step"))
            .filter_map(|r| r.get("inflight").and_then(Value::as_u64))
            .collect();
        l.sort_unstable();
        l.dedup();
        l
    };

    let mut out = String::new();
    let mut kvs: Vec<(String, String)> = Vec::new();
    if let Some(meta) = &meta {
        let m = &meta["meta"];
        let _ = writeln!(
            out,
            "saga benchmark ({} run) — {} — nproc {}, {} MB RAM, {}",
            text(m, "mode"),
            text(m, "date"),
            m.get("nproc").and_then(Value::as_u64).unwrap_or(0),
            m.get("mem_mb").and_then(Value::as_u64).unwrap_or(0),
            text(m, "cpu"),
        );
        let _ = writeln!(out, "server: {}", text(m, "server"));
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "W1: 5 no-op steps succeed; W2: step 4 fails for good, steps 3..1 compensate; closed loop: N clients each start a saga and wait for it (N sagas in flight)"
    );
    let header = format!(
        "{:<9} {:<7} {:<5} {:>4} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7}",
        "engine",
        "store",
        "load",
        "N",
        "sagas/s",
        "steps/s",
        "p50 ms",
        "p99 ms",
        "step+ ms",
        "commits",
        "WAL B",
        "RSS MB"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.len()));
    let workload_rows: [(&str, &str, &str); 7] = [
        ("saga", "w1", "pg"),
        ("saga", "w2", "pg"),
        ("saga", "w1", "sqlite"),
        ("underway", "w1", ""),
        ("underway", "w2", ""),
        ("dbos", "w1", ""),
        ("dbos", "w2", ""),
    ];
    for (engine, workload, backend) in workload_rows {
        for &n in &levels {
            let Some(r) = find(engine, workload, backend, n) else {
                continue;
            };
            let r = &r;
            let store = if backend.is_empty() {
                text(r, "backend")
            } else {
                backend
            };
            let _ = writeln!(
                out,
                "{:<9} {:<7} {:<5} {:>4} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7}",
                engine,
                store,
                workload.to_uppercase(),
                n,
                fmt(num(r, "sagas_per_s"), 1),
                fmt(num(r, "transitions_per_s"), 1),
                fmt(num(r, "p50_ms"), 2),
                fmt(num(r, "p99_ms"), 2),
                fmt(num(r, "step_p50_ms"), 3),
                fmt(num(r, "commits_per_saga"), 2),
                fmt(num(r, "wal_bytes_per_saga"), 0),
                fmt(num(r, "rss_mb"), 1),
            );
            let prefix = if engine == "saga" {
                format!("saga_{workload}_{store}_c{n}")
            } else {
                format!("{engine}_{workload}_c{n}")
            };
            for (key, name, d) in [
                ("sagas_per_s", "sagas_per_s", 1),
                ("transitions_per_s", "transitions_per_s", 1),
                ("p50_ms", "p50_ms", 3),
                ("p99_ms", "p99_ms", 3),
                ("step_p50_ms", "step_added_p50_ms", 3),
                ("step_p99_ms", "step_added_p99_ms", 3),
                ("commits_per_saga", "commits_per_saga", 2),
                ("wal_bytes_per_saga", "wal_bytes_per_saga", 0),
                ("rss_mb", "rss_mb", 1),
            ] {
                if let Some(x) = num(r, key) {
                    kvs.push((format!("{prefix}_{name}"), kv(Some(x), d)));
                }
            }
        }
    }
    for &n in &levels {
        if let Some(r) = find("pgbench", "step", "", n) {
            let r = &r;
            let _ = writeln!(
                out,
                "{:<9} {:<7} {:<5} {:>4} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7}",
                "pgbench",
                "pg",
                "step",
                n,
                "-",
                fmt(num(r, "tps"), 1),
                fmt(num(r, "latency_avg_ms"), 2),
                "-",
                "-",
                fmt(num(r, "commits_per_tx"), 2),
                fmt(num(r, "wal_bytes_per_tx"), 0),
                "-",
            );
            kvs.push((format!("pgbench_c{n}_tps"), kv(num(r, "tps"), 1)));
            kvs.push((
                format!("pgbench_c{n}_latency_avg_ms"),
                kv(num(r, "latency_avg_ms"), 3),
            ));
        }
    }
    // The ceiling for grouped writes: pgbench, 16 step transitions per transaction, 16 clients.
    let grouped = rows
        .iter()
        .rev()
        .find(|r| text(r, "engine") == "pgbench" && text(r, "workload") == "step_grouped");
    if let Some(r) = grouped {
        let n = r.get("inflight").and_then(Value::as_u64).unwrap_or(0);
        let per = r.get("per_tx").and_then(Value::as_u64).unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<9} {:<7} {:<5} {:>4} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7}",
            "pgbench",
            "pg",
            format!("{per}/tx"),
            n,
            "-",
            fmt(num(r, "transitions_per_s"), 1),
            fmt(num(r, "latency_avg_ms"), 2),
            "-",
            "-",
            fmt(num(r, "commits_per_tx"), 2),
            fmt(num(r, "wal_bytes_per_tx"), 0),
            "-",
        );
        kvs.push((format!("pgbench_grouped_c{n}_tps"), kv(num(r, "tps"), 1)));
        kvs.push((
            format!("pgbench_grouped_c{n}_transitions_per_s"),
            kv(num(r, "transitions_per_s"), 1),
        ));
        kvs.push((
            format!("pgbench_grouped_c{n}_latency_avg_ms"),
            kv(num(r, "latency_avg_ms"), 3),
        ));
    }
    // SQLite's limit: one connection, 1 or 16 step transitions per commit.
    let sqlite_limit = |per: u64| {
        rows.iter().rev().find(|r| {
            text(r, "workload") == "sqlite_limit"
                && r.get("per_commit").and_then(Value::as_u64) == Some(per)
        })
    };
    for per in [1, 16] {
        if let Some(r) = sqlite_limit(per) {
            let _ = writeln!(
                out,
                "{:<9} {:<7} {:<5} {:>4} {:>9} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>7}",
                "sqlite",
                "sqlite",
                format!("{per}/tx"),
                1,
                "-",
                fmt(num(r, "transitions_per_s"), 1),
                fmt(num(r, "commit_p50_ms"), 2),
                fmt(num(r, "commit_p99_ms"), 2),
                "-",
                "-",
                "-",
                "-",
            );
            let prefix = format!("sqlite_limit_per_commit_{per}");
            for (key, name, d) in [
                ("transitions_per_s", "transitions_per_s", 1),
                ("commits_per_s", "commits_per_s", 1),
                ("commit_p50_ms", "commit_p50_ms", 3),
                ("commit_p99_ms", "commit_p99_ms", 3),
            ] {
                kvs.push((format!("{prefix}_{name}"), kv(num(r, key), d)));
            }
        }
    }
    let _ = writeln!(
        out,
        "  steps/s: step functions run per second (W1: 5 per saga; W2: 4 actions + 3 compensations); pgbench: one transaction = one step transition (insert a unique key + update a status)\n  pgbench 16/tx: the ceiling for grouped writes, 16 step transitions per transaction (one INSERT of 16 keys, one UPDATE of 16 statuses, one commit), 16 clients: steps/s = 16 x tps; p50: average transaction latency\n  sqlite 1/tx, 16/tx: SQLite's limit, one connection on the store's pragmas (WAL, synchronous=FULL), 1 or 16 step transitions per commit (one INSERT of the keys, one UPDATE of the sagas): steps/s = transitions/s; p50/p99: per transaction\n  p50/p99: saga latency, start -> settled (pgbench: average transaction latency); step+: p50 time from one step's entry to the next one's (what the orchestrator adds per step)\n  commits: pg_stat_database.xact_commit delta per saga, in a database used only by that run; WAL B: pg_current_wal_lsn() delta per saga; RSS: peak RSS (VmHWM) of the worker process"
    );
    let max_rounds = rows.iter().map(round_of).max().unwrap_or(1);
    if max_rounds > 1 {
        let _ = writeln!(
            out,
            "  rounds: a workload measured in {max_rounds} rounds shows the median of each column over its rounds (its ratios below: the median of the per-round ratios)"
        );
    }
    for (engine, why) in &unavailable {
        let _ = writeln!(out, "  {engine}: unavailable — {why}");
    }

    // Where the commits come from.
    if let Some(r) = find("saga", "w1", "pg", 16) {
        if let Some(calls) = r.get("store_calls_per_saga") {
            let _ = writeln!(
                out,
                "  store calls per W1 saga at 16 in flight: create {} / claim {} (sagas per claim {}) / load {} / apply {} / heartbeat {} / other {}",
                fmt(num(calls, "create"), 2),
                fmt(num(calls, "claim"), 2),
                fmt(num(calls, "claimed").zip(num(calls, "claim")).map(|(a, b)| a / b), 1),
                fmt(num(calls, "load"), 2),
                fmt(num(calls, "apply"), 2),
                fmt(num(calls, "heartbeat"), 2),
                fmt(num(calls, "other"), 2),
            );
        }
    }

    // W3 and RSS.
    let w3: Vec<&Value> = rows
        .iter()
        .filter(|r| text(r, "workload") == "w3")
        .collect();
    if !w3.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "W3: sagas started, worker SIGKILLed once 30% are settled, new process started"
        );
        let header = format!(
            "{:>4} {:>7} {:>8} {:>9} {:>12} {:>11} {:>12} {:>10} {:>11} {:>10} {:>7}",
            "N",
            "sagas",
            "restart",
            "lease s",
            "settled@kill",
            "leased@kill",
            "lease left s",
            "drain s",
            "recovery s",
            "completed",
            "RSS MB"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        for r in &w3 {
            if let Some(why) = r.get("error") {
                let _ = writeln!(
                    out,
                    "{:>4} failed: {}",
                    r.get("inflight").and_then(Value::as_u64).unwrap_or(0),
                    why
                );
                continue;
            }
            let n = r.get("inflight").and_then(Value::as_u64).unwrap_or(0);
            let lease = num(r, "lease_ttl_s").unwrap_or(f64::NAN);
            let new_id = text(r, "restart") == "new_id";
            let _ = writeln!(
                out,
                "{:>4} {:>7} {:>8} {:>9} {:>12} {:>11} {:>12} {:>10} {:>11} {:>10} {:>7}",
                n,
                fmt(num(r, "sagas"), 0),
                if new_id { "new id" } else { "same id" },
                fmt(Some(lease), 1),
                fmt(num(r, "settled_at_kill"), 0),
                fmt(num(r, "leased_at_kill"), 0),
                fmt(num(r, "lease_left_at_kill_s"), 1),
                fmt(num(r, "drain_s"), 2),
                fmt(num(r, "recovery_s"), 2),
                fmt(num(r, "completed"), 0),
                fmt(num(r, "rss_mb"), 1),
            );
            let mut suffix = if (lease - 30.0).abs() < 1e-9 {
                String::new()
            } else {
                format!("_lease{}ms", (lease * 1000.0).round())
            };
            if let Some(sagas) = num(r, "sagas").filter(|s| *s != 10_000.0) {
                suffix.push_str(&format!("_{sagas:.0}sagas"));
            }
            if new_id {
                suffix.push_str("_new_id");
            }
            kvs.push((
                format!("w3_c{n}{suffix}_recovery_s"),
                kv(num(r, "recovery_s"), 2),
            ));
            kvs.push((format!("w3_c{n}{suffix}_drain_s"), kv(num(r, "drain_s"), 2)));
            kvs.push((format!("w3_c{n}{suffix}_rss_mb"), kv(num(r, "rss_mb"), 1)));
        }
        let _ = writeln!(
            out,
            "  restart: the new process runs under the killed one's worker id (same id: it takes the killed process's leases back at once) or another (new id: on Postgres it takes them over as soon as it sees that the killed process's session, and with it its presence lock, is gone; without presence they would wait for the lease)\n  drain: until every saga not held by the killed process's leases is settled; recovery: until all are settled"
        );
    }
    let rss = rows.iter().rev().find(|r| text(r, "workload") == "rss10k");
    if let Some(r) = rss {
        let partial = r.get("partial").and_then(Value::as_bool).unwrap_or(false);
        let _ = writeln!(
            out,
            "\nRSS with {} sagas in flight at once (concurrency {}, pool {}): peak {} MB (before the run {} MB), {} {} s{}",
            fmt(num(r, "sagas"), 0),
            fmt(num(r, "inflight"), 0),
            fmt(num(r, "pool"), 0),
            fmt(num(r, "rss_mb"), 1),
            fmt(num(r, "rss_before_run_mb"), 1),
            if partial { "observed for" } else { "all settled in" },
            fmt(num(r, "run_s"), 1),
            if partial { format!(" ({} settled by then; quick run)", fmt(num(r, "settled"), 0)) } else { String::new() },
        );
        kvs.push(("rss10k_mb".into(), kv(num(r, "rss_mb"), 1)));
        kvs.push(("rss10k_run_s".into(), kv(num(r, "run_s"), 2)));
        kvs.push((
            "rss10k_partial".into(),
            if partial { "1".into() } else { "0".into() },
        ));
    }

    waiting::section(&rows, &mut out, &mut kvs);
    policies::section(&rows, &mut out, &mut kvs);

    // Ratios and targets.
    let _ = writeln!(out);
    let _ = writeln!(out, "Ratios and targets");
    let saga = |w: &str, n: u64, key: &str| find("saga", w, "pg", n).and_then(|r| num(&r, key));
    // A ratio per round, from the two runs of that round; the ratio is their median.
    let per_round = |ours: Vec<&Value>, ours_key: &str, theirs: Vec<&Value>, their_key: &str| {
        let theirs: BTreeMap<u64, f64> = theirs
            .iter()
            .filter_map(|r| num(r, their_key).map(|x| (round_of(r), x)))
            .collect();
        ours.iter()
            .filter_map(|r| {
                let a = num(r, ours_key)?;
                let b = theirs.get(&round_of(r))?;
                Some((round_of(r), a / b))
            })
            .collect::<Vec<(u64, f64)>>()
    };
    let mut ratio_lines = Vec::new();
    let mut round_lines: Vec<String> = Vec::new();
    for &n in &levels {
        let rounds = per_round(
            find_all("saga", "w1", "pg", n),
            "transitions_per_s",
            find_all("pgbench", "step", "", n),
            "tps",
        );
        let mut pairs = vec![("pgbench", "w1", rounds)];
        for peer in ["dbos", "underway"] {
            for w in ["w1", "w2"] {
                let rounds = per_round(
                    find_all("saga", w, "pg", n),
                    "sagas_per_s",
                    find_all(peer, w, "", n),
                    "sagas_per_s",
                );
                pairs.push((peer, w, rounds));
            }
        }
        for (peer, w, rounds) in pairs {
            let name = if peer == "pgbench" {
                format!("ratio_vs_pgbench_c{n}")
            } else {
                format!("ratio_vs_{peer}_{w}_c{n}")
            };
            let values: Vec<f64> = rounds.iter().map(|(_, x)| *x).collect();
            if values.len() > 1 {
                let list: Vec<String> = values.iter().map(|x| format!("{x:.3}")).collect();
                kvs.push((format!("{name}_rounds"), list.join(",")));
                round_lines.push(format!(
                    "  {name:<26} {:>8}   rounds: {}",
                    fmt(median(values.clone()), 3),
                    list.join("  ")
                ));
            }
            ratio_lines.push((name, median(values)));
        }
    }
    let steps: Vec<f64> = find_all("saga", "w1", "pg", 1)
        .iter()
        .filter_map(|r| num(r, "step_p50_ms"))
        .collect();
    if steps.len() > 1 {
        let list: Vec<String> = steps.iter().map(|x| format!("{x:.3}")).collect();
        kvs.push((
            "saga_w1_pg_c1_step_added_p50_ms_rounds".into(),
            list.join(","),
        ));
        round_lines.push(format!(
            "  {:<26} {:>8}   rounds: {}",
            "step+ ms, W1, 1 in flight",
            fmt(median(steps.clone()), 3),
            list.join("  ")
        ));
    }
    let get = |name: &str| {
        ratio_lines
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| *v)
    };
    let headline = [
        ("ratio_vs_pgbench", get("ratio_vs_pgbench_c16")),
        ("ratio_vs_dbos", get("ratio_vs_dbos_w1_c16")),
        ("ratio_vs_dbos_w2", get("ratio_vs_dbos_w2_c16")),
        ("ratio_vs_underway", get("ratio_vs_underway_w1_c16")),
        ("ratio_vs_underway_w2", get("ratio_vs_underway_w2_c16")),
    ];
    for (name, value) in &headline {
        let _ = writeln!(out, "  {name:<22} {}", fmt(*value, 3));
    }
    let _ = writeln!(
        out,
        "  (pgbench: W1 step transitions/s / pgbench tps; peers: sagas/s / peer's sagas/s; all at 16 in flight)"
    );
    // Issue 19's limits, counted among the targets below.
    let sqlite_w1 = find("saga", "w1", "sqlite", 16).and_then(|r| num(&r, "transitions_per_s"));
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let limit_of = |per: u64| sqlite_limit(per).and_then(|r| num(r, "transitions_per_s"));
    let grouped_ceiling = grouped.and_then(|r| num(r, "transitions_per_s"));
    let w1_64 = saga("w1", 64, "transitions_per_s");
    let limits = [
        (
            "ratio_sqlite_vs_limit",
            over(sqlite_w1, limit_of(16)),
            "W1 SQLite steps/s at 16 in flight / SQLite limit at 16 per commit; target >= 0.25 (issue 19)",
        ),
        (
            "ratio_sqlite_vs_limit_1",
            over(sqlite_w1, limit_of(1)),
            "W1 SQLite steps/s at 16 in flight / SQLite limit at 1 per commit; target >= 1 (issue 19)",
        ),
        (
            "ratio_vs_grouped_limit",
            over(w1_64, grouped_ceiling),
            "W1 Postgres steps/s at 64 in flight / pgbench 16 per transaction x 16 clients; target >= 0.5 (issue 19)",
        ),
    ];
    for (name, value, what) in &limits {
        let _ = writeln!(out, "  {name:<24} {:>6}  {what}", fmt(*value, 3));
    }
    // What bounds grouped writes: CPU per step transition, client and server, against the
    // ceiling's; the machine's cores over their sum is the rate that CPU alone allows.
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let w1_64_row = find("saga", "w1", "pg", 64);
    let per_step = |key: &str| {
        w1_64_row
            .as_ref()
            .and_then(|r| num(r, key))
            .map(|ms| ms / crate::sagas::transitions_per_saga("w1") as f64)
    };
    let per_grouped = |key: &str| grouped.and_then(|r| num(r, key)).map(|ms| ms / 16.0);
    for (label, client, server, wal, rate) in [
        (
            "W1, 64 in flight",
            per_step("client_cpu_ms_per_saga"),
            per_step("server_cpu_ms_per_saga"),
            per_step("wal_bytes_per_saga"),
            w1_64,
        ),
        (
            "pgbench 16/tx",
            per_grouped("client_cpu_ms_per_tx"),
            per_grouped("server_cpu_ms_per_tx"),
            per_grouped("wal_bytes_per_tx"),
            grouped_ceiling,
        ),
    ] {
        let key = if label.starts_with("W1") {
            "profile_w1_c64"
        } else {
            "profile_pgbench_grouped"
        };
        let cpu_bound = match (client, server) {
            (Some(c), Some(s)) if c + s > 0.0 => Some(cores * 1e3 / (c + s)),
            _ => None,
        };
        let _ = writeln!(
            out,
            "  profile {label:<17} per step transition: client CPU {} ms, server CPU {} ms, WAL {} B; {cores:.0} cores allow {} steps/s, measured {}",
            fmt(client, 3),
            fmt(server, 3),
            fmt(wal, 0),
            fmt(cpu_bound, 0),
            fmt(rate, 0),
        );
        kvs.push((format!("{key}_client_cpu_ms_per_step"), kv(client, 4)));
        kvs.push((format!("{key}_server_cpu_ms_per_step"), kv(server, 4)));
        kvs.push((format!("{key}_wal_bytes_per_step"), kv(wal, 0)));
    }
    if !round_lines.is_empty() {
        let _ = writeln!(
            out,
            "  Measured in rounds (each ratio from two runs seconds apart; the figure is their median):"
        );
        for line in &round_lines {
            let _ = writeln!(out, "{line}");
        }
    }

    let mut targets: Vec<(&str, String, Option<bool>)> = Vec::new();
    let r = get("ratio_vs_pgbench_c16");
    targets.push((
        "W1 steps/s >= 0.6 x pgbench (16 in flight)",
        fmt(r, 3),
        r.map(|r| r >= 0.6),
    ));
    for (name, key) in [
        ("W1 sagas/s >= 10 x DBOS (16)", "ratio_vs_dbos_w1_c16"),
        ("W2 sagas/s >= 10 x DBOS (16)", "ratio_vs_dbos_w2_c16"),
        (
            "W1 sagas/s >= 10 x underway (16)",
            "ratio_vs_underway_w1_c16",
        ),
        (
            "W2 sagas/s >= 10 x underway (16)",
            "ratio_vs_underway_w2_c16",
        ),
    ] {
        let r = get(key);
        targets.push((name, fmt(r, 2), r.map(|r| r >= 10.0)));
    }
    let commits: Vec<f64> = levels
        .iter()
        .flat_map(|&n| find_all("saga", "w1", "pg", n))
        .filter_map(|r| num(r, "commits_per_saga"))
        .collect();
    let worst = commits.iter().copied().reduce(f64::max);
    targets.push((
        "W1 commits per saga <= 5 + 2 (worst N)",
        fmt(worst, 2),
        worst.map(|c| c <= 7.0),
    ));
    let step = saga("w1", 1, "step_p50_ms");
    targets.push((
        "added latency per step p50 <= 1 ms (1 in flight)",
        fmt(step, 3),
        step.map(|s| s <= 1.0),
    ));
    let w3_at = |n: u64| {
        w3.iter()
            .filter(|r| num(r, "lease_ttl_s").is_some_and(|l| (l - 30.0).abs() < 1e-9))
            .filter(|r| num(r, "sagas") == Some(10_000.0))
            .filter(|r| text(r, "restart") != "new_id")
            .filter(|r| r.get("inflight").and_then(Value::as_u64) == Some(n))
            .filter_map(|r| num(r, "recovery_s"))
            .reduce(f64::max)
    };
    let w3_64 = w3_at(64);
    let w3_64_failed = w3
        .iter()
        .any(|r| r.get("error").is_some() && r.get("inflight").and_then(Value::as_u64) == Some(64));
    targets.push((
        "W3: 10,000 all settled <= 10 s after restart (same id, 64 in flight)",
        if w3_64_failed {
            "failed".to_owned()
        } else {
            fmt(w3_64, 2)
        },
        if w3_64_failed {
            Some(false)
        } else {
            w3_64.map(|s| s <= 10.0)
        },
    ));
    let new_id = w3
        .iter()
        .filter(|r| num(r, "lease_ttl_s").is_some_and(|l| (l - 30.0).abs() < 1e-9))
        .filter(|r| num(r, "sagas") == Some(10_000.0))
        .filter(|r| text(r, "restart") == "new_id")
        .filter_map(|r| num(r, "recovery_s"))
        .reduce(f64::max);
    if w3.iter().any(|r| text(r, "restart") == "new_id") {
        targets.push((
            "W3 new id: 10,000 all settled <= 5 s after the kill (30 s lease; issue 19)",
            fmt(new_id, 2),
            new_id.map(|s| s <= 5.0),
        ));
    }
    let limit = |name: &str| {
        limits
            .iter()
            .find(|(k, _, _)| *k == name)
            .and_then(|(_, v, _)| *v)
    };
    let r = limit("ratio_sqlite_vs_limit_1");
    targets.push((
        "SQLite W1 steps/s (16) >= its limit at 1 per commit",
        fmt(r, 3),
        r.map(|r| r >= 1.0),
    ));
    let r = limit("ratio_sqlite_vs_limit");
    targets.push((
        "SQLite W1 steps/s (16) >= 0.25 x its limit at 16 per commit",
        fmt(r, 3),
        r.map(|r| r >= 0.25),
    ));
    let r = limit("ratio_vs_grouped_limit");
    targets.push((
        "Postgres W1 steps/s (64) >= 0.5 x the grouped-write ceiling",
        fmt(r, 3),
        r.map(|r| r >= 0.5),
    ));
    let p99 = find("saga", "w1", "sqlite", 16).and_then(|r| num(&r, "p99_ms"));
    targets.push((
        "SQLite W1 saga p99 < 25 ms (16 in flight)",
        fmt(p99, 1),
        p99.map(|p| p < 25.0),
    ));
    for (backend, w) in [("pg", "w1"), ("pg", "w2"), ("sqlite", "w1"), ("sqlite", "w2")] {
        let of = |label: &str| {
            find("saga", &format!("{w}_{label}"), backend, 16)
                .and_then(|r| num(&r, "transitions_per_s"))
        };
        let (empty, kept) = (of("empty"), of("history"));
        let kept_sagas = find("saga", &format!("{w}_history"), backend, 16)
            .and_then(|r| num(&r, "history"));
        let ratio = over(kept, empty);
        let name = format!("ratio_history_{backend}_{w}");
        kvs.push((format!("{name}_empty_transitions_per_s"), fmt(empty, 1)));
        kvs.push((format!("{name}_kept_transitions_per_s"), fmt(kept, 1)));
        kvs.push((name.clone(), kv(ratio, 3)));
        let kept_sagas = kept_sagas.map_or("?".to_owned(), |n| format!("{n:.0}"));
        let _ = writeln!(
            out,
            "  {name:<24} {:>6}  {} {backend} steps/s at 16 in flight: {} with {kept_sagas} finished sagas kept / {} on empty tables; target >= 0.9 (issue 19)",
            fmt(ratio, 3),
            w.to_uppercase(),
            fmt(kept, 1),
            fmt(empty, 1),
        );
        targets.push((
            match (backend, w) {
                ("pg", "w1") => "W1 on Postgres with history kept >= 0.9 x empty (16)",
                ("pg", _) => "W2 on Postgres with history kept >= 0.9 x empty (16)",
                (_, "w1") => "W1 on SQLite with history kept >= 0.9 x empty (16)",
                _ => "W2 on SQLite with history kept >= 0.9 x empty (16)",
            },
            fmt(ratio, 3),
            ratio.map(|r| r >= 0.9),
        ));
    }
    let processes = |p: u64, key: &str| {
        find("saga", &format!("w1_processes_{p}"), "pg", 16).and_then(|r| num(&r, key))
    };
    let one = processes(1, "transitions_per_s");
    for p in [2, 4] {
        let rate = processes(p, "transitions_per_s");
        let ratio = over(rate, one);
        let (least, most) = (
            processes(p, "share_min_over_mean"),
            processes(p, "share_max_over_mean"),
        );
        let name = format!("ratio_processes_{p}");
        kvs.push((format!("saga_w1_pg_processes_{p}_transitions_per_s"), fmt(rate, 1)));
        kvs.push((format!("{name}_share_min_over_mean"), fmt(least, 3)));
        kvs.push((format!("{name}_share_max_over_mean"), fmt(most, 3)));
        kvs.push((name.clone(), kv(ratio, 3)));
        let _ = writeln!(
            out,
            "  {name:<24} {:>6}  W1 Postgres steps/s, 16 in flight in all: {} in {p} processes / {} in one; shares {}-{} x the mean (issue 19: none below 0.5 or above 2)",
            fmt(ratio, 3),
            fmt(rate, 1),
            fmt(one, 1),
            fmt(least, 2),
            fmt(most, 2),
        );
        targets.push((
            if p == 2 {
                "no process starves: shares within 2x of the mean (2 processes)"
            } else {
                "no process starves: shares within 2x of the mean (4 processes)"
            },
            format!("{}-{}", fmt(least, 2), fmt(most, 2)),
            least.zip(most).map(|(least, most)| least >= 0.5 && most <= 2.0),
        ));
    }
    let starts = find("saga", "starts_at_once_100000", "pg", 64);
    let starts_mb = starts.as_ref().and_then(|r| num(r, "rss_mb"));
    kvs.push(("starts_at_once_100000_rss_mb".to_owned(), fmt(starts_mb, 1)));
    kvs.push((
        "starts_at_once_100000_run_s".to_owned(),
        fmt(starts.as_ref().and_then(|r| num(r, "run_s")), 1),
    ));
    targets.push((
        "peak RSS < 200 MB with 100,000 starts issued at once",
        fmt(starts_mb, 1),
        starts_mb.map(|m| m < 200.0),
    ));
    let rss_mb = rss.and_then(|r| num(r, "rss_mb"));
    targets.push((
        "peak RSS < 100 MB with 10,000 in flight",
        fmt(rss_mb, 1),
        rss_mb.map(|m| m < 100.0),
    ));
    // A run that lost sagas, left some unsettled or ended them in the wrong status does not
    // count: its row is named here, and with any such run of ours no target is judged met.
    let errored: Vec<String> = rows
        .iter()
        .filter(|r| r.get("errors").and_then(Value::as_u64).unwrap_or(0) > 0)
        .map(|r| {
            format!(
                "{} {} {} N={}: {} errors",
                text(r, "engine"),
                text(r, "backend"),
                text(r, "workload"),
                r.get("inflight").and_then(Value::as_u64).unwrap_or(0),
                r.get("errors").and_then(Value::as_u64).unwrap_or(0),
            )
        })
        .collect();
    for line in &errored {
        let _ = writeln!(out, "  RUN WITH ERRORS: {line}");
    }
    kvs.push(("runs_with_errors".to_owned(), errored.len().to_string()));
    if errored.iter().any(|line| line.starts_with("saga ")) {
        for target in &mut targets {
            if target.2 == Some(true) {
                target.2 = None;
            }
        }
        let _ = writeln!(out, "  (a run of ours had errors: no target is judged met)");
    }
    for (name, value, met) in &targets {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "unknown",
        };
        let _ = writeln!(out, "  {name:<62} {value:>10}  {verdict}");
    }
    let met = targets.iter().filter(|t| t.2 == Some(true)).count();
    let missed = targets.iter().filter(|t| t.2 == Some(false)).count();

    print!("{out}");
    println!();
    for (k, v) in &kvs {
        println!("{k}={v}");
    }
    for (k, v) in &ratio_lines {
        println!("{k}={}", kv(*v, 3));
    }
    for (k, v) in &headline {
        println!("{k}={}", kv(*v, 3));
    }
    for (k, v, _) in &limits {
        println!("{k}={}", kv(*v, 3));
    }
    println!("targets_met={met}");
    println!("targets_missed={missed}");
    println!("targets_unknown={}", targets.len() - met - missed);
    Ok(())
}
