//! The upgrade check on SQLite and Postgres: an old build leaves sagas in flight (waiting for a
//! signal, parked for an operator) and finished, then the definitions of a new build are checked
//! against the store, once per way a deploy strands sagas and once for a compatible change; and
//! the example binary's exit codes, end to end.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use saga::upgrade::{self, Check, Definitions, FindingKind, StepMismatch, UpgradeReport};
use saga::{
    Config, NewSaga, Orchestrator, Saga, SagaDefinition, SagaId, SagaStatus, SagaType, Signal,
    SqliteStore, Step, StepContext, StepError, StepName, Store,
};
use saga_store::PgStore;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Paid {
    charge: String,
}

impl Signal for Paid {
    const NAME: &'static str = "paid";
}

async fn reserve<S>(_: Arc<S>, ctx: StepContext<u64>) -> Result<String, StepError> {
    Ok(format!("reservation-{}", ctx.input()))
}

async fn release<S>(_: Arc<S>, _: StepContext<u64>, _: String) -> Result<(), StepError> {
    Ok(())
}

async fn release_refused<S>(_: Arc<S>, _: StepContext<u64>, _: String) -> Result<(), StepError> {
    Err(StepError::permanent("warehouse refused the release"))
}

async fn noop<S, I>(_: Arc<S>, _: StepContext<I>) -> Result<(), StepError> {
    Ok(())
}

async fn decline<S>(_: Arc<S>, _: StepContext<u64>) -> Result<(), StepError> {
    Err(StepError::permanent("card declined"))
}

/// Builds a checkout definition from step names, in order: `reserve_stock` compensable,
/// `wait_payment` waits for `Paid`, any other calls `noop` and is irreversible.
fn checkout<S: Saga<Input = u64>>(name: &str, version: u32, steps: &[&str]) -> SagaDefinition<S> {
    steps.iter().fold(
        SagaDefinition::new(name, version),
        |definition, step| match *step {
            "reserve_stock" => {
                definition.step(Step::new("reserve_stock", reserve::<S>).compensate(release::<S>))
            }
            "wait_payment" => definition.step(Step::signal::<Paid>("wait_payment")),
            other => definition.step(Step::new(other, noop::<S, u64>).irreversible()),
        },
    )
}

// The old build.

/// In flight at index 1: `reserve_stock` completed, `wait_payment` waits.
struct CheckoutV1;
impl Saga for CheckoutV1 {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "checkout",
            1,
            &["reserve_stock", "wait_payment", "send_receipt"],
        )
    }
}

#[derive(Serialize, Deserialize)]
struct RefundRequest {
    order: u64,
}

/// In flight, waiting for `Paid`.
struct Refund;
impl Saga for Refund {
    type Input = RefundRequest;
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("refund", 1).step(Step::signal::<Paid>("wait_refund"))
    }
}

/// Parked in needs_intervention: its compensation fails for good.
struct Audit;
impl Saga for Audit {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("audit", 1)
            .step(Step::new("reserve_stock", reserve::<Self>).compensate(release_refused::<Self>))
            .step(Step::new("charge", decline::<Self>).irreversible())
    }
}

/// Completed: never counted.
struct Receipt;
impl Saga for Receipt {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("receipt", 1).step(Step::new("send", noop::<Self, u64>).irreversible())
    }
}

/// A fingerprint pinned by hand: it does not change with the steps.
struct PinnedV1;
impl Saga for PinnedV1 {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "pinned",
            1,
            &["reserve_stock", "wait_payment", "send_receipt"],
        )
        .with_fingerprint("pinned-1")
    }
}

// The new builds.

/// A compatible change: version 2 beside version 1.
struct CheckoutV2;
impl Saga for CheckoutV2 {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "checkout",
            2,
            &[
                "reserve_stock",
                "check_fraud",
                "wait_payment",
                "send_receipt",
            ],
        )
    }
}

/// Version 1 changed without a bump: a step inserted before the sagas' position.
struct CheckoutV1FraudFirst;
impl Saga for CheckoutV1FraudFirst {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "checkout",
            1,
            &[
                "check_fraud",
                "reserve_stock",
                "wait_payment",
                "send_receipt",
            ],
        )
    }
}

/// Version 1 changed without a bump: a step the sagas completed removed.
struct CheckoutV1WithoutReserve;
impl Saga for CheckoutV1WithoutReserve {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout("checkout", 1, &["wait_payment", "send_receipt"])
    }
}

/// Version 1 changed without a bump: a step appended past the sagas' position.
struct CheckoutV1Appended;
impl Saga for CheckoutV1Appended {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "checkout",
            1,
            &["reserve_stock", "wait_payment", "send_receipt", "survey"],
        )
    }
}

