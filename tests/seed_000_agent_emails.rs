//! Seed incident 000, run end to end on a fresh SQLite file: a scheduled agent that re-runs after
//! errors emails its customer on every run when left to itself, and once with the library (start
//! key, retried lookup, the email's idempotency key, a cap per customer per day).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const EXAMPLE: &str = "seed_000_agent_emails";

/// The example binary, (re)built by cargo so that it matches the sources under test.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let mut args = vec!["build", "--example", EXAMPLE];
    if profile_dir.ends_with("release") {
        args.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .expect("run cargo build --example");
    assert!(status.success(), "building the {EXAMPLE} example failed");
    profile_dir.join("examples").join(EXAMPLE)
}

#[test]
fn a_scheduled_agent_that_reruns_after_errors_emails_its_customer_once() {
    let binary = example_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("seed-000.db").display());
    let output = Command::new(&binary)
        .args(["--db", &db, "--wait-secs", "15"])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let figures: HashMap<&str, u64> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(name, value)| Some((name, value.trim().parse().ok()?)))
        .collect();
    let figure = |name: &str| {
        *figures
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}=` line in the output:\n{stdout}"))
    };
    assert_eq!(figure("ticks"), 11, "{stdout}");

    // The incident: every run that reached the mailer emailed again, twelve in all.
    assert_eq!(figure("naive_emails"), 12, "{stdout}");
    assert_eq!(figure("naive_errors"), 3, "{stdout}");

    // With the library: one email, whatever the errors and however the agent worded it.
    assert_eq!(figure("saga_emails"), 1, "{stdout}");
    assert_eq!(figure("saga_errors"), 0, "{stdout}");
    assert_eq!(
        figure("saga_lookups_refused"),
        2,
        "retried inside the saga: {stdout}"
    );
    assert_eq!(
        (figure("saga_answers_lost"), figure("saga_mailer_calls")),
        (1, 2),
        "the send whose answer was lost was repeated once, with the same key: {stdout}"
    );
    assert_eq!(figure("saga_sagas"), 2, "two wordings, two tasks: {stdout}");
    assert_eq!(
        figure("saga_deduped_starts"),
        figure("ticks") - 2,
        "every other run found its task begun: {stdout}"
    );
    assert_eq!(figure("saga_skipped_by_cap"), 1, "{stdout}");
    assert_eq!(figure("saga_completed"), 2, "{stdout}");
}
