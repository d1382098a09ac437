//! Server-side figures (commits and WAL of one database), databases of their own per workload,
//! peak RSS and percentiles.

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection, Row};

pub type Res<T> = std::result::Result<T, String>;

pub fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Replaces the database name (the URL's path) with `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

/// Drops and creates the database `name` (used only by one workload) and checkpoints, so that
/// every workload starts from the same state; returns its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> Res<String> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .map_err(err("connecting to the admin database"))?;
    conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await
        .map_err(err("DROP DATABASE"))?;
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .map_err(err("CREATE DATABASE"))?;
    // Best effort: needs superuser or pg_checkpoint (fine on our own cluster).
    let _ = conn.execute("CHECKPOINT").await;
    let _ = conn.close().await;
    Ok(with_database(admin_url, name))
}

/// xact_commit of the current database and the cluster's WAL position.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub commits: i64,
    pub lsn: String,
}

pub async fn snapshot(url: &str) -> Res<Snapshot> {
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(err("connecting for statistics"))?;
    let row = sqlx::query(
        "SELECT xact_commit, pg_current_wal_lsn()::text AS lsn
           FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(err("reading pg_stat_database"))?;
    let _ = conn.close().await;
    Ok(Snapshot {
        commits: row.try_get("xact_commit").map_err(err("xact_commit"))?,
        lsn: row.try_get("lsn").map_err(err("lsn"))?,
    })
}

/// Commits and WAL bytes since `before`, less the statistics queries' own commits.
pub struct Meter {
    url: String,
    before: Snapshot,
    overhead: i64,
}

impl Meter {
    /// Calibrates (a snapshot's own commit, as the server counts it) and takes the first snapshot.
    /// Statistics of a connection are flushed when it closes, so snapshots are taken on
    /// connections of their own, and `finish` must be called after the workload's connections
    /// are closed.
    pub async fn start(url: &str) -> Res<Meter> {
        let s0 = snapshot(url).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s1 = snapshot(url).await?;
        let overhead = (s1.commits - s0.commits).max(0);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let before = snapshot(url).await?;
        Ok(Meter {
            url: url.to_owned(),
            before,
            overhead,
        })
    }

    /// (commits, WAL bytes) since `start`.
    pub async fn finish(&self) -> Res<(i64, i64)> {
        // Backends report their statistics when they exit; give them a moment.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = snapshot(&self.url).await?;
        let mut conn = PgConnection::connect(&self.url)
            .await
            .map_err(err("connecting for statistics"))?;
        let wal: f64 = sqlx::query("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::float8")
            .bind(&after.lsn)
            .bind(&self.before.lsn)
            .fetch_one(&mut conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(err("pg_wal_lsn_diff"))?;
        let _ = conn.close().await;
        Ok((
            after.commits - self.before.commits - self.overhead,
            wal as i64,
        ))
    }
}

/// Peak resident set size of this process, in MB (VmHWM).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:").and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU seconds spent so far (Linux, from `/proc`): by this process (`own`), by the children it
/// waited for (`children`: pgbench), and by the server (`server`: every process named
/// `postgres`, with the ended backends its postmaster reaped). Differences of two readings
/// split a run's CPU between the client and the server. `None` where `/proc` is unreadable.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    pub own: f64,
    pub children: f64,
    pub server: f64,
}

/// The kernel's clock ticks in `/proc/*/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// (utime + stime, cutime + cstime) of one `/proc/<pid>/stat`, in seconds, with its name.
fn stat_times(text: &str) -> Option<(String, f64, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) .. cstime (17) are at 11..=14.
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    let own = tick(11)? + tick(12)?;
    let reaped = tick(13)? + tick(14)?;
    Some((name, own / TICKS_PER_S, reaped / TICKS_PER_S))
}

pub fn cpu() -> Option<Cpu> {
    let (_, own, children) = stat_times(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut server = 0.0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((name, used, reaped)) = stat_times(&text) {
            if name == "postgres" {
                server += used + reaped;
            }
        }
    }
    Some(Cpu {
        own,
        children,
        server,
    })
}

impl Cpu {
    /// CPU seconds from `self` to `later`: (this process, its children, the server).
    pub fn until(self, later: Cpu) -> (f64, f64, f64) {
        (
            later.own - self.own,
            later.children - self.children,
            later.server - self.server,
        )
    }
}