/// The pinned saga's steps swapped under the same fingerprint.
struct PinnedSwapped;
impl Saga for PinnedSwapped {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        checkout(
            "pinned",
            1,
            &["wait_payment", "reserve_stock", "send_receipt"],
        )
        .with_fingerprint("pinned-1")
    }
}

#[derive(Serialize, Deserialize)]
struct StricterRefundRequest {
    order: u64,
    amount_cents: u64,
}

/// The refund's input gained a required field; a hand-written fingerprint does not cover it.
struct RefundStricter;
impl Saga for RefundStricter {
    type Input = StricterRefundRequest;
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("refund", 1).step(Step::signal::<Paid>("wait_refund"))
    }
}

/// A new saga type.
struct Loyalty;
impl Saga for Loyalty {
    type Input = u64;
    fn definition() -> SagaDefinition<Self> {
        SagaDefinition::new("loyalty", 1).step(Step::new("award", noop::<Self, u64>).irreversible())
    }
}

/// What the old build left in the store.
struct OldBuild {
    checkouts: Vec<SagaId>,
    refund: SagaId,
    pinned: SagaId,
}

/// Runs the old build until its sagas are where the scenarios need them: three checkouts, a
/// refund and a pinned saga waiting for a signal, an audit parked, a receipt completed.
async fn old_build(store: Arc<dyn Store>) -> OldBuild {
    let orchestrator = Orchestrator::new(
        store,
        Config::default().poll_interval(Duration::from_millis(20)),
    );
    orchestrator.register(CheckoutV1).unwrap();
    orchestrator.register(Refund).unwrap();
    orchestrator.register(Audit).unwrap();
    orchestrator.register(Receipt).unwrap();
    orchestrator.register(PinnedV1).unwrap();
    orchestrator.run();
    let mut checkouts = Vec::new();
    for order in 1..=3 {
        checkouts.push(orchestrator.start::<CheckoutV1>(&order).await.unwrap());
    }
    let refund = orchestrator
        .start::<Refund>(&RefundRequest { order: 1 })
        .await
        .unwrap();
    let audit = orchestrator.start::<Audit>(&1).await.unwrap();
    let receipt = orchestrator.start::<Receipt>(&1).await.unwrap();
    let pinned = orchestrator.start::<PinnedV1>(&1).await.unwrap();
    let wait = Duration::from_secs(30);
    assert_eq!(
        orchestrator.wait(audit, wait).await.unwrap().status,
        SagaStatus::NeedsIntervention
    );
    assert_eq!(
        orchestrator.wait(receipt, wait).await.unwrap().status,
        SagaStatus::Completed
    );
    for id in checkouts.iter().chain([&refund, &pinned]) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let snapshot = orchestrator.snapshot(*id).await.unwrap();
            if snapshot.record.waiting_for.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {id} never began to wait: {:?}",
                snapshot.record
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    orchestrator.shutdown().await;
    checkouts.sort();
    OldBuild {
        checkouts,
        refund,
        pinned,
    }
}

/// The report's group of `saga_type` at `version`.
fn group<'a>(report: &'a UpgradeReport, saga_type: &str, version: u32) -> &'a upgrade::Group {
    report
        .groups
        .iter()
        .find(|group| group.saga_type == SagaType::new(saga_type) && group.version == version)
        .unwrap_or_else(|| panic!("no group {saga_type} v{version} in:\n{report}"))
}

/// The only finding of a group.
fn only_finding<'a>(
    report: &'a UpgradeReport,
    saga_type: &str,
    version: u32,
) -> &'a upgrade::Finding {
    let group = group(report, saga_type, version);
    assert_eq!(group.findings.len(), 1, "{report}");
    &group.findings[0]
}

/// The groups other than `saga_type` resume: no finding.
fn only_stranded(report: &UpgradeReport, saga_type: &str) {
    for group in &report.groups {
        if group.saga_type != SagaType::new(saga_type) {
            assert!(group.findings.is_empty(), "{report}");
        }
    }
}

