//! Seed incident 000: an agent on a schedule emails its one customer twelve times.
//!
//! An agent wakes every eight minutes, sees that a customer is locked out of the library (the
//! problem lasts all afternoon, so every run sees it), and decides to email them a fix. Before
//! writing, it looks the account up in the auth service, which answers its first two calls with
//! a 503. The mailer sends the first email but its answer is lost. A run that errors is run again
//! a minute later.
//!
//! The naive loop records the problem, not what it did about it: every run that reaches the
//! mailer emails again. With the library, each run starts the task with a start key (customer
//! and issue, deduped for a day), so a run finds the task already begun; the lookup is retried
//! inside the saga; the email step passes its idempotency key to the mailer, so the send whose
//! answer was lost is repeated with the same key and the mailer sends nothing twice; and a
//! frequency cap (one email per customer per 24 h) stops the second task the agent opens when it
//! words the same problem differently. The program prints both side by side, then the figures as
//! `name=value` lines, and exits non-zero if the saga side emailed the customer more than once.
//!
//! ```text
//! cargo run --example seed_000_agent_emails                  # SQLite file, recreated each run
//! cargo run --example seed_000_agent_emails -- --ticks 20
//! cargo run --example seed_000_agent_emails --features postgres -- --db postgres://user:pw@host/db
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use saga::{
    Created, IdempotencyKey, Orchestrator, Phase, Saga, SagaId, SagaStatus, StepContext, StepError,
    StepIndex, StepStatus,
};
use serde::{Deserialize, Serialize};

/// Replays a scheduled agent that emails a customer on every run, naively and with the library.
#[derive(Debug, Parser)]
#[command(name = "seed_000_agent_emails")]
struct Args {
    /// Store URL; a `sqlite://` file is deleted first, so that every run starts empty.
    #[arg(long, default_value = "sqlite://saga-seed-000.db")]
    db: String,
    /// How many scheduled runs (one every eight minutes in the story).
    #[arg(long, default_value_t = 11)]
    ticks: u32,
    /// Real time between two scheduled runs of the saga side, in milliseconds.
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// How long to wait for the sagas to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
}

/// Minutes between two scheduled runs, in the story.
const EVERY_MINUTES: u32 = 8;
/// Minutes before a run that errored is run again, in the story.
const RERUN_MINUTES: u32 = 1;
/// The auth service answers its first calls with a 503.
const LOOKUPS_REFUSED: usize = 2;
/// The mailer sends the first emails but their answers are lost.
const ANSWERS_LOST: usize = 1;
/// On this run (counted from 0) the agent words the same problem differently.
const REWORDED_RUN: u32 = 6;

/// What the agent decided to do: the saga input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SupportEmail {
    customer: String,
    /// The problem, in the agent's words for this run.
    issue: String,
}

/// The auth service's view of the account.
#[derive(Debug, Serialize, Deserialize)]
struct Account {
    plan: String,
    locked_out: bool,
}

/// The mailer's message id.
#[derive(Debug, Serialize, Deserialize)]
struct MessageId(String);

/// The auth service, simulated: down for its first calls.
#[derive(Debug, Default)]
struct Accounts {
    calls: usize,
    refused: usize,
}

impl Accounts {
    fn look_up(&mut self) -> Result<Account, &'static str> {
        self.calls += 1;
        if self.calls <= LOOKUPS_REFUSED {
            self.refused += 1;
            return Err("auth service: 503 Service Unavailable");
        }
        Ok(Account {
            plan: "library".to_owned(),
            locked_out: true,
        })
    }
}

/// The mailer, simulated. It honours an idempotency key when given one: a repeated send with a
/// key answers the message id of the first and sends nothing.
#[derive(Debug, Default)]
struct Mailer {
    calls: usize,
    /// Each email that went out: (recipient, subject).
    sent: Vec<(String, String)>,
    by_key: HashMap<String, String>,
    answers_lost: usize,
}

impl Mailer {
    /// `None` when the email went out (or not) and its answer was lost.
    fn send(&mut self, to: &str, subject: &str, key: Option<&str>) -> Option<MessageId> {
        self.calls += 1;
        let id = match key.and_then(|key| self.by_key.get(key)) {
            Some(id) => id.clone(),
            None => {
                self.sent.push((to.to_owned(), subject.to_owned()));
                let id = format!("msg-{}", self.sent.len());
                if let Some(key) = key {
                    self.by_key.insert(key.to_owned(), id.clone());
                }
                id
            }
        };
        if self.calls <= ANSWERS_LOST {
            self.answers_lost += 1;
            return None;
        }
        Some(MessageId(id))
    }

    fn sent_to(&self, customer: &str) -> usize {
        self.sent.iter().filter(|(to, _)| to == customer).count()
    }
}

/// The simulated services, shared with `with_library` to count what happened.
#[derive(Debug, Default)]
struct Services {
    accounts: Mutex<Accounts>,
    mailer: Mutex<Mailer>,
}

