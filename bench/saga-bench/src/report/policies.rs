//! The report's section on policies: W1 with a frequency cap, and with a rate limit, on every
//! step, next to W1 measured in the same rounds, at 16 in flight, on Postgres and SQLite.

use std::fmt::Write as _;

use serde_json::Value;

use super::{fmt, kv, median, num, round_of, text};

/// Appends the section (if it ran) and its name=value lines.
pub fn section(rows: &[Value], out: &mut String, kvs: &mut Vec<(String, String)>) {
    let runs = |workload: &str, backend: &str| -> Vec<&Value> {
        rows.iter()
            .filter(|r| {
                text(r, "engine") == "saga"
                    && text(r, "workload") == workload
                    && text(r, "backend") == backend
                    && r.get("error").is_none()
            })
            .collect()
    };
    if runs("policies_w1", "pg").is_empty() && runs("policies_w1", "sqlite").is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nPolicies: W1 with a cap, and with a rate limit, on every step (16 in flight, rounds side by side)"
    );
    let _ = writeln!(
        out,
        "  {:<8} {:<16} {:>10} {:>9} {:>9} {:>13}   {}",
        "backend", "workload", "sagas/s", "p50 ms", "p99 ms", "commits/saga", "ratio to W1 (per round)"
    );
    for backend in ["pg", "sqlite"] {
        let base = runs("policies_w1", backend);
        if base.is_empty() {
            continue;
        }
        for (workload, label, key) in [
            ("policies_w1", "W1", ""),
            ("w1cap", "W1 + cap", "cap"),
            ("w1limit", "W1 + rate limit", "limit"),
        ] {
            let these = runs(workload, backend);
            let figure = |field: &str| median(these.iter().filter_map(|r| num(r, field)).collect());
            let ratios: Vec<f64> = these
                .iter()
                .filter_map(|r| {
                    let ours = num(r, "sagas_per_s")?;
                    let round = round_of(r);
                    let w1 = base.iter().find(|b| round_of(b) == round)?;
                    Some(ours / num(w1, "sagas_per_s")?)
                })
                .collect();
            let list: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
            let ratio = median(ratios);
            let _ = writeln!(
                out,
                "  {:<8} {:<16} {:>10} {:>9} {:>9} {:>13}   {} ({})",
                backend,
                label,
                fmt(figure("sagas_per_s"), 0),
                fmt(figure("p50_ms"), 2),
                fmt(figure("p99_ms"), 2),
                fmt(figure("commits_per_saga"), 2),
                fmt(ratio, 3),
                list.join(", ")
            );
            kvs.push((
                format!("policies_{}_{backend}_c16_sagas_per_s", if key.is_empty() { "w1" } else { key }),
                kv(figure("sagas_per_s"), 1),
            ));
            if !key.is_empty() {
                kvs.push((format!("ratio_{key}_vs_w1_{backend}_c16"), kv(ratio, 3)));
            }
        }
    }
    let _ = writeln!(
        out,
        "  target: a cap or a rate limit on every step costs under 20% of W1 (ratio >= 0.80)"
    );
}