async fn a_removed_type_strands_its_sagas_in_flight_and_not_its_finished_ones(
    store: Arc<dyn Store>,
) {
    let old = old_build(Arc::clone(&store)).await;
    let new = Definitions::new()
        .with::<CheckoutV1>()
        .with::<Audit>()
        .with::<PinnedV1>();
    let report = upgrade::check(store.as_ref(), &new).await.unwrap();
    // Three checkouts, the refund, the parked audit, the pinned saga; the receipt finished.
    assert_eq!(report.in_flight, 6, "{report}");
    assert!(
        report
            .groups
            .iter()
            .all(|group| group.saga_type != SagaType::new("receipt")),
        "{report}"
    );
    let finding = only_finding(&report, "refund", 1);
    assert_eq!(finding.kind, FindingKind::TypeNotRegistered);
    assert_eq!((finding.sagas, &finding.examples), (1, &vec![old.refund]));
    assert!(
        finding.reason.contains("`refund` is not registered"),
        "{}",
        finding.reason
    );
    only_stranded(&report, "refund");
    // The parked saga counts as in flight, and resumes.
    assert_eq!(group(&report, "audit", 1).in_flight.needs_intervention, 1);
    assert_eq!((report.stranded, report.is_compatible()), (1, false));
    assert_eq!(report.exit_code(), upgrade::STRANDED_EXIT_CODE);
}

async fn a_dropped_version_strands_the_sagas_started_on_it(store: Arc<dyn Store>) {
    let old = old_build(Arc::clone(&store)).await;
    let new = Definitions::new()
        .with::<CheckoutV2>()
        .with::<Refund>()
        .with::<Audit>()
        .with::<PinnedV1>();
    let report = Check::default()
        .examples(2)
        .run(store.as_ref(), &new)
        .await
        .unwrap();
    let finding = only_finding(&report, "checkout", 1);
    assert_eq!(finding.kind, FindingKind::VersionNotRegistered);
    assert_eq!(finding.sagas, 3);
    assert_eq!(
        finding.examples,
        old.checkouts[..2].to_vec(),
        "the first two, by id"
    );
    assert!(
        finding
            .reason
            .contains("version 1 of `checkout` is not registered")
            && finding.reason.contains("registers v2"),
        "{}",
        finding.reason
    );
    only_stranded(&report, "checkout");
    assert_eq!((report.stranded, report.exit_code()), (3, 6));
    let text = report.to_string();
    assert!(
        text.contains("checkout v1") && text.contains("and 1 more") && text.contains("exit 6"),
        "{text}"
    );
}

async fn a_definition_changed_without_a_version_bump_is_caught_naming_the_moved_step(
    store: Arc<dyn Store>,
) {
    let old = old_build(Arc::clone(&store)).await;
    let build = |changed: Definitions| changed.with::<Refund>().with::<Audit>().with::<PinnedV1>();
    let changed = |report: &UpgradeReport| {
        let finding = only_finding(report, "checkout", 1).clone();
        assert_eq!(finding.kind, FindingKind::FingerprintChanged, "{report}");
        assert_eq!((finding.sagas, &finding.examples), (3, &old.checkouts));
        only_stranded(report, "checkout");
        assert_eq!(report.exit_code(), 6);
        finding
    };

    // A step inserted before the sagas' position.
    let new = build(Definitions::new().with::<CheckoutV1FraudFirst>());
    let finding = changed(&upgrade::check(store.as_ref(), &new).await.unwrap());
    assert_eq!(
        finding.step.as_ref().map(ToString::to_string).as_deref(),
        Some("step `reserve_stock`, recorded at index 0, is now at index 1 (index 0 is now `check_fraud`)")
    );
    assert!(
        finding.reason.contains("changed without a version bump"),
        "{}",
        finding.reason
    );

    // A step they completed, removed.
    let new = build(Definitions::new().with::<CheckoutV1WithoutReserve>());
    let finding = changed(&upgrade::check(store.as_ref(), &new).await.unwrap());
    let step = finding.step.expect("the removed step");
    assert_eq!(
        (step.index, step.recorded.as_str(), step.now_at),
        (0, "reserve_stock", None)
    );
    assert_eq!(step.now_there, Some(StepName::new("wait_payment")));

    // A step appended past their position: stranded all the same, the steps line up.
    let new = build(Definitions::new().with::<CheckoutV1Appended>());
    let finding = changed(&upgrade::check(store.as_ref(), &new).await.unwrap());
    assert_eq!(finding.step, None);
    assert!(
        finding.reason.contains("still line up"),
        "{}",
        finding.reason
    );
}

