//! `saga pause`, `saga resume` and `saga pauses`, with the real `saga` binary on real stores
//! (SQLite and Postgres): a saga type paused from the CLI holds a saga an orchestrator starts,
//! `saga show` says it is held, and a resume from the CLI lets it go on (past a step a cap
//! skips, which `saga show` lists as skipped with why).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use saga_core::{
    Config, Orchestrator, Saga, SagaDefinition, SagaId, SagaStatus, Step, StepContext, StepError,
    StepStatus, Store,
};

/// A mailing: reserve a slot, send an email (capped at none per hour per customer, so always
/// skipped), record it.
struct Mailing;

impl Saga for Mailing {
    type Input = u64;

    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("mailing", 1)
            .step(
                Step::new("reserve", |_: Arc<Mailing>, _: StepContext<u64>| async {
                    Ok::<_, StepError>(())
                })
                .compensate(|_: Arc<Mailing>, _: StepContext<u64>, _: ()| async {
                    Ok::<_, StepError>(())
                }),
            )
            .step(
                Step::new("send_email", |_: Arc<Mailing>, _: StepContext<u64>| async {
                    Ok::<_, StepError>(())
                })
                .compensate(|_: Arc<Mailing>, _: StepContext<u64>, _: ()| async {
                    Ok::<_, StepError>(())
                })
                .cap("email", 0, Duration::from_secs(3600), |customer: &u64| {
                    customer.to_string()
                }),
            )
            .step(
                Step::new("record", |_: Arc<Mailing>, _: StepContext<u64>| async {
                    Ok::<_, StepError>(())
                })
                .irreversible(),
            )
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
        &self.stdout
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap()
    }
}

