//! A promotion saga that waits for a person: reserve a budget, wait for an operator's approval
//! (two hours at most), create the discount code, send the email. Operators see the promotions
//! that wait and approve or reject them, one by one or in bulk with an explicit bound, from the
//! `saga` CLI in another terminal (or from this program with `--approve-as`).
//!
//! ```text
//! cargo run --example approval                       # starts 5 promotions, waits for decisions
//! SAGA_APPROVERS="promotion=alice" cargo run -p saga-cli -- --db sqlite://saga-approval.db \
//!     approvals approve --all --max 5 --by alice --reason "Q4 campaign signed off"
//! cargo run --example approval -- --approve-as alice # or approve them from here
//! ```
//!
//! While they wait, the promotions hold no worker and no lease: stop this program, approve
//! from the CLI, start it again, and they go on. Every downstream call carries the step's
//! idempotency key, and the simulated services honour it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use saga::{
    Admin, Approval, Approvers, Config, IdempotencyKey, Orchestrator, Saga, SagaFilter, SagaId,
    SagaStatus, StepContext, StepError,
};
use serde::{Deserialize, Serialize};

/// Starts promotions that wait for an operator's approval, and reports what became of them.
#[derive(Debug, Parser)]
#[command(name = "approval")]
struct Args {
    /// Store URL.
    #[arg(long, default_value = "sqlite://saga-approval.db")]
    db: String,
    /// How many promotions to start; promotion i is started with the key `promotion-<i>`.
    #[arg(long, default_value_t = 5)]
    promotions: u64,
    /// Approve every waiting promotion as this operator (through `Admin`, bounded by
    /// --promotions), instead of waiting for someone to use the CLI.
    #[arg(long)]
    approve_as: Option<String>,
    /// How long to wait for the decisions, in seconds.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
}