impl Services {
    fn accounts(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mailer(&self) -> MutexGuard<'_, Mailer> {
        self.mailer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The agent's task: look the account up, then email the customer once (the cap holds across
/// every task that emails customers, however the agent worded the problem).
#[derive(Saga)]
#[saga(name = "support_email", version = 1, input = SupportEmail, dedup_window = "24h")]
#[step(
    look_up_account,
    irreversible,
    retry(max_attempts = 5, base = "50ms", max_delay = "200ms")
)]
#[step(send_email, irreversible, retry(max_attempts = 4, base = "50ms", max_delay = "200ms"),
       cap(name = "customer_email", key = customer, max = 1, per = "24h"))]
struct SupportEmailTask {
    services: Arc<Services>,
}

async fn look_up_account(
    saga: Arc<SupportEmailTask>,
    _ctx: StepContext<SupportEmail>,
) -> Result<Account, StepError> {
    saga.services
        .accounts()
        .look_up()
        .map_err(StepError::transient)
}

async fn send_email(
    saga: Arc<SupportEmailTask>,
    ctx: StepContext<SupportEmail>,
) -> Result<MessageId, StepError> {
    let account: Account = ctx.output(SupportEmailTask::LOOK_UP_ACCOUNT)?;
    let subject = email_subject(&account);
    let key = ctx.key().as_str();
    saga.services
        .mailer()
        .send(&ctx.input().customer, &subject, Some(key))
        .ok_or_else(|| {
            StepError::unknown(
                "mailer: no answer; the email may have gone out, send again with the same key",
            )
        })
}

fn email_subject(account: &Account) -> String {
    if account.locked_out {
        format!("Your {} access: a fix", account.plan)
    } else {
        format!("Your {} access is working again", account.plan)
    }
}

/// How the agent words the problem on run `run`: judgment calls are not idempotent.
fn issue_on_run(run: u32) -> &'static str {
    if run == REWORDED_RUN {
        "library-access"
    } else {
        "auth-lockout"
    }
}

/// The start key: one task per customer and issue, deduped for a day by the saga's window.
fn start_key(email: &SupportEmail) -> IdempotencyKey {
    IdempotencyKey::new(format!("support-email:{}:{}", email.customer, email.issue))
}

/// What one way of running the agent did.
#[derive(Debug, Default)]
struct Figures {
    runs: usize,
    errors: usize,
    sagas: usize,
    deduped_starts: usize,
    completed: usize,
    lookups_refused: usize,
    mailer_calls: usize,
    answers_lost: usize,
    emails: usize,
    skipped_by_cap: usize,
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    let fresh = remove_sqlite_file(&args.db)?;
    // A shared database keeps earlier runs: their 24 h cap would skip this run's email.
    let customer = if fresh {
        "stefan@example.com".to_owned()
    } else {
        format!("stefan+run{}@example.com", saga::now().timestamp_millis())
    };

    println!("Naive loop, every {EVERY_MINUTES} min, re-run {RERUN_MINUTES} min after an error:");
    let naive = naive_loop(args.ticks, &customer);
    println!(
        "\nWith the library, one scheduled run every {} ms, through {}:",
        args.tick_ms, args.db
    );
    let ours = with_library(&args, &customer).await?;
    print_summary(args.ticks, &ours, &naive);

    Ok(if ours.emails <= 1 && ours.completed == ours.sagas {
        ExitCode::SUCCESS
    } else {
        eprintln!("seed_000_agent_emails: the customer was emailed twice or a task did not finish");
        ExitCode::FAILURE
    })
}

/// The agent as it was: each run looks the account up and emails; an error ends the run, and
/// the scheduler runs it again a minute later. Simulated time, no store.
fn naive_loop(ticks: u32, customer: &str) -> Figures {
    let mut accounts = Accounts::default();
    let mut mailer = Mailer::default();
    let mut figures = Figures::default();
    for tick in 0..ticks {
        let mut minute = tick * EVERY_MINUTES;
        loop {
            figures.runs += 1;
            let outcome = accounts.look_up().and_then(|account| {
                mailer
                    .send(customer, &email_subject(&account), None)
                    .ok_or("mailer: no answer")
            });
            match outcome {
                Ok(MessageId(id)) => {
                    println!("  t+{minute:>2}m  emailed {customer} ({id})");
                    break;
                }
                Err(error) => {
                    figures.errors += 1;
                    println!(
                        "  t+{minute:>2}m  run failed: {error}; run again in {RERUN_MINUTES} min"
                    );
                    minute += RERUN_MINUTES;
                }
            }
        }
    }
    figures.lookups_refused = accounts.refused;
    figures.mailer_calls = mailer.calls;
    figures.answers_lost = mailer.answers_lost;
    figures.emails = mailer.sent_to(customer);
    figures
}

