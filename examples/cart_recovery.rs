//! Cart recovery under duplicate webhooks, a throttling partner and an operator's pause.
//!
//! A commerce platform reports abandoned carts by webhook, and delivers each one two or three
//! times. Every delivery starts the recovery saga with a start key made of the store and the
//! customer, inside a five-minute dedup window, so a repeat returns the saga already running.
//! The saga asks the partner's discount API for a code (at most 20 calls per second across every
//! saga; the partner answers its first calls with 429, and the whole integration backs off), then
//! emails the customer (at most one recovery email per customer per day: a second cart's email
//! is skipped and recorded). Midway an operator pauses the email step; the sagas that reach it
//! wait, holding no worker, until the pause is lifted.
//!
//! The same deliveries are then replayed, in simulated time, through a plain handler with three
//! tries and no dedup, for contrast. The program prints both side by side, then the figures as
//! `name=value` lines, and exits non-zero if any code or email was duplicated or any saga did
//! not complete.
//!
//! ```text
//! cargo run --example cart_recovery                         # SQLite file, recreated each run
//! cargo run --example cart_recovery -- --carts 60 --customers 20
//! cargo run --example cart_recovery --features postgres -- --db postgres://user:pw@host/db
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use saga::{
    Admin, Created, EventKind, IdempotencyKey, Orchestrator, PauseScope, Phase, Saga, SagaFilter,
    SagaId, SagaStatus, SagaType, StepContext, StepError, StepIndex, StepName, StepStatus,
};
use serde::{Deserialize, Serialize};

/// Replays an abandoned-cart incident through the recovery saga and through a naive loop.
#[derive(Debug, Parser)]
#[command(name = "cart_recovery")]
struct Args {
    /// Store URL; a `sqlite://` file is deleted first, so that every run starts empty.
    #[arg(long, default_value = "sqlite://saga-cart-recovery.db")]
    db: String,
    /// How many abandoned carts the platform reports.
    #[arg(long, default_value_t = 40)]
    carts: u32,
    /// Over how many customers (each customer's carts are in different stores).
    #[arg(long, default_value_t = 15)]
    customers: u32,
    /// How long to wait for each phase of the run, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

/// One abandoned cart, as the webhook reports it: the saga input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AbandonedCart {
    cart: String,
    customer: String,
    store: String,
}

/// What the partner's discount API returns.
#[derive(Debug, Serialize, Deserialize)]
struct DiscountCode {
    code: String,
}

/// The partner answers its first calls after a cold start with 429.
const COLD_START_REFUSALS: usize = 5;
/// What the partner asks a refused caller to wait.
const PARTNER_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Past this many calls in a second the partner is slow: the code is made, but the answer
/// comes after the caller gave up.
const PARTNER_CAPACITY_PER_SECOND: usize = 20;

/// How the partner answered one call.
#[derive(Debug)]
enum Answer {
    Code(String),
    Throttled(Duration),
    NoAnswerInTime,
}

/// The partner's discount API, simulated, with its own log of calls. It honours an idempotency
/// key when given one: a repeated call with a key answers the code the first one made.
#[derive(Debug, Default)]
struct DiscountApi {
    /// When each call arrived, from the start of the run, in arrival order.
    calls: Vec<Duration>,
    /// Each code made, with its cart.
    codes: Vec<(String, String)>,
    by_key: HashMap<String, String>,
    revoked: HashMap<String, String>,
    throttled: usize,
    answers_lost: usize,
}

impl DiscountApi {
    fn create(&mut self, at: Duration, key: Option<&str>, cart: &str) -> Answer {
        self.calls.push(at);
        if self.calls.len() <= COLD_START_REFUSALS {
            self.throttled += 1;
            return Answer::Throttled(PARTNER_RETRY_AFTER);
        }
        let last_second = self
            .calls
            .iter()
            .filter(|call| at.saturating_sub(**call) < Duration::from_secs(1))
            .count();
        let code = match key.and_then(|key| self.by_key.get(key)) {
            Some(code) => code.clone(),
            None => {
                let code = format!("COMEBACK-{:03}", self.codes.len() + 1);
                self.codes.push((cart.to_owned(), code.clone()));
                if let Some(key) = key {
                    self.by_key.insert(key.to_owned(), code.clone());
                }
                code
            }
        };
        if last_second > PARTNER_CAPACITY_PER_SECOND {
            self.answers_lost += 1;
            return Answer::NoAnswerInTime;
        }
        Answer::Code(code)
    }

    fn duplicate_codes(&self) -> usize {
        duplicates(self.codes.iter().map(|(cart, _)| cart.as_str()))
    }

