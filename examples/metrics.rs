//! Metrics in Prometheus format: runs a known checkout workload and serves what the library
//! measured at `GET /metrics` (sagas started, finished, escalated; compensations started and
//! their durations; step attempts, retries and durations; lease takeovers; dedup hits on start;
//! the intervention queue's depth; claim latency; policies: steps skipped by a cap, the payment
//! integration's latency).
//!
//! ```text
//! cargo run --example metrics -- --sagas 40 --listen 127.0.0.1:9464
//! curl localhost:9464/metrics
//! ```
//!
//! The workload: order i is started twice with the key `order-<i>` (the second start is a dedup
//! hit); `pay` declines every 4th order (compensated) and fails once, transiently, for the
//! order after it (retried); `pay` names the `payments_api` integration (a rate limit far above
//! the workload); `notify` is capped at 10 notices per hour in all, so of the 30 orders that get
//! there, 20 skip it. Logs go to stderr (`RUST_LOG=saga_core=info` shows the spans).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use saga::{Config, Error, IdempotencyKey, Orchestrator, Saga, StepContext, StepError};

/// Runs a known workload and serves its metrics.
#[derive(Debug, Parser)]
#[command(name = "metrics")]
struct Args {
    /// Store URL.
    #[arg(long, default_value = "sqlite://saga-metrics.db")]
    db: String,
    /// How many orders.
    #[arg(long, default_value_t = 40)]
    sagas: u64,
    /// Where to serve /metrics (loopback).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
}

#[derive(Saga)]
#[saga(name = "checkout", version = 1, input = u64)]
#[step(reserve, compensate = release)]
#[step(pay, compensate = refund, retry(max_attempts = 3, base = "5ms"),
       rate_limit(name = "payments_api", max = 1000, per = "1s"))]
#[step(ship, irreversible)]
#[step(notify, irreversible, cap(name = "order_notices", key_fn = every_order, max = 10, per = "1h"))]
struct Checkout;

/// One count for all orders: the cap bounds the notices of the whole shop.
fn every_order(_: &u64) -> String {
    "shop".to_owned()
}

async fn notify(_: Arc<Checkout>, _: StepContext<u64>) -> Result<(), StepError> {
    Ok(())
}

async fn reserve(_: Arc<Checkout>, ctx: StepContext<u64>) -> Result<u64, StepError> {
    Ok(*ctx.input())
}

async fn release(_: Arc<Checkout>, _: StepContext<u64>, _: u64) -> Result<(), StepError> {
    Ok(())
}

async fn pay(_: Arc<Checkout>, ctx: StepContext<u64>) -> Result<String, StepError> {
    let order = *ctx.input();
    if order % 4 == 0 {
        return Err(StepError::permanent("card declined"));
    }
    if order % 4 == 1 && ctx.attempt().0 == 1 {
        return Err(StepError::transient("gateway timeout"));
    }
    Ok(format!("charge-{order}"))
}

async fn refund(_: Arc<Checkout>, _: StepContext<u64>, _: String) -> Result<(), StepError> {
    Ok(())
}

async fn ship(_: Arc<Checkout>, _: StepContext<u64>) -> Result<(), StepError> {
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|err| Error::Configuration(format!("installing the metrics recorder: {err}")))?;
    let store = saga::connect(&args.db).await?;
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .poll_interval(Duration::from_millis(50))
            .metrics_interval(Duration::from_millis(200)),
    );
    orchestrator.register(Checkout)?;
    orchestrator.run();

    let app = Router::new().route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move { prometheus.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|err| Error::Configuration(format!("cannot listen on {}: {err}", args.listen)))?;
    eprintln!("metrics at http://{}/metrics", args.listen);
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });

    for order in 1..=args.sagas {
        for _ in 0..2 {
            orchestrator
                .start_with_key::<Checkout>(IdempotencyKey::new(format!("order-{order}")), &order)
                .await?;
        }
    }
    eprintln!(
        "started {} orders (each twice); serving until Ctrl-C or SIGTERM",
        args.sagas
    );
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = term => {}
        result = server => {
            if let Ok(Err(err)) = result {
                eprintln!("metrics server stopped: {err}");
            }
        }
    }
    orchestrator.shutdown().await;
    Ok(())
}
