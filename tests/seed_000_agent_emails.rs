//! Seed incident 000, run end to end on a fresh SQLite file: a scheduled agent that re-runs after
//! errors emails its customer on every run when left to itself, and once with the library (start
//! key, retried lookup, the email's idempotency key, a cap per customer per day).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

const EXAMPLE: &str = "seed_000_agent_emails";

#[test]
fn a_scheduled_agent_that_reruns_after_errors_emails_its_customer_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("seed-000.db").display());
    let stdout = example::run(EXAMPLE, &["--db", &db, "--wait-secs", "15"]);
    let figures = example::Figures::of(&stdout);
    let figure = |name: &str| figures.get(name);
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
