//! The dashboard driven in headless Chromium through WebDriver, as a person would: sign in through
//! the login form, click through the inbox, type a reason and confirm, search with the box in the
//! header, watch the inbox fill without a reload. Each test has a SQLite store filled by the
//! fixture, the console served on a loopback port, and a chromedriver of its own.
//!
//! Needs Chromium and chromedriver (`apt-get install chromium chromium-driver`; `.ci/run` installs
//! them): without them every test here fails, saying so. Screenshots of the pages go to
//! `target/console-screenshots/` (each test prints the paths).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, Locator};
use saga_console::ConsoleOptions;
use saga_core::{Admin, SagaStatus, Store};
use saga_store::SqliteStore;
use support::browser::{
    click, count, dialog_open, eventually, find, open, path, screenshot, serve, sign_in, text,
    Driver,
};
use support::fixture::{self, Fixture, OPERATOR, OPERATOR_TOKEN, VIEWER, VIEWER_TOKEN};

/// How long a page may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// A filled SQLite store, the console over it on a loopback port, and a chromedriver.
struct Setup {
    store: Arc<dyn Store>,
    fixture: Fixture,
    base: String,
    driver: Driver,
    _dir: tempfile::TempDir,
}

/// The fixture's console options; open pages look for news every 300 ms, and the chart covers
/// the last hour by 2 minutes (the fixture's sagas are all minutes old).
fn options() -> ConsoleOptions {
    fixture::options()
        .refresh(Duration::from_millis(300))
        .chart(Duration::from_secs(60 * 60), Duration::from_secs(2 * 60))
}

async fn setup() -> Setup {
    let (driver, (dir, store, fixture)) = tokio::join!(Driver::start(), async {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("console.db").display());
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::connect(&url).await.expect("a SQLite store"));
        let fixture = fixture::populate(Arc::clone(&store)).await;
        (dir, store, fixture)
    });
    let console = fixture::console_with(Arc::clone(&store), options());
    let base = serve(console.router).await;
    Setup {
        store,
        fixture,
        base,
        driver,
        _dir: dir,
    }
}

/// Waits (bounded) until the browser is on `expected` (a path).
async fn until_on(client: &Client, expected: &str) {
    let client = client.clone();
    eventually(&format!("the page {expected}"), PATIENCE, || {
        let client = client.clone();
        async move { (path(&client).await == expected).then_some(()) }
    })
    .await;
}

