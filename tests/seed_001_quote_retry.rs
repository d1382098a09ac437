//! Seed incident 001, run end to end on a fresh SQLite file: a quote whose answer came too late
//! is sent once (the timeout kept as an unknown outcome, settled by the step's probe with the
//! step's key), where the naive agent sent three; and a booking that fails for good at its third
//! step undoes the first two in reverse, where the naive agent left them in place.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

use std::collections::HashMap;

const EXAMPLE: &str = "seed_001_quote_retry";

#[test]
fn a_quote_retried_after_a_timeout_is_sent_once_and_a_failed_booking_is_undone_in_reverse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("seed-001.db").display());
    let stdout = example::run(EXAMPLE, &["--db", &db, "--wait-secs", "15"]);
    let values: HashMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let text = |name: &str| {
        *values
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}=` line in the output:\n{stdout}"))
    };
    let figure = |name: &str| -> u64 {
        text(name)
            .parse()
            .unwrap_or_else(|_| panic!("`{name}=` is not a count:\n{stdout}"))
    };

    // The quote: three sent by the naive agent, one with the library.
    assert_eq!(figure("naive_quotes_sent"), 3, "{stdout}");
    assert_eq!(figure("naive_timeouts"), 2, "{stdout}");
    assert_eq!(figure("saga_quotes_sent"), 1, "{stdout}");
    assert_eq!(
        figure("saga_quote_calls"),
        1,
        "the partner was not asked again: {stdout}"
    );
    assert_eq!(
        figure("saga_timeouts"),
        1,
        "the late answer was an unknown outcome: {stdout}"
    );
    assert_eq!(
        figure("saga_probe_lookups"),
        1,
        "the probe settled it by key: {stdout}"
    );
    assert_eq!(figure("saga_quotes_filed"), 1, "{stdout}");

    // The booking: compensated in reverse, nothing left behind, no confirmation.
    assert_eq!(text("saga_booking"), "compensated", "{stdout}");
    assert_eq!(
        text("saga_undos"),
        "refund_deposit,release_materials",
        "the deposit is refunded before the materials are released: {stdout}"
    );
    assert_eq!(figure("saga_deposits_taken"), 1, "{stdout}");
    assert_eq!(figure("saga_deposits_left"), 0, "{stdout}");
    assert_eq!(figure("saga_holds_left"), 0, "{stdout}");
    assert_eq!(figure("saga_confirmations"), 0, "{stdout}");
    assert_eq!(
        (figure("naive_deposits_left"), figure("naive_holds_left")),
        (3, 3),
        "the naive agent left a hold and a deposit on every try: {stdout}"
    );
}