    /// The most calls that arrived in any one-second window.
    fn busiest_second(&self) -> usize {
        let mut calls = self.calls.clone();
        calls.sort();
        calls
            .iter()
            .enumerate()
            .map(|(first, start)| {
                calls
                    .iter()
                    .skip(first)
                    .take_while(|call| **call < *start + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

/// How many items repeat one seen before: the effects beyond one per name.
fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> usize {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for name in names {
        *seen.entry(name).or_default() += 1;
    }
    seen.values().map(|count| count.saturating_sub(1)).sum()
}

/// The simulated services the saga calls, shared with `recover` to count what happened.
#[derive(Debug)]
struct Services {
    started: Instant,
    discounts: Mutex<DiscountApi>,
    /// Emails sent, by idempotency key: (customer, cart, code).
    emails: Mutex<HashMap<String, (String, String, String)>>,
}

impl Services {
    fn discounts(&self) -> std::sync::MutexGuard<'_, DiscountApi> {
        self.discounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn emails(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String, String)>> {
        self.emails.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// Six attempts for the code: more than the partner's cold-start refusals, should one saga meet
// them all. A throttled attempt spends one; a wait for the rate limit spends none.
#[derive(Saga)]
#[saga(name = "cart_recovery", version = 1, input = AbandonedCart, dedup_window = "5m")]
#[step(create_discount_code, compensate = revoke_discount_code,
       retry(max_attempts = 6, base = "200ms", max_delay = "2s"),
       rate_limit(name = "discount_api", max = 20, per = "1s"))]
#[step(send_email, irreversible,
       cap(name = "recovery_email", key = customer, max = 1, per = "24h"))]
struct CartRecovery {
    services: Arc<Services>,
}

async fn create_discount_code(
    saga: Arc<CartRecovery>,
    ctx: StepContext<AbandonedCart>,
) -> Result<DiscountCode, StepError> {
    let services = &saga.services;
    let at = services.started.elapsed();
    let answer = services
        .discounts()
        .create(at, Some(ctx.key().as_str()), &ctx.input().cart);
    match answer {
        Answer::Code(code) => Ok(DiscountCode { code }),
        Answer::Throttled(retry_after) => Err(StepError::throttled(
            retry_after,
            "discount API: 429 Too Many Requests",
        )),
        Answer::NoAnswerInTime => Err(StepError::unknown(
            "discount API: no answer in time; the code may exist, ask again with the same key",
        )),
    }
}

async fn revoke_discount_code(
    saga: Arc<CartRecovery>,
    ctx: StepContext<AbandonedCart>,
    code: DiscountCode,
) -> Result<(), StepError> {
    saga.services
        .discounts()
        .revoked
        .entry(ctx.key().as_str().to_owned())
        .or_insert(code.code);
    Ok(())
}

async fn send_email(
    saga: Arc<CartRecovery>,
    ctx: StepContext<AbandonedCart>,
) -> Result<(), StepError> {
    let code: DiscountCode = ctx.output(CartRecovery::CREATE_DISCOUNT_CODE)?;
    let AbandonedCart { customer, cart, .. } = ctx.input().clone();
    saga.services
        .emails()
        .entry(ctx.key().as_str().to_owned())
        .or_insert((customer, cart, code.code));
    Ok(())
}

/// One webhook delivery: when it arrives, from the start of the run, and what it reports.
#[derive(Debug, Clone)]
struct Delivery {
    at: Duration,
    cart: AbandonedCart,
}

/// The carts, each in its own (customer, store) pair: cart `n` belongs to customer
/// `n % customers` in store `n / customers`.
fn abandoned_carts(carts: u32, customers: u32, tag: &str) -> Vec<AbandonedCart> {
    (0..carts)
        .map(|n| AbandonedCart {
            cart: format!("cart-{n:03}{tag}"),
            customer: format!("customer-{:02}{tag}@example.com", n % customers),
            store: format!("store-{}", n / customers),
        })
        .collect()
}

/// Every cart is reported at its own instant (one every 60 ms), then again: every other cart
/// at the same instant, the rest a little later; every third cart a third time, 1.5 s later.
fn deliveries(carts: &[AbandonedCart]) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    for (n, cart) in (0u64..).zip(carts) {
        let first = Duration::from_millis(n * 60);
        let again = if n % 2 == 0 {
            first
        } else {
            first + Duration::from_millis(250 + (n * 137) % 700)
        };
        deliveries.push(Delivery {
            at: first,
            cart: cart.clone(),
        });
        deliveries.push(Delivery {
            at: again,
            cart: cart.clone(),
        });
        if n % 3 == 0 {
            deliveries.push(Delivery {
                at: first + Duration::from_millis(1500),
                cart: cart.clone(),
            });
        }
    }
    deliveries.sort_by_key(|delivery| delivery.at);
    deliveries
}

/// The start key: one recovery flow per store and customer (inside the dedup window).
fn start_key(cart: &AbandonedCart) -> IdempotencyKey {
    IdempotencyKey::new(format!("cart-abandoned:{}:{}", cart.store, cart.customer))
}

/// The figures of one way of handling the deliveries.
#[derive(Debug, Default)]
struct Figures {
    deliveries: usize,
    runs: usize,
    deduped: usize,
    completed: usize,
    codes: usize,
    duplicate_codes: usize,
    emails: usize,
    duplicate_emails: usize,
    duplicate_cart_emails: usize,
    customers_emailed_once: usize,
    skipped_by_cap: usize,
    partner_calls: usize,
    throttled: usize,
    answers_lost: usize,
    held_by_limit: usize,
    busiest_second: usize,
    held_by_pause: usize,
    given_up: usize,
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.customers == 0 || args.carts < args.customers {
        return Err("give at least one customer and at least as many carts as customers".into());
    }
    let fresh = remove_sqlite_file(&args.db)?;
    // A shared database keeps earlier runs: their customers' 24 h email cap would skip this
    // run's emails, so each such run has customers of its own.
    let tag = if fresh {
        String::new()
    } else {
        format!("+run{}", saga::now().timestamp_millis())
    };
    let carts = abandoned_carts(args.carts, args.customers, &tag);
    let deliveries = deliveries(&carts);

    let saga = recover(&args, &carts, &deliveries).await?;
    let naive = naive_loop(&deliveries, &carts);
    print_summary(carts.len(), args.customers, &saga, &naive);

    let clean = saga.duplicate_codes == 0
        && saga.duplicate_emails == 0
        && saga.duplicate_cart_emails == 0
        && saga.runs == carts.len()
        && saga.completed == carts.len();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        eprintln!("cart_recovery: a duplicate effect or an unfinished saga; see the figures above");
        ExitCode::FAILURE
    })
}

