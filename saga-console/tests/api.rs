//! The console's JSON API and its security, driven in process (`tower::ServiceExt::oneshot`) over
//! real stores: every test body runs on SQLite and on Postgres (`sqlite::*`, `postgres::*`).
//!
//! Every response any test receives is also checked for the Content-Security-Policy header and
//! for the card number of the fixture's inputs, which must never leave the server.

#![allow(
    unreachable_pub,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use saga_console::Role;
use saga_core::{SagaId, SagaStatus, Store};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use support::fixture::{
    self, Console, Fixture, CARD_NUMBER, OPERATOR, OPERATOR_TOKEN, VIEWER_TOKEN,
};

/// The host the console is reached at in these tests (what a browser sends as `Host`).
const HOST: &str = "console.test";
/// The console's own origin.
const ORIGIN: &str = "http://console.test";
/// Another site's origin.
const EVIL: &str = "http://evil.example";

// ------------------------------------------------------------------------------------------
// Backends

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What keeps a test's database alive.
enum Keep {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(saga_store::PgStore),
}

async fn store(backend: Backend) -> (Arc<dyn Store>, Keep) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("console.db").display());
            let store = saga_store::SqliteStore::connect(&url).await.unwrap();
            (Arc::new(store), Keep::Sqlite(dir))
        }
        Backend::Postgres => {
            let url = saga_store::testing::TestPg::fresh_database().await.unwrap();
            let store = saga_store::PgStore::connect(&url).await.unwrap();
            (Arc::new(store.clone()), Keep::Postgres(store))
        }
    }
}

/// One test's world: a populated store and the console over it.
struct Env {
    store: Arc<dyn Store>,
    fx: Fixture,
    console: Console,
    keep: Keep,
}

async fn env(backend: Backend) -> Env {
    env_with(backend, fixture::options()).await
}

async fn env_with(backend: Backend, options: saga_console::ConsoleOptions) -> Env {
    let (store, keep) = store(backend).await;
    let fx = fixture::populate(Arc::clone(&store)).await;
    let console = fixture::console_with(Arc::clone(&store), options);
    Env {
        store,
        fx,
        console,
        keep,
    }
}

impl Env {
    async fn finish(self) {
        if let Keep::Postgres(store) = self.keep {
            store.close().await;
        }
    }
}

/// Runs each named test body (an `async fn(Backend)`) on SQLite and on Postgres.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_every_backend!(
    a_saga_page_links_its_parent_and_children,
    overview_counts_sagas_by_status_and_the_open_item,
    saga_list_filters_by_status_type_key_and_age,
    saga_list_pages_with_next_after,
    saga_list_refuses_malformed_filters_with_bad_input,
    one_saga_shows_its_steps,
    history_lists_every_event_of_a_saga,
    interventions_list_open_items_or_all,
    one_intervention_shows_the_failed_compensation,
    unknown_ids_are_not_found_with_exit_code_3,
    resolve_records_who_and_why_and_the_saga_finishes_compensating,
    retry_runs_the_failed_compensation_again,
    cancel_of_an_item_stops_its_saga,
    a_settled_item_acted_on_again_is_refused_with_exit_code_4,
    an_action_without_a_reason_is_refused_with_a_message,
    cancel_of_a_running_saga_compensates_it,
    batch_retry_is_bounded,
    approvals_are_listed_and_decided,
    pauses_are_listed_set_and_lifted,
    prune_deletes_old_finished_sagas_only,
    no_credentials_are_refused_with_401,
    a_wrong_token_is_refused_with_401,
    a_viewer_reads_but_may_not_act,
    a_forged_cross_site_api_post_is_refused,
    a_forged_cross_site_form_post_is_refused,
    the_html_saga_page_escapes_markup_in_inputs,
    redacted_fields_never_leave_the_server,
    every_response_carries_the_security_headers,
    anonymous_access_is_refused_by_default,
    anonymous_access_is_served_to_loopback_peers_only,
    malformed_query_strings_are_json_errors,
    unknown_paths_wrong_methods_and_non_json_actions_are_json_errors,
    a_proxied_request_is_never_anonymous,
    the_sagas_page_keeps_its_filters_on_the_next_page,
);

// ------------------------------------------------------------------------------------------
// Requests

/// How a request proves who it is.
#[derive(Debug, Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

