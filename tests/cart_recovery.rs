//! The cart-recovery example, run end to end on a fresh SQLite file: duplicate webhooks start one
//! saga per cart, no code or email is ever duplicated, the email cap lets one email per customer
//! through, the partner's throttling and the operator's pause hold sagas back, and every saga
//! completes; the naive loop it is compared with does duplicate.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod example;

#[test]
fn duplicate_webhooks_and_throttling_create_no_duplicate_code_or_email() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("cart-recovery.db").display());
    let stdout = example::run("cart_recovery", &["--db", &db, "--wait-secs", "30"]);
    let figures = example::Figures::of(&stdout);
    let figure = |name: &str| figures.get(name);
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