/// The incident, handled by the recovery saga: the deliveries start sagas, an operator pauses
/// the emails once the first are out and lifts the pause once the sagas wait there; then what
/// the partner and the mailer saw.
async fn recover(
    args: &Args,
    carts: &[AbandonedCart],
    deliveries: &[Delivery],
) -> Result<Figures, Box<dyn std::error::Error>> {
    let limit = Duration::from_secs(args.wait_secs);
    let store = saga::connect(&args.db).await?;
    let config = saga::Config::default().poll_interval(Duration::from_millis(100));
    let orchestrator = Orchestrator::new(store, config);
    let services = Arc::new(Services {
        started: Instant::now(),
        discounts: Mutex::default(),
        emails: Mutex::default(),
    });
    orchestrator.register(CartRecovery {
        services: Arc::clone(&services),
    })?;
    orchestrator.run();
    let admin = orchestrator.admin();
    let clock = || format!("[{:>5.2}s]", services.started.elapsed().as_secs_f64());
    println!(
        "{} {} webhook deliveries for {} carts of {} customers, through {}",
        clock(),
        deliveries.len(),
        carts.len(),
        args.customers,
        args.db
    );

    // Each delivery is handled on its own, as a web server would: repeats race the first.
    let mut handlers = Vec::new();
    for delivery in deliveries.iter().cloned() {
        let orchestrator = orchestrator.clone();
        let arrives = services.started + delivery.at;
        handlers.push(tokio::spawn(async move {
            tokio::time::sleep(arrives.saturating_duration_since(Instant::now())).await;
            orchestrator
                .start_with_key::<CartRecovery>(start_key(&delivery.cart), &delivery.cart)
                .await
        }));
    }

    // Safe mode: once the first emails are out, marketing wants to check the template.
    let scope = PauseScope {
        saga_type: SagaType::new("cart_recovery"),
        step: Some(StepName::new("send_email")),
    };
    let pause_after = usize::try_from(args.customers / 3).unwrap_or(1).max(1);
    let deadline = Instant::now() + limit;
    while services.emails().len() < pause_after && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let why = "safe mode: marketing checks the recovery email template";
    let (pause, _) = admin.pause(scope.clone(), "oncall-maya", why).await?;
    let sent = services.emails().len();
    println!(
        "{} {sent} emails sent; {} paused {}: {}",
        clock(),
        pause.paused_by,
        pause.scope,
        pause.reason
    );

    let mut created = Vec::new();
    for handler in handlers {
        created.push(handler.await??);
    }
    let ids = saga_ids(&created);
    let held_by_pause = wait_for_pile_up(&admin, ids.len(), limit).await?;
    println!(
        "{} {} deliveries, {} sagas; {held_by_pause} wait at the paused step, holding no worker",
        clock(),
        created.len(),
        ids.len()
    );
    let why = "template checked; emails may go out";
    let (_, woken) = admin.resume(scope, "oncall-maya", why).await?;
    println!(
        "{} pause lifted by oncall-maya; {woken} saga(s) woken",
        clock()
    );

    let mut figures = Figures {
        deliveries: created.len(),
        runs: ids.len(),
        deduped: created
            .iter()
            .filter(|created| matches!(created, Created::Existing(_)))
            .count(),
        held_by_pause,
        ..Figures::default()
    };
    let mut skipped_example = None;
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
            skipped_example.get_or_insert(*id);
        }
        let history = orchestrator.history(*id).await?;
        figures.held_by_limit += history
            .events
            .iter()
            .filter(|event| {
                event.kind == EventKind::Held
                    && event.step.as_ref().map(StepName::as_str) == Some("create_discount_code")
            })
            .count();
    }
    figures.given_up = ids.len().saturating_sub(figures.completed);
    println!(
        "{} {} of {} sagas completed",
        clock(),
        figures.completed,
        ids.len()
    );
    if let Some(id) = skipped_example {
        println!(
            "\nHistory of saga {id}, a second cart of one customer:\n{}",
            orchestrator.history(id).await?.render()
        );
    }
    orchestrator.shutdown().await;

    let api = services.discounts();
    figures.codes = api.codes.len();
    figures.duplicate_codes = api.duplicate_codes();
    figures.partner_calls = api.calls.len();
    figures.throttled = api.throttled;
    figures.answers_lost = api.answers_lost;
    figures.busiest_second = api.busiest_second();
    let emails = services.emails();
    let recipients = || emails.values().map(|(customer, _, _)| customer.as_str());
    figures.emails = emails.len();
    figures.duplicate_emails = duplicates(recipients());
    figures.duplicate_cart_emails = duplicates(emails.values().map(|(_, cart, _)| cart.as_str()));
    figures.customers_emailed_once = emailed_once(carts, recipients());
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

