//! The cart-recovery example, run end to end on a fresh SQLite file: duplicate webhooks start one
//! saga per cart, no code or email is ever duplicated, the email cap lets one email per customer
//! through, the partner's throttling and the operator's pause hold sagas back, and every saga
//! completes; the naive loop it is compared with does duplicate.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The example binary, (re)built by cargo so that it matches the sources under test.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let mut args = vec!["build", "--example", "cart_recovery"];
    if profile_dir.ends_with("release") {
        args.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .expect("run cargo build --example cart_recovery");
    assert!(
        status.success(),
        "building the cart_recovery example failed"
    );
    profile_dir.join("examples").join("cart_recovery")
}

#[test]
fn duplicate_webhooks_and_throttling_create_no_duplicate_code_or_email() {
    let binary = example_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("cart-recovery.db").display());
    let output = Command::new(&binary)
        .args(["--db", &db, "--wait-secs", "30"])
        .output()
        .expect("run the cart_recovery example");
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
    let (carts, customers) = (figure("carts"), figure("customers"));
    assert_eq!((carts, customers), (40, 15), "{stdout}");

    assert_eq!(figure("duplicate_codes"), 0, "{stdout}");
    assert_eq!(figure("duplicate_emails"), 0, "{stdout}");
    assert_eq!(
        figure("duplicate_cart_emails"),
        0,
        "no cart was emailed twice: {stdout}"
    );
    assert_eq!(
        figure("codes_created"),
        carts,
        "one code per cart: {stdout}"
    );
    assert_eq!(figure("emails_sent"), customers, "{stdout}");
    assert_eq!(
        figure("customers_emailed_once"),
        customers,
        "every customer got exactly one email: {stdout}"
    );
    assert_eq!(figure("sagas_started"), carts, "{stdout}");
    assert_eq!(figure("sagas_completed"), carts, "{stdout}");
    assert_eq!(figure("skipped_emails"), carts - customers, "{stdout}");
    assert_eq!(
        figure("deduped_deliveries"),
        figure("deliveries") - carts,
        "every repeated delivery found its saga: {stdout}"
    );
    assert!(figure("deduped_deliveries") > 0, "{stdout}");
    assert!(figure("throttled_calls") > 0, "{stdout}");
    assert!(figure("rate_limit_waits") > 0, "{stdout}");
    assert!(figure("held_by_pause") > 0, "{stdout}");

    assert!(
        figure("naive_duplicate_codes") > 0
            && figure("naive_duplicate_emails") > 0
            && figure("naive_duplicate_cart_emails") > 0,
        "the naive loop shows the failure: {stdout}"
    );
}
