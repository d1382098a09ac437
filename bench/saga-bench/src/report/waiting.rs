//! The report's section on sagas that wait: signal-to-step latency, and the cost of 100,000
//! waiting sagas against a fresh database.

use std::fmt::Write as _;

use serde_json::Value;

use super::{fmt, kv, num, text};

/// Appends the section (if either workload ran) and its name=value lines.
pub fn section(rows: &[Value], out: &mut String, kvs: &mut Vec<(String, String)>) {
    let last = |workload: &str, listen: bool| {
        rows.iter().rev().find(|r| {
            text(r, "workload") == workload
                && r.get("listen").and_then(Value::as_bool).unwrap_or(true) == listen
        })
    };
    let signal = last("signal", true);
    let control = last("signal", false);
    let waiting = last("waiting", true);
    if signal.is_none() && control.is_none() && waiting.is_none() {
        return;
    }
    let _ = writeln!(out, "\nSagas that wait (Postgres)");
    if let Some(r) = signal {
        signal_latency(r, out, kvs);
    }
    if let Some(r) = control {
        poll_control(r, out, kvs);
    }
    if let Some(r) = waiting {
        waiting_cost(r, out, kvs);
    }
}

/// A run that failed: `bench/run` wrote `{"error": ...}` for it.
fn failed(r: &Value) -> bool {
    r.get("error").is_some()
}

fn signal_latency(r: &Value, out: &mut String, kvs: &mut Vec<(String, String)>) {
    if failed(r) {
        let _ = writeln!(
            out,
            "  signal -> next step: FAILED ({}; see the log)",
            text(r, "error")
        );
    } else {
        let _ = writeln!(
            out,
            "  signal -> next step: {} orders (reserve -> wait for `paid` -> ship) waiting, each signalled by a second orchestrator (a store of its own, no workers) at {}/s; the worker polls every {} ms",
            fmt(num(r, "sagas"), 0),
            fmt(num(r, "rate"), 0),
            fmt(num(r, "poll_interval_ms"), 0),
        );
        let _ = writeln!(
            out,
            "    from the `signal` call returning to `ship` entered: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (the call itself: p50 {} ms); all {} brought to their wait in {} s",
            fmt(num(r, "latency_p50_ms"), 2),
            fmt(num(r, "latency_p90_ms"), 2),
            fmt(num(r, "latency_p99_ms"), 2),
            fmt(num(r, "latency_max_ms"), 1),
            fmt(num(r, "signal_call_p50_ms"), 2),
            fmt(num(r, "sagas"), 0),
            fmt(num(r, "to_wait_s"), 1),
        );
    }
    for (key, name, d) in [
        ("latency_p50_ms", "signal_latency_p50_ms", 3),
        ("latency_p90_ms", "signal_latency_p90_ms", 3),
        ("latency_p99_ms", "signal_latency_p99_ms", 3),
        ("latency_max_ms", "signal_latency_max_ms", 3),
        ("signal_call_p50_ms", "signal_call_p50_ms", 3),
        ("poll_interval_ms", "signal_latency_poll_interval_ms", 0),
        ("rate", "signal_latency_rate_per_s", 0),
        ("sagas", "signal_latency_sagas", 0),
    ] {
        kvs.push((name.to_owned(), kv(num(r, key), d)));
    }
}

fn poll_control(r: &Value, out: &mut String, kvs: &mut Vec<(String, String)>) {
    if failed(r) {
        let _ = writeln!(
            out,
            "    control without LISTEN: FAILED ({}; see the log)",
            text(r, "error")
        );
    } else {
        let _ = writeln!(
            out,
            "    control, the same with a worker that does not LISTEN (woken only by its {} ms poll; {} orders at {}/s): p50 {} ms, p99 {} ms",
            fmt(num(r, "poll_interval_ms"), 0),
            fmt(num(r, "sagas"), 0),
            fmt(num(r, "rate"), 0),
            fmt(num(r, "latency_p50_ms"), 0),
            fmt(num(r, "latency_p99_ms"), 0),
        );
    }
    kvs.push((
        "signal_latency_no_listen_p50_ms".into(),
        kv(num(r, "latency_p50_ms"), 1),
    ));
    kvs.push((
        "signal_latency_no_listen_p99_ms".into(),
        kv(num(r, "latency_p99_ms"), 1),
    ));
}

