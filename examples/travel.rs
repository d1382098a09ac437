//! A trip booked in parallel: check the budget, then book the flight, the hotel and the car at
//! the same time (a parallel group), then charge the traveller. When a booking fails for good,
//! the bookings that went through are cancelled, at the same time, before the budget is
//! released: a partial booking never stays behind.
//!
//! ```text
//! cargo run --example travel                  # six trips on sqlite://saga-travel.db
//! cargo run --example travel -- --trips 20
//! ```
//!
//! The simulated partners honour the step's idempotency key and keep a ledger of what they
//! booked and cancelled; each trip's timeline shows the three bookings overlapping. Trip 4
//! finds the hotel sold out (the flight and the car are cancelled); trip 5's car rental answers
//! too late, after booking (an unknown outcome, which the step's probe settles with the same
//! key); trip 6's flight is refused by the airline.
//!
//! The program checks what a traveller would: every completed trip holds its three bookings,
//! every compensated trip holds none, and nothing was booked twice. It prints `name=value`
//! lines and exits non-zero when a check fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use saga::{Config, Orchestrator, Saga, SagaStatus, StepContext, StepError, Store};
use serde::{Deserialize, Serialize};

/// Books trips whose flight, hotel and car are booked at once.
#[derive(Debug, Parser)]
#[command(name = "travel")]
struct Args {
    /// Store URL.
    #[arg(long, default_value = "sqlite://saga-travel.db")]
    db: String,
    /// How many trips; trip i is started with the key `trip-<i>`.
    #[arg(long, default_value_t = 6)]
    trips: u64,
}

/// One trip: the saga input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Trip {
    trip_no: u64,
    traveller: String,
    budget_cents: u64,
}

/// A partner's confirmation, handed to the compensation that cancels it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Confirmation {
    reference: String,
}

/// What the simulated partners did, keyed by idempotency key.
struct Partners {
    started: Instant,
    /// Key -> (what, trip, booked or cancelled).
    ledger: Mutex<BTreeMap<String, (String, u64, bool)>>,
    /// (trip, what, start ms, end ms) of every partner call.
    calls: Mutex<Vec<(u64, String, u128, u128)>>,
}

impl Partners {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            ledger: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// Books (or cancels) `what` under `key`, once: a repeated key returns the first
    /// confirmation. Takes `took` to answer.
    async fn call(&self, key: &str, trip: u64, what: &str, cancel: bool, took: u64) -> String {
        let from = self.started.elapsed().as_millis();
        // The partner acts at once; its answer takes `took` to come back (and may be cut off
        // by the step's timeout: the effect stays).
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger
                .entry(key.to_owned())
                .or_insert_with(|| (what.to_owned(), trip, !cancel));
        }
        tokio::time::sleep(Duration::from_millis(took)).await;
        let to = self.started.elapsed().as_millis();
        if let Ok(mut calls) = self.calls.lock() {
            let label = if cancel {
                format!("undo {what}")
            } else {
                what.to_owned()
            };
            calls.push((trip, label, from, to));
        }
        format!("{what}-{trip}")
    }

    /// Whether `key` was booked.
    fn booked(&self, key: &str) -> bool {
        self.ledger
            .lock()
            .map(|ledger| ledger.contains_key(key))
            .unwrap_or(false)
    }
}

/// The trip saga.
#[derive(Saga)]
#[saga(name = "trip", version = 1, input = Trip)]
#[group(book, limit = 3)]
#[step(check_budget, compensate = release_budget)]
#[step(book_flight, compensate = cancel_flight, group = book, timeout = "2s")]
#[step(book_hotel, compensate = cancel_hotel, group = book, timeout = "2s")]
#[step(book_car, compensate = cancel_car, probe = find_car, group = book,
       timeout = "300ms", retry(max_attempts = 3, base = "50ms"))]
#[step(charge, irreversible)]
struct TripSaga {
    partners: Arc<Partners>,
}

async fn check_budget(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
) -> Result<Confirmation, StepError> {
    let trip = ctx.input();
    if trip.budget_cents < 50_000 {
        return Err(StepError::permanent(format!(
            "a budget of {} cents cannot cover a trip",
            trip.budget_cents
        )));
    }
    let reference = saga
        .partners
        .call(ctx.key().as_str(), trip.trip_no, "budget", false, 5)
        .await;
    Ok(Confirmation { reference })
}

async fn release_budget(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
    _: Confirmation,
) -> Result<(), StepError> {
    saga.partners
        .call(ctx.key().as_str(), ctx.input().trip_no, "budget", true, 5)
        .await;
    Ok(())
}

async fn book_flight(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
) -> Result<Confirmation, StepError> {
    let trip = ctx.input();
    if trip.trip_no % 6 == 0 {
        // Refused before anything was booked: a known failure.
        return Err(StepError::permanent(
            "the airline refused the traveller's passport",
        ));
    }
    let reference = saga
        .partners
        .call(ctx.key().as_str(), trip.trip_no, "flight", false, 120)
        .await;
    Ok(Confirmation { reference })
}

async fn cancel_flight(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
    _: Confirmation,
) -> Result<(), StepError> {
    saga.partners
        .call(ctx.key().as_str(), ctx.input().trip_no, "flight", true, 60)
        .await;
    Ok(())
}

async fn book_hotel(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
) -> Result<Confirmation, StepError> {
    let trip = ctx.input();
    if trip.trip_no % 6 == 4 {
        // Sold out, known before anything was booked.
        tokio::time::sleep(Duration::from_millis(60)).await;
        return Err(StepError::permanent(
            "the hotel is sold out for those nights",
        ));
    }
    let reference = saga
        .partners
        .call(ctx.key().as_str(), trip.trip_no, "hotel", false, 100)
        .await;
    Ok(Confirmation { reference })
}

