//! The child processes of the suite: this same test binary, re-executed with `--saga-worker`
//! (a worker process embedding an orchestrator) or `--saga-starter` (a process that starts
//! sagas and reports what `start_with_key` answered). Children exit when their stdin closes,
//! so none outlives the suite however it ends.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use saga::{Config, Created, Error, IdempotencyKey, Orchestrator, Store, WorkerId};
use saga_store::{PgOptions, PgStore};
use serde::{Deserialize, Serialize};

use crate::ambiguous::AmbiguousStore;
use crate::ledger::Ledger;
use crate::sagas::{self, Crash, Plan, Registry};

/// How a worker process runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    /// The store: `postgres://…` (the ledger lives in the same database) or `sqlite://…`.
    pub(crate) url: String,
    /// Its worker id (the lease owner name).
    pub(crate) name: String,
    pub(crate) registry: Registry,
    pub(crate) lease_ttl_ms: u64,
    pub(crate) concurrency: usize,
    pub(crate) poll_ms: u64,
    /// Odds that a committed step completion or status change is answered with an error.
    pub(crate) ambiguous: Option<f64>,
    /// Odds that the process dies right after a permit under a cap was granted to a first
    /// attempt.
    #[serde(default)]
    pub(crate) permit_deaths: Option<f64>,
    pub(crate) seed: u64,
}

/// What a starter process starts: `keys` sagas `key-<i>`, all at `at_unix_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StarterSpec {
    pub(crate) url: String,
    pub(crate) keys: u64,
    /// Every `conflict_every`-th key gets another input from this starter (0: never).
    pub(crate) conflict_every: u64,
    pub(crate) at_unix_ms: u128,
    pub(crate) seed: u64,
}

/// The plan every starter uses for key `i` (a conflicting starter changes `work_ms`).
pub(crate) fn plan_for_key(i: u64) -> Plan {
    Plan {
        n: i,
        fail_at: (i % 7 == 3).then_some(4),
        comp_fail_at: None,
        flaky: 0,
        lost: 0,
        work_ms: 1,
        stall: 0,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Exits when the parent closes our stdin (or dies).
fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut buffer = [0u8; 64];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

async fn connect_pg(url: &str) -> PgStore {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let options = PgOptions {
            max_connections: 12,
            acquire_timeout: Duration::from_secs(5),
            ..PgOptions::default()
        };
        match PgStore::connect_with(url, options).await {
            Ok(store) => return store,
            Err(err) if Instant::now() < deadline => {
                eprintln!("connecting to the store: {err}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("the worker could not connect to {url}: {err}"),
        }
    }
}

pub(crate) fn worker_main(spec: &str) -> ExitCode {
    let spec: WorkerSpec = serde_json::from_str(spec).expect("worker spec");
    exit_with_parent();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("SAGA_CRASH_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ))
        .try_init();
    runtime().block_on(worker(spec))
}

async fn worker(spec: WorkerSpec) -> ExitCode {
    let (store, ledger): (Arc<dyn Store>, Ledger) = if spec.url.starts_with("postgres") {
        let store = connect_pg(&spec.url).await;
        let ledger = Ledger::new(Some(store.pool().clone()), spec.name.clone());
        (Arc::new(store), ledger)
    } else {
        let store = saga::connect(&spec.url).await.expect("open the store");
        (store, Ledger::new(None, spec.name.clone()))
    };
    let store: Arc<dyn Store> = match (spec.ambiguous, spec.permit_deaths) {
        (None, None) => store,
        (odds, permit_deaths) => Arc::new(
            AmbiguousStore::new(
                store,
                odds.unwrap_or(0.0),
                spec.seed ^ u64::from(std::process::id()),
            )
            .dying_after_permits(permit_deaths.unwrap_or(0.0)),
        ),
    };
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .worker_id(WorkerId::new(spec.name.clone()))
            .concurrency(spec.concurrency)
            .lease_ttl(Duration::from_millis(spec.lease_ttl_ms))
            .poll_interval(Duration::from_millis(spec.poll_ms)),
    );
    sagas::register(&orchestrator, spec.registry, &ledger).expect("register the saga types");
    orchestrator.run();
    eprintln!("CRASH-HARNESS ready");
    // The parent stops workers with signals; this bound only guards against a lost child.
    tokio::time::sleep(Duration::from_secs(900)).await;
    ExitCode::FAILURE
}

pub(crate) fn starter_main(spec: &str) -> ExitCode {
    let spec: StarterSpec = serde_json::from_str(spec).expect("starter spec");
    exit_with_parent();
    runtime().block_on(starter(spec))
}

async fn starter(spec: StarterSpec) -> ExitCode {
    let store = Arc::new(connect_pg(&spec.url).await);
    let ledger = Ledger::new(Some(store.pool().clone()), "starter".into());
    let orchestrator = Orchestrator::new(store, Config::default());
    orchestrator
        .register(Crash(ledger))
        .expect("register crash_five");
    // Everyone starts at the same instant, each in its own order.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or(0);
    if spec.at_unix_ms > now {
        let wait = u64::try_from(spec.at_unix_ms - now).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let mut order: Vec<u64> = (0..spec.keys).collect();
    let mut rng = crate::rng::Rng::new(spec.seed);
    for i in (1..order.len()).rev() {
        let j = usize::try_from(rng.between(0, u64::try_from(i).unwrap_or(0))).unwrap_or(0);
        order.swap(i, j);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in order.chunks(order.len().div_ceil(8).max(1)) {
        let chunk = chunk.to_vec();
        let orchestrator = orchestrator.clone();
        let conflict_every = spec.conflict_every;
        tasks.spawn(async move {
            let mut lines = Vec::new();
            for i in chunk {
                let mut plan = plan_for_key(i);
                let conflicting = conflict_every > 0 && i % conflict_every == 0;
                if conflicting {
                    plan.work_ms += 1;
                }
                let key = IdempotencyKey::new(format!("key-{i}"));
                let answer = match orchestrator.start_with_key::<Crash>(key, &plan).await {
                    Ok(Created::New(id)) => format!("new {id}"),
                    Ok(Created::Existing(id)) => format!("existing {id}"),
                    Err(Error::Conflict { existing, .. }) => format!("conflict {existing}"),
                    Err(err) => format!("error {err}"),
                };
                lines.push(format!("START key-{i} {} {answer}", u8::from(conflicting)));
            }
            lines
        });
    }
    while let Some(lines) = tasks.join_next().await {
        for line in lines.expect("a start task") {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