/// The `data-id`s of the rows of the inbox table shown now (read in one go: the rows are
/// replaced every refresh).
async fn inbox_rows(client: &Client) -> Vec<String> {
    let ids = client
        .execute(
            "return Array.from(document.querySelectorAll('#inbox tr.item'))\
               .map(function (row) { return row.getAttribute('data-id'); });",
            vec![],
        )
        .await
        .expect("reading the inbox rows");
    serde_json::from_value(ids).expect("the rows' ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_resolves_an_item_with_a_reason_and_the_saga_compensates() {
    let setup = setup().await;
    let (store, fixture, base) = (Arc::clone(&setup.store), setup.fixture, setup.base.clone());
    // Workers over the same store, as in a running service: they take the saga on after the
    // operator's action.
    let orchestrator = fixture::orchestrator(Arc::clone(&store));
    orchestrator.run();
    let reason = "released the reservation by hand in the warehouse UI";
    setup
        .driver
        .run(move |client| async move {
            sign_in(&client, &base, OPERATOR_TOKEN).await;
            let who = text(&client, "#who").await;
            assert!(
                who.starts_with(&format!("{OPERATOR} (operator)")),
                "signed in as the operator: {who}"
            );
            find(&client, "#counts").await;
            let cards = text(&client, "section.cards").await;
            assert!(
                cards.contains("stuck over 15 min"),
                "the overview says when a step counts as stuck: {cards}"
            );
            screenshot(&client, "overview").await;

            // The inbox, from the navigation.
            click(&client, "header nav a[href='/inbox']").await;
            until_on(&client, "/inbox").await;
            assert_eq!(inbox_rows(&client).await, [fixture.item.to_string()]);
            screenshot(&client, "inbox").await;

            // The item, from its row.
            let row = format!("#inbox tr.item[data-id='{}']", fixture.item);
            click(&client, &format!("{row} a[href='/inbox/{}']", fixture.item)).await;
            until_on(&client, &format!("/inbox/{}", fixture.item)).await;
            assert!(text(&client, "main").await.contains(fixture::RELEASE_ERROR));
            screenshot(&client, "item").await;

            // Its resolve confirmation.
            click(&client, "#resolve").await;
            let confirmation = format!("/inbox/{}/resolve", fixture.item);
            until_on(&client, &confirmation).await;
            assert_eq!(text(&client, "h1").await, "resolve this item?");
            screenshot(&client, "confirmation").await;

            // Without a reason the browser does not send the form.
            let valid = client
                .execute(
                    "return document.querySelector('form.confirm').checkValidity();",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(valid, serde_json::json!(false), "the reason is required");
            click(&client, "#confirm").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(path(&client).await, confirmation, "no reason, no action");

            find(&client, "#reason")
                .await
                .send_keys(reason)
                .await
                .expect("typing the reason");
            click(&client, "#confirm").await;

            // The saga's page, where the saga moves on to compensated.
            let saga_page = format!("/sagas/{}", fixture.parked);
            until_on(&client, &saga_page).await;
            assert_eq!(text(&client, "#saga-id").await, fixture.parked.to_string());
            let shown = {
                let client = client.clone();
                eventually("the saga page to show compensated", PATIENCE, || {
                    let client = client.clone();
                    async move {
                        let status = client
                            .find(Locator::Css("#saga-status"))
                            .await
                            .ok()?
                            .text()
                            .await
                            .ok()?;
                        if status == "compensated" {
                            Some(status)
                        } else {
                            client.refresh().await.ok()?;
                            None
                        }
                    }
                })
                .await
            };
            assert_eq!(shown, "compensated");
            assert_eq!(path(&client).await, saga_page);

            // The history records who acted and why.
            let history = text(&client, "#history").await;
            let action = history
                .lines()
                .find(|line| line.contains(reason))
                .unwrap_or_else(|| panic!("no history row has the reason:\n{history}"));
            assert!(
                action.contains("operator_action")
                    && action.contains(&format!("resolve by {OPERATOR}")),
                "an operator action names the operator beside the reason: {action}"
            );
            screenshot(&client, "saga").await;
        })
        .await;
    orchestrator.shutdown().await;
    let admin = Admin::new(Arc::clone(&setup.store));
    assert_eq!(
        admin
            .show(setup.fixture.parked)
            .await
            .unwrap()
            .record
            .status,
        SagaStatus::Compensated
    );
    let item = admin.intervention(setup.fixture.item).await.unwrap();
    assert_eq!(item.resolved_by.as_deref(), Some(OPERATOR));
    assert_eq!(item.resolution_reason.as_deref(), Some(reason));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_box_finds_a_saga_by_its_start_key() {
    let setup = setup().await;
    let (fixture, base) = (setup.fixture, setup.base.clone());
    setup
        .driver
        .run(move |client| async move {
            sign_in(&client, &base, VIEWER_TOKEN).await;
            let search = find(&client, "#search").await;
            search
                .send_keys(fixture::COMPLETED_KEY)
                .await
                .expect("typing the key");
            search
                .send_keys(&Key::Enter.to_string())
                .await
                .expect("pressing Enter");
            until_on(&client, &format!("/sagas/{}", fixture.completed)).await;
            assert_eq!(
                text(&client, "#saga-id").await,
                fixture.completed.to_string()
            );
            assert_eq!(text(&client, "#saga-status").await, "completed");
            assert!(text(&client, "main dl.facts")
                .await
                .contains(fixture::COMPLETED_KEY));
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sees_no_actions_and_is_refused_a_confirmation_page() {
    let setup = setup().await;
    let (fixture, base) = (setup.fixture, setup.base.clone());
    setup
        .driver
        .run(move |client| async move {
            sign_in(&client, &base, VIEWER_TOKEN).await;
            let who = text(&client, "#who").await;
            assert!(who.starts_with(&format!("{VIEWER} (viewer)")), "signed in as the viewer: {who}");

            open(&client, &format!("{base}/inbox")).await;
            assert_eq!(inbox_rows(&client).await, [fixture.item.to_string()]);
            let actions = "a.retry, a.resolve, a.cancel, a[href$='/retry'], a[href$='/resolve'], a[href$='/cancel'], #retry-all";
            assert_eq!(count(&client, actions).await, 0, "the inbox offers a viewer no action");

            open(&client, &format!("{base}/inbox/{}", fixture.item)).await;
            assert!(text(&client, "main").await.contains(fixture::RELEASE_ERROR));
            assert_eq!(count(&client, actions).await, 0, "the item offers a viewer no action");

            for action in ["retry", "resolve", "cancel"] {
                open(&client, &format!("{base}/inbox/{}/{action}", fixture.item)).await;
                let error = find(&client, "#error").await;
                assert_eq!(
                    error.attr("data-code").await.unwrap().as_deref(),
                    Some("forbidden"),
                    "{action} refused"
                );
                assert!(error.text().await.unwrap().contains("viewer"));
                assert_eq!(count(&client, "form.confirm, #confirm, #reason").await, 0);
            }
        })
        .await;
    let item = Admin::new(Arc::clone(&setup.store))
        .intervention(setup.fixture.item)
        .await
        .unwrap();
    assert!(item.resolved_by.is_none(), "the item is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_in_a_saga_input_is_shown_as_text_and_runs_nothing() {
    let setup = setup().await;
    let (fixture, base) = (setup.fixture, setup.base.clone());
    setup
        .driver
        .run(move |client| async move {
            sign_in(&client, &base, OPERATOR_TOKEN).await;
            open(&client, &format!("{base}/sagas/{}", fixture.script)).await;
            find(&client, "#history").await;
            assert_eq!(dialog_open(&client).await, None, "no dialog opened");
            let input = text(&client, "main pre.json").await;
            assert!(
                input.contains(fixture::SCRIPT_NOTE),
                "the note is shown literally: {input}"
            );
            assert!(
                !input.contains(fixture::CARD_NUMBER),
                "the card is redacted"
            );
            assert_eq!(count(&client, "main script, body > script").await, 0);
            // The page's only script is the console's own.
            let scripts = client
                .execute(
                    "return Array.from(document.scripts).map(function (s) { return s.src; });",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(
                scripts,
                serde_json::json!([format!("{base}/assets/console.js")])
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(dialog_open(&client).await, None, "no dialog opened later");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_shows_a_new_item_without_a_reload() {
    let setup = setup().await;
    let (store, fixture, base) = (Arc::clone(&setup.store), setup.fixture, setup.base.clone());
    setup
        .driver
        .run(move |client| async move {
            sign_in(&client, &base, OPERATOR_TOKEN).await;
            open(&client, &format!("{base}/inbox")).await;
            assert_eq!(inbox_rows(&client).await, [fixture.item.to_string()]);
            // A mark on this very document: a reload would lose it.
            client
                .execute("window.sameDocument = 'yes'; return null;", vec![])
                .await
                .unwrap();

            // Another saga escalates while the page is open.
            let (_, new_item) = fixture::park_another(Arc::clone(&store), 46).await;

            let client2 = client.clone();
            let rows = eventually("the new item's row in the open inbox", PATIENCE, || {
                let client = client2.clone();
                async move {
                    let rows = inbox_rows(&client).await;
                    rows.contains(&new_item.to_string()).then_some(rows)
                }
            })
            .await;
            assert_eq!(rows.len(), 2, "both items: {rows:?}");
            assert!(rows.contains(&fixture.item.to_string()));
            let mark = client
                .execute("return window.sameDocument || null;", vec![])
                .await
                .unwrap();
            assert_eq!(mark, serde_json::json!("yes"), "the page was not reloaded");
            // The new row's actions work like the first one's.
            assert_eq!(
                count(
                    &client,
                    &format!("#inbox tr.item[data-id='{new_item}'] a.resolve")
                )
                .await,
                1
            );
        })
        .await;
}