async fn cancel_hotel(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
    _: Confirmation,
) -> Result<(), StepError> {
    saga.partners
        .call(ctx.key().as_str(), ctx.input().trip_no, "hotel", true, 60)
        .await;
    Ok(())
}

async fn book_car(saga: Arc<TripSaga>, ctx: StepContext<Trip>) -> Result<Confirmation, StepError> {
    let trip = ctx.input();
    // Trip 5's rental books the car, then answers after the step's timeout: the library
    // records an unknown outcome and asks `find_car` with the same key.
    let took = if trip.trip_no % 6 == 5 && ctx.attempt().0 == 1 {
        400
    } else {
        80
    };
    let reference = saga
        .partners
        .call(ctx.key().as_str(), trip.trip_no, "car", false, took)
        .await;
    Ok(Confirmation { reference })
}

async fn find_car(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
) -> Result<Option<Confirmation>, StepError> {
    let found = saga.partners.booked(ctx.key().as_str());
    let at = saga.partners.started.elapsed().as_millis();
    if let Ok(mut calls) = saga.partners.calls.lock() {
        let what = if found {
            "car (probe: booked)"
        } else {
            "car (probe: none)"
        };
        calls.push((ctx.input().trip_no, what.to_owned(), at, at));
    }
    Ok(found.then(|| Confirmation {
        reference: format!("car-{}", ctx.input().trip_no),
    }))
}

async fn cancel_car(
    saga: Arc<TripSaga>,
    ctx: StepContext<Trip>,
    _: Confirmation,
) -> Result<(), StepError> {
    saga.partners
        .call(ctx.key().as_str(), ctx.input().trip_no, "car", true, 60)
        .await;
    Ok(())
}

async fn charge(saga: Arc<TripSaga>, ctx: StepContext<Trip>) -> Result<u64, StepError> {
    let trip = ctx.input();
    saga.partners
        .call(ctx.key().as_str(), trip.trip_no, "charge", false, 5)
        .await;
    Ok(trip.budget_cents)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("travel: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, saga::Error> {
    let store = Arc::new(saga::SqliteStore::connect(&args.db).await?);
    let partners = Arc::new(Partners::new());
    let orchestrator = Orchestrator::new(store.clone(), Config::default().concurrency(8));
    orchestrator.register(TripSaga {
        partners: Arc::clone(&partners),
    })?;
    orchestrator.run();
    let run = saga::SagaId::new().to_string();
    let mut ids = Vec::new();
    for trip_no in 1..=args.trips {
        let trip = Trip {
            trip_no,
            traveller: format!("traveller-{trip_no}"),
            budget_cents: 180_000,
        };
        // One key per trip and run of this program, so that reruns book anew.
        let key = saga::IdempotencyKey::new(format!("trip-{trip_no}-{run}"));
        let created = orchestrator.start_with_key::<TripSaga>(key, &trip).await?;
        ids.push((trip_no, created.id()));
    }
    let mut all_good = true;
    let (mut completed, mut compensated, mut other) = (0, 0, 0);
    for (trip_no, id) in &ids {
        let record = orchestrator.wait(*id, Duration::from_secs(60)).await?;
        let snapshot = store.load(*id).await?;
        let booked = |step: &str| {
            snapshot.as_ref().is_some_and(|snapshot| {
                snapshot.steps.iter().any(|s| {
                    s.name.as_str() == step
                        && s.phase == saga::Phase::Action
                        && s.status == saga::StepStatus::Completed
                })
            })
        };
        let kept = |step: &str| {
            let key = saga::IdempotencyKey::for_step(
                *id,
                &saga::StepName::new(step),
                saga::Phase::Action,
            );
            let undo = saga::IdempotencyKey::for_step(
                *id,
                &saga::StepName::new(step),
                saga::Phase::Compensation,
            );
            partners.booked(key.as_str()) && !partners.booked(undo.as_str())
        };
        let held: Vec<&str> = ["flight", "hotel", "car"]
            .into_iter()
            .filter(|what| kept(&format!("book_{what}")))
            .collect();
        println!("trip {trip_no}: {}", record.status);
        if let Ok(calls) = partners.calls.lock() {
            for (_, what, from, to) in calls.iter().filter(|(trip, ..)| trip == trip_no) {
                println!("  {what:<20} {from:>5} ms .. {to:>5} ms");
            }
        }
        let good = match record.status {
            SagaStatus::Completed => {
                completed += 1;
                held.len() == 3
                    && ["book_flight", "book_hotel", "book_car"]
                        .iter()
                        .all(|s| booked(s))
            }
            SagaStatus::Compensated => {
                compensated += 1;
                held.is_empty()
            }
            _ => {
                other += 1;
                false
            }
        };
        println!(
            "  bookings held: {}{}",
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            },
            if good { "" } else { "  <- WRONG" }
        );
        all_good &= good;
    }
    // Bookings made twice under one key would show as two ledger entries for one step of
    // one trip; the ledger is keyed, so count the steps instead.
    let booked_twice = partners
        .ledger
        .lock()
        .map(|ledger| {
            let mut seen = std::collections::BTreeSet::new();
            ledger
                .values()
                .filter(|(what, trip, booking)| !seen.insert((what.clone(), *trip, *booking)))
                .count()
        })
        .unwrap_or(0);
    orchestrator.shutdown().await;
    println!("trips={}", ids.len());
    println!("completed={completed}");
    println!("compensated={compensated}");
    println!("other={other}");
    println!("booked_twice={booked_twice}");
    println!("partial_bookings_left={}", if all_good { 0 } else { 1 });
    Ok(all_good && other == 0 && booked_twice == 0)
}