async fn steps_reordered_under_a_pinned_fingerprint_are_caught(store: Arc<dyn Store>) {
    let old = old_build(Arc::clone(&store)).await;
    let new = Definitions::new()
        .with::<CheckoutV1>()
        .with::<Refund>()
        .with::<Audit>()
        .with::<PinnedSwapped>();
    assert_eq!(
        new.get(&SagaType::new("pinned"), 1).unwrap().fingerprint(),
        "pinned-1"
    );
    let report = upgrade::check(store.as_ref(), &new).await.unwrap();
    let finding = only_finding(&report, "pinned", 1);
    assert_eq!(finding.kind, FindingKind::StepsMoved);
    assert_eq!((finding.sagas, &finding.examples), (1, &vec![old.pinned]));
    let moved = finding.step.as_ref().unwrap();
    assert_eq!(
        (moved.index, moved.recorded.as_str(), moved.now_at),
        (0, "reserve_stock", Some(1))
    );
    assert!(finding.reason.contains("wrong steps"), "{}", finding.reason);
    only_stranded(&report, "pinned");
    assert_eq!(report.exit_code(), 6);
}

async fn an_input_that_no_longer_decodes_is_caught(store: Arc<dyn Store>) {
    let old = old_build(Arc::clone(&store)).await;
    let new = Definitions::new()
        .with::<CheckoutV1>()
        .with::<RefundStricter>()
        .with::<Audit>()
        .with::<PinnedV1>();
    let report = upgrade::check(store.as_ref(), &new).await.unwrap();
    let finding = only_finding(&report, "refund", 1);
    assert_eq!(finding.kind, FindingKind::InputUndecodable);
    assert_eq!((finding.sagas, &finding.examples), (1, &vec![old.refund]));
    assert!(
        finding.reason.contains("amount_cents"),
        "{}",
        finding.reason
    );
    only_stranded(&report, "refund");
}

async fn a_compatible_change_passes(store: Arc<dyn Store>) {
    old_build(Arc::clone(&store)).await;
    let new = Definitions::new()
        .with::<CheckoutV1>()
        .with::<CheckoutV2>()
        .with::<Refund>()
        .with::<Audit>()
        .with::<PinnedV1>()
        .with::<Loyalty>();
    // Pages of two: five sagas running, each read once.
    let report = Check::default()
        .page_size(2)
        .run(store.as_ref(), &new)
        .await
        .unwrap();
    assert!(report.is_compatible(), "{report}");
    assert_eq!(
        (report.in_flight, report.stranded, report.exit_code()),
        (6, 0, 0)
    );
    let checkouts = group(&report, "checkout", 1);
    assert_eq!(
        (checkouts.in_flight.running, checkouts.in_flight.total()),
        (3, 3)
    );
    assert_eq!(report.groups.len(), 4, "{report}");
    assert!(report.to_string().contains("Compatible"), "{report}");

    // The same definitions, read from an orchestrator that registered them.
    let orchestrator = Orchestrator::new(Arc::clone(&store), Config::default());
    orchestrator.register(CheckoutV1).unwrap();
    orchestrator.register(CheckoutV2).unwrap();
    orchestrator.register(Refund).unwrap();
    orchestrator.register(Audit).unwrap();
    orchestrator.register(PinnedV1).unwrap();
    orchestrator.register(Loyalty).unwrap();
    let registered = orchestrator.definitions().unwrap();
    let again = upgrade::check(store.as_ref(), &registered).await.unwrap();
    assert_eq!(again, report);

    // JSON for a pipeline.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["in_flight"], 6);
    assert_eq!(json["groups"][0]["saga_type"], "audit");
}

/// A fresh SQLite file, migrated as the library does, with the directory that holds it.
async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("upgrade.db").display());
    (Arc::new(SqliteStore::connect(&url).await.unwrap()), dir)
}

