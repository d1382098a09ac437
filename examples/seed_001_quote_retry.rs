//! Seed incident 001: a quote request retried after a timeout sends the customer three quotes;
//! and a multi-step agent task that fails half-way.
//!
//! An agent asks a partner's quoting service to send a customer a quote. The partner is slow
//! that day: it sends the quote at once, but answers after the agent stopped waiting. The naive
//! agent takes the timeout for a failure and asks again, three times: three quotes. With the
//! library, the attempt that timed out is an unknown outcome, never a failure. The step's probe
//! asks the partner, by the step's idempotency key, whether that quote exists; it does, so the
//! step is recorded completed with it and the partner is not asked to send again.
//!
//! The customer accepts, and the agent books the job: hold the materials, take a deposit, book a
//! crew, confirm. No crew covers the customer's postcode, so booking fails for good. The naive
//! agent retries the whole task and leaves a hold and a deposit behind on every try; the saga
//! refunds the deposit, then releases the materials (the reverse of the order they were taken)
//! and sends no confirmation. The program prints both side by side, then the figures as
//! `name=value` lines, and exits non-zero if the saga side sent a second quote or left anything
//! behind.
//!
//! ```text
//! cargo run --example seed_001_quote_retry                   # SQLite file, recreated each run
//! cargo run --example seed_001_quote_retry --features postgres -- --db postgres://user:pw@host/db
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use clap::Parser;
use saga::{
    EventKind, IdempotencyKey, Orchestrator, Saga, SagaId, SagaRecord, SagaStatus, StepContext,
    StepError,
};
use serde::{Deserialize, Serialize};

/// Replays a quote retried after a timeout, and a task that fails half-way, naively and with
/// the library.
#[derive(Debug, Parser)]
#[command(name = "seed_001_quote_retry")]
struct Args {
    /// Store URL; a `sqlite://` file is deleted first, so that every run starts empty.
    #[arg(long, default_value = "sqlite://saga-seed-001.db")]
    db: String,
    /// How long to wait for each saga to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
}

/// How long the agent waits for the partner's answer (the saga step's timeout says the same).
const QUOTE_TIMEOUT: Duration = Duration::from_millis(300);
/// The partner's first calls are answered this late: after the caller stopped waiting.
const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// How many of the partner's first calls are answered late.
const SLOW_CALLS: usize = 2;
/// How many times the naive agent tries a call or a task.
const NAIVE_TRIES: usize = 3;

/// A quote request: the input of the quote saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct QuoteRequest {
    request: String,
    customer: String,
    cents: u64,
}

/// A quote the partner sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quote {
    number: String,
}

/// The partner's quoting service, simulated: it emails each quote to the customer itself, and
/// keeps the quotes by idempotency key when given one, to answer a repeat or a lookup.
#[derive(Debug, Default)]
struct QuoteService {
    calls: usize,
    lookups: usize,
    /// Each quote sent: (customer, number).
    sent: Vec<(String, String)>,
    by_key: HashMap<String, String>,
}

impl QuoteService {
    /// Sends the quote (once per key); returns it with how long the answer takes to come back.
    fn send(&mut self, request: &QuoteRequest, key: Option<&str>) -> (Quote, Duration) {
        self.calls += 1;
        let number = match key.and_then(|key| self.by_key.get(key)) {
            Some(number) => number.clone(),
            None => {
                let number = format!("Q-{:04}", self.sent.len() + 1);
                self.sent.push((request.customer.clone(), number.clone()));
                if let Some(key) = key {
                    self.by_key.insert(key.to_owned(), number.clone());
                }
                number
            }
        };
        let delay = if self.calls <= SLOW_CALLS {
            SLOW_ANSWER
        } else {
            Duration::from_millis(20)
        };
        (Quote { number }, delay)
    }

    /// The quote a call with this key sent, if any.
    fn find(&mut self, key: &str) -> Option<Quote> {
        self.lookups += 1;
        self.by_key.get(key).map(|number| Quote {
            number: number.clone(),
        })
    }
}

/// The job the customer accepted: the input of the booking saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    request: String,
    customer: String,
    postcode: String,
    deposit_cents: u64,
}

/// What the booking's services did, in the order they did it.
#[derive(Debug, Default)]
struct Ledger {
    /// One line per effect or undo: `hold_materials`, `refund_deposit`, …
    journal: Vec<&'static str>,
    holds: usize,
    releases: usize,
    deposits: usize,
    refunds: usize,
    confirmations: usize,
}