fn waiting_cost(r: &Value, out: &mut String, kvs: &mut Vec<(String, String)>) {
    if failed(r) {
        let _ = writeln!(
            out,
            "  {} waiting sagas against a fresh database: FAILED ({}; see the log)",
            fmt(num(r, "sagas"), 0),
            text(r, "error")
        );
    } else {
        waiting_table(r, out);
    }
    let base = r.get("base").unwrap_or(&Value::Null);
    let loaded = r.get("loaded").unwrap_or(&Value::Null);
    for (name, value) in [
        ("waiting_sagas", kv(num(r, "sagas"), 0)),
        ("waiting_fill_s", kv(num(r, "fill_s"), 2)),
        ("waiting_fill_rss_mb", kv(num(r, "fill_rss_mb"), 1)),
        (
            "waiting_db_bytes_per_saga",
            kv(num(r, "db_bytes_per_saga"), 0),
        ),
        ("waiting_claim_p50_ms", kv(num(r, "probe_claim_p50_ms"), 3)),
        (
            "waiting_claim_p50_ms_base",
            kv(num(r, "probe_claim_p50_ms_base"), 3),
        ),
        ("waiting_claim_p99_ms", kv(num(r, "probe_claim_p99_ms"), 3)),
        (
            "waiting_claim_p99_ms_base",
            kv(num(r, "probe_claim_p99_ms_base"), 3),
        ),
        (
            "waiting_claim_p50_ratio",
            kv(num(r, "probe_claim_p50_ratio"), 3),
        ),
        (
            "waiting_claim_p99_ratio",
            kv(num(r, "probe_claim_p99_ratio"), 3),
        ),
        (
            "waiting_w1_claim_p50_ms",
            kv(num(loaded, "claim_p50_ms"), 3),
        ),
        (
            "waiting_w1_claim_p50_ms_base",
            kv(num(base, "claim_p50_ms"), 3),
        ),
        (
            "waiting_w1_claim_p50_ratio",
            kv(num(r, "w1_claim_p50_ratio"), 3),
        ),
        ("waiting_w1_sagas_per_s", kv(num(loaded, "sagas_per_s"), 1)),
        (
            "waiting_w1_sagas_per_s_base",
            kv(num(base, "sagas_per_s"), 1),
        ),
        ("waiting_w1_ratio", kv(num(r, "w1_ratio"), 3)),
        ("waiting_w1_ratio_pairs", list(r, "w1_ratios")),
        ("waiting_rss_mb", kv(num(loaded, "rss_mb"), 1)),
        ("waiting_rss_mb_base", kv(num(base, "rss_mb"), 1)),
        ("waiting_rss_ratio", kv(num(r, "rss_ratio"), 3)),
    ] {
        kvs.push((name.to_owned(), value));
    }
}

/// The figures with and without the waiting sagas, side by side.
fn waiting_table(r: &Value, out: &mut String) {
    let base = r.get("base").unwrap_or(&Value::Null);
    let loaded = r.get("loaded").unwrap_or(&Value::Null);
    let sagas = fmt(num(r, "sagas"), 0);
    let _ = writeln!(
        out,
        "  {sagas} waiting sagas in one database (started through the library and brought to their wait in {} s by a process peaking at {} MB; {} B each on disk), against a fresh database, same server, same run:",
        fmt(num(r, "fill_s"), 1),
        fmt(num(r, "fill_rss_mb"), 1),
        fmt(num(r, "db_bytes_per_saga"), 0),
    );
    let header = format!(
        "    {:<44} {:>10} {:>14} {:>8}",
        "",
        "fresh",
        format!("{sagas} waiting"),
        "ratio"
    );
    let _ = writeln!(out, "{header}");
    let line = |out: &mut String,
                what: &str,
                b: Option<f64>,
                l: Option<f64>,
                ratio: Option<f64>,
                d: usize| {
        let _ = writeln!(
            out,
            "    {:<44} {:>10} {:>14} {:>8}",
            what,
            fmt(b, d),
            fmt(l, d),
            fmt(ratio, 3)
        );
    };
    line(
        out,
        "claim, nothing due, alone: p50 ms",
        num(r, "probe_claim_p50_ms_base"),
        num(r, "probe_claim_p50_ms"),
        num(r, "probe_claim_p50_ratio"),
        3,
    );
    line(
        out,
        "claim, nothing due, alone: p99 ms",
        num(r, "probe_claim_p99_ms_base"),
        num(r, "probe_claim_p99_ms"),
        num(r, "probe_claim_p99_ratio"),
        3,
    );
    line(
        out,
        "the dispatcher's claims during W1: p50 ms",
        num(base, "claim_p50_ms"),
        num(loaded, "claim_p50_ms"),
        num(r, "w1_claim_p50_ratio"),
        3,
    );
    let inflight = fmt(num(r, "inflight"), 0);
    line(
        out,
        &format!("W1 sagas/s, {inflight} in flight"),
        num(base, "sagas_per_s"),
        num(loaded, "sagas_per_s"),
        num(r, "w1_ratio"),
        1,
    );
    line(
        out,
        "W1 process: peak RSS MB",
        num(base, "rss_mb"),
        num(loaded, "rss_mb"),
        num(r, "rss_ratio"),
        1,
    );
    let _ = writeln!(
        out,
        "    alone: {} claims per database, one after the other, before W1; during W1: the dispatcher's polls, {} and {} in all; W1: {} pairs of {} s runs, each a process of its own, alternating; a W1 or RSS ratio is the median of the pairs' (W1: {})",
        fmt(num(r, "probe_claims"), 0),
        fmt(num(base, "claims"), 0),
        fmt(num(loaded, "claims"), 0),
        fmt(num(r, "pairs"), 0),
        fmt(num(r, "w1_duration_s"), 0),
        list(r, "w1_ratios"),
    );
}

/// The per-pair values under `key`, comma-separated.
fn list(r: &Value, key: &str) -> String {
    r.get(key)
        .and_then(Value::as_array)
        .map(|values| {
            values
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
