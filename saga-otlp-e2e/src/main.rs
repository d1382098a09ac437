//! The child process of the OTLP end-to-end test (`tests/otlp.rs`): one order saga on a SQLite
//! file, its spans exported by [`saga::init_otlp`] as service `otlp-e2e-<role>`.
//!
//! - `saga-otlp-e2e <store url> <otlp endpoint> first` starts the saga inside a `place_order`
//!   span. `reserve` completes; `pay` never answers in this process: when it is called (so
//!   `reserve` is recorded completed and its span has ended) it prints `paying <saga id>`, and
//!   the process waits to be killed.
//! - `saga-otlp-e2e <store url> <otlp endpoint> resume <saga id>` resumes the saga once the
//!   killed process's lease has expired, waits for it to complete, shuts the orchestrator down,
//!   flushes the exporter (the guard's drop) and exits.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use saga::{
    Config, Orchestrator, RetryPolicy, Saga, SagaDefinition, SagaId, SagaStatus, Step, StepContext,
    StepError, WorkerId,
};
use tracing::Instrument;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Short, so that the resuming process takes the killed one's saga over within a second.
const LEASE: Duration = Duration::from_secs(1);

struct Order {
    /// Whether `pay` answers (in the resuming process) or hangs (in the first).
    pay_answers: bool,
}

async fn reserve(_: Arc<Order>, _: StepContext<u32>) -> Result<(), StepError> {
    Ok(())
}

async fn pay(order: Arc<Order>, ctx: StepContext<u32>) -> Result<(), StepError> {
    if !order.pay_answers {
        println!("paying {}", ctx.saga_id());
        std::future::pending::<()>().await;
    }
    Ok(())
}

async fn ship(_: Arc<Order>, _: StepContext<u32>) -> Result<(), StepError> {
    Ok(())
}

impl Saga for Order {
    type Input = u32;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("order", 1)
            .step(Step::new("reserve", reserve).irreversible())
            .step(
                Step::new("pay", pay)
                    .irreversible()
                    .retry(RetryPolicy::exponential(3, Duration::from_millis(10))),
            )
            .step(Step::new("ship", ship).irreversible())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: no tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &[String]) -> Result<(), BoxError> {
    let usage = "usage: saga-otlp-e2e <store url> <otlp endpoint> first | resume <saga id>";
    let (Some(url), Some(endpoint), Some(role)) = (args.first(), args.get(1), args.get(2)) else {
        return Err(usage.into());
    };
    let guard = saga::init_otlp(endpoint, &format!("otlp-e2e-{role}"))?;
    let store = saga::connect(url).await?;
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .lease_ttl(LEASE)
            .poll_interval(Duration::from_millis(50))
            .worker_id(WorkerId::new(format!("otlp-e2e-{role}"))),
    );
    orchestrator.register(Order {
        pay_answers: role == "resume",
    })?;
    orchestrator.run();
    match role.as_str() {
        "first" => {
            let id = orchestrator
                .start::<Order>(&1)
                .instrument(tracing::info_span!("place_order"))
                .await?;
            eprintln!("started saga {id}; waiting to be killed");
            std::future::pending::<()>().await;
        }
        "resume" => {
            let id: SagaId = args.get(3).ok_or(usage)?.parse()?;
            let record = orchestrator.wait(id, Duration::from_secs(60)).await?;
            orchestrator.shutdown().await;
            if record.status != SagaStatus::Completed {
                return Err(format!("saga {id} ended {}, not completed", record.status).into());
            }
            println!("completed {id}");
        }
        other => return Err(format!("unknown role `{other}`; {usage}").into()),
    }
    // Flushes the exporter. The batch exporter's thread sends through the gRPC channel, whose
    // connection runs on this runtime: drop the guard off the runtime's threads, while it runs.
    drop(guard);
    Ok(())
}