/// A fresh Postgres database, migrated as the library does.
async fn postgres() -> (Arc<dyn Store>, String) {
    let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
    (Arc::new(PgStore::connect(&url).await.unwrap()), url)
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (store, _dir) = super::sqlite().await;
                    super::$scenario(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let (store, _url) = super::postgres().await;
                    super::$scenario(store).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_removed_type_strands_its_sagas_in_flight_and_not_its_finished_ones,
    a_dropped_version_strands_the_sagas_started_on_it,
    a_definition_changed_without_a_version_bump_is_caught_naming_the_moved_step,
    steps_reordered_under_a_pinned_fingerprint_are_caught,
    an_input_that_no_longer_decodes_is_caught,
    a_compatible_change_passes,
);

// The example binary, end to end.

/// The example binary, (re)built by cargo so that it matches the sources under test, with the
/// facade's `postgres` feature (as a service on Postgres builds it).
fn example_binary() -> PathBuf {
    example::binary_with("upgrade_check", &["postgres"])
}

/// Runs the example; returns (exit code, stdout, stderr).
fn run_example(binary: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary)
        .args(args)
        .env_remove("SAGA_DATABASE_URL")
        .env_remove("SAGA_SCHEMA")
        .output()
        .expect("run the upgrade_check example");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The fingerprint the example's build gives `checkout` v1, from `--definitions --json`.
fn example_fingerprint(binary: &Path) -> String {
    let (code, stdout, stderr) = run_example(binary, &["--definitions", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let definitions: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let v1 = definitions
        .as_array()
        .unwrap()
        .iter()
        .find(|definition| definition["saga_type"] == "checkout" && definition["version"] == 1)
        .expect("the example registers checkout v1");
    assert_eq!(v1["steps"][0], "reserve_stock");
    v1["fingerprint"].as_str().unwrap().to_owned()
}

/// Stores a running saga as a build that started it would have.
async fn stored_saga(
    store: &dyn Store,
    saga_type: &str,
    version: u32,
    fingerprint: &str,
) -> SagaId {
    let id = SagaId::new();
    store
        .create(NewSaga {
            id,
            saga_type: SagaType::new(saga_type),
            version,
            fingerprint: fingerprint.to_owned(),
            input: serde_json::json!({ "id": 7, "cents": 1200 }),
            input_hash: format!("hash-{id}"),
            idempotency_key: None,
            trace_context: None,
            lease: None,
            changes: Vec::new(),
            deadline: None,
            dedup_window: None,
            parent: None,
        })
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_exits_0_when_compatible_and_6_when_it_would_strand_sagas_on_sqlite() {
    let binary = example_binary();
    let fingerprint = example_fingerprint(&binary);
    let (store, dir) = sqlite().await;
    let db = format!("sqlite://{}", dir.path().join("upgrade.db").display());

    // Sagas in flight on checkout v1 as this build declares it: compatible.
    stored_saga(store.as_ref(), "checkout", 1, &fingerprint).await;
    let (code, stdout, stderr) = run_example(&binary, &["--db", &db]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("Compatible: this build resumes all 1 sagas"),
        "{stdout}"
    );

    // One started on an older checkout v1, and a type this build dropped: stranded.
    let changed = stored_saga(store.as_ref(), "checkout", 1, "0123456789abcdef").await;
    let dropped = stored_saga(store.as_ref(), "gift_card", 1, "fedcba9876543210").await;
    let (code, stdout, stderr) = run_example(&binary, &["--db", &db]);
    assert_eq!(code, 6, "{stdout}{stderr}");
    assert!(
        stdout.contains(&changed.to_string()) && stdout.contains(&dropped.to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("would strand 2 of 3 sagas"), "{stdout}");
    let (code, stdout, _) = run_example(&binary, &["--db", &db, "--json"]);
    assert_eq!(code, 6);
    let report: UpgradeReport = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<FindingKind> = report.findings().map(|(_, finding)| finding.kind).collect();
    assert_eq!(
        kinds,
        [
            FindingKind::FingerprintChanged,
            FindingKind::TypeNotRegistered
        ]
    );
    assert_eq!(
        report
            .findings()
            .next()
            .map(|(_, finding)| finding.step.clone()),
        Some(None::<StepMismatch>),
        "a saga with no step recorded has nothing out of line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_reads_postgres_in_its_schema_and_exits_6_when_stranding() {
    let binary = example_binary();
    let (store, url) = postgres().await;
    stored_saga(store.as_ref(), "gift_card", 1, "fedcba9876543210").await;
    let (code, stdout, stderr) = run_example(&binary, &["--db", &url, "--schema", "saga"]);
    assert_eq!(code, 6, "{stdout}{stderr}");
    assert!(stdout.contains("gift_card v1"), "{stdout}");
    // Another schema holds no saga tables: bad input, and nothing created there.
    let (code, _, stderr) = run_example(&binary, &["--db", &url, "--schema", "elsewhere"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("holds no saga tables"), "{stderr}");
}

/// How many tables the SQLite database holds.
async fn tables(db: &str) -> i64 {
    use sqlx::Connection;
    let mut connection = sqlx::SqliteConnection::connect(db).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_never_creates_or_migrates_a_store() {
    let binary = example_binary();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let db = format!("sqlite://{}", missing.display());
    let (code, _, stderr) = run_example(&binary, &["--db", &db]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("never creates one"), "{stderr}");
    assert!(!missing.exists());

    // A SQLite file without saga tables stays without them.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let db = format!("sqlite://{}", empty.display());
    let (code, _, stderr) = run_example(&binary, &["--db", &db]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("holds no saga tables"), "{stderr}");
    assert_eq!(tables(&db).await, 0, "the check created tables");

    let (code, _, stderr) = run_example(&binary, &["--db", &db, "--verbose"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown argument `--verbose`"), "{stderr}");
}
