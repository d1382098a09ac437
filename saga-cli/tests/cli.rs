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
    saga_with_env(db, args, &[])
}

fn saga_with_env(db: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_saga"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_OPERATOR")
        .env_remove("SAGA_SCHEMA")
        .envs(env.iter().copied())
        .output()
        .expect("run the saga CLI");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Replaces UUIDs (numbered in order of appearance: `00000000-0000-0000-0000-000000000001`) and
/// times (`2000-01-01 00:00:00.000` in tables, `2000-01-01T00:00:00.000Z` in JSON) with
/// stand-ins of the same width.
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

    fn is_rfc3339(text: &str) -> bool {
        // 2026-11-24T13:15:58.123Z
        text.len() == 24
            && text.char_indices().all(|(n, c)| match n {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == '.',
                23 => c == 'Z',
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
            } else if window(24).is_some_and(|w| Self::is_rfc3339(&w)) {
                out.push_str("2000-01-01T00:00:00.000Z");
                n += 24;
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
    step("typo_subcommand", &["sagas", "lsit"], 2);
    step("typo_flag", &["prune", "--older-then", "1d"], 2);
    step(
        "blank_reason",
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
    step(
        "missing_reason",
        &["interventions", "resolve", &item, "--by", "carol"],
        2,
    );
    step(
        "prune_dry_run",
        &["prune", "--older-than", "0s", "--dry-run"],
        0,
    );
    step("prune_nothing_old", &["prune", "--older-than", "1d"], 0);
    let listed = saga(db, &["--json", "sagas", "list"]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(3),
        "a dry run deletes nothing: {listed}"
    );
    for field in ["created_at", "updated_at"] {
        let at = listed[0][field].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(at)
            .unwrap_or_else(|err| panic!("{field} `{at}` is not RFC 3339 with an offset: {err}"));
    }
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

/// Every command but `saga migrate`: none may create or migrate the schema.
fn non_migrating_commands(id: &str) -> Vec<Vec<String>> {
    let act = ["--reason", "checked", "--by", "dana"];
    [
        vec!["sagas", "list"],
        vec!["show", id],
        vec!["history", id],
        vec!["interventions", "list"],
        vec!["interventions", "show", id],
        [vec!["interventions", "retry", id], act.to_vec()].concat(),
        [vec!["interventions", "resolve", id], act.to_vec()].concat(),
        [vec!["interventions", "cancel", id], act.to_vec()].concat(),
        [vec!["sagas", "cancel", id], act.to_vec()].concat(),
        vec!["sagas", "list", "--waiting"],
        vec!["approvals", "list"],
        [vec!["approvals", "approve", id], act.to_vec()].concat(),
        [vec!["approvals", "reject", id], act.to_vec()].concat(),
        vec!["prune", "--older-than", "0s", "--yes"],
        [vec!["pause", "probe"], act.to_vec()].concat(),
        [vec!["resume", "probe"], act.to_vec()].concat(),
        vec!["pauses", "--all"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(str::to_owned).collect())
    .collect()
}

/// Runs every non-migrating command on `db` and expects each to stop with exit 2 and a message
/// containing every one of `expected`.
fn every_command_refuses(db: &str, extra: &[&str], expected: &[&str]) {
    for args in non_migrating_commands("0190b7a4-0000-7000-8000-000000000000") {
        let args: Vec<&str> = extra
            .iter()
            .copied()
            .chain(args.iter().map(String::as_str))
            .collect();
        let run = saga(db, &args);
        assert_eq!(
            run.code,
            2,
            "`saga {}`: {}{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        for text in expected {
            assert!(
                run.stderr.contains(text),
                "`saga {}` should say {text:?}: {}",
                args.join(" "),
                run.stderr
            );
        }
    }
}

/// This library's migrations up to `version` only, as an older release left a database.
fn migrations_up_to(full: sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            full.migrations
                .iter()
                .filter(|migration| migration.version <= version)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

async fn sqlite_tables(path: &std::path::Path) -> Vec<String> {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_and_actions_never_migrate_and_saga_migrate_does() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    // A database file without the saga tables.
    let empty = dir.path().join("empty.db");
    std::fs::File::create(&empty).unwrap();
    let db = format!("sqlite://{}", empty.display());
    tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            every_command_refuses(
                &db,
                &[],
                &["schema version: none", "needs version 6", "`saga migrate`"],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        sqlite_tables(&empty).await.is_empty(),
        "nothing was created"
    );

    // A database an older release migrated to version 1.
    let old = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", old.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    migrations_up_to(saga_store::sqlite_migrator(), 1)
        .run(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let db = format!("sqlite://{}", old.display());
    let (migrated, listed) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            every_command_refuses(
                &db,
                &[],
                &[
                    "schema is at version 1",
                    "needs version 6",
                    "not applied: 2 operator, 3 parked_from, 4 waiting, 5 policies, 6 children",
                    "run `saga migrate`",
                ],
            );
            (saga(&db, &["migrate"]), saga(&db, &["sagas", "list"]))
        }
    })
    .await
    .unwrap();
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    assert_eq!(
        migrated.stdout,
        "the schema is at version 1; 5 migrations to apply:\n    2  operator\n    3  parked_from\n    4  waiting\n    5  policies\n    6  children\napplied 5 migrations; the schema is at version 6\n"
    );
    assert_eq!(listed.code, 0, "{}", listed.stderr);

    // A database a newer release migrated.
    refused_after(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99, 'from the future', TRUE, x'00', 0)",
        "schema is at version 99, newer than this saga knows",
    )
    .await;
    // A migration that stopped part-way (sqlx records it as not successful).
    refused_after(
        &db,
        "DELETE FROM _sqlx_migrations WHERE version = 99;
         UPDATE _sqlx_migrations SET success = FALSE WHERE version = 3",
        "migration 3 (parked_from) is recorded as failed",
    )
    .await;
}

/// Changes the SQLite store at `db` with `sql`, then checks that both a read (`sagas list`) and
/// `migrate` refuse it with exit code 2 and a message containing `message`.
async fn refused_after(db: &str, sql: &str, message: &str) {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(db).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let (list, migrate) = tokio::task::spawn_blocking({
        let db = db.to_owned();
        move || (saga(&db, &["sagas", "list"]), saga(&db, &["migrate"]))
    })
    .await
    .unwrap();
    for run in [list, migrate] {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains(message), "{}", run.stderr);
    }
}

/// Whether Postgres schema `schema` exists in the database at `url`.
async fn pg_schema_exists(url: &str, schema: &str) -> bool {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The migration versions applied in schema `saga`.
async fn pg_versions(url: &str) -> Vec<i64> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT version FROM saga._sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_and_actions_never_migrate_and_heavy_migrations_need_yes() {
    use sqlx::{Connection as _, Executor as _};
    // A database without the saga schema: nothing is created.
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            every_command_refuses(
                &url,
                &[],
                &[
                    "Postgres schema `saga` holds no saga tables",
                    "schema version: none",
                    "needs version 8",
                    "--schema",
                    "`saga migrate`",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(!pg_schema_exists(&url, "saga").await, "nothing was created");

    // A database an older release migrated to version 2: migration 3 is heavy.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    conn.execute("CREATE SCHEMA saga; SET search_path TO saga, public")
        .await
        .unwrap();
    migrations_up_to(saga_store::postgres_migrator(), 2)
        .run(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let refused = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            every_command_refuses(
                &url,
                &[],
                &[
                    "schema is at version 2",
                    "not applied: 3 one_statement_writes, 4 steps_without_foreign_key, 5 parked_from, 6 waiting, 7 policies, 8 children",
                    "run `saga migrate`",
                ],
            );
            saga(&url, &["migrate"])
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(
        refused.stdout,
        "the schema is at version 2; 6 migrations to apply:\n    3  one_statement_writes  (heavy)\n    4  steps_without_foreign_key\n    5  parked_from\n    6  waiting\n    7  policies\n    8  children\n"
    );
    assert!(
        refused
            .stderr
            .contains("migration 3 (one_statement_writes) is heavy: it rebuilds the history table's primary key")
            && refused.stderr.contains("pass --yes"),
        "{}",
        refused.stderr
    );
    assert_eq!(pg_versions(&url).await, [1, 2], "refused means nothing ran");
    let (migrated, listed) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            (
                saga(&url, &["--json", "migrate", "--yes"]),
                saga(&url, &["sagas", "list"]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(migrated.code, 0, "{}", migrated.stderr);
    let migrated: serde_json::Value = serde_json::from_str(&migrated.stdout).unwrap();
    assert_eq!(migrated["from"], 2);
    assert_eq!(migrated["to"], 8);
    assert_eq!(migrated["applied"][0]["name"], "one_statement_writes");
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(pg_versions(&url).await, [1, 2, 3, 4, 5, 6, 7, 8]);

    // A database without saga tables has nothing for a heavy migration to rebuild.
    let fresh = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let run = tokio::task::spawn_blocking({
        let fresh = fresh.clone();
        move || saga(&fresh, &["migrate"])
    })
    .await
    .unwrap();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .ends_with("applied 8 migrations; the schema is at version 8\n"),
        "{}",
        run.stdout
    );
    assert_eq!(pg_versions(&fresh).await, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_flag_and_env_read_a_store_in_a_custom_schema() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let options = saga_store::PgOptions {
        schema: "tenant_a".to_owned(),
        ..saga_store::PgOptions::default()
    };
    let store = saga_store::PgStore::connect_with(&url, options)
        .await
        .unwrap();
    let orchestrator = Orchestrator::new(Arc::new(store.clone()), Config::default());
    orchestrator.register(Probe(Script::new())).unwrap();
    orchestrator.start::<Probe>(&input(1)).await.unwrap();
    store.close().await;
    let (default, flag, env, bad) = tokio::task::spawn_blocking(move || {
        (
            saga(&url, &["sagas", "list"]),
            saga(&url, &["--json", "sagas", "list", "--schema", "tenant_a"]),
            saga_with_env(
                &url,
                &["--json", "sagas", "list"],
                &[("SAGA_SCHEMA", "tenant_a")],
            ),
            saga(&url, &["sagas", "list", "--schema", "Tenant-A"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(default.code, 2, "{}", default.stderr);
    assert!(
        default.stderr.contains("pass --schema NAME"),
        "{}",
        default.stderr
    );
    for run in [flag, env] {
        assert_eq!(run.code, 0, "{}", run.stderr);
        let sagas: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(sagas.as_array().map(Vec::len), Some(1), "{sagas}");
    }
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("is not allowed"), "{}", bad.stderr);
}

/// `url` with its user (and password) replaced by `user`.
fn with_user(url: &str, user: &str) -> String {
    let start = url.find("://").unwrap() + 3;
    let rest = &url[start..];
    let host = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    format!("{}{user}@{host}", &url[..start])
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let slash = base.rfind('/').unwrap();
    let query = query.map_or(String::new(), |q| format!("?{q}"));
    format!("{}/{database}{query}", &base[..slash])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_or_a_missing_database_is_bad_configuration() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let (login, database) = tokio::task::spawn_blocking(move || {
        (
            saga(
                &with_user(&url, "no_such_operator"),
                &["interventions", "list"],
            ),
            saga(
                &with_database(&url, "no_such_database"),
                &["interventions", "list"],
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(login.code, 2, "{}", login.stderr);
    assert!(
        login
            .stderr
            .contains("refused the login as `no_such_operator`")
            && login.stderr.contains("check the user and password"),
        "{}",
        login.stderr
    );
    assert_eq!(database.code, 2, "{}", database.stderr);
    assert!(
        database
            .stderr
            .contains("database `no_such_database` does not exist")
            && database.stderr.contains("check the database name"),
        "{}",
        database.stderr
    );
}

/// A saga of one step that completes at once.
struct Tick;

impl saga_core::Saga for Tick {
    type Input = u64;

    fn definition() -> saga_core::SagaDefinition<Self> {
        saga_core::SagaDefinition::new("tick", 1).step(
            saga_core::Step::new(
                "tick",
                |_: Arc<Tick>, _: saga_core::StepContext<u64>| async {
                    Ok::<_, saga_core::StepError>(())
                },
            )
            .irreversible(),
        )
    }
}

/// `count` completed sagas.
async fn completed_sagas(store: Arc<dyn Store>, count: u64) {
    let orchestrator = Orchestrator::new(
        store,
        Config::default()
            .concurrency(32)
            .poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(Tick).unwrap();
    orchestrator.run();
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(orchestrator.start::<Tick>(&n).await.unwrap());
    }
    for id in ids {
        let record = orchestrator
            .wait(id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(record.status, SagaStatus::Completed);
    }
    orchestrator.shutdown().await;
}

/// On a store holding 1,001 finished sagas: `prune` refuses without `--yes`, a dry run counts
/// them, and `--yes` deletes them.
fn large_prune_needs_yes(db: &str) {
    let json = |run: &Run| -> serde_json::Value {
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    };
    let refused = saga(db, &["prune", "--older-than", "0s"]);
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(
        refused.stderr,
        "error: prune would delete 1001 sagas, more than 1000 at once; look first with --dry-run, then pass --yes to delete them (or lower --limit)\n"
    );
    let dry = saga(db, &["--json", "prune", "--older-than", "0s", "--dry-run"]);
    assert_eq!(
        json(&dry)["would_prune"],
        1001,
        "refused means nothing was deleted"
    );
    let limited = saga(
        db,
        &[
            "--json",
            "prune",
            "--older-than",
            "0s",
            "--dry-run",
            "--limit",
            "600",
        ],
    );
    assert_eq!(json(&limited)["would_prune"], 600);
    let pruned = saga(db, &["--json", "prune", "--older-than", "0s", "--yes"]);
    assert_eq!(json(&pruned)["pruned"], 1001);
    let after = saga(db, &["--json", "prune", "--older-than", "0s", "--dry-run"]);
    assert_eq!(json(&after)["would_prune"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_more_than_a_thousand_sagas_needs_yes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("many.db").display());
    let options = saga_store::SqliteOptions {
        durable: false,
        ..saga_store::SqliteOptions::default()
    };
    let store = saga_store::SqliteStore::connect_with(&db, options)
        .await
        .unwrap();
    completed_sagas(Arc::new(store), 1001).await;
    tokio::task::spawn_blocking(move || large_prune_needs_yes(&db))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_more_than_a_thousand_sagas_needs_yes_on_postgres() {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    let store = saga_store::PgStore::connect(&url).await.unwrap();
    completed_sagas(Arc::new(store.clone()), 1001).await;
    store.close().await;
    tokio::task::spawn_blocking(move || large_prune_needs_yes(&url))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_and_history_link_a_parent_and_its_child() {
    use saga_store::conformance::children::{Order, Shipment};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("tree.db").display());
    let store = Arc::new(saga_store::SqliteStore::connect(&db).await.unwrap());
    let orchestrator = Orchestrator::new(store.clone(), Config::default());
    let script = Script::new();
    orchestrator.register(Order(script.clone())).unwrap();
    orchestrator.register(Shipment(script)).unwrap();
    orchestrator.run();
    let parent = orchestrator.start::<Order>(&input(3)).await.unwrap();
    let record = orchestrator
        .wait(parent, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    orchestrator.shutdown().await;
    let child = store
        .list(&saga_core::SagaFilter {
            parent: Some(parent),
            ..saga_core::SagaFilter::default()
        })
        .await
        .unwrap()[0]
        .id;
    let (parent_shown, child_shown, listed, history) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            (
                saga(&db, &["show", &parent.to_string()]),
                saga(&db, &["--json", "show", &child.to_string()]),
                saga(&db, &["sagas", "list", "--parent", &parent.to_string()]),
                saga(&db, &["history", &parent.to_string()]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(parent_shown.code, 0, "{}", parent_shown.stderr);
    let children_table = parent_shown
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("STEP") || !line.contains("CHILD"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        children_table.contains(&format!("ship  {child}  shipment  completed")),
        "{}",
        parent_shown.stdout
    );
    let child_json: serde_json::Value = serde_json::from_str(&child_shown.stdout).unwrap();
    assert_eq!(child_json["parent"]["saga"], parent.to_string());
    assert_eq!(child_json["parent"]["step"], "ship");
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains(&child.to_string()),
        "{}",
        listed.stdout
    );
    assert!(
        listed.stdout.contains("(1 saga)"),
        "only the children: {}",
        listed.stdout
    );
    assert!(
        history
            .stdout
            .contains(&format!("ship  child started  shipment saga {child}")),
        "{}",
        history.stdout
    );
}