impl Ledger {
    fn record(&mut self, what: &'static str) {
        self.journal.push(what);
        match what {
            "hold_materials" => self.holds += 1,
            "release_materials" => self.releases += 1,
            "take_deposit" => self.deposits += 1,
            "refund_deposit" => self.refunds += 1,
            "send_confirmation" => self.confirmations += 1,
            _ => {}
        }
    }

    /// The undos, in the order they ran.
    fn undos(&self) -> Vec<&'static str> {
        self.journal
            .iter()
            .copied()
            .filter(|what| what.starts_with("release") || what.starts_with("refund"))
            .collect()
    }
}

/// No crew works in this postcode: booking one fails for good.
fn crew_for(postcode: &str) -> Result<String, String> {
    if postcode.starts_with("99") {
        Err(format!(
            "crew scheduler: no crew covers postcode {postcode}"
        ))
    } else {
        Ok(format!("crew-{postcode}"))
    }
}

/// The simulated services, shared with the sagas and read back to count what happened.
#[derive(Debug, Default)]
struct Services {
    partner: Mutex<QuoteService>,
    /// The quotes filed against their requests in the CRM.
    filed: Mutex<Vec<(String, String)>>,
    ledger: Mutex<Ledger>,
}

impl Services {
    fn partner(&self) -> MutexGuard<'_, QuoteService> {
        self.partner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn filed(&self) -> MutexGuard<'_, Vec<(String, String)>> {
        self.filed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The quote: ask the partner to send it (probed by key when the answer does not come in
/// time), then file it in the CRM. The step's timeout is the naive agent's, `QUOTE_TIMEOUT`.
#[derive(Saga)]
#[saga(name = "quote_request", version = 1, input = QuoteRequest)]
#[step(send_quote, irreversible, probe = find_quote, timeout = "300ms",
       retry(max_attempts = 3, base = "100ms", max_delay = "300ms"))]
#[step(file_quote, irreversible)]
struct QuoteTask {
    services: Arc<Services>,
}

async fn send_quote(
    saga: Arc<QuoteTask>,
    ctx: StepContext<QuoteRequest>,
) -> Result<Quote, StepError> {
    let (quote, delay) = saga
        .services
        .partner()
        .send(ctx.input(), Some(ctx.key().as_str()));
    // The quote is on its way to the customer; the answer may come after the step's timeout.
    tokio::time::sleep(delay).await;
    Ok(quote)
}

/// Asked with the same key when an attempt's outcome is unknown: did that quote go out?
async fn find_quote(
    saga: Arc<QuoteTask>,
    ctx: StepContext<QuoteRequest>,
) -> Result<Option<Quote>, StepError> {
    Ok(saga.services.partner().find(ctx.key().as_str()))
}

async fn file_quote(saga: Arc<QuoteTask>, ctx: StepContext<QuoteRequest>) -> Result<(), StepError> {
    let quote: Quote = ctx.output(QuoteTask::SEND_QUOTE)?;
    let mut filed = saga.services.filed();
    let request = &ctx.input().request;
    if !filed.iter().any(|(filed_for, _)| filed_for == request) {
        filed.push((request.clone(), quote.number));
    }
    Ok(())
}

/// The booking: each step that takes something has the undo that gives it back.
#[derive(Saga)]
#[saga(name = "install_job", version = 1, input = Job)]
#[step(hold_materials, compensate = release_materials)]
#[step(take_deposit, compensate = refund_deposit)]
#[step(book_crew, compensate = cancel_crew)]
#[step(send_confirmation, irreversible)]
struct BookingTask {
    services: Arc<Services>,
}

async fn hold_materials(saga: Arc<BookingTask>, _ctx: StepContext<Job>) -> Result<(), StepError> {
    saga.services.ledger().record("hold_materials");
    Ok(())
}

async fn release_materials(
    saga: Arc<BookingTask>,
    _ctx: StepContext<Job>,
    _held: (),
) -> Result<(), StepError> {
    saga.services.ledger().record("release_materials");
    Ok(())
}

async fn take_deposit(saga: Arc<BookingTask>, _ctx: StepContext<Job>) -> Result<(), StepError> {
    saga.services.ledger().record("take_deposit");
    Ok(())
}

