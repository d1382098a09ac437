//! The real `saga` binary against real stores (SQLite and Postgres), with its output pinned by
//! insta snapshots (ids and times replaced by placeholders).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{Config, IdempotencyKey, Orchestrator, Phase, SagaId, SagaStatus, Store};
use saga_store::conformance::scenarios::{input, Outcome, Probe, Script};

/// Three sagas: one completed, one compensated, one waiting for an operator.
struct Fixture {
    completed: SagaId,
    compensated: SagaId,
    parked: SagaId,
}

async fn populate(store: Arc<dyn Store>) -> Fixture {
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::Ok, Outcome::Permanent],
    );
    script.plan(
        "send_receipt",
        Phase::Action,
        &[Outcome::Ok, Outcome::Permanent],
    );
    script.plan(
        "charge_card",
        Phase::Compensation,
        &[Outcome::Transient, Outcome::Transient],
    );
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .concurrency(1)
            .poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Probe(script)).unwrap();
    orchestrator.run();
    let mut ids = Vec::new();
    for order in 1..=3u64 {
        let id = orchestrator
            .start_with_key::<Probe>(IdempotencyKey::new(format!("order-{order}")), &input(order))
            .await
            .unwrap()
            .id();
        orchestrator
            .wait(id, Duration::from_secs(30))
            .await
            .unwrap();
        ids.push(id);
    }
    orchestrator.shutdown().await;
    Fixture {
        completed: ids[0],
        compensated: ids[1],
        parked: ids[2],
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn saga(db: &str, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_saga"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_OPERATOR")
        .output()
        .expect("run the saga CLI");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Replaces UUIDs (numbered in order of appearance: `00000000-0000-0000-0000-000000000001`) and
/// times (`2000-01-01 00:00:00.000`) with stand-ins of the same width.
struct Normalizer {
    ids: HashMap<String, usize>,
}

impl Normalizer {
    fn new() -> Self {
        Self {
            ids: HashMap::new(),
        }
    }

    fn is_uuid(text: &str) -> bool {
        text.len() == 36
            && text.char_indices().all(|(n, c)| match n {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            })
    }

    fn is_time(text: &str) -> bool {
        // 2026-11-24 13:15:58.123
        text.len() == 23
            && text.char_indices().all(|(n, c)| match n {
                4 | 7 => c == '-',
                10 => c == ' ',
                13 | 16 => c == ':',
                19 => c == '.',
                _ => c.is_ascii_digit(),
            })
    }

    fn apply(&mut self, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        let mut n = 0;
        while n < chars.len() {
            let window = |len: usize| -> Option<String> {
                (n + len <= chars.len()).then(|| chars[n..n + len].iter().collect())
            };
            if let Some(candidate) = window(36).filter(|w| Self::is_uuid(w)) {
                let next = self.ids.len() + 1;
                let number = *self.ids.entry(candidate).or_insert(next);
                // A stand-in of the same width keeps table columns aligned.
                out.push_str(&format!("00000000-0000-0000-0000-{number:012}"));
                n += 36;
            } else if window(23).is_some_and(|w| Self::is_time(&w)) {
                out.push_str("2000-01-01 00:00:00.000");
                n += 23;
            } else {
                out.push(chars[n]);
                n += 1;
            }
        }
        out.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn parked_item(db: &str) -> String {
    let run = saga(db, &["--json", "interventions", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let items: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    items[0]["id"].as_str().unwrap().to_owned()
}

/// The operator workflow, each output pinned. Returns the normalized transcript.
fn workflow(db: &str, fixture: &Fixture) -> Vec<(String, String)> {
    let mut norm = Normalizer::new();
    // Number the fixture's ids first, so that placeholders are stable.
    for id in [fixture.completed, fixture.compensated, fixture.parked] {
        norm.apply(&id.to_string());
    }
    let item = parked_item(db);
    norm.apply(&item);
    let parked = fixture.parked.to_string();
    let mut transcript = Vec::new();
    let mut step = |name: &str, args: &[&str], expect: i32| {
        let run = saga(db, args);
        assert_eq!(
            run.code,
            expect,
            "`saga {}` exited {}: {}{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        );
        let text = format!(
            "$ saga {}\n[exit {}]\n{}{}",
            args.join(" "),
            run.code,
            run.stdout,
            if run.stderr.is_empty() {
                String::new()
            } else {
                format!("[stderr]\n{}", run.stderr)
            }
        );
        transcript.push((name.to_owned(), norm.apply(&text)));
    };
    step("sagas_list", &["sagas", "list"], 0);
    step(
        "sagas_list_parked_json",
        &["--json", "sagas", "list", "--status", "needs_intervention"],
        0,
    );
    step("show_parked", &["show", &parked], 0);
    step("history_parked", &["history", &parked], 0);
    step("interventions_list", &["interventions", "list"], 0);
    step("interventions_show", &["interventions", "show", &item], 0);
    step(
        "interventions_retry",
        &[
            "interventions",
            "retry",
            &item,
            "--reason",
            "gateway is back",
            "--by",
            "alice",
        ],
        0,
    );
    step(
        "interventions_cancel_after_retry",
        &[
            "interventions",
            "cancel",
            &item,
            "--reason",
            "late",
            "--by",
            "bob",
        ],
        4,
    );
    step("history_after_retry", &["history", &parked], 0);
    step(
        "interventions_list_all",
        &["interventions", "list", "--all"],
        0,
    );
    step("bad_id", &["show", "order-3"], 2);
    step(
        "unknown_id",
        &["show", "0190b7a4-0000-7000-8000-000000000000"],
        3,
    );
    step("bad_status", &["sagas", "list", "--status", "done"], 2);
    step(
        "missing_reason",
        &[
            "interventions",
            "resolve",
            &item,
            "--reason",
            " ",
            "--by",
            "carol",
        ],
        2,
    );
    step("prune_nothing_old", &["prune", "--older-than", "1d"], 0);
    transcript
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("ops.db").display());
    let store = saga_store::SqliteStore::connect(&db).await.unwrap();
    let fixture = populate(Arc::new(store)).await;
    let transcript = tokio::task::spawn_blocking({
        let db = db.clone();
        move || workflow(&db, &fixture)
    })
    .await
    .unwrap();
    for (name, text) in transcript {
        insta::assert_snapshot!(name, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_workflow_on_postgres_prints_the_same() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let store = saga_store::PgStore::connect(&url).await.unwrap();
    let fixture = populate(Arc::new(store)).await;
    let transcript = tokio::task::spawn_blocking({
        let url = url.clone();
        move || workflow(&url, &fixture)
    })
    .await
    .unwrap();
    // Same snapshots as SQLite: the output does not depend on the backend.
    for (name, text) in transcript {
        insta::assert_snapshot!(name, text);
    }
}

#[test]
fn errors_are_clear_and_exit_codes_are_stable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("missing.db").display());
    let run = saga(&missing, &["sagas", "list"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no SQLite database at"),
        "{}",
        run.stderr
    );
    let run = saga("mysql://localhost/x", &["sagas", "list"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unsupported store URL"),
        "{}",
        run.stderr
    );
    let run = saga("postgres://saga@127.0.0.1:1/none", &["sagas", "list"]);
    assert_eq!(run.code, 5, "unreachable server: {}", run.stderr);
    assert!(run.stderr.contains("store unavailable"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_saga_and_prune_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cancel.db").display());
    let store = Arc::new(saga_store::SqliteStore::connect(&db).await.unwrap());
    let orchestrator = Orchestrator::new(store.clone(), Config::default());
    orchestrator.register(Probe(Script::new())).unwrap();
    let id = orchestrator.start::<Probe>(&input(9)).await.unwrap();
    let run = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            saga(
                &db,
                &[
                    "sagas",
                    "cancel",
                    &id.to_string(),
                    "--reason",
                    "duplicate",
                    "--by",
                    "erin",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("compensating now"), "{}", run.stdout);
    let record = store.load(id).await.unwrap().unwrap().record;
    assert_eq!(record.status, SagaStatus::Compensating);
    orchestrator.run();
    orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    orchestrator.shutdown().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ancient = tokio::task::spawn_blocking({
        let db = db.clone();
        move || saga(&db, &["--json", "prune", "--older-than", "100000000d"])
    })
    .await
    .unwrap();
    assert_eq!(
        ancient.code, 0,
        "an age beyond every date saturates: {}",
        ancient.stderr
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ancient.stdout).unwrap()["pruned"],
        0
    );
    let run = tokio::task::spawn_blocking({
        let db = db.clone();
        move || saga(&db, &["--json", "prune", "--older-than", "0s"])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()["pruned"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_resolved_only_with_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("unknown.db").display());
    let store = Arc::new(saga_store::SqliteStore::connect(&db).await.unwrap());
    let script = Script::new();
    script.plan(
        "charge_card",
        Phase::Action,
        &[Outcome::ApplyThenUnknown; 3],
    );
    let orchestrator = Orchestrator::new(
        store.clone(),
        Config::default().poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Probe(script)).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Probe>(&input(5)).await.unwrap();
    let record = orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::NeedsIntervention);
    orchestrator.shutdown().await;
    let (without, with, shown) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            let item = parked_item(&db);
            let resolve = |extra: &[&str]| {
                let mut args = vec!["interventions", "resolve", item.as_str()];
                args.extend_from_slice(extra);
                args.extend_from_slice(&["--reason", "no charge at the provider", "--by", "bob"]);
                saga(&db, &args)
            };
            let without = resolve(&[]);
            let with = resolve(&["--not-applied"]);
            let shown = saga(&db, &["interventions", "show", &item]);
            (without, with, shown)
        }
    })
    .await
    .unwrap();
    assert_eq!(without.code, 2, "{}", without.stderr);
    assert!(
        without.stderr.contains("--not-applied") && without.stderr.contains("`retry`"),
        "{}",
        without.stderr
    );
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert!(shown.stdout.contains("unknown_outcome"), "{}", shown.stdout);
    let snapshot = store.load(id).await.unwrap().unwrap();
    assert_eq!(snapshot.record.status, SagaStatus::Compensating);
    assert_eq!(
        snapshot
            .step(saga_core::StepIndex(1), Phase::Action)
            .map(|step| step.status),
        Some(saga_core::StepStatus::Failed)
    );
}