/// Runs the CLI on `db` with `args`, with none of the variables the CLI reads set (so that the
/// test runner's SAGA_OPERATOR or USER change nothing).
async fn saga(db: &str, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saga"));
    command
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_OPERATOR")
        .env_remove("SAGA_SCHEMA")
        .env_remove("USER");
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

/// Polls the store until saga `id` is held for `waiting_for` (or fails after 30 seconds).
async fn until_held(store: &Arc<dyn Store>, id: SagaId, waiting_for: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let record = store.load(id).await.unwrap().unwrap().record;
        if record.waiting_for.as_deref() == Some(waiting_for) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {id} was never held for {waiting_for}: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_says(run: &Run, code: i32, texts: &[&str]) {
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, code, "{said}");
    for text in texts {
        assert!(said.contains(text), "should say {text:?}: {said}");
    }
}

async fn pauses_workflow(store: Arc<dyn Store>, db: &str) {
    let none = saga(db, &["pauses"]).await;
    assert_says(&none, 0, &["(0 pauses in force)"]);

    // Who and why are required; nothing is paused without them.
    let no_reason = saga(db, &["pause", "mailing", "--by", "alice"]).await;
    assert_says(&no_reason, 2, &["--reason"]);
    let blank_reason = saga(db, &["pause", "mailing", "--reason", " ", "--by", "alice"]).await;
    assert_says(&blank_reason, 2, &["give a reason with --reason"]);
    let nobody = saga(db, &["pause", "mailing", "--reason", "smtp down"]).await;
    assert_says(&nobody, 2, &["say who is acting: --by NAME"]);
    let blank_type = saga(db, &["pause", " ", "--reason", "smtp down", "--by", "a"]).await;
    assert_says(&blank_type, 2, &["name the saga type to pause"]);
    assert_eq!(
        saga(db, &["--json", "pauses", "--all"]).await.json(),
        serde_json::json!([])
    );

    let paused = saga(
        db,
        &["pause", "mailing", "--reason", "smtp down", "--by", "alice"],
    )
    .await;
    assert_says(
        &paused,
        0,
        &[
            "saga type `mailing` paused by alice at ",
            ": smtp down",
            "until `saga resume mailing`",
        ],
    );
    let again = saga(
        db,
        &["pause", "mailing", "--reason", "still down", "--by", "bob"],
    )
    .await;
    assert_says(
        &again,
        0,
        &[
            "saga type `mailing` was paused already, by alice at ",
            ": smtp down; nothing changed",
        ],
    );
    let again = saga(
        db,
        &[
            "--json",
            "pause",
            "mailing",
            "--reason",
            "still down",
            "--by",
            "bob",
        ],
    )
    .await
    .json();
    assert_eq!(again["already_paused"], true);
    assert_eq!(
        again["paused_by"], "alice",
        "the first pause is kept: {again}"
    );

    let listed = saga(db, &["pauses"]).await;
    assert_says(
        &listed,
        0,
        &[
            "TYPE     STEP  PAUSED",
            "mailing  *",
            "alice",
            "smtp down",
            "(1 pause in force)",
        ],
    );
    let listed = saga(db, &["--json", "pauses"]).await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["type"], "mailing");
    assert_eq!(listed[0]["step"], serde_json::Value::Null);
    assert_eq!(listed[0]["in_force"], true);
    assert_eq!(listed[0]["reason"], "smtp down");

    // A saga started now is held before its first step, and `show` says so.
    let orchestrator = Orchestrator::new(
        Arc::clone(&store),
        Config::default().poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Mailing).unwrap();
    orchestrator.run();
    let id = orchestrator.start::<Mailing>(&7).await.unwrap();
    until_held(&store, id, "paused:mailing").await;
    let shown = saga(db, &["show", &id.to_string()]).await;
    assert_says(
        &shown,
        0,
        &["held      paused:mailing until resumed (`saga resume mailing`; `saga pauses` says who paused it and why); checked again at "],
    );
    assert!(!shown.stdout.contains("waiting  "), "{}", shown.stdout);

    // Resuming what is not paused is refused, saying what is paused and how to lift it.
    let wrong_step = saga(
        db,
        &[
            "resume",
            "mailing",
            "--step",
            "send_email",
            "--reason",
            "ok",
            "--by",
            "bob",
        ],
    )
    .await;
    assert_says(
        &wrong_step,
        4,
        &[
            "error: step `send_email` of `mailing` is not paused; list the pauses in force with `saga pauses`",
            "paused on `mailing`: saga type `mailing` (lift it with `saga resume mailing`)",
        ],
    );
    let unknown = saga(db, &["resume", "billing", "--reason", "ok", "--by", "bob"]).await;
    assert_says(
        &unknown,
        4,
        &["error: saga type `billing` is not paused; list the pauses in force with `saga pauses`"],
    );
    assert!(!unknown.stderr.contains("paused on"), "{}", unknown.stderr);
    let no_reason = saga(db, &["resume", "mailing", "--by", "bob"]).await;
    assert_says(&no_reason, 2, &["--reason"]);

    let resumed = saga(
        db,
        &["resume", "mailing", "--reason", "smtp back", "--by", "bob"],
    )
    .await;
    assert_says(
        &resumed,
        0,
        &[
            "saga type `mailing` resumed by bob at ",
            ": smtp back",
            "1 saga woken; it was paused by alice at ",
        ],
    );
    let record = orchestrator
        .wait(id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    orchestrator.shutdown().await;

    // The capped step was skipped: listed as such with why, not as an error.
    let snapshot = store.load(id).await.unwrap().unwrap();
    assert!(
        snapshot
            .steps
            .iter()
            .any(|step| step.name.as_str() == "send_email" && step.status == StepStatus::Skipped),
        "{snapshot:?}"
    );
    let shown = saga(db, &["show", &id.to_string()]).await;
    assert_says(&shown, 0, &["SKIPPED     WHY", "send_email  cap `email`"]);
    let row = shown
        .stdout
        .lines()
        .find(|line| line.starts_with("send_email") && line.contains("skipped"))
        .unwrap_or_else(|| panic!("no skipped row: {}", shown.stdout));
    assert!(
        row.trim_end().ends_with('-'),
        "no last error on a skipped step: {row}"
    );
    assert!(!shown.stdout.contains("held "), "{}", shown.stdout);
    let shown = saga(db, &["--json", "show", &id.to_string()]).await.json();
    let step = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == "send_email")
        .unwrap()
        .clone();
    assert_eq!(step["status"], "skipped");
    assert_eq!(step["last_error"], serde_json::Value::Null);
    assert!(
        step["skip_reason"]
            .as_str()
            .unwrap()
            .contains("cap `email`"),
        "{step}"
    );

    // Lifted pauses are listed with --all only, with who lifted them and why.
    assert_says(&saga(db, &["pauses"]).await, 0, &["(0 pauses in force)"]);
    let all = saga(db, &["pauses", "--all"]).await;
    assert_says(
        &all,
        0,
        &[
            "RESUMED BY  WHY RESUMED",
            "bob         smtp back",
            "(1 pause, 0 in force)",
        ],
    );
    let all = saga(db, &["--json", "pauses", "--all"]).await.json();
    assert_eq!(all[0]["in_force"], false);
    assert_eq!(all[0]["resumed_by"], "bob");
    assert_eq!(all[0]["resume_reason"], "smtp back");

    // One step of a type.
    let step = saga(
        db,
        &[
            "pause",
            "mailing",
            "--step",
            "send_email",
            "--reason",
            "template bug",
            "--by",
            "carol",
        ],
    )
    .await;
    assert_says(
        &step,
        0,
        &[
            "step `send_email` of `mailing` paused by carol",
            "until `saga resume mailing --step send_email`",
        ],
    );
    assert_says(
        &saga(db, &["pauses"]).await,
        0,
        &["mailing  send_email", "carol"],
    );
    let whole = saga(db, &["resume", "mailing", "--reason", "ok", "--by", "dana"]).await;
    assert_says(
        &whole,
        4,
        &["(lift it with `saga resume mailing --step send_email`)"],
    );
    let lifted = saga(
        db,
        &[
            "--json",
            "resume",
            "mailing",
            "--step",
            "send_email",
            "--reason",
            "fixed",
            "--by",
            "dana",
        ],
    )
    .await
    .json();
    assert_eq!(lifted["woken"], 0);
    assert_eq!(lifted["resumed_by"], "dana");
    assert_eq!(lifted["step"], "send_email");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_are_set_listed_and_lifted_by_named_operators_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("pauses.db").display());
    let store = saga_store::SqliteStore::connect(&db).await.unwrap();
    pauses_workflow(Arc::new(store), &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_are_set_listed_and_lifted_by_named_operators_on_postgres() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let store = saga_store::PgStore::connect(&url).await.unwrap();
    pauses_workflow(Arc::new(store.clone()), &url).await;
    store.close().await;
}