async fn refund_deposit(
    saga: Arc<BookingTask>,
    _ctx: StepContext<Job>,
    _taken: (),
) -> Result<(), StepError> {
    saga.services.ledger().record("refund_deposit");
    Ok(())
}

async fn book_crew(_saga: Arc<BookingTask>, ctx: StepContext<Job>) -> Result<String, StepError> {
    crew_for(&ctx.input().postcode).map_err(StepError::permanent)
}

async fn cancel_crew(
    saga: Arc<BookingTask>,
    _ctx: StepContext<Job>,
    _crew: String,
) -> Result<(), StepError> {
    saga.services.ledger().record("cancel_crew");
    Ok(())
}

async fn send_confirmation(
    saga: Arc<BookingTask>,
    _ctx: StepContext<Job>,
) -> Result<(), StepError> {
    saga.services.ledger().record("send_confirmation");
    Ok(())
}

/// What one way of handling the quote and the booking did.
#[derive(Debug, Default)]
struct Figures {
    quote_calls: usize,
    quotes_sent: usize,
    quotes_filed: usize,
    /// Calls whose answer came after the caller stopped waiting.
    timeouts: usize,
    probe_lookups: usize,
    deposits_taken: usize,
    deposits_left: usize,
    holds_left: usize,
    confirmations: usize,
    /// The undos, in the order they ran, comma-separated (`-` when none ran).
    undos: String,
    /// How the booking ended.
    booking: String,
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    let fresh = remove_sqlite_file(&args.db)?;
    // A shared database keeps earlier runs' start keys: this run's requests get names of their own.
    let tag = if fresh {
        String::new()
    } else {
        format!("-run{}", saga::now().timestamp_millis())
    };
    let request = QuoteRequest {
        request: format!("req-1042{tag}"),
        customer: "dana@example.com".to_owned(),
        cents: 184_000,
    };
    let job = Job {
        request: request.request.clone(),
        customer: request.customer.clone(),
        postcode: "99150".to_owned(),
        deposit_cents: 36_800,
    };

    println!(
        "Naive agent, {} ms timeout, {NAIVE_TRIES} tries:",
        QUOTE_TIMEOUT.as_millis()
    );
    let naive = naive_agent(&request, &job);
    println!("\nWith the library, through {}:", args.db);
    let ours = with_library(&args, &request, &job).await?;
    print_summary(&ours, &naive);

    let clean = ours.quotes_sent == 1
        && ours.quotes_filed == 1
        && ours.deposits_left == 0
        && ours.holds_left == 0
        && ours.confirmations == 0
        && ours.booking == SagaStatus::Compensated.as_str();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        eprintln!("seed_001_quote_retry: a second quote or something left behind; see above");
        ExitCode::FAILURE
    })
}

/// The agent as it was: a timeout is a failure, so it asks again; a task that fails is tried
/// again from the top. No keys, no undo. Simulated time.
fn naive_agent(request: &QuoteRequest, job: &Job) -> Figures {
    let mut partner = QuoteService::default();
    let (mut filed, mut timeouts) = (0, 0);
    for attempt in 1..=NAIVE_TRIES {
        let (quote, delay) = partner.send(request, None);
        if delay <= QUOTE_TIMEOUT {
            println!("  quote try {attempt}: answered {}", quote.number);
            filed += 1;
            break;
        }
        timeouts += 1;
        println!(
            "  quote try {attempt}: no answer in {} ms; the partner had sent {}",
            QUOTE_TIMEOUT.as_millis(),
            quote.number
        );
    }
    let mut ledger = Ledger::default();
    for attempt in 1..=NAIVE_TRIES {
        ledger.record("hold_materials");
        ledger.record("take_deposit");
        match crew_for(&job.postcode) {
            Ok(_) => {
                ledger.record("send_confirmation");
                break;
            }
            Err(error) => println!("  booking try {attempt}: {error}"),
        }
    }
    let undos = ledger.undos();
    Figures {
        quote_calls: partner.calls,
        quotes_sent: partner.sent.len(),
        quotes_filed: filed,
        timeouts,
        deposits_taken: ledger.deposits,
        deposits_left: ledger.deposits.saturating_sub(ledger.refunds),
        holds_left: ledger.holds.saturating_sub(ledger.releases),
        confirmations: ledger.confirmations,
        undos: if undos.is_empty() {
            "-".to_owned()
        } else {
            undos.join(",")
        },
        booking: "given_up".to_owned(),
        ..Figures::default()
    }
}

