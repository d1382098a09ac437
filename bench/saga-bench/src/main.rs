//! The saga benchmark's driver. `bench/run` calls it once per workload, each run in a process
//! of its own (so that peak RSS is that workload's), and once at the end to print the report.
//! Every run prints one JSON line on stdout.

mod history;
mod pgbench;
mod pgutil;
mod processes;
mod report;
mod run;
mod sagas;
mod signal;
mod sqlite_limit;
mod track;
mod w3;
mod waiting;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "saga benchmarks (use bench/run)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// W1 or W2, closed loop, on Postgres or SQLite.
    Run(run::RunArgs),
    /// The pgbench limit for one step transition (--per-tx 16: the ceiling for grouped writes).
    Pgbench(pgbench::PgbenchArgs),
    /// SQLite's limit: one connection committing --per-commit step transitions per commit.
    SqliteLimit(sqlite_limit::SqliteLimitArgs),
    /// W3: kill the worker mid-run, time the recovery.
    W3(w3::W3Args),
    /// A worker process (used by w3 and rss).
    #[command(hide = true)]
    W3Worker(w3::WorkerArgs),
    /// Peak RSS with 10,000 sagas in flight.
    Rss(w3::RssArgs),
    /// Signal-to-step latency: orders waiting for a signal, signalled from a second orchestrator.
    Signal(signal::SignalArgs),
    /// The cost of waiting sagas: claims, W1 and RSS with and without them.
    Waiting(waiting::WaitingArgs),
    /// Starts orders and returns once each waits for its signal (used by waiting).
    #[command(hide = true)]
    WaitingFill(waiting::FillArgs),
    /// W1 spread over several worker processes on one Postgres database.
    Processes(processes::ProcessesArgs),
    /// Prints a free TCP port on 127.0.0.1.
    FreePort,
    /// Prints the table and the name=value lines.
    Report(report::ReportArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result: Result<Option<serde_json::Value>, String> = runtime.block_on(async {
        match cli.command {
            Cmd::Run(args) => run::run(args).await.map(Some),
            Cmd::Pgbench(args) => pgbench::run(args).await.map(Some),
            Cmd::SqliteLimit(args) => sqlite_limit::run(args).await.map(Some),
            Cmd::W3(args) => w3::w3(args).await.map(Some),
            Cmd::W3Worker(args) => w3::worker(args).await.map(|()| None),
            Cmd::Rss(args) => w3::rss(args).await.map(Some),
            Cmd::Signal(args) => signal::signal(args).await.map(Some),
            Cmd::Waiting(args) => waiting::waiting(args).await.map(Some),
            Cmd::Processes(args) => processes::processes(args).await.map(Some),
            Cmd::WaitingFill(args) => waiting::fill(args).await.map(Some),
            Cmd::FreePort => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|addr| {
                    println!("{}", addr.port());
                    None
                })
                .map_err(|e| e.to_string()),
            Cmd::Report(args) => report::report(args).map(|()| None),
        }
    });
    match result {
        Ok(Some(value)) => {
            println!("{value}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("saga-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