fn request(method: Method, path: &str, auth: Auth<'_>) -> axum::http::request::Builder {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST);
    match auth {
        Auth::None => builder,
        Auth::Bearer(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        Auth::Cookie(token) => builder.header(header::COOKIE, format!("saga_console={token}")),
    }
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {} {}", self.status, self.body))
    }

    /// Asserts the status, and returns the JSON body.
    #[track_caller]
    fn expect(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        self.json()
    }

    /// Asserts a JSON error with this status, code and CLI exit code; returns its message.
    #[track_caller]
    fn expect_error(&self, status: StatusCode, code: &str, exit_code: u64) -> String {
        let body = self.expect(status);
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["exit_code"], exit_code, "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.is_empty(), "an error says what was wrong");
        message
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

impl Env {
    /// Sends `request`; every response must carry the CSP and must not contain the card number.
    async fn send(&self, request: Request<Body>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        let response = self.console.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(bytes.to_vec()).unwrap();
        let csp = headers
            .get(header::CONTENT_SECURITY_POLICY)
            .unwrap_or_else(|| panic!("{what} ({status}) has no Content-Security-Policy"));
        assert!(
            csp.to_str().unwrap().contains("default-src 'self'"),
            "{what}: {csp:?}"
        );
        assert!(
            !body.contains(CARD_NUMBER),
            "{what} ({status}) leaks the card number: {body}"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A GET as `alice` with her bearer token.
    async fn get(&self, path: &str) -> Reply {
        self.get_as(path, Auth::Bearer(OPERATOR_TOKEN)).await
    }

    async fn get_as(&self, path: &str, auth: Auth<'_>) -> Reply {
        self.send(
            request(Method::GET, path, auth)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    /// A JSON POST as `alice` with her bearer token.
    async fn post(&self, path: &str, body: Value) -> Reply {
        self.post_as(path, Auth::Bearer(OPERATOR_TOKEN), body).await
    }

    async fn post_as(&self, path: &str, auth: Auth<'_>, body: Value) -> Reply {
        self.send(
            request(Method::POST, path, auth)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn saga_status(&self, id: SagaId) -> String {
        let body = self
            .get(&format!("/api/sagas/{id}"))
            .await
            .expect(StatusCode::OK);
        body["saga"]["status"].as_str().unwrap().to_owned()
    }

    async fn history(&self, id: SagaId) -> Vec<Value> {
        let body = self
            .get(&format!("/api/sagas/{id}/history"))
            .await
            .expect(StatusCode::OK);
        body["events"].as_array().unwrap().clone()
    }

    /// The details of the saga's `operator_action` events.
    async fn operator_actions(&self, id: SagaId) -> Vec<String> {
        self.history(id)
            .await
            .iter()
            .filter(|event| event["kind"] == "operator_action")
            .map(|event| event["detail"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn item(&self) -> Value {
        self.get(&format!("/api/interventions/{}", self.fx.item))
            .await
            .expect(StatusCode::OK)
    }

    async fn open_items(&self) -> Vec<Value> {
        self.get("/api/interventions").await.expect(StatusCode::OK)["interventions"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// What an action may change, to show that a refused one changed nothing.
    async fn state(&self) -> Value {
        let mut sagas = Vec::new();
        for id in self.fx.sagas() {
            let saga = self
                .get(&format!("/api/sagas/{id}"))
                .await
                .expect(StatusCode::OK);
            let events = self.history(id).await.len();
            sagas.push(json!({
                "status": saga["saga"]["status"],
                "cancel_requested": saga["saga"]["cancel_requested"],
                "updated_at": saga["saga"]["updated_at"],
                "events": events,
            }));
        }
        json!({
            "sagas": sagas,
            "interventions": self.get("/api/interventions?all=true").await.expect(StatusCode::OK),
            "pauses": self.get("/api/pauses?all=true").await.expect(StatusCode::OK),
        })
    }
}

fn sagas_of(body: &Value) -> Vec<String> {
    body["sagas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|saga| saga["id"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(ids: &[SagaId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

fn with_peer(mut request: Request<Body>, peer: &str) -> Request<Body> {
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

/// The `csrf` hidden field of a page's form.
fn csrf_field(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in {html}"))
        + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Snapshots

/// Replaces what differs between runs: the fixture's ids by their names, other UUIDs (also
/// inside keys and messages) by `[id-N]` in order of appearance, times by `[time]`, trace ids,
/// durations and event sequence numbers by placeholders.
struct Normalizer {
    names: HashMap<String, String>,
}

impl Normalizer {
    fn new(fx: &Fixture) -> Self {
        let mut names = HashMap::new();
        for (name, id) in [
            ("completed", fx.completed.to_string()),
            ("compensated", fx.compensated.to_string()),
            ("parked", fx.parked.to_string()),
            ("script", fx.script.to_string()),
            ("awaiting_approval", fx.awaiting_approval.to_string()),
            ("item", fx.item.to_string()),
        ] {
            names.insert(id, format!("[{name}]"));
        }
        Self { names }
    }

    fn value(&mut self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, field)| {
                        let field = match (key.as_str(), field) {
                            ("trace_id", Value::String(_)) => json!("[trace]"),
                            ("duration_ms", Value::Number(_)) => json!("[ms]"),
                            // A store-wide sequence (Postgres's may skip values).
                            ("seq", Value::Number(_)) => json!("[seq]"),
                            _ => self.value(field),
                        };
                        (key.clone(), field)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::String(text) => Value::String(self.text(text)),
            other => other.clone(),
        }
    }

    fn text(&mut self, text: &str) -> String {
        if chrono::DateTime::parse_from_rfc3339(text).is_ok() {
            return "[time]".to_owned();
        }
        let mut out = String::new();
        let mut rest = text;
        while !rest.is_empty() {
            if rest.len() >= 36 && rest.is_char_boundary(36) && is_uuid(&rest[..36]) {
                let next = self.names.len() + 1;
                let name = self
                    .names
                    .entry(rest[..36].to_owned())
                    .or_insert_with(|| format!("[id-{next}]"));
                out.push_str(name);
                rest = &rest[36..];
            } else {
                let c = rest.chars().next().unwrap();
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(n, c)| match n {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ------------------------------------------------------------------------------------------
// Reads

async fn overview_counts_sagas_by_status_and_the_open_item(backend: Backend) {
    let env = env(backend).await;
    let body = env
        .get("/api/overview?window=1h&bucket=1h&stuck_after=15m")
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["open_interventions"], 1);
    let count = |saga_type: &str, status: &str| {
        body["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["saga_type"] == saga_type && c["status"] == status)
            .map_or(0, |c| c["sagas"].as_u64().unwrap())
    };
    assert_eq!(count("order", "completed"), 2);
    assert_eq!(count("order", "compensated"), 1);
    assert_eq!(count("order", "needs_intervention"), 1);
    assert_eq!(count("refund", "running"), 1);
    let started: u64 = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["started"].as_u64().unwrap())
        .sum();
    assert_eq!(started, 5, "every saga started within the hour");
    insta::assert_json_snapshot!("overview", Normalizer::new(&env.fx).value(&body));

    // The default window (24 h by hour) also answers.
    let default = env.get("/api/overview").await.expect(StatusCode::OK);
    assert_eq!(default["open_interventions"], 1);
    // A malformed or impossible window is bad input.
    env.get("/api/overview?window=soon").await.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_input",
        2,
    );
    env.get("/api/overview?window=1h&bucket=2h")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    env.finish().await;
}

async fn saga_list_filters_by_status_type_key_and_age(backend: Backend) {
    let env = env(backend).await;
    let fx = env.fx;
    let all = env.get("/api/sagas").await.expect(StatusCode::OK);
    assert_eq!(
        sagas_of(&all),
        ids(&[
            fx.completed,
            fx.compensated,
            fx.parked,
            fx.script,
            fx.awaiting_approval
        ]),
        "in creation order"
    );
    assert_eq!(all["next_after"], Value::Null);
    insta::assert_json_snapshot!("saga_list", Normalizer::new(&fx).value(&all));

    let cases: [(&str, Vec<SagaId>); 7] = [
        ("status=completed", vec![fx.completed, fx.script]),
        ("status=compensated", vec![fx.compensated]),
        ("status=needs_intervention", vec![fx.parked]),
        ("status=running&type=refund", vec![fx.awaiting_approval]),
        ("type=refund", vec![fx.awaiting_approval]),
        ("key=order-42", vec![fx.completed]),
        ("key=no-such-key", vec![]),
    ];
    for (query, expected) in cases {
        let body = env
            .get(&format!("/api/sagas?{query}"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(sagas_of(&body), ids(&expected), "{query}");
    }
    let order_42 = env
        .get("/api/sagas?key=order-42")
        .await
        .expect(StatusCode::OK);
    assert_eq!(order_42["sagas"][0]["start_key"], "order-42");

    // Nothing is a day old; after a second, everything is older than a second.
    let old = env
        .get("/api/sagas?older_than=1d")
        .await
        .expect(StatusCode::OK);
    assert_eq!(sagas_of(&old), Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let old = env
        .get("/api/sagas?older_than=1s&status=completed")
        .await
        .expect(StatusCode::OK);
    assert_eq!(sagas_of(&old), ids(&[fx.completed, fx.script]));
    env.finish().await;
}

async fn saga_list_pages_with_next_after(backend: Backend) {
    let env = env(backend).await;
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut path = "/api/sagas?limit=2".to_owned();
    loop {
        let body = env.get(&path).await.expect(StatusCode::OK);
        let page = sagas_of(&body);
        assert!(page.len() <= 2, "{body}");
        pages += 1;
        seen.extend(page.clone());
        match body["next_after"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), page.last().map(String::as_str));
                path = format!("/api/sagas?limit=2&after={next}");
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3, "5 sagas in pages of 2");
    let fx = env.fx;
    assert_eq!(
        seen,
        ids(&[
            fx.completed,
            fx.compensated,
            fx.parked,
            fx.script,
            fx.awaiting_approval
        ]),
        "every saga once, in order"
    );
    // Paging combines with a filter.
    let first = env
        .get("/api/sagas?status=completed&limit=1")
        .await
        .expect(StatusCode::OK);
    assert_eq!(sagas_of(&first), ids(&[fx.completed]));
    let next = first["next_after"].as_str().unwrap();
    let second = env
        .get(&format!("/api/sagas?status=completed&limit=1&after={next}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(sagas_of(&second), ids(&[fx.script]));
    env.finish().await;
}

async fn saga_list_refuses_malformed_filters_with_bad_input(backend: Backend) {
    let env = env(backend).await;
    let bad_status = env.get("/api/sagas?status=stuck").await;
    let message = bad_status.expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    assert!(
        message.contains("`stuck` is not a saga status"),
        "{message}"
    );
    assert!(
        message.contains("needs_intervention"),
        "names the statuses: {message}"
    );
    insta::assert_json_snapshot!("error_bad_status", bad_status.json());

    for query in [
        "older_than=yesterday",
        "older_than=5",
        "limit=0",
        "limit=501",
        "after=not-a-saga-id",
    ] {
        let message = env.get(&format!("/api/sagas?{query}")).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            2,
        );
        assert!(!message.is_empty(), "{query}");
    }
    env.finish().await;
}

async fn one_saga_shows_its_steps(backend: Backend) {
    let env = env(backend).await;
    let body = env
        .get(&format!("/api/sagas/{}", env.fx.parked))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["saga"]["id"], env.fx.parked.to_string());
    assert_eq!(body["saga"]["status"], "needs_intervention");
    assert_eq!(body["saga"]["start_key"], "order-44");
    let steps = body["steps"].as_array().unwrap();
    let release = steps
        .iter()
        .find(|s| s["name"] == "reserve_stock" && s["phase"] == "compensation")
        .expect("the release of the stock");
    assert_eq!(release["status"], "failed");
    assert_eq!(
        release["last_error"],
        format!("permanent: {}", fixture::RELEASE_ERROR)
    );
    let charge = steps
        .iter()
        .find(|s| s["name"] == "charge_card" && s["phase"] == "action")
        .expect("the charge");
    assert_eq!(charge["status"], "failed");
    insta::assert_json_snapshot!("saga_detail", Normalizer::new(&env.fx).value(&body));
    env.finish().await;
}

async fn history_lists_every_event_of_a_saga(backend: Backend) {
    let env = env(backend).await;
    let body = env
        .get(&format!("/api/sagas/{}/history", env.fx.parked))
        .await
        .expect(StatusCode::OK);
    let kinds: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"saga_started"));
    assert!(kinds.contains(&"step_failed"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"intervention_opened"), "{kinds:?}");
    let seqs: Vec<i64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    insta::assert_json_snapshot!("history", Normalizer::new(&env.fx).value(&body));
    env.finish().await;
}

async fn interventions_list_open_items_or_all(backend: Backend) {
    let env = env(backend).await;
    let open = env.get("/api/interventions").await.expect(StatusCode::OK);
    let items = open["interventions"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], env.fx.item.to_string());
    assert_eq!(items[0]["saga_id"], env.fx.parked.to_string());
    assert_eq!(items[0]["status"], "open");
    insta::assert_json_snapshot!("interventions", Normalizer::new(&env.fx).value(&open));

    env.post(
        &format!("/api/interventions/{}/resolve", env.fx.item),
        json!({ "reason": "released by hand in the warehouse system" }),
    )
    .await
    .expect(StatusCode::OK);
    assert!(
        env.open_items().await.is_empty(),
        "the settled item is no longer open"
    );
    let all = env
        .get("/api/interventions?all=true")
        .await
        .expect(StatusCode::OK);
    let items = all["interventions"].as_array().unwrap();
    assert_eq!(items.len(), 1, "all items, the settled one too");
    assert_eq!(items[0]["id"], env.fx.item.to_string());
    assert_eq!(items[0]["status"], "resolved");
    assert_eq!(items[0]["resolved_by"], OPERATOR);
    env.finish().await;
}

async fn one_intervention_shows_the_failed_compensation(backend: Backend) {
    let env = env(backend).await;
    let item = env.item().await;
    assert_eq!(item["id"], env.fx.item.to_string());
    assert_eq!(item["saga_id"], env.fx.parked.to_string());
    assert_eq!(item["kind"], "compensation_failed");
    assert_eq!(item["status"], "open");
    assert_eq!(item["step"], "reserve_stock");
    assert_eq!(item["phase"], "compensation");
    assert_eq!(
        item["error"],
        format!(
            "compensation of step `reserve_stock` failed: permanent: {}",
            fixture::RELEASE_ERROR
        )
    );
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["resolved_by"], Value::Null);
    insta::assert_json_snapshot!("intervention", Normalizer::new(&env.fx).value(&item));
    env.finish().await;
}

async fn unknown_ids_are_not_found_with_exit_code_3(backend: Backend) {
    let env = env(backend).await;
    let unknown = "0190c6e2-0000-7000-8000-000000000000";
    let reason = json!({ "reason": "checking" });
    for path in [
        format!("/api/sagas/{unknown}"),
        format!("/api/sagas/{unknown}/history"),
        format!("/api/interventions/{unknown}"),
    ] {
        let message = env
            .get(&path)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found", 3);
        assert!(message.contains(unknown), "{path}: {message}");
    }
    for path in [
        format!("/api/sagas/{unknown}/cancel"),
        format!("/api/interventions/{unknown}/retry"),
        format!("/api/interventions/{unknown}/resolve"),
        format!("/api/interventions/{unknown}/cancel"),
    ] {
        env.post(&path, reason.clone())
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found", 3);
    }
    let not_found = env.get(&format!("/api/sagas/{unknown}")).await;
    insta::assert_json_snapshot!("error_not_found", not_found.json());
    // An action that is not one is not found either; a malformed id is bad input.
    env.post(
        &format!("/api/interventions/{}/frobnicate", env.fx.item),
        reason.clone(),
    )
    .await
    .expect_error(StatusCode::NOT_FOUND, "not_found", 3);
    env.get("/api/sagas/not-an-id")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    assert_eq!(env.item().await["status"], "open");
    env.finish().await;
}

// ------------------------------------------------------------------------------------------
// Actions

async fn resolve_records_who_and_why_and_the_saga_finishes_compensating(backend: Backend) {
    let env = env(backend).await;
    let reason = "released the reservation by hand in the WMS";
    let body = env
        .post(
            &format!("/api/interventions/{}/resolve", env.fx.item),
            json!({ "reason": reason }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "intervention_id": env.fx.item.to_string(),
            "action": "resolve",
            "saga_status": "compensating",
        })
    );
    let item = env.item().await;
    assert_eq!(item["status"], "resolved");
    assert_eq!(item["resolved_by"], OPERATOR);
    assert_eq!(item["resolution_reason"], reason);
    assert!(item["resolved_at"].is_string());
    let actions = env.operator_actions(env.fx.parked).await;
    assert!(
        actions
            .iter()
            .any(|detail| detail.contains(OPERATOR) && detail.contains(reason)),
        "the history records who and why: {actions:?}"
    );
    // The saga moves on: a worker finishes compensating it.
    let status = fixture::drive(Arc::clone(&env.store), env.fx.parked).await;
    assert_eq!(status, SagaStatus::Compensated);
    assert_eq!(env.saga_status(env.fx.parked).await, "compensated");
    env.finish().await;
}

async fn retry_runs_the_failed_compensation_again(backend: Backend) {
    let env = env(backend).await;
    let body = env
        .post(
            &format!("/api/interventions/{}/retry", env.fx.item),
            json!({ "reason": "the warehouse is back" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["action"], "retry");
    assert_eq!(body["saga_status"], "compensating");
    let item = env.item().await;
    assert_ne!(item["status"], "open", "the item is settled: {item}");
    assert_eq!(item["resolved_by"], OPERATOR);
    // The release runs again with the same key; it still fails, so a new item opens.
    let status = fixture::drive(Arc::clone(&env.store), env.fx.parked).await;
    assert_eq!(status, SagaStatus::NeedsIntervention);
    let open = env.open_items().await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_ne!(open[0]["id"], env.fx.item.to_string(), "a new item");
    assert_eq!(open[0]["saga_id"], env.fx.parked.to_string());
    assert_eq!(open[0]["attempts"], 2, "the release was attempted again");
    env.finish().await;
}

async fn cancel_of_an_item_stops_its_saga(backend: Backend) {
    let env = env(backend).await;
    let body = env
        .post(
            &format!("/api/interventions/{}/cancel", env.fx.item),
            json!({ "reason": "the customer's order is void; nothing to release" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["action"], "cancel");
    assert_eq!(body["saga_status"], "cancelled");
    assert_eq!(env.saga_status(env.fx.parked).await, "cancelled");
    let item = env.item().await;
    assert_ne!(item["status"], "open", "{item}");
    assert_eq!(item["resolved_by"], OPERATOR);
    assert!(env.open_items().await.is_empty());
    env.finish().await;
}

async fn a_settled_item_acted_on_again_is_refused_with_exit_code_4(backend: Backend) {
    let env = env(backend).await;
    let path = |action: &str| format!("/api/interventions/{}/{action}", env.fx.item);
    env.post(&path("resolve"), json!({ "reason": "done by hand" }))
        .await
        .expect(StatusCode::OK);
    let before = env.state().await;
    for action in ["resolve", "retry", "cancel"] {
        let refused = env.post(&path(action), json!({ "reason": "again" })).await;
        let message = refused.expect_error(StatusCode::CONFLICT, "refused", 4);
        assert!(message.contains(&env.fx.item.to_string()), "{message}");
        if action == "resolve" {
            insta::assert_json_snapshot!(
                "error_refused",
                Normalizer::new(&env.fx).value(&refused.json())
            );
        }
    }
    assert_eq!(env.state().await, before, "a refusal changes nothing");
    env.finish().await;
}

async fn an_action_without_a_reason_is_refused_with_a_message(backend: Backend) {
    let env = env(backend).await;
    let before = env.state().await;
    let item = env.fx.item;
    let saga = env.fx.awaiting_approval;
    let actions = [
        format!("/api/interventions/{item}/resolve"),
        format!("/api/interventions/{item}/retry"),
        format!("/api/interventions/{item}/cancel"),
        format!("/api/sagas/{saga}/cancel"),
        format!("/api/sagas/{saga}/approve"),
        format!("/api/sagas/{saga}/reject"),
    ];
    for path in &actions {
        for body in [
            json!({}),
            json!({ "reason": "" }),
            json!({ "reason": "   " }),
        ] {
            let message = env.post(path, body.clone()).await.expect_error(
                StatusCode::BAD_REQUEST,
                "bad_input",
                2,
            );
            assert!(message.contains("reason"), "{path} {body}: {message}");
        }
    }
    for (path, body) in [
        ("/api/interventions/retry", json!({ "max": 1 })),
        (
            "/api/interventions/retry",
            json!({ "max": 1, "reason": " " }),
        ),
        ("/api/pauses", json!({ "saga_type": "order" })),
        ("/api/pauses", json!({ "saga_type": "order", "reason": "" })),
        (
            "/api/prune",
            json!({ "older_than": "1s", "limit": 1, "reason": "" }),
        ),
    ] {
        let message = env.post(path, body.clone()).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            2,
        );
        assert!(message.contains("reason"), "{path} {body}: {message}");
    }
    // A body that is not JSON at all says what to send.
    let garbled = env
        .send(
            request(
                Method::POST,
                &format!("/api/interventions/{item}/resolve"),
                Auth::Bearer(OPERATOR_TOKEN),
            )
            .body(Body::from("reason=because"))
            .unwrap(),
        )
        .await;
    let message = garbled.expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    assert!(message.contains("{\"reason\": \"why\"}"), "{message}");
    let blank = env
        .post(
            &format!("/api/interventions/{item}/resolve"),
            json!({ "reason": " " }),
        )
        .await
        .json();
    insta::assert_json_snapshot!("error_no_reason", blank);
    assert_eq!(env.state().await, before, "nothing changed");
    env.finish().await;
}

async fn cancel_of_a_running_saga_compensates_it(backend: Backend) {
    let env = env(backend).await;
    let id = env.fx.awaiting_approval;
    let reason = "the customer withdrew the refund request";
    let body = env
        .post(
            &format!("/api/sagas/{id}/cancel"),
            json!({ "reason": reason }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["saga_id"], id.to_string());
    assert!(
        ["compensating", "requested"].contains(&body["outcome"].as_str().unwrap()),
        "{body}"
    );
    let saga = env
        .get(&format!("/api/sagas/{id}"))
        .await
        .expect(StatusCode::OK);
    assert_ne!(saga["saga"]["status"], "running", "{saga}");
    let actions = env.operator_actions(id).await;
    assert!(
        actions
            .iter()
            .any(|detail| detail.contains(OPERATOR) && detail.contains(reason)),
        "{actions:?}"
    );
    let status = fixture::drive(Arc::clone(&env.store), id).await;
    assert!(
        matches!(status, SagaStatus::Compensated | SagaStatus::Cancelled),
        "{status:?}"
    );
    // A finished saga cannot be cancelled.
    env.post(
        &format!("/api/sagas/{}/cancel", env.fx.completed),
        json!({ "reason": "too late" }),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "refused", 4);
    assert_eq!(env.saga_status(env.fx.completed).await, "completed");
    env.finish().await;
}

async fn batch_retry_is_bounded(backend: Backend) {
    let env = env(backend).await;
    let (_, second) = fixture::park_another(Arc::clone(&env.store), 46).await;
    let (_, third) = fixture::park_another(Arc::clone(&env.store), 47).await;
    assert_eq!(env.open_items().await.len(), 3);

    // Over the console's bound (100 by default), or no bound: refused, nothing retried.
    let before = env.open_items().await;
    for max in [101, 0] {
        let message = env
            .post(
                "/api/interventions/retry",
                json!({ "max": max, "reason": "all of them" }),
            )
            .await
            .expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
        assert!(message.contains("1 to 100"), "{message}");
    }
    assert_eq!(env.open_items().await, before);

    let body = env
        .post(
            "/api/interventions/retry",
            json!({ "max": 2, "reason": "the warehouse is back" }),
        )
        .await
        .expect(StatusCode::OK);
    let retried: Vec<&str> = body["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["saga_status"], "compensating", "{r}");
            r["intervention_id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        retried,
        [env.fx.item.to_string(), second.to_string()],
        "the two oldest"
    );
    let open = env.open_items().await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["id"], third.to_string(), "the third stays open");
    env.finish().await;
}

async fn approvals_are_listed_and_decided(backend: Backend) {
    let env = env(backend).await;
    let id = env.fx.awaiting_approval;
    let pending = env.get("/api/approvals").await.expect(StatusCode::OK);
    let approvals = pending["approvals"].as_array().unwrap();
    assert_eq!(approvals.len(), 1, "{pending}");
    assert_eq!(approvals[0]["saga"]["id"], id.to_string());
    assert_eq!(approvals[0]["step"], "manager_approval");
    let filtered = env
        .get("/api/approvals?type=order")
        .await
        .expect(StatusCode::OK);
    assert_eq!(filtered["approvals"], json!([]));

    // The viewer may not decide; a saga that does not wait cannot be approved.
    env.post_as(
        &format!("/api/sagas/{id}/approve"),
        Auth::Bearer(VIEWER_TOKEN),
        json!({ "reason": "looks fine" }),
    )
    .await
    .expect_error(StatusCode::FORBIDDEN, "forbidden", 4);
    env.post(
        &format!("/api/sagas/{}/approve", env.fx.completed),
        json!({ "reason": "looks fine" }),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "refused", 4);

    let body = env
        .post(
            &format!("/api/sagas/{id}/approve"),
            json!({ "reason": "refund within policy" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["saga_id"], id.to_string());
    assert_eq!(body["decision"], "approved");
    let status = fixture::drive(Arc::clone(&env.store), id).await;
    assert_eq!(status, SagaStatus::Completed);
    let saga = env
        .get(&format!("/api/sagas/{id}"))
        .await
        .expect(StatusCode::OK);
    let paid = saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "pay_refund")
        .unwrap();
    assert_eq!(paid["output"]["approved_by"], OPERATOR);
    let pending = env.get("/api/approvals").await.expect(StatusCode::OK);
    assert_eq!(pending["approvals"], json!([]));
    // Rejecting a finished saga is refused.
    env.post(
        &format!("/api/sagas/{id}/reject"),
        json!({ "reason": "changed my mind" }),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "refused", 4);
    env.finish().await;
}

async fn pauses_are_listed_set_and_lifted(backend: Backend) {
    let env = env(backend).await;
    assert_eq!(
        env.get("/api/pauses").await.expect(StatusCode::OK),
        json!({ "pauses": [] })
    );
    let scope = json!({ "saga_type": "order", "step": "charge_card", "reason": "the PSP is down" });
    let paused = env
        .post("/api/pauses", scope.clone())
        .await
        .expect(StatusCode::OK);
    assert_eq!(paused["already_paused"], false);
    assert_eq!(paused["pause"]["saga_type"], "order");
    assert_eq!(paused["pause"]["step"], "charge_card");
    assert_eq!(paused["pause"]["paused_by"], OPERATOR);
    assert_eq!(paused["pause"]["reason"], "the PSP is down");
    let again = env.post("/api/pauses", scope).await.expect(StatusCode::OK);
    assert_eq!(again["already_paused"], true);
    assert_eq!(
        again["pause"]["id"], paused["pause"]["id"],
        "the first pause stays"
    );

    let listed = env.get("/api/pauses").await.expect(StatusCode::OK);
    assert_eq!(listed["pauses"].as_array().unwrap().len(), 1);
    assert_eq!(listed["pauses"][0]["id"], paused["pause"]["id"]);

    let resumed = env
        .post(
            "/api/pauses/resume",
            json!({ "saga_type": "order", "step": "charge_card", "reason": "the PSP is back" }),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(resumed["woken"], 0);
    assert_eq!(resumed["pause"]["resumed_by"], OPERATOR);
    assert_eq!(resumed["pause"]["resume_reason"], "the PSP is back");
    assert_eq!(
        env.get("/api/pauses").await.expect(StatusCode::OK),
        json!({ "pauses": [] })
    );
    let all = env.get("/api/pauses?all=true").await.expect(StatusCode::OK);
    assert_eq!(all["pauses"].as_array().unwrap().len(), 1);
    assert_eq!(all["pauses"][0]["resumed_by"], OPERATOR);

    // Nothing paused there: refused; no type named: bad input.
    env.post(
        "/api/pauses/resume",
        json!({ "saga_type": "order", "reason": "again" }),
    )
    .await
    .expect_error(StatusCode::CONFLICT, "refused", 4);
    env.post(
        "/api/pauses",
        json!({ "saga_type": " ", "reason": "everything" }),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    env.finish().await;
}

async fn prune_deletes_old_finished_sagas_only(backend: Backend) {
    let env = env(backend).await;
    let prune = |older_than: &str, limit: u64| json!({ "older_than": older_than, "limit": limit, "reason": "retention" });
    let body = env
        .post("/api/prune", prune("30d", 100))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body, json!({ "deleted": 0 }), "nothing is a month old");
    for (body, says) in [
        (prune("1s", 0), "limit"),
        (prune("1s", 100_001), "limit"),
        (prune("soon", 10), "not an age"),
    ] {
        let message = env.post("/api/prune", body).await.expect_error(
            StatusCode::BAD_REQUEST,
            "bad_input",
            2,
        );
        assert!(message.contains(says), "{message}");
    }

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let body = env
        .post("/api/prune", prune("1s", 1))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body, json!({ "deleted": 1 }), "at most the limit");
    let body = env
        .post("/api/prune", prune("1s", 100))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body, json!({ "deleted": 2 }), "the other finished sagas");
    let left = env.get("/api/sagas").await.expect(StatusCode::OK);
    assert_eq!(
        sagas_of(&left),
        ids(&[env.fx.parked, env.fx.awaiting_approval]),
        "a parked or running saga is never pruned"
    );
    assert_eq!(env.open_items().await.len(), 1);
    env.finish().await;
}

// ------------------------------------------------------------------------------------------
// Security

async fn no_credentials_are_refused_with_401(backend: Backend) {
    let env = env(backend).await;
    for path in ["/api/sagas", "/api/overview", "/api/interventions"] {
        env.get_as(path, Auth::None).await.expect_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            4,
        );
    }
    let refused = env
        .post_as(
            &format!("/api/interventions/{}/resolve", env.fx.item),
            Auth::None,
            json!({ "reason": "no token" }),
        )
        .await;
    let message = refused.expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    assert!(
        message.contains("Authorization: Bearer"),
        "says how: {message}"
    );
    insta::assert_json_snapshot!("error_unauthenticated", refused.json());
    assert_eq!(env.item().await["status"], "open");
    // A page without credentials sends the browser to the login form.
    let page = env.get_as("/inbox", Auth::None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.header(header::LOCATION), "/login");
    let login = env.get_as("/login", Auth::None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("name=\"token\""));
    env.finish().await;
}

async fn a_wrong_token_is_refused_with_401(backend: Backend) {
    let env = env(backend).await;
    let wrong = "mallory-guessed-token-123456";
    for auth in [Auth::Bearer(wrong), Auth::Cookie(wrong), Auth::Bearer("")] {
        env.get_as("/api/sagas", auth).await.expect_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            4,
        );
    }
    let basic = env
        .send(
            Request::get("/api/sagas")
                .header(header::HOST, HOST)
                .header(header::AUTHORIZATION, format!("Basic {OPERATOR_TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    basic.expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    env.post_as(
        &format!("/api/interventions/{}/resolve", env.fx.item),
        Auth::Bearer(wrong),
        json!({ "reason": "let me in" }),
    )
    .await
    .expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    assert_eq!(env.item().await["status"], "open");
    // A wrong cookie on a page: back to the login form; a wrong login: refused.
    let page = env.get_as("/", Auth::Cookie(wrong)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let login = env
        .send(
            request(Method::POST, "/login", Auth::None)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(&[("token", wrong)])))
                .unwrap(),
        )
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    assert!(login.headers.get(header::SET_COOKIE).is_none());
    env.finish().await;
}

async fn a_viewer_reads_but_may_not_act(backend: Backend) {
    let env = env(backend).await;
    let viewer = Auth::Bearer(VIEWER_TOKEN);
    let list = env
        .get_as("/api/sagas", viewer)
        .await
        .expect(StatusCode::OK);
    assert_eq!(sagas_of(&list).len(), 5);
    env.get_as("/api/interventions", viewer)
        .await
        .expect(StatusCode::OK);

    let before = env.state().await;
    let item = env.fx.item;
    let saga = env.fx.awaiting_approval;
    let reason = json!({ "reason": "I am only a viewer" });
    let attempts = [
        (format!("/api/interventions/{item}/resolve"), reason.clone()),
        (format!("/api/interventions/{item}/retry"), reason.clone()),
        (format!("/api/interventions/{item}/cancel"), reason.clone()),
        (format!("/api/sagas/{saga}/cancel"), reason.clone()),
        (format!("/api/sagas/{saga}/approve"), reason.clone()),
        (format!("/api/sagas/{saga}/reject"), reason.clone()),
        (
            "/api/interventions/retry".to_owned(),
            json!({ "max": 5, "reason": "all" }),
        ),
        (
            "/api/pauses".to_owned(),
            json!({ "saga_type": "order", "reason": "stop" }),
        ),
        (
            "/api/prune".to_owned(),
            json!({ "older_than": "1s", "limit": 10, "reason": "clean" }),
        ),
    ];
    for (path, body) in attempts {
        let message = env.post_as(&path, viewer, body).await.expect_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            4,
        );
        assert!(message.contains("viewer"), "{path}: {message}");
    }
    assert_eq!(env.state().await, before, "nothing changed");
    assert_eq!(env.get("/api/sagas").await.expect(StatusCode::OK), list);

    // The viewer's session on the pages may not act either, even with its own csrf token.
    let cookie = Auth::Cookie(VIEWER_TOKEN);
    let csrf = saga_console::auth::csrf_token(VIEWER_TOKEN);
    let page = env
        .send(
            request(Method::POST, &format!("/inbox/{item}/resolve"), cookie)
                .header(header::ORIGIN, ORIGIN)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(&[("csrf", &csrf), ("reason", "viewer")])))
                .unwrap(),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert_eq!(env.state().await, before, "nothing changed");
    env.finish().await;
}

async fn a_forged_cross_site_api_post_is_refused(backend: Backend) {
    let env = env(backend).await;
    let path = format!("/api/interventions/{}/resolve", env.fx.item);
    let good = saga_console::auth::csrf_token(OPERATOR_TOKEN);
    let post = |origin: Option<&str>, fetch_site: Option<&str>, csrf: Option<&str>| {
        let mut builder = request(Method::POST, &path, Auth::Cookie(OPERATOR_TOKEN))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(site) = fetch_site {
            builder = builder.header("sec-fetch-site", site);
        }
        if let Some(csrf) = csrf {
            builder = builder.header("x-csrf-token", csrf);
        }
        builder
            .body(Body::from(json!({ "reason": "forged" }).to_string()))
            .unwrap()
    };
    let before = env.state().await;
    for (name, forged) in [
        ("another origin", post(Some(EVIL), None, Some(&good))),
        ("another origin, no token", post(Some(EVIL), None, None)),
        (
            "a cross-site fetch",
            post(None, Some("cross-site"), Some(&good)),
        ),
        ("no anti-forgery token", post(Some(ORIGIN), None, None)),
        (
            "a wrong token",
            post(Some(ORIGIN), None, Some("00112233445566778899aabbccddeeff")),
        ),
        (
            "another session's token",
            post(
                Some(ORIGIN),
                None,
                Some(&saga_console::auth::csrf_token(VIEWER_TOKEN)),
            ),
        ),
    ] {
        let refused = env.send(forged).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{name}: {}",
            refused.body
        );
        assert_eq!(refused.json()["error"]["code"], "forbidden", "{name}");
    }
    assert_eq!(env.state().await, before, "nothing changed");

    // The console's own page: same origin, the session's token.
    let body = env
        .send(post(Some(ORIGIN), Some("same-origin"), Some(&good)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["saga_status"], "compensating");
    let actions = env.operator_actions(env.fx.parked).await;
    assert!(actions.iter().any(|a| a.contains(OPERATOR)), "{actions:?}");
    env.finish().await;
}

async fn a_forged_cross_site_form_post_is_refused(backend: Backend) {
    let env = env(backend).await;
    let item = env.fx.item;
    let cookie = Auth::Cookie(OPERATOR_TOKEN);
    // The confirmation page carries the session's anti-forgery token.
    let confirm = env.get_as(&format!("/inbox/{item}/resolve"), cookie).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    let csrf = csrf_field(&confirm.body);
    assert_eq!(csrf, saga_console::auth::csrf_token(OPERATOR_TOKEN));

    let post = |path: &str, origin: Option<&str>, fields: &[(&str, &str)]| {
        let mut builder = request(Method::POST, path, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        builder.body(Body::from(form(fields))).unwrap()
    };
    let resolve = format!("/inbox/{item}/resolve");
    let cancel_saga = format!("/sagas/{}/cancel", env.fx.awaiting_approval);
    let before = env.state().await;
    for (name, forged) in [
        (
            "another origin",
            post(
                &resolve,
                Some(EVIL),
                &[("csrf", &csrf), ("reason", "forged")],
            ),
        ),
        (
            "no csrf field",
            post(&resolve, Some(ORIGIN), &[("reason", "forged")]),
        ),
        (
            "no csrf, no origin",
            post(&resolve, None, &[("reason", "forged")]),
        ),
        (
            "a wrong csrf field",
            post(
                &resolve,
                Some(ORIGIN),
                &[("csrf", "deadbeef"), ("reason", "forged")],
            ),
        ),
        (
            "a forged saga cancel",
            post(
                &cancel_saga,
                Some(EVIL),
                &[("csrf", &csrf), ("reason", "forged")],
            ),
        ),
        (
            "a forged bulk retry",
            post(
                "/inbox/retry-all",
                None,
                &[("max", "10"), ("reason", "forged")],
            ),
        ),
    ] {
        let refused = env.send(forged).await;
        assert_eq!(
            refused.status,
            StatusCode::FORBIDDEN,
            "{name}: {}",
            refused.body
        );
        assert!(
            refused.body.contains("data-code=\"forbidden\""),
            "{name}: {}",
            refused.body
        );
    }
    // The right token and origin, but no reason: refused, saying so.
    let no_reason = env
        .send(post(
            &resolve,
            Some(ORIGIN),
            &[("csrf", &csrf), ("reason", " ")],
        ))
        .await;
    assert_eq!(no_reason.status, StatusCode::BAD_REQUEST);
    assert!(
        no_reason.body.contains("give a reason"),
        "{}",
        no_reason.body
    );
    assert_eq!(env.state().await, before, "nothing changed");

    // The console's own form: same origin, the right token and a reason.
    let reason = "released by hand";
    let done = env
        .send(post(
            &resolve,
            Some(ORIGIN),
            &[("csrf", &csrf), ("reason", reason)],
        ))
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(
        done.header(header::LOCATION),
        format!("/sagas/{}", env.fx.parked)
    );
    let item = env.item().await;
    assert_eq!(item["resolved_by"], OPERATOR);
    assert_eq!(item["resolution_reason"], reason);
    env.finish().await;
}

async fn a_saga_page_links_its_parent_and_children(backend: Backend) {
    let env = env(backend).await;
    let parent = env.fx.script;
    let stored = env.store.load(parent).await.unwrap().unwrap().record;
    // A child of the fixture's saga, started by a step whose name holds markup.
    let child = SagaId::new();
    env.store
        .create(saga_core::NewSaga {
            id: child,
            saga_type: stored.saga_type.clone(),
            version: stored.version,
            fingerprint: stored.fingerprint.clone(),
            input: json!({ "parcel": 1 }),
            input_hash: "child".into(),
            idempotency_key: None,
            trace_context: None,
            lease: None,
            changes: Vec::new(),
            deadline: None,
            dedup_window: None,
            parent: Some(saga_core::ParentLink {
                saga: parent,
                step: saga_core::StepName::new("ship<b>"),
            }),
        })
        .await
        .unwrap();
    let listed = env
        .get(&format!("/api/sagas?parent={parent}"))
        .await
        .expect(StatusCode::OK);
    let sagas = listed["sagas"].as_array().unwrap();
    assert_eq!(sagas.len(), 1, "{listed}");
    assert_eq!(sagas[0]["id"], child.to_string());
    assert_eq!(sagas[0]["parent_id"], parent.to_string());
    assert_eq!(sagas[0]["parent_step"], "ship<b>");
    let page = env
        .get_as(&format!("/sagas/{child}"), Auth::Cookie(OPERATOR_TOKEN))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("id=\"saga-parent\""), "{}", page.body);
    assert!(
        page.body.contains(&format!("/sagas/{parent}\"")),
        "the parent is linked: {}",
        page.body
    );
    assert!(page.body.contains("ship&lt;b&gt;"), "{}", page.body);
    assert!(!page.body.contains("ship<b>"), "{}", page.body);
    let page = env
        .get_as(&format!("/sagas/{parent}"), Auth::Cookie(OPERATOR_TOKEN))
        .await;
    assert!(page.body.contains("id=\"children\""), "{}", page.body);
    assert!(
        page.body.contains(&format!("/sagas/{child}\"")),
        "the child is linked: {}",
        page.body
    );
    let malformed = env.get("/api/sagas?parent=nope").await;
    assert_eq!(
        malformed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        malformed.body
    );
    env.finish().await;
}

async fn the_html_saga_page_escapes_markup_in_inputs(backend: Backend) {
    let env = env(backend).await;
    let page = env
        .get_as(
            &format!("/sagas/{}", env.fx.script),
            Auth::Cookie(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.header(header::CONTENT_TYPE).starts_with("text/html"));
    assert!(
        page.body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "the note is shown, escaped: {}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    // Searching for markup echoes it escaped.
    let search = env
        .get_as(
            "/sagas?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            Auth::Cookie(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(search.status, StatusCode::OK);
    assert!(
        search.body.contains("&lt;script&gt;alert(1)"),
        "{}",
        search.body
    );
    assert!(!search.body.contains("<script>alert"), "{}", search.body);
    // The API sends the note as JSON, never as HTML.
    let api = env.get(&format!("/api/sagas/{}", env.fx.script)).await;
    assert!(api
        .header(header::CONTENT_TYPE)
        .starts_with("application/json"));
    assert_eq!(api.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(api.json()["saga"]["input"]["note"], fixture::SCRIPT_NOTE);
    env.finish().await;
}

async fn redacted_fields_never_leave_the_server(backend: Backend) {
    let env = env(backend).await;
    let fx = env.fx;
    // `send` checks every response for the card number; here, that it is shown as redacted.
    let saga = env
        .get(&format!("/api/sagas/{}", fx.script))
        .await
        .expect(StatusCode::OK);
    assert_eq!(saga["saga"]["input"]["card_number"], "[redacted]");
    assert_eq!(
        saga["saga"]["input"]["customer"], "ada",
        "other fields stay"
    );
    let list = env.get("/api/sagas?limit=500").await.expect(StatusCode::OK);
    for saga in list["sagas"].as_array().unwrap() {
        if saga["saga_type"] == "order" {
            assert_eq!(saga["input"]["card_number"], "[redacted]", "{saga}");
        }
    }
    let item = env.item().await;
    if let Some(input) = item["input"].as_object() {
        assert_eq!(input["card_number"], "[redacted]", "{item}");
    }
    let html = env
        .get_as(
            &format!("/sagas/{}", fx.script),
            Auth::Cookie(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(html.status, StatusCode::OK);
    assert!(html.body.contains("[redacted]"), "{}", html.body);
    // Every other read, as JSON and as pages.
    let cookie = Auth::Cookie(OPERATOR_TOKEN);
    for id in fx.sagas() {
        env.get(&format!("/api/sagas/{id}"))
            .await
            .expect(StatusCode::OK);
        env.get(&format!("/api/sagas/{id}/history"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(
            env.get_as(&format!("/sagas/{id}"), cookie).await.status,
            StatusCode::OK
        );
    }
    for path in [
        "/api/interventions?all=true",
        "/api/approvals",
        "/api/overview",
    ] {
        env.get(path).await.expect(StatusCode::OK);
    }
    for path in [
        "/".to_owned(),
        "/inbox".to_owned(),
        "/live/inbox".to_owned(),
        "/sagas".to_owned(),
        format!("/inbox/{}", fx.item),
        format!("/inbox/{}/retry", fx.item),
    ] {
        assert_eq!(
            env.get_as(&path, cookie).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    env.finish().await;
}

async fn every_response_carries_the_security_headers(backend: Backend) {
    let env = env(backend).await;
    let replies = [
        env.get("/api/sagas").await,
        env.get_as("/api/sagas", Auth::None).await,
        env.get("/api/sagas/0190c6e2-0000-7000-8000-000000000000")
            .await,
        env.post_as(
            &format!("/api/interventions/{}/retry", env.fx.item),
            Auth::Bearer(VIEWER_TOKEN),
            json!({ "reason": "x" }),
        )
        .await,
        env.get_as("/", Auth::Cookie(OPERATOR_TOKEN)).await,
        env.get_as("/inbox", Auth::None).await,
        env.get_as("/login", Auth::None).await,
        env.get_as("/assets/console.css", Auth::None).await,
        env.get_as("/assets/console.js", Auth::None).await,
    ];
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 401, 404, 403, 200, 303, 200, 200, 200]);
    for reply in &replies {
        let csp = reply.header(header::CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(reply.header(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        assert_eq!(reply.header(header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(reply.header(header::CACHE_CONTROL), "no-store");
    }
    // A login sets an HttpOnly, SameSite=Strict session cookie.
    let login = env
        .send(
            request(Method::POST, "/login", Auth::None)
                .header(header::ORIGIN, ORIGIN)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(&[("token", OPERATOR_TOKEN)])))
                .unwrap(),
        )
        .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER);
    let cookie = login.header(header::SET_COOKIE);
    assert!(cookie.starts_with("saga_console="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    env.finish().await;
}

async fn anonymous_access_is_refused_by_default(backend: Backend) {
    let env = env(backend).await;
    for peer in ["127.0.0.1:50000", "[::1]:50000", "203.0.113.7:50000"] {
        let api = env
            .send(with_peer(
                request(Method::GET, "/api/sagas", Auth::None)
                    .body(Body::empty())
                    .unwrap(),
                peer,
            ))
            .await;
        api.expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
        let page = env
            .send(with_peer(
                request(Method::GET, "/inbox", Auth::None)
                    .body(Body::empty())
                    .unwrap(),
                peer,
            ))
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{peer}");
    }
    env.finish().await;
}

async fn anonymous_access_is_served_to_loopback_peers_only(backend: Backend) {
    let env = env_with(
        backend,
        fixture::options().anonymous_on_loopback(Role::Viewer),
    )
    .await;
    let get = |peer: Option<&str>, host: &str| {
        let request = Request::get("/api/sagas")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        match peer {
            Some(peer) => with_peer(request, peer),
            None => request,
        }
    };
    for peer in ["127.0.0.1:50000", "127.8.9.10:50000", "[::1]:50000"] {
        let body = env
            .send(get(Some(peer), "127.0.0.1:8080"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(sagas_of(&body).len(), 5, "{peer}");
    }
    for host in [
        "localhost:8080",
        "[::1]:8080",
        "console.localhost:8080",
        "127.0.0.1",
    ] {
        let local = env.send(get(Some("127.0.0.1:50000"), host)).await;
        assert_eq!(local.status, StatusCode::OK, "{host}");
    }
    // From another machine, or with no peer address known: credentials needed.
    for peer in ["203.0.113.7:50000", "10.0.0.8:50000", "[2001:db8::1]:50000"] {
        env.send(get(Some(peer), "127.0.0.1:8080"))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    }
    env.send(get(None, "127.0.0.1:8080")).await.expect_error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        4,
    );
    // A page of another site whose name resolves to 127.0.0.1 (DNS rebinding) is no local user.
    for host in [
        "evil.example:8080",
        "localhost.evil.example:8080",
        "198.51.100.4:8080",
    ] {
        env.send(get(Some("127.0.0.1:50000"), host))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    }
    // A token that is wrong is refused even from the loopback interface.
    let wrong = with_peer(
        request(
            Method::GET,
            "/api/sagas",
            Auth::Bearer("mallory-guessed-token-123456"),
        )
        .body(Body::empty())
        .unwrap(),
        "127.0.0.1:50000",
    );
    env.send(wrong)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    // Anonymous here is a viewer: it may not act.
    let before = env.state().await;
    let act = with_peer(
        Request::post(format!("/api/interventions/{}/resolve", env.fx.item))
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "reason": "anonymous" }).to_string()))
            .unwrap(),
        "127.0.0.1:50000",
    );
    env.send(act)
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden", 4);
    assert_eq!(env.state().await, before);
    env.finish().await;

    // An anonymous operator acts from the loopback interface, recorded as such.
    let env = env_with(
        backend,
        fixture::options().anonymous_on_loopback(Role::Operator),
    )
    .await;
    let bare = with_peer(
        Request::post(format!("/api/interventions/{}/resolve", env.fx.item))
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "reason": "fixed locally" }).to_string()))
            .unwrap(),
        "127.0.0.1:50000",
    );
    env.send(bare)
        .await
        .expect_error(StatusCode::FORBIDDEN, "forbidden", 4);
    assert_eq!(
        env.item().await["status"],
        "open",
        "an anonymous action must say where it comes from (Origin)"
    );
    let act = |peer: &str| {
        with_peer(
            Request::post(format!("/api/interventions/{}/resolve", env.fx.item))
                .header(header::HOST, "127.0.0.1:8080")
                .header(header::ORIGIN, "http://127.0.0.1:8080")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({ "reason": "fixed locally" }).to_string()))
                .unwrap(),
            peer,
        )
    };
    env.send(act("198.51.100.4:50000")).await.expect_error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        4,
    );
    assert_eq!(env.item().await["status"], "open");
    env.send(act("127.0.0.1:50000"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(env.item().await["resolved_by"], "anonymous (loopback)");
    env.finish().await;
}

async fn malformed_query_strings_are_json_errors(backend: Backend) {
    let env = env(backend).await;
    for path in [
        "/api/sagas?limit=many",
        "/api/sagas?limit=-1",
        "/api/interventions?all=maybe",
        "/api/pauses?all=2",
    ] {
        let message = env
            .get(path)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
        assert!(!message.is_empty(), "{path}");
    }
    env.finish().await;
}

async fn unknown_paths_wrong_methods_and_non_json_actions_are_json_errors(backend: Backend) {
    let env = env(backend).await;
    let message =
        env.get("/api/no-such-thing")
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found", 3);
    assert!(message.contains("/api/no-such-thing"), "{message}");
    let wrong = env
        .send(
            request(Method::DELETE, "/api/sagas", Auth::Bearer(OPERATOR_TOKEN))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    wrong.expect_error(StatusCode::METHOD_NOT_ALLOWED, "bad_input", 2);
    // A form another site could post as text/plain carries JSON: refused, nothing changes.
    let plain = env
        .send(
            request(
                Method::POST,
                &format!("/api/interventions/{}/resolve", env.fx.item),
                Auth::Bearer(OPERATOR_TOKEN),
            )
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(
                json!({ "reason": "looks like JSON" }).to_string(),
            ))
            .unwrap(),
        )
        .await;
    let message = plain.expect_error(StatusCode::BAD_REQUEST, "bad_input", 2);
    assert!(message.contains("application/json"), "{message}");
    assert_eq!(env.item().await["status"], "open");
    env.finish().await;
}

async fn a_proxied_request_is_never_anonymous(backend: Backend) {
    let env = env_with(
        backend,
        fixture::options().anonymous_on_loopback(Role::Operator),
    )
    .await;
    for (name, value) in [
        ("x-forwarded-for", "198.51.100.4"),
        ("forwarded", "for=198.51.100.4"),
        ("via", "1.1 proxy"),
        ("x-real-ip", "198.51.100.4"),
    ] {
        let proxied = with_peer(
            Request::get("/api/sagas")
                .header(header::HOST, "localhost:8080")
                .header(name, value)
                .body(Body::empty())
                .unwrap(),
            "127.0.0.1:50000",
        );
        env.send(proxied)
            .await
            .expect_error(StatusCode::UNAUTHORIZED, "unauthenticated", 4);
    }
    let direct = with_peer(
        Request::get("/api/sagas")
            .header(header::HOST, "localhost:8080")
            .body(Body::empty())
            .unwrap(),
        "127.0.0.1:50000",
    );
    env.send(direct).await.expect(StatusCode::OK);
    env.finish().await;
}

async fn the_sagas_page_keeps_its_filters_on_the_next_page(backend: Backend) {
    let env = env(backend).await;
    let page = env
        .get_as(
            "/sagas?status=completed&limit=1&older_than=0s",
            Auth::Bearer(OPERATOR_TOKEN),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let link = page
        .body
        .split("id=\"next-page\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a full page links to the next: {}", page.body))
        .replace("&amp;", "&");
    for kept in ["status=completed", "limit=1", "older_than=0s", "after="] {
        assert!(link.contains(kept), "{link} keeps {kept}");
    }
    let next = env.get_as(&link, Auth::Bearer(OPERATOR_TOKEN)).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.body);
    assert!(
        next.body.contains("completed") && !next.body.contains(">compensated<"),
        "the next page is filtered too"
    );
    env.finish().await;
}