/// One promotion: the saga input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Promo {
    promo_no: u64,
    customer: String,
    percent: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Budget {
    budget_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Code {
    code: String,
}

/// A simulated downstream service that honours idempotency keys: a repeated call with a key
/// answers what the first one did.
#[derive(Debug, Default)]
struct Service {
    effects: Mutex<HashMap<String, String>>,
}

impl Service {
    fn call(&self, key: &IdempotencyKey, effect: impl FnOnce() -> String) -> String {
        let mut effects = self.effects.lock().unwrap_or_else(|err| err.into_inner());
        effects
            .entry(key.as_str().to_owned())
            .or_insert_with(effect)
            .clone()
    }

    fn count(&self) -> usize {
        self.effects
            .lock()
            .unwrap_or_else(|err| err.into_inner())
            .len()
    }
}

#[derive(Saga)]
#[saga(name = "promotion", version = 1, input = Promo)]
#[step(reserve_budget, compensate = release_budget)]
#[step(approve_budget, approval, timeout = "2h")]
#[step(create_code, compensate = revoke_code)]
#[step(send_email, irreversible)]
struct Promotion {
    services: Arc<Services>,
}

/// The downstream services a promotion calls.
#[derive(Debug, Default)]
struct Services {
    budgets: Service,
    releases: Service,
    codes: Service,
    revocations: Service,
    mailer: Service,
}

async fn reserve_budget(
    saga: Arc<Promotion>,
    ctx: StepContext<Promo>,
) -> Result<Budget, StepError> {
    let promo = ctx.input();
    let budget_id = saga.services.budgets.call(ctx.key(), || {
        format!("budget-{}-{}pct", promo.promo_no, promo.percent)
    });
    Ok(Budget { budget_id })
}

async fn release_budget(
    saga: Arc<Promotion>,
    ctx: StepContext<Promo>,
    budget: Budget,
) -> Result<(), StepError> {
    saga.services
        .releases
        .call(ctx.key(), || budget.budget_id.clone());
    Ok(())
}

async fn create_code(saga: Arc<Promotion>, ctx: StepContext<Promo>) -> Result<Code, StepError> {
    // Who approved it travels with the code, read as any earlier output.
    let approval: Approval = ctx.output(Promotion::APPROVE_BUDGET)?;
    let promo = ctx.input();
    let code = saga.services.codes.call(ctx.key(), || {
        format!("SAVE{}-{}-{}", promo.percent, promo.promo_no, approval.by)
    });
    Ok(Code { code })
}

async fn revoke_code(
    saga: Arc<Promotion>,
    ctx: StepContext<Promo>,
    code: Code,
) -> Result<(), StepError> {
    saga.services
        .revocations
        .call(ctx.key(), || code.code.clone());
    Ok(())
}

async fn send_email(saga: Arc<Promotion>, ctx: StepContext<Promo>) -> Result<(), StepError> {
    let code: Code = ctx.output(Promotion::CREATE_CODE)?;
    let customer = ctx.input().customer.clone();
    saga.services.mailer.call(ctx.key(), || {
        format!("to {customer}: your code {}", code.code)
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let store = saga::connect(&args.db).await?;
    let orchestrator = Orchestrator::new(store, Config::default());
    let services = Arc::new(Services::default());
    orchestrator.register(Promotion {
        services: Arc::clone(&services),
    })?;
    orchestrator.run();

    let mut ids = Vec::new();
    for promo_no in 1..=args.promotions {
        let promo = Promo {
            promo_no,
            customer: format!("customer-{promo_no}@example.com"),
            percent: 10 + u32::try_from(promo_no % 3).unwrap_or(0) * 5,
        };
        let key = IdempotencyKey::new(format!("promotion-{promo_no}"));
        ids.push(
            orchestrator
                .start_with_key::<Promotion>(key, &promo)
                .await?
                .id(),
        );
    }

    let admin = orchestrator.admin();
    let waiting = wait_for_approvals(&admin, &ids).await?;
    if waiting > 0 {
        println!("{waiting} promotion(s) wait for an approval:");
        for pending in admin.approvals(&promotions()).await? {
            let until = pending
                .until
                .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "no limit".into());
            println!(
                "  {}  {}  step {}  until {until}",
                pending.saga.id,
                pending
                    .saga
                    .idempotency_key
                    .as_ref()
                    .map_or("", |key| key.as_str()),
                pending.step
            );
        }
    }
    match &args.approve_as {
        Some(operator) if waiting > 0 => {
            let approvers: Approvers = format!("promotion={operator}").parse()?;
            let admin = admin.clone().with_approvals(Arc::new(approvers));
            let results = admin
                .approve_all(
                    &promotions(),
                    waiting,
                    operator,
                    "approved from the example",
                )
                .await?;
            println!("approved {} promotion(s) as {operator}", results.len());
        }
        Some(_) => {}
        None if waiting > 0 => {
            println!(
                "\nDecide from another terminal (the approvers are whoever SAGA_APPROVERS names):\n  \
                 SAGA_APPROVERS=\"promotion=alice\" cargo run -p saga-cli -- --db {db} approvals approve --all --max {waiting} --by alice --reason \"Q4 campaign signed off\"\n  \
                 SAGA_APPROVERS=\"promotion=alice\" cargo run -p saga-cli -- --db {db} approvals reject <saga id> --by alice --reason \"over budget\"\n\
                 Waiting up to {wait} s for the decisions (they wait with no worker held: stopping here loses nothing)...",
                db = args.db,
                wait = args.wait_secs,
            );
        }
        None => {}
    }

    let outcomes =
        wait_for_outcomes(&orchestrator, &ids, Duration::from_secs(args.wait_secs)).await?;
    println!("\nPromotions by status");
    let mut by_status: HashMap<SagaStatus, usize> = HashMap::new();
    for (_, status) in &outcomes {
        *by_status.entry(*status).or_default() += 1;
    }
    let mut statuses: Vec<_> = by_status.into_iter().collect();
    statuses.sort_by_key(|(status, _)| status.as_str());
    for (status, count) in statuses {
        println!("  {:<20} {count:>4}", status.as_str());
    }
    println!(
        "\nDownstream effects in this process: {} budget(s) reserved, {} released, {} code(s) created, {} revoked, {} email(s) sent",
        services.budgets.count(),
        services.releases.count(),
        services.codes.count(),
        services.revocations.count(),
        services.mailer.count()
    );
    orchestrator.shutdown().await;
    Ok(())
}

fn promotions() -> SagaFilter {
    SagaFilter {
        saga_type: Some(saga::SagaType::new("promotion")),
        limit: Some(10_000),
        ..SagaFilter::default()
    }
}

/// Waits until each promotion waits for its approval or is past it; how many wait.
async fn wait_for_approvals(admin: &Admin, ids: &[SagaId]) -> Result<usize, saga::Error> {
    for _ in 0..600 {
        let mut waiting = 0;
        let mut settled = true;
        for id in ids {
            let saga = admin.show(*id).await?;
            let at_approval =
                saga.record.waiting_for.as_deref() == Some("signal:approval:approve_budget");
            let past = saga
                .step(saga::StepIndex(1), saga::Phase::Action)
                .is_some_and(|step| step.status != saga::StepStatus::InProgress)
                || saga.record.status != SagaStatus::Running;
            waiting += usize::from(at_approval);
            settled &= at_approval || past;
        }
        if settled {
            return Ok(waiting);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(saga::Error::InvalidAction(
        "the promotions did not reach their approval step within a minute; is the store reachable?"
            .into(),
    ))
}

/// Waits until every promotion is finished (or needs a person), or `limit` passed.
async fn wait_for_outcomes(
    orchestrator: &Orchestrator,
    ids: &[SagaId],
    limit: Duration,
) -> Result<Vec<(SagaId, SagaStatus)>, saga::Error> {
    let mut outcomes = Vec::new();
    for id in ids {
        let status = match orchestrator.wait(*id, limit).await {
            Ok(record) => record.status,
            Err(saga::Error::WaitTimeout { .. }) => orchestrator.snapshot(*id).await?.record.status,
            Err(err) => return Err(err),
        };
        outcomes.push((*id, status));
    }
    Ok(outcomes)
}
