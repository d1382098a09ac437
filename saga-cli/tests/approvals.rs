//! `saga approvals` and waiting sagas, with the real `saga` binary on real stores (SQLite and
//! Postgres): sagas driven to an approval step by an orchestrator, decided from the CLI, then
//! driven on by the orchestrator.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Config, IdempotencyKey, Orchestrator, Saga, SagaDefinition, SagaId, SagaStatus, Step,
    StepContext, StepError, Store,
};

/// A promotion: reserve a budget, wait up to an hour for a person to approve it, publish.
struct Promotion;

impl Saga for Promotion {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("promotion", 1)
            .step(
                Step::new(
                    "reserve_budget",
                    |_: Arc<Promotion>, _: StepContext<u64>| async { Ok::<_, StepError>(()) },
                )
                .compensate(
                    |_: Arc<Promotion>, _: StepContext<u64>, _: ()| async {
                        Ok::<_, StepError>(())
                    },
                ),
            )
            .step(Step::approval("approve_budget").timeout(Duration::from_secs(3600)))
            .step(
                Step::new("publish", |_: Arc<Promotion>, _: StepContext<u64>| async {
                    Ok::<_, StepError>(())
                })
                .irreversible(),
            )
    }
}

const WAITING: &str = "signal:approval:approve_budget";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
        serde_json::from_str(&self.stdout).unwrap()
    }
}