/// The agent with the library: each scheduled run starts the task with its start key and goes
/// back to sleep; the workers run the tasks.
async fn with_library(args: &Args, customer: &str) -> Result<Figures, Box<dyn std::error::Error>> {
    let store = saga::connect(&args.db).await?;
    let config = saga::Config::default().poll_interval(Duration::from_millis(50));
    let orchestrator = Orchestrator::new(store, config);
    let services = Arc::new(Services::default());
    orchestrator.register(SupportEmailTask {
        services: Arc::clone(&services),
    })?;
    orchestrator.run();

    let mut figures = Figures::default();
    let mut ids: Vec<SagaId> = Vec::new();
    let started = Instant::now();
    for run in 0..args.ticks {
        let due = started + Duration::from_millis(args.tick_ms.saturating_mul(u64::from(run)));
        tokio::time::sleep_until(due.into()).await;
        let email = SupportEmail {
            customer: customer.to_owned(),
            issue: issue_on_run(run).to_owned(),
        };
        let created = orchestrator
            .start_with_key::<SupportEmailTask>(start_key(&email), &email)
            .await?;
        figures.runs += 1;
        let what = match created {
            Created::New(id) => {
                ids.push(id);
                format!("started task {id}")
            }
            Created::Existing(id) => {
                figures.deduped_starts += 1;
                format!("task {id} already begun")
            }
        };
        println!("  t+{:>2}m  {}: {what}", run * EVERY_MINUTES, email.issue);
    }

    let limit = Duration::from_secs(args.wait_secs);
    let mut skipped = None;
    for id in &ids {
        let status = match orchestrator.wait(*id, limit).await {
            Ok(record) => record.status,
            Err(saga::Error::WaitTimeout { .. }) => orchestrator.snapshot(*id).await?.record.status,
            Err(err) => return Err(err.into()),
        };
        figures.completed += usize::from(status == SagaStatus::Completed);
        let snapshot = orchestrator.snapshot(*id).await?;
        let email = snapshot.step(StepIndex(1), Phase::Action);
        if email.is_some_and(|step| step.status == StepStatus::Skipped) {
            figures.skipped_by_cap += 1;
            skipped.get_or_insert(*id);
        }
    }
    for (what, id) in [
        ("that emailed", ids.first()),
        ("stopped by the cap", skipped.as_ref()),
    ] {
        if let Some(id) = id {
            let history = orchestrator.history(*id).await?.render();
            println!(
                "\nHistory of the task {what} ({id}):\n{}",
                history.trim_end()
            );
        }
    }
    orchestrator.shutdown().await;

    figures.sagas = ids.len();
    figures.lookups_refused = services.accounts().refused;
    let mailer = services.mailer();
    figures.mailer_calls = mailer.calls;
    figures.answers_lost = mailer.answers_lost;
    figures.emails = mailer.sent_to(customer);
    Ok(figures)
}

/// Deletes the SQLite file (and its journal) a `sqlite://` URL names; whether the store starts
/// empty this run.
fn remove_sqlite_file(url: &str) -> std::io::Result<bool> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(url == "memory:");
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return Ok(true);
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        match std::fs::remove_file(format!("{path}{suffix}")) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(true)
}

/// Prints the figures side by side, then as `saga_<name>=` and `naive_<name>=` lines (a `-` in
/// the table, and no line, where the naive loop has no such thing).
fn print_summary(ticks: u32, ours: &Figures, naive: &Figures) {
    let rows: [(&str, &str, usize, Option<usize>); 10] = [
        (
            "runs",
            "runs (scheduled and re-runs)",
            ours.runs,
            Some(naive.runs),
        ),
        (
            "errors",
            "runs ended by an error",
            ours.errors,
            Some(naive.errors),
        ),
        ("sagas", "tasks started", ours.sagas, None),
        (
            "deduped_starts",
            "runs that found the task begun",
            ours.deduped_starts,
            None,
        ),
        ("completed", "tasks completed", ours.completed, None),
        (
            "lookups_refused",
            "account lookups refused (503)",
            ours.lookups_refused,
            Some(naive.lookups_refused),
        ),
        (
            "mailer_calls",
            "calls to the mailer",
            ours.mailer_calls,
            Some(naive.mailer_calls),
        ),
        (
            "answers_lost",
            "  answers lost",
            ours.answers_lost,
            Some(naive.answers_lost),
        ),
        (
            "emails",
            "emails the customer got",
            ours.emails,
            Some(naive.emails),
        ),
        (
            "skipped_by_cap",
            "emails skipped by the cap",
            ours.skipped_by_cap,
            None,
        ),
    ];
    println!("\n{:<34} {:>6} {:>11}", "", "saga", "naive loop");
    for (_, label, saga, naive) in &rows {
        let naive = naive.map_or_else(|| "-".to_owned(), |value| value.to_string());
        println!("{label:<34} {saga:>6} {naive:>11}");
    }
    println!("\nticks={ticks}");
    for (name, _, saga, naive) in rows {
        println!("saga_{name}={saga}");
        if let Some(naive) = naive {
            println!("naive_{name}={naive}");
        }
    }
}