/// The distinct sagas the deliveries started or found, in order of first delivery.
fn saga_ids(created: &[Created]) -> Vec<SagaId> {
    let mut ids: Vec<SagaId> = Vec::new();
    for id in created.iter().map(|created| created.id()) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// How many customers of `carts` got exactly one email.
fn emailed_once<'a>(carts: &[AbandonedCart], recipients: impl Iterator<Item = &'a str>) -> usize {
    let mut count: HashMap<&str, usize> = carts
        .iter()
        .map(|cart| (cart.customer.as_str(), 0))
        .collect();
    for recipient in recipients {
        *count.entry(recipient).or_default() += 1;
    }
    count.values().filter(|sent| **sent == 1).count()
}

/// Waits until each of the `sagas` has completed or is held by the pause; how many are held.
async fn wait_for_pile_up(
    admin: &Admin,
    sagas: usize,
    limit: Duration,
) -> Result<usize, saga::Error> {
    let filter = SagaFilter {
        saga_type: Some(SagaType::new("cart_recovery")),
        limit: Some(10_000),
        ..SagaFilter::default()
    };
    let deadline = Instant::now() + limit;
    loop {
        let records = admin.list(&filter).await?;
        let held = records
            .iter()
            .filter(|record| {
                record
                    .waiting_for
                    .as_deref()
                    .is_some_and(|waiting| waiting.starts_with(saga::policy::PAUSED))
            })
            .count();
        let completed = records
            .iter()
            .filter(|record| record.status == SagaStatus::Completed)
            .count();
        if held + completed >= sagas || Instant::now() >= deadline {
            return Ok(held);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same deliveries through a plain handler, in simulated time: each delivery creates a code
/// (up to three tries, 200 ms apart after a 429, 2 s after no answer; no key, no dedup), then
/// emails it.
fn naive_loop(deliveries: &[Delivery], carts: &[AbandonedCart]) -> Figures {
    const TRIES: u32 = 3;
    const BACKOFF: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut api = DiscountApi::default();
    let mut recipients: Vec<&str> = Vec::new();
    let mut emailed_carts: Vec<&str> = Vec::new();
    let mut dropped = 0;
    let mut due: BinaryHeap<Reverse<(Duration, usize, u32)>> = deliveries
        .iter()
        .enumerate()
        .map(|(n, delivery)| Reverse((delivery.at, n, 1)))
        .collect();
    while let Some(Reverse((at, n, attempt))) = due.pop() {
        let Some(delivery) = deliveries.get(n) else {
            continue;
        };
        let retry_in = match api.create(at, None, &delivery.cart.cart) {
            Answer::Code(_) => {
                recipients.push(&delivery.cart.customer);
                emailed_carts.push(&delivery.cart.cart);
                continue;
            }
            Answer::Throttled(_) => BACKOFF,
            Answer::NoAnswerInTime => TIMEOUT,
        };
        if attempt < TRIES {
            due.push(Reverse((at + retry_in, n, attempt + 1)));
        } else {
            dropped += 1;
        }
    }
    Figures {
        deliveries: deliveries.len(),
        runs: deliveries.len(),
        completed: deliveries.len() - dropped,
        codes: api.codes.len(),
        duplicate_codes: api.duplicate_codes(),
        emails: recipients.len(),
        duplicate_emails: duplicates(recipients.iter().copied()),
        duplicate_cart_emails: duplicates(emailed_carts.iter().copied()),
        customers_emailed_once: emailed_once(carts, recipients.iter().copied()),
        partner_calls: api.calls.len(),
        throttled: api.throttled,
        answers_lost: api.answers_lost,
        busiest_second: api.busiest_second(),
        given_up: dropped,
        ..Figures::default()
    }
}

/// Each figure: its `name=value` name, its label in the table, and whether the naive loop has
/// such a thing.
const FIGURES: [(&str, &str, bool); 18] = [
    ("deliveries", "webhook deliveries", true),
    ("sagas_started", "sagas started / handler runs", true),
    ("deduped_deliveries", "repeated deliveries deduped", true),
    ("sagas_completed", "sagas / runs completed", true),
    ("given_up", "sagas / runs given up", true),
    ("codes_created", "discount codes created", true),
    ("duplicate_codes", "  duplicates", true),
    ("emails_sent", "emails sent", true),
    ("duplicate_emails", "  duplicates", true),
    ("duplicate_cart_emails", "  again to the same cart", true),
    ("customers_emailed_once", "customers emailed once", true),
    ("skipped_emails", "emails skipped by the cap", false),
    ("partner_calls", "calls to the discount API", true),
    ("throttled_calls", "  answered 429", true),
    ("answers_lost", "  answered too late", true),
    ("max_calls_per_second", "  most in any 1 s (limit 20)", true),
    ("rate_limit_waits", "holds by rate limit/back-off", false),
    ("held_by_pause", "sagas held by the pause", false),
];

impl Figures {
    /// The values, in the order of [`FIGURES`].
    fn values(&self) -> [usize; 18] {
        [
            self.deliveries,
            self.runs,
            self.deduped,
            self.completed,
            self.given_up,
            self.codes,
            self.duplicate_codes,
            self.emails,
            self.duplicate_emails,
            self.duplicate_cart_emails,
            self.customers_emailed_once,
            self.skipped_by_cap,
            self.partner_calls,
            self.throttled,
            self.answers_lost,
            self.busiest_second,
            self.held_by_limit,
            self.held_by_pause,
        ]
    }
}

fn print_summary(carts: usize, customers: u32, saga: &Figures, naive: &Figures) {
    let rows = FIGURES.iter().zip(saga.values()).zip(naive.values());
    println!("\n{:<32} {:>6} {:>11}", "", "saga", "naive loop");
    for ((&(_, label, compared), ours), theirs) in rows.clone() {
        let theirs = if compared {
            theirs.to_string()
        } else {
            "-".into()
        };
        println!("{label:<32} {ours:>6} {theirs:>11}");
    }
    if saga.busiest_second > PARTNER_CAPACITY_PER_SECOND {
        println!(
            "\nnote: the rate limit counts an attempt when its permit is granted, and the call \
             leaves a little later: the partner saw up to {} calls in one second (limit {}); \
             the {} it answered too late were asked again with the same key, and made no code twice",
            saga.busiest_second, PARTNER_CAPACITY_PER_SECOND, saga.answers_lost
        );
    }
    println!("\ncarts={carts}\ncustomers={customers}");
    for ((&(name, _, compared), ours), theirs) in rows {
        println!("{name}={ours}");
        if compared {
            println!("naive_{name}={theirs}");
        }
    }
}