/// The quote saga, then the booking saga, each started with its own start key.
async fn with_library(
    args: &Args,
    request: &QuoteRequest,
    job: &Job,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let store = saga::connect(&args.db).await?;
    let config = saga::Config::default().poll_interval(Duration::from_millis(50));
    let orchestrator = Orchestrator::new(store, config);
    let services = Arc::new(Services::default());
    orchestrator.register(QuoteTask {
        services: Arc::clone(&services),
    })?;
    orchestrator.register(BookingTask {
        services: Arc::clone(&services),
    })?;
    orchestrator.run();
    let limit = Duration::from_secs(args.wait_secs);

    let key = IdempotencyKey::new(format!("quote:{}", request.request));
    let quote = orchestrator
        .start_with_key::<QuoteTask>(key, request)
        .await?
        .id();
    let quoted = finish(&orchestrator, quote, limit).await?;
    let history = orchestrator.history(quote).await?;
    // The attempts that timed out, kept as unknown outcomes for the probe.
    let timeouts = history
        .events
        .iter()
        .filter(|event| {
            event.kind == EventKind::RetryScheduled
                && event
                    .detail
                    .as_deref()
                    .is_some_and(|detail| detail.starts_with("unknown"))
        })
        .count();
    println!(
        "  quote saga {quote}: {}\n{}",
        quoted.status,
        history.render().trim_end()
    );
    if let Some((_, number)) = services.filed().first() {
        let partner = services.partner();
        println!(
            "  the partner was asked to send {} time(s) and asked by key {} time(s); {number} filed",
            partner.calls, partner.lookups
        );
    }

    let key = IdempotencyKey::new(format!("booking:{}", job.request));
    let booking = orchestrator
        .start_with_key::<BookingTask>(key, job)
        .await?
        .id();
    let booked = finish(&orchestrator, booking, limit).await?;
    println!(
        "  booking saga {booking}: {}\n{}",
        booked.status,
        orchestrator.history(booking).await?.render().trim_end()
    );
    orchestrator.shutdown().await;

    let quotes_filed = services.filed().len();
    let partner = services.partner();
    let ledger = services.ledger();
    let undos = ledger.undos();
    let figures = Figures {
        quote_calls: partner.calls,
        quotes_sent: partner.sent.len(),
        quotes_filed,
        timeouts,
        probe_lookups: partner.lookups,
        deposits_taken: ledger.deposits,
        deposits_left: ledger.deposits.saturating_sub(ledger.refunds),
        holds_left: ledger.holds.saturating_sub(ledger.releases),
        confirmations: ledger.confirmations,
        undos: if undos.is_empty() {
            "-".to_owned()
        } else {
            undos.join(",")
        },
        booking: booked.status.as_str().to_owned(),
    };
    Ok(figures)
}

