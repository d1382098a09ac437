//! The crash-safety suite: real worker processes (this binary, re-executed with
//! `--saga-worker`), real signals and a real PostgreSQL, against an external effects ledger.
//! Each scenario runs with a fixed seed and a bounded time, then checks the invariants (see
//! `invariants.rs`) and prints what it did.
//!
//! - `cargo test --test crash` runs every scenario; `cargo test --test crash -- zombie` those
//!   whose name contains `zombie`.
//! - `SAGA_CRASH_SEED=<n>` changes the base seed (each scenario mixes in its name).
//! - `SAGA_SOAK_SECS=<n>` is the soak mode: scenario 1 again and again with new seeds, for at
//!   least that long.
//! - `SAGA_CRASH_VERBOSE=1` echoes the workers' stderr; `SAGA_CRASH_LOG` sets their log filter.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod ambiguous;
mod capped;
mod child;
mod harness;
mod invariants;
mod ledger;
mod rng;
mod sagas;
mod scenarios;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use scenarios::Report;

type Run = fn(u64) -> Pin<Box<dyn Future<Output = Report> + Send>>;

const SCENARIOS: [(&str, Run); 12] = [
    ("kill_random_workers", |seed| {
        Box::pin(scenarios::kill_random::run(seed))
    }),
    ("kill_at_fault_points", |seed| {
        Box::pin(scenarios::fault_points::run(seed))
    }),
    ("postgres_restarts", |seed| {
        Box::pin(scenarios::pg_restart::run(seed))
    }),
    ("ambiguous_commits", |seed| {
        Box::pin(scenarios::ambiguous_commits::run(seed))
    }),
    ("zombie_worker_is_fenced", |seed| {
        Box::pin(scenarios::zombie::run(seed))
    }),
    ("concurrent_starts_with_one_key", |seed| {
        Box::pin(scenarios::concurrent_start::run(seed))
    }),
    ("poison_inputs_are_parked", |seed| {
        Box::pin(scenarios::poison::run(seed))
    }),
    ("cancel_under_kills", |seed| {
        Box::pin(scenarios::cancel_under_kills::run(seed))
    }),
    ("signals_under_kills", |seed| {
        Box::pin(scenarios::signals_under_kills::run(seed))
    }),
    ("policies_under_kills", |seed| {
        Box::pin(scenarios::policies_under_kills::run(seed))
    }),
    ("groups_under_kills", |seed| {
        Box::pin(scenarios::groups_under_kills::run(seed))
    }),
    ("children_under_kills", |seed| {
        Box::pin(scenarios::children_under_kills::run(seed))
    }),
];

const DEFAULT_SEED: u64 = 20_240_611;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--saga-worker") {
        return child::worker_main(args.get(at + 1).expect("worker spec"));
    }
    if let Some(at) = args.iter().position(|arg| arg == "--saga-starter") {
        return child::starter_main(args.get(at + 1).expect("starter spec"));
    }
    if args.iter().any(|arg| arg == "--list") {
        for (name, _) in SCENARIOS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters = filters(&args);
    let base_seed = std::env::var("SAGA_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let soak = std::env::var("SAGA_SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse::<u64>().ok());
    let failed = match soak {
        Some(secs) => runtime.block_on(soak_mode(base_seed, Duration::from_secs(secs))),
        None => runtime.block_on(suite(base_seed, &filters)),
    };
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Name filters among the arguments (libtest's flags and their values are ignored).
fn filters(args: &[String]) -> Vec<String> {
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in args.iter().skip(1) {
        if skip_value {
            skip_value = false;
        } else if matches!(
            arg.as_str(),
            "--test-threads" | "--skip" | "--format" | "--color" | "-Z" | "--logfile"
        ) {
            skip_value = true;
        } else if !arg.starts_with('-') {
            filters.push(arg.clone());
        }
    }
    filters
}

/// Runs one scenario in a task of its own, so that a failed one is reported and the others
/// still run. Returns whether it passed.
async fn run_one(name: &'static str, run: Run, seed: u64) -> bool {
    println!("crash: {name} (seed {seed}) ...");
    let began = Instant::now();
    let outcome = tokio::spawn(run(seed)).await;
    let took = began.elapsed().as_secs_f64();
    match outcome {
        Ok(report) => {
            println!("crash: {name} passed in {took:.1}s");
            println!("  {}", report.summary);
            for note in &report.notes {
                println!("  {note}");
            }
            true
        }
        Err(err) => {
            println!("crash: {name} FAILED after {took:.1}s (seed {seed}): {err}");
            if let Some(secs) = std::env::var("SAGA_CRASH_HOLD_SECS")
                .ok()
                .and_then(|secs| secs.parse().ok())
            {
                println!("crash: holding the databases for {secs}s for inspection");
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            false
        }
    }
}

async fn suite(base_seed: u64, filters: &[String]) -> usize {
    let began = Instant::now();
    let selected: Vec<_> = SCENARIOS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let mut failed = 0;
    for (name, run) in &selected {
        if !run_one(name, *run, rng::scenario_seed(base_seed, name)).await {
            failed += 1;
        }
    }
    println!(
        "crash: {} passed, {failed} failed in {:.1}s (base seed {base_seed}; SAGA_CRASH_SEED changes it)",
        selected.len() - failed,
        began.elapsed().as_secs_f64()
    );
    failed
}

/// Scenario 1 again and again with new seeds, until `length` has passed.
async fn soak_mode(base_seed: u64, length: Duration) -> usize {
    let began = Instant::now();
    let (name, run) = SCENARIOS[0];
    let mut rounds = 0u64;
    let mut failed = 0;
    while rounds == 0 || began.elapsed() < length {
        let seed = rng::scenario_seed(base_seed.wrapping_add(rounds), name);
        if !run_one(name, run, seed).await {
            failed += 1;
        }
        rounds += 1;
    }
    println!(
        "crash soak: {rounds} rounds of {name}, {failed} failed, in {:.0}s",
        began.elapsed().as_secs_f64()
    );
    failed
}