/// Runs the CLI on `db` with `args`, in an environment holding only `env` of the variables the
/// CLI reads (so that the test runner's SAGA_APPROVERS or SAGA_OPERATOR change nothing).
async fn saga<S: AsRef<std::ffi::OsStr>>(db: &str, args: &[S], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saga"));
    command
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_OPERATOR")
        .env_remove("SAGA_SCHEMA")
        .env_remove("SAGA_APPROVERS")
        .envs(env.iter().copied());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run the saga CLI");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Polls the store until saga `id` waits at its approval step (or fails after 30 seconds).
async fn until_waiting(store: &Arc<dyn Store>, id: SagaId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let record = store.load(id).await.unwrap().unwrap().record;
        if record.waiting_for.as_deref() == Some(WAITING) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {id} never reached its approval: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids in a JSON array of objects, field `field` of each.
fn ids(value: &serde_json::Value, field: &str) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect()
}

/// `approvals VERB ID --reason .. --by BY`.
fn decide(verb: &str, id: &str, by: &str) -> Vec<String> {
    [
        "approvals",
        verb,
        id,
        "--reason",
        "budget checked",
        "--by",
        by,
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn approvals_workflow(store: Arc<dyn Store>, db: &str) {
    let orchestrator = Orchestrator::new(
        Arc::clone(&store),
        Config::default().poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Promotion).unwrap();
    orchestrator.run();
    let mut started = Vec::new();
    for n in 1..=3u64 {
        let key = IdempotencyKey::new(format!("promo-{n}"));
        let id = orchestrator
            .start_with_key::<Promotion>(key, &n)
            .await
            .unwrap()
            .id();
        until_waiting(&store, id).await;
        started.push(id);
    }
    let [approved, waiting, rejected]: [SagaId; 3] = started.try_into().unwrap();
    let (a, b, c) = (
        approved.to_string(),
        waiting.to_string(),
        rejected.to_string(),
    );
    let alice = [("SAGA_APPROVERS", "promotion=alice; refund=bob")];

    // Listed oldest first, with the step, until when, and the start key.
    let listed = saga(db, &["approvals", "list"], &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for text in [
        "SAGA",
        "STEP",
        "UNTIL",
        "approve_budget",
        "promo-1",
        "promotion",
        "(3 waiting for an approval)",
    ] {
        assert!(listed.stdout.contains(text), "{text}: {}", listed.stdout);
    }
    let listed = saga(db, &["--json", "approvals", "list"], &[]).await.json();
    assert_eq!(ids(&listed, "saga"), [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(listed[0]["step"], "approve_budget");
    assert_eq!(listed[0]["type"], "promotion");
    assert_eq!(listed[0]["idempotency_key"], "promo-1");
    assert!(listed[0]["until"].is_string(), "{listed}");
    let other = saga(
        db,
        &["--json", "approvals", "list", "--type", "refund"],
        &[],
    )
    .await;
    assert_eq!(other.json(), serde_json::json!([]));
    let limited = saga(db, &["--json", "approvals", "list", "--limit", "1"], &[]).await;
    assert_eq!(ids(&limited.json(), "saga"), [a.as_str()]);

    // `show` says what the saga waits for, and until when.
    let shown = saga(db, &["show", &a], &[]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .contains(&format!("waiting   {WAITING} until "))
            && shown.stdout.contains("saga approvals approve|reject"),
        "{}",
        shown.stdout
    );

    // Refused: no policy, someone the policy does not name, a malformed policy, no reason.
    let args = decide("approve", &a, "alice");
    let no_policy = saga(db, &args, &[]).await;
    assert_eq!(no_policy.code, 4, "{}", no_policy.stderr);
    assert!(
        no_policy.stderr.contains("no approval policy is set")
            && no_policy.stderr.contains("set SAGA_APPROVERS"),
        "{}",
        no_policy.stderr
    );
    let stranger = saga(db, &decide("approve", &a, "bob"), &alice).await;
    assert_eq!(stranger.code, 4, "{}", stranger.stderr);
    assert!(
        stranger
            .stderr
            .contains("bob may not approve step `approve_budget`")
            && stranger.stderr.contains("SAGA_APPROVERS"),
        "{}",
        stranger.stderr
    );
    let malformed = saga(db, &args, &[("SAGA_APPROVERS", "promotion")]).await;
    assert_eq!(malformed.code, 2, "{}", malformed.stderr);
    assert!(
        malformed.stderr.contains("SAGA_APPROVERS is malformed")
            && malformed.stderr.contains("saga_type=name"),
        "{}",
        malformed.stderr
    );
    let blank = saga(
        db,
        &["approvals", "approve", &a, "--reason", " ", "--by", "alice"],
        &alice,
    )
    .await;
    assert_eq!(blank.code, 2, "{}", blank.stderr);
    let unknown = saga(
        db,
        &[
            "approvals",
            "approve",
            "0190b7a4-0000-7000-8000-000000000000",
            "--reason",
            "checked",
            "--by",
            "alice",
        ],
        &alice,
    )
    .await;
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    for id in [approved, waiting, rejected] {
        let snapshot = store.load(id).await.unwrap().unwrap();
        assert!(snapshot.signals.is_empty(), "refused means nothing stored");
    }

    // Approved by alice (SAGA_OPERATOR names her): the saga completes.
    let approve_a = saga(
        db,
        &["approvals", "approve", &a, "--reason", "budget checked"],
        &[alice[0], ("SAGA_OPERATOR", "alice")],
    )
    .await;
    assert_eq!(approve_a.code, 0, "{}", approve_a.stderr);
    assert!(
        approve_a
            .stdout
            .contains(&format!("saga {a}: approved by alice")),
        "{}",
        approve_a.stdout
    );
    let record = orchestrator
        .wait(approved, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    let history = saga(db, &["history", &a], &[]).await;
    assert_eq!(history.code, 0, "{}", history.stderr);
    for text in [
        &format!("approve_budget  waiting  {WAITING} until "),
        "signal received  approval:approve_budget (key approve:alice)",
        "approve_budget  action  completed",
        "saga completed",
    ] {
        assert!(history.stdout.contains(text), "{text}: {}", history.stdout);
    }
    let events = saga(db, &["--json", "history", &a], &[]).await.json();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"waiting") && kinds.contains(&"signal_received"),
        "{kinds:?}"
    );
    let shown = saga(db, &["show", &a], &[]).await;
    assert!(
        shown.stdout.contains("SIGNAL")
            && shown.stdout.contains("approval:approve_budget")
            && shown.stdout.contains("approve:alice")
            && !shown.stdout.contains("waiting   "),
        "{}",
        shown.stdout
    );
    let shown = saga(db, &["--json", "show", &a], &[]).await.json();
    assert_eq!(shown["waiting_for"], serde_json::Value::Null);
    assert_eq!(shown["signals_received"], 1);
    assert_eq!(shown["signals"][0]["name"], "approval:approve_budget");
    assert_eq!(shown["signals"][0]["key"], "approve:alice");
    assert_eq!(shown["signals"][0]["payload"]["by"], "alice");
    let again = saga(db, &args, &alice).await;
    assert_eq!(
        again.code, 4,
        "a completed saga waits for nothing: {}",
        again.stderr
    );
    assert!(
        again.stderr.contains("does not wait for an approval"),
        "{}",
        again.stderr
    );

    // Rejected: the saga compensates.
    let mut args = vec!["--json".to_owned()];
    args.extend(decide("reject", &c, "alice"));
    let reject_c = saga(db, &args, &alice).await.json();
    assert_eq!(reject_c["saga"], c);
    assert_eq!(reject_c["decision"], "rejected");
    assert_eq!(reject_c["duplicate"], false);
    let record = orchestrator
        .wait(rejected, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);

    // `sagas list --waiting`: the waiting saga only; `sagas list` shows what each waits for.
    let listed = saga(db, &["--json", "sagas", "list", "--waiting"], &[])
        .await
        .json();
    assert_eq!(ids(&listed, "id"), [b.as_str()]);
    assert_eq!(listed[0]["waiting_for"], WAITING);
    let all = saga(db, &["--json", "sagas", "list"], &[]).await.json();
    assert_eq!(ids(&all, "id"), [a.as_str(), b.as_str(), c.as_str()]);
    let table = saga(db, &["sagas", "list"], &[]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let header = table.stdout.lines().next().unwrap();
    assert!(
        header.contains("WAITING FOR") && header.contains("UNTIL"),
        "{}",
        table.stdout
    );
    let row = |id: &str| {
        table
            .stdout
            .lines()
            .find(|line| line.starts_with(id))
            .unwrap()
            .to_owned()
    };
    assert!(row(&b).contains(WAITING), "{}", table.stdout);
    assert!(!row(&a).contains(WAITING), "{}", table.stdout);
    let finished = saga(db, &["sagas", "list", "--status", "completed"], &[]).await;
    assert!(
        !finished.stdout.contains("WAITING FOR"),
        "no column when nothing listed waits: {}",
        finished.stdout
    );

    // A fourth saga waits too: two wait now. Over the bound, nothing is approved.
    let fourth = orchestrator
        .start_with_key::<Promotion>(IdempotencyKey::new("promo-4"), &4)
        .await
        .unwrap()
        .id();
    until_waiting(&store, fourth).await;
    let all_args = |max: &'static str| {
        vec![
            "approvals",
            "approve",
            "--all",
            "--max",
            max,
            "--type",
            "promotion",
            "--reason",
            "quarterly batch",
            "--by",
            "alice",
        ]
    };
    let over = saga(db, &all_args("1"), &alice).await;
    assert_eq!(over.code, 4, "{}{}", over.stdout, over.stderr);
    assert!(
        over.stderr.contains("more than 1") && over.stderr.contains("nothing was approved"),
        "{}",
        over.stderr
    );
    let still = saga(db, &["--json", "approvals", "list"], &[]).await.json();
    assert_eq!(ids(&still, "saga"), [b.clone(), fourth.to_string()]);
    for id in [waiting, fourth] {
        assert!(store.load(id).await.unwrap().unwrap().signals.is_empty());
    }
    let no_max = saga(
        db,
        &["approvals", "approve", "--all", "--reason", "r"],
        &alice,
    )
    .await;
    assert_eq!(no_max.code, 2, "--all needs --max: {}", no_max.stderr);
    let nothing = saga(db, &["approvals", "approve", "--reason", "r"], &alice).await;
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("a saga id, or --all --max N"),
        "{}",
        nothing.stderr
    );

    // Within the bound: both are approved, and both complete.
    let both = saga(db, &all_args("2"), &alice).await;
    assert_eq!(both.code, 0, "{}{}", both.stdout, both.stderr);
    assert!(
        both.stdout
            .contains(&format!("saga {b}: approved by alice"))
            && both
                .stdout
                .contains(&format!("saga {fourth}: approved by alice"))
            && both.stdout.contains("(2 approved, 0 refused)"),
        "{}",
        both.stdout
    );
    for id in [waiting, fourth] {
        let record = orchestrator
            .wait(id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(record.status, SagaStatus::Completed);
    }
    let none = saga(db, &["--json", "approvals", "list"], &[]).await.json();
    assert_eq!(none, serde_json::json!([]));
    let none = saga(db, &["--json", "sagas", "list", "--waiting"], &[])
        .await
        .json();
    assert_eq!(none, serde_json::json!([]));
    orchestrator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_listed_and_decided_by_named_operators_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("approvals.db").display());
    let store = saga_store::SqliteStore::connect(&db).await.unwrap();
    approvals_workflow(Arc::new(store), &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_are_listed_and_decided_by_named_operators_on_postgres() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let store = saga_store::PgStore::connect(&url).await.unwrap();
    approvals_workflow(Arc::new(store.clone()), &url).await;
    store.close().await;
}