/// Waits for the saga to end; past `limit`, its record as it stands.
async fn finish(
    orchestrator: &Orchestrator,
    id: SagaId,
    limit: Duration,
) -> Result<SagaRecord, saga::Error> {
    match orchestrator.wait(id, limit).await {
        Err(saga::Error::WaitTimeout { .. }) => Ok(orchestrator.snapshot(id).await?.record),
        other => other,
    }
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

/// Prints the figures side by side, then as `saga_<name>=` and `naive_<name>=` lines.
fn print_summary(ours: &Figures, naive: &Figures) {
    let counts: [(&str, &str, usize, usize); 9] = [
        (
            "quote_calls",
            "calls asking for the quote",
            ours.quote_calls,
            naive.quote_calls,
        ),
        (
            "quotes_sent",
            "quotes the customer got",
            ours.quotes_sent,
            naive.quotes_sent,
        ),
        (
            "quotes_filed",
            "quotes filed in the CRM",
            ours.quotes_filed,
            naive.quotes_filed,
        ),
        (
            "timeouts",
            "answers too late (timeouts)",
            ours.timeouts,
            naive.timeouts,
        ),
        (
            "probe_lookups",
            "lookups of the quote by key",
            ours.probe_lookups,
            naive.probe_lookups,
        ),
        (
            "deposits_taken",
            "deposits taken",
            ours.deposits_taken,
            naive.deposits_taken,
        ),
        (
            "deposits_left",
            "  left charged",
            ours.deposits_left,
            naive.deposits_left,
        ),
        (
            "holds_left",
            "material holds left",
            ours.holds_left,
            naive.holds_left,
        ),
        (
            "confirmations",
            "confirmations sent",
            ours.confirmations,
            naive.confirmations,
        ),
    ];
    let texts = [
        ("booking", "booking ended", &ours.booking, &naive.booking),
        ("undos", "undone, in order", &ours.undos, &naive.undos),
    ];
    println!("\n{:<30} {:>6} {:>12}", "", "saga", "naive agent");
    for (_, label, saga, naive) in &counts {
        println!("{label:<30} {saga:>6} {naive:>12}");
    }
    for (_, label, saga, naive) in &texts {
        println!("{label:<30} saga: {saga}; naive agent: {naive}");
    }
    println!();
    for (name, _, saga, naive) in counts {
        println!("saga_{name}={saga}\nnaive_{name}={naive}");
    }
    for (name, _, saga, naive) in texts {
        println!("saga_{name}={saga}\nnaive_{name}={naive}");
    }
}

/// The example's sagas under the test kit (`saga::testing`): the same guarantees, with the
/// partner's slowness and the missing crew as the only faults, and every call re-delivered.
#[cfg(test)]
mod tests {
    use super::*;
    use saga::testing::{Fault, TestKit};
    use saga::{Phase, SagaStatus};

    fn request() -> QuoteRequest {
        QuoteRequest {
            request: "req-1".to_owned(),
            customer: "ada@example.com".to_owned(),
            cents: 120_000,
        }
    }

    fn job(postcode: &str) -> Job {
        Job {
            request: "req-1".to_owned(),
            customer: "ada@example.com".to_owned(),
            postcode: postcode.to_owned(),
            deposit_cents: 20_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_quote_whose_answer_comes_late_is_found_by_its_probe_and_sent_once() {
        let services = Arc::new(Services::default());
        let kit = TestKit::new();
        kit.register(QuoteTask {
            services: Arc::clone(&services),
        })
        .unwrap();
        let run = kit.run::<QuoteTask>(&request()).await.unwrap();
        run.assert_status(SagaStatus::Completed)
            .assert_completed(&["send_quote", "file_quote"])
            .assert_one_key_per_step();
        assert_eq!(
            run.runs_of("send_quote", Phase::Action),
            1,
            "the late answer was an unknown outcome, and the probe found the quote"
        );
        assert_eq!(services.partner().sent.len(), 1, "one quote sent");
        assert_eq!(services.filed().len(), 1, "and filed once");
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_made_twice_with_its_key_still_sends_and_files_one_quote() {
        let services = Arc::new(Services::default());
        let kit = TestKit::new();
        kit.register(QuoteTask {
            services: Arc::clone(&services),
        })
        .unwrap();
        kit.redeliver_everything();
        // The partner answers in time from the third call on: let the slow ones go by.
        services.partner().calls = SLOW_CALLS;
        let run = kit.run::<QuoteTask>(&request()).await.unwrap();
        run.assert_status(SagaStatus::Completed)
            .assert_one_key_per_step()
            .assert_idempotent();
        assert_eq!(run.runs_of("send_quote", Phase::Action), 2);
        assert_eq!(run.runs_of("file_quote", Phase::Action), 2);
        assert_eq!(services.partner().sent.len(), 1, "the partner kept its key");
        assert_eq!(
            services.filed().len(),
            1,
            "filing is idempotent per request"
        );
        kit.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_booking_without_a_crew_is_undone_in_reverse_even_when_the_refund_stumbles() {
        let services = Arc::new(Services::default());
        let kit = TestKit::new();
        kit.register(BookingTask {
            services: Arc::clone(&services),
        })
        .unwrap();
        kit.inject(
            Fault::on("take_deposit")
                .compensation()
                .attempt(1)
                .transient("payments API busy"),
        );
        let run = kit.run::<BookingTask>(&job("99001")).await.unwrap();
        run.assert_status(SagaStatus::Compensated)
            .assert_completed(&["hold_materials", "take_deposit"])
            .assert_compensated_in_reverse()
            .assert_one_key_per_step()
            .assert_no_intervention();
        assert_eq!(
            services.ledger().undos(),
            vec!["refund_deposit", "release_materials"]
        );
        assert_eq!(services.ledger().confirmations, 0);
        kit.shutdown().await;
    }
}
