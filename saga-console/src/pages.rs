//! The dashboard's pages: the overview, the inbox of open items, a saga's timeline and history,
//! search, and the confirmation pages of every action. Server-rendered; the one small script
//! only refreshes the live parts of a page.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use saga_core::store::overview::Overview;
use saga_core::{InterventionId, SagaFilter, SagaId, SagaSnapshot, SagaStatus, Timestamp};

use crate::api::{batch_bound, parse_id, settle_item, ListQuery};
use crate::auth::{check_forgery, Credentials, COOKIE, CSRF_FIELD};
use crate::error::ConsoleError;
use crate::html::{action_form, badge, error_page, escape, json_block, or_dash, page, see_other};
use crate::views::{time, trace_id, EventView, InterventionView, StepView};
use crate::{Console, Session};

type Shared = State<Arc<Console>>;
type Fields = Form<HashMap<String, String>>;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/", get(overview))
        .route("/live/overview", get(overview_live))
        .route("/inbox", get(inbox))
        .route("/live/inbox", get(inbox_live))
        .route("/inbox/retry-all", get(retry_all_form).post(retry_all))
        .route("/inbox/{id}", get(item))
        .route("/inbox/{id}/{action}", get(settle_form).post(settle))
        .route("/sagas", get(sagas))
        .route("/sagas/{id}", get(saga))
        .route("/sagas/{id}/cancel", get(cancel_form).post(cancel))
}

/// Renders `result`, or an error page.
fn render(
    console: &Console,
    session: &Session,
    result: Result<Response, ConsoleError>,
) -> Response {
    result.unwrap_or_else(|err| error_page(console, Some(session), &err))
}

fn ago(now: Timestamp, at: Timestamp) -> String {
    span((now - at).to_std().unwrap_or_default())
}

/// A duration as a person reads it: `45 s`, `15 min`, `3 h`, `2 d`.
fn span(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3_600),
        s => format!("{} d", s / 86_400),
    }
}

// ---------------------------------------------------------------- overview

async fn overview(State(console): Shared, Extension(session): Extension<Session>) -> Response {
    let result = overview_body(&console).await.map(|body| {
        let live = format!(
            "<div id=\"live\" data-refresh=\"{}\" data-every=\"{}\">{body}</div>",
            escape(&console.path("/live/overview")),
            console.options.refresh.as_millis()
        );
        page(&console, &session, "Overview", &live)
    });
    render(&console, &session, result)
}

async fn overview_live(State(console): Shared, Extension(session): Extension<Session>) -> Response {
    match overview_body(&console).await {
        Ok(body) => Html(body).into_response(),
        Err(err) => error_page(&console, Some(&session), &err),
    }
}

async fn overview_body(console: &Console) -> Result<String, ConsoleError> {
    let options = &console.options;
    let overview = console
        .admin
        .overview(options.window, options.bucket, options.stuck_after)
        .await?;
    let mut out = String::new();
    let open = overview.open_interventions;
    let oldest = overview
        .oldest_open_intervention
        .map_or_else(|| "—".to_owned(), |at| ago(overview.now, at));
    // How long a step phase runs before it counts as stuck, as "15 min".
    let stuck_after = span(options.stuck_after);
    let _ = write!(
        out,
        "<section class=\"cards\">\
         <a class=\"card\" href=\"{inbox}\"><span class=\"n\" id=\"queue-depth\">{open}</span> open items<br><small>oldest {oldest}</small></a>\
         <div class=\"card\"><span class=\"n\">{running}</span> running</div>\
         <div class=\"card\"><span class=\"n\">{compensating}</span> compensating</div>\
         <div class=\"card\"><span class=\"n\">{stuck}</span> stuck over {after}</div></section>",
        inbox = escape(&console.path("/inbox")),
        running = overview.total(SagaStatus::Running),
        compensating = overview.total(SagaStatus::Compensating),
        stuck = overview.stuck.iter().map(|s| s.sagas).sum::<u64>(),
        after = stuck_after,
    );
    out.push_str("<h2>Over time</h2>");
    out.push_str(&chart(&overview));
    out.push_str("<h2>By type and status</h2>");
    out.push_str(&counts_table(console, &overview));
    out.push_str("<h2>Stuck steps</h2>");
    if overview.stuck.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">No step has been running longer than {stuck_after}.</p>"
        );
    } else {
        out.push_str("<table><thead><tr><th>Type</th><th>Step</th><th>Phase</th><th>Sagas</th><th>Longest</th></tr></thead><tbody>");
        for stuck in &overview.stuck {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(stuck.saga_type.as_str()),
                escape(stuck.step.as_str()),
                stuck.phase.as_str(),
                stuck.sagas,
                ago(overview.now, stuck.since)
            );
        }
        out.push_str("</tbody></table>");
    }
    Ok(out)
}

fn counts_table(console: &Console, overview: &Overview) -> String {
    if overview.counts.is_empty() {
        return "<p class=\"muted\">No sagas yet.</p>".to_owned();
    }
    let mut out = String::from(
        "<table id=\"counts\"><thead><tr><th>Type</th><th>Status</th><th>Sagas</th></tr></thead><tbody>",
    );
    for count in &overview.counts {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><a href=\"{}?type={}&amp;status={}\">{}</a></td><td>{}</td></tr>",
            escape(count.saga_type.as_str()),
            escape(&console.path("/sagas")),
            escape(&encode(count.saga_type.as_str())),
            count.status.as_str(),
            badge(count.status.as_str()),
            count.sagas
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The started / completed / compensated / escalated series as an SVG line chart.
fn chart(overview: &Overview) -> String {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    let points = overview.series.len().max(2);
    let max = overview
        .series
        .iter()
        .flat_map(|p| [p.started, p.completed, p.compensated, p.escalated])
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let line = |field: fn(&saga_core::store::overview::SeriesPoint) -> u64| {
        overview
            .series
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let x = i as f64 * W / (points - 1) as f64;
                let y = H - (field(p) as f64 / max) * (H - 10.0);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let total = |field: fn(&saga_core::store::overview::SeriesPoint) -> u64| {
        overview.series.iter().map(field).sum::<u64>()
    };
    format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"sagas over time\">\
         <polyline class=\"started\" fill=\"none\" points=\"{s}\"/>\
         <polyline class=\"completed\" fill=\"none\" points=\"{c}\"/>\
         <polyline class=\"compensated\" fill=\"none\" points=\"{k}\"/>\
         <polyline class=\"escalated\" fill=\"none\" points=\"{e}\"/></svg>\
         <figcaption><span class=\"key started\">started {ts}</span> <span class=\"key completed\">completed {tc}</span> \
         <span class=\"key compensated\">compensated {tk}</span> <span class=\"key escalated\">escalated {te}</span> \
         <span class=\"muted\">since {since}, peak {max} per bucket</span></figcaption></figure>",
        s = line(|p| p.started),
        c = line(|p| p.completed),
        k = line(|p| p.compensated),
        e = line(|p| p.escalated),
        ts = total(|p| p.started),
        tc = total(|p| p.completed),
        tk = total(|p| p.compensated),
        te = total(|p| p.escalated),
        since = overview.series.first().map_or_else(String::new, |p| time(p.start)),
        max = max as u64,
    )
}

/// Percent-encodes a query value.
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

// ---------------------------------------------------------------- inbox

async fn inbox(State(console): Shared, Extension(session): Extension<Session>) -> Response {
    let result = inbox_rows(&console, &session).await.map(|rows| {
        let bulk = if session.principal.can_act() {
            format!(
                "<p><a class=\"button\" id=\"retry-all\" href=\"{}\">Retry several…</a></p>",
                escape(&console.path("/inbox/retry-all"))
            )
        } else {
            String::new()
        };
        let body = format!(
            "{bulk}<table id=\"inbox\"><thead><tr><th>Opened</th><th>Kind</th><th>Saga</th><th>Step</th>\
             <th>Key</th><th>Attempts</th><th>Error</th><th></th></tr></thead>\
             <tbody id=\"live\" data-refresh=\"{}\" data-every=\"{}\">{rows}</tbody></table>",
            escape(&console.path("/live/inbox")),
            console.options.refresh.as_millis()
        );
        page(&console, &session, "Inbox", &body)
    });
    render(&console, &session, result)
}

async fn inbox_live(State(console): Shared, Extension(session): Extension<Session>) -> Response {
    match inbox_rows(&console, &session).await {
        Ok(rows) => Html(rows).into_response(),
        Err(err) => error_page(&console, Some(&session), &err),
    }
}

/// The inbox shows the oldest items up to this many (each row reads its saga).
const INBOX_ROWS: usize = 200;

async fn inbox_rows(console: &Console, session: &Session) -> Result<String, ConsoleError> {
    let items = console.admin.interventions(true).await?;
    if items.is_empty() {
        return Ok("<tr><td colspan=\"8\" class=\"muted\" id=\"inbox-empty\">Nothing waits for a person.</td></tr>".to_owned());
    }
    let now = saga_core::now();
    let mut out = String::new();
    for item in items.iter().take(INBOX_ROWS) {
        let saga = console.admin.show(item.saga_id).await.ok();
        let view = InterventionView::new(item, saga.as_ref(), console.redactor());
        let link = console.path(&format!("/inbox/{}", view.id));
        let actions = if session.principal.can_act() {
            ["retry", "resolve", "cancel"]
                .iter()
                .fold(String::new(), |mut out, action| {
                    let _ = write!(
                        out,
                        "<a class=\"button {action}\" href=\"{}/{action}\">{action}</a> ",
                        escape(&link)
                    );
                    out
                })
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<tr class=\"item\" data-id=\"{id}\"><td>{opened}</td><td>{kind}</td>\
             <td><a href=\"{saga_link}\">{saga_short}</a></td><td>{step} {phase}</td><td><code>{key}</code></td>\
             <td>{attempts}</td><td class=\"error\">{error}</td><td><a href=\"{link}\">open</a> {actions}</td></tr>",
            id = escape(&view.id),
            opened = ago(now, item.opened_at),
            kind = escape(view.kind),
            saga_link = escape(&console.path(&format!("/sagas/{}", view.saga_id))),
            saga_short = escape(&view.saga_id),
            step = or_dash(view.step.as_deref()),
            phase = or_dash(view.phase),
            key = or_dash(view.key.as_deref()),
            attempts = view.attempts.map_or_else(|| "—".to_owned(), |a| a.to_string()),
            error = escape(&view.error),
            link = escape(&link),
        );
    }
    if items.len() > INBOX_ROWS {
        let _ = write!(
            out,
            "<tr><td colspan=\"8\" class=\"muted\">{} more items wait; settle these first (oldest first), or use the API (`GET /api/interventions`).</td></tr>",
            items.len() - INBOX_ROWS
        );
    }
    Ok(out)
}

async fn item(
    State(console): Shared,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let id: InterventionId = parse_id("intervention", &id)?;
        let item = console.admin.intervention(id).await?;
        let saga = console.admin.show(item.saga_id).await.ok();
        Ok(page(
            &console,
            &session,
            "Intervention",
            &item_body(
                &console,
                &session,
                &InterventionView::new(&item, saga.as_ref(), console.redactor()),
            ),
        ))
    }
    .await;
    render(&console, &session, result)
}

fn item_body(console: &Console, session: &Session, view: &InterventionView) -> String {
    let mut out = format!(
        "<dl class=\"facts\"><dt>Status</dt><dd>{status}</dd><dt>Kind</dt><dd>{kind}</dd>\
         <dt>Saga</dt><dd><a href=\"{saga_link}\">{saga}</a></dd><dt>Step</dt><dd>{step} ({phase})</dd>\
         <dt>Key</dt><dd><code>{key}</code></dd><dt>Attempts</dt><dd>{attempts}</dd>\
         <dt>Trace</dt><dd><code>{trace}</code></dd><dt>Opened</dt><dd>{opened}</dd>\
         <dt>Error</dt><dd class=\"error\">{error}</dd></dl>\
         <h2>Input</h2>{input}<h2>Output</h2>{output}",
        status = badge(view.status),
        kind = escape(view.kind),
        saga_link = escape(&console.path(&format!("/sagas/{}", view.saga_id))),
        saga = escape(&view.saga_id),
        step = or_dash(view.step.as_deref()),
        phase = or_dash(view.phase),
        key = or_dash(view.key.as_deref()),
        attempts = view.attempts.map_or_else(|| "—".to_owned(), |a| a.to_string()),
        trace = or_dash(view.trace_id.as_deref()),
        opened = escape(&view.opened_at),
        error = escape(&view.error),
        input = json_block(view.input.as_ref()),
        output = json_block(view.output.as_ref()),
    );
    if let Some(by) = &view.resolved_by {
        let _ = write!(
            out,
            "<p>Settled ({}) by {} at {}: {}</p>",
            or_dash(view.resolution.as_deref()),
            escape(by),
            or_dash(view.resolved_at.as_deref()),
            or_dash(view.resolution_reason.as_deref())
        );
    } else if session.principal.can_act() {
        let link = console.path(&format!("/inbox/{}", view.id));
        out.push_str("<p class=\"actions\">");
        for action in ["retry", "resolve", "cancel"] {
            let _ = write!(
                out,
                "<a class=\"button {action}\" id=\"{action}\" href=\"{}/{action}\">{action}</a> ",
                escape(&link)
            );
        }
        out.push_str("</p>");
    }
    out
}

fn explain(action: &str) -> Result<&'static str, ConsoleError> {
    Ok(match action {
        "retry" => "Run the failed step phase again with the same idempotency key.",
        "resolve" => "Mark the failed compensation as done by hand; the saga goes on compensating.",
        "cancel" => "Stop the saga where it is: it becomes cancelled and nothing more runs.",
        other => {
            return Err(ConsoleError::NotFound(format!(
                "`{other}` is not an action on an item; use retry, resolve or cancel"
            )))
        }
    })
}

async fn settle_form(
    State(console): Shared,
    Extension(session): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let result = async {
        session.operator()?;
        let explanation = explain(&action)?;
        let id: InterventionId = parse_id("intervention", &id)?;
        let item = console.admin.intervention(id).await?;
        if item.status != saga_core::InterventionStatus::Open {
            return Err(ConsoleError::Refused(format!(
                "item {id} is already settled ({} by {}); nothing to do",
                item.resolution.as_deref().unwrap_or("settled"),
                item.resolved_by.as_deref().unwrap_or("someone")
            )));
        }
        let saga = console.admin.show(item.saga_id).await.ok();
        let view = InterventionView::new(&item, saga.as_ref(), console.redactor());
        let body = format!(
            "<p class=\"warning\">{explanation}</p>{form}<hr>{details}",
            form = action_form(
                &session,
                &console.path(&format!("/inbox/{id}/{action}")),
                &format!("Confirm {action}"),
                ""
            ),
            details = item_body(&console, &session, &view),
        );
        Ok(page(
            &console,
            &session,
            &format!("{action} this item?"),
            &body,
        ))
    }
    .await;
    render(&console, &session, result)
}

/// Checks a form post: forgery, role, and a reason; returns (who, reason).
fn posted<'s>(
    session: &'s Session,
    method: &Method,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Result<(&'s str, String), ConsoleError> {
    check_forgery(
        method,
        headers,
        &session.credentials,
        fields.get(CSRF_FIELD).map(String::as_str),
        session.public_origin.as_deref(),
    )?;
    crate::auth::check_anonymous_origin(headers, &session.credentials)?;
    let principal = session.operator()?;
    let reason = fields.get("reason").map(|r| r.trim()).unwrap_or_default();
    if reason.is_empty() {
        return Err(ConsoleError::BadInput(
            "give a reason; it is recorded with your name in the saga's history".to_owned(),
        ));
    }
    Ok((&principal.name, reason.to_owned()))
}

async fn settle(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Fields,
) -> Response {
    let result = async {
        let (by, reason) = posted(&session, &method, &headers, &fields)?;
        let id: InterventionId = parse_id("intervention", &id)?;
        let item = console.admin.intervention(id).await?;
        settle_item(&console, id, &action, by, &reason).await?;
        Ok(see_other(
            &console.path(&format!("/sagas/{}", item.saga_id)),
        ))
    }
    .await;
    render(&console, &session, result)
}

async fn retry_all_form(
    State(console): Shared,
    Extension(session): Extension<Session>,
) -> Response {
    let result = async {
        session.operator()?;
        let open = console.admin.interventions(true).await?.len();
        let max = console.options.max_batch;
        let extra = format!(
            "<label for=\"max\">Retry at most (oldest first; 1 to {max})</label>\
             <input type=\"number\" id=\"max\" name=\"max\" min=\"1\" max=\"{max}\" value=\"{}\" required>",
            open.clamp(1, max)
        );
        let body = format!(
            "<p class=\"warning\">{open} items are open. Each retried item runs its failed step phase again with its own key; one refusal does not stop the others.</p>{}",
            action_form(&session, &console.path("/inbox/retry-all"), "Confirm bulk retry", &extra)
        );
        Ok(page(&console, &session, "Retry several items?", &body))
    }
    .await;
    render(&console, &session, result)
}

async fn retry_all(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Response {
    let result = async {
        let (by, reason) = posted(&session, &method, &headers, &fields)?;
        let max = fields
            .get("max")
            .and_then(|m| m.trim().parse::<usize>().ok())
            .ok_or_else(|| {
                ConsoleError::BadInput("give the bulk retry a bound: a whole number".to_owned())
            })?;
        let results = console
            .admin
            .retry_batch(batch_bound(&console, max)?, by, &reason)
            .await?;
        let mut body = String::from(
            "<table><thead><tr><th>Item</th><th>Saga</th><th>Outcome</th></tr></thead><tbody>",
        );
        for result in &results {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td></tr>",
                result.intervention,
                escape(&console.path(&format!("/sagas/{}", result.saga))),
                result.saga,
                match &result.outcome {
                    Ok(status) => badge(status.as_str()),
                    Err(err) =>
                        format!("<span class=\"error\">{}</span>", escape(&err.to_string())),
                }
            );
        }
        body.push_str("</tbody></table>");
        Ok(page(
            &console,
            &session,
            &format!("Retried {} items", results.len()),
            &body,
        ))
    }
    .await;
    render(&console, &session, result)
}

// ---------------------------------------------------------------- sagas

#[derive(Debug, Default, serde::Deserialize)]
struct SagasQuery {
    q: Option<String>,
    status: Option<String>,
    #[serde(rename = "type")]
    saga_type: Option<String>,
    key: Option<String>,
    older_than: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    waiting_for: Option<String>,
}

impl SagasQuery {
    /// The list's filters (a query string's numbers arrive as text).
    fn list(&self) -> Result<ListQuery, ConsoleError> {
        let limit = match self
            .limit
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                ConsoleError::BadInput(format!(
                    "`{text}` is not a page size; ask for 1 to 500 sagas"
                ))
            })?),
            None => None,
        };
        Ok(ListQuery {
            status: self.status.clone(),
            saga_type: self.saga_type.clone(),
            key: self.key.clone(),
            older_than: self.older_than.clone(),
            after: self.after.clone(),
            limit,
            waiting_for: self.waiting_for.clone(),
            parent: None,
        })
    }

    /// The link to the page after `last`, with every filter kept.
    fn next_page(&self, console: &Console, last: SagaId) -> String {
        let mut link = format!("{}?after={last}", console.path("/sagas"));
        for (name, value) in [
            ("status", &self.status),
            ("type", &self.saga_type),
            ("key", &self.key),
            ("older_than", &self.older_than),
            ("limit", &self.limit),
            ("waiting_for", &self.waiting_for),
        ] {
            if let Some(value) = value {
                let _ = write!(link, "&{name}={}", encode(value));
            }
        }
        link
    }
}

async fn sagas(
    State(console): Shared,
    Extension(session): Extension<Session>,
    Query(query): Query<SagasQuery>,
) -> Response {
    let result = async {
        let needle = query.q.as_deref().map(str::trim).unwrap_or_default();
        if !needle.is_empty() {
            // An id goes straight to its saga; anything else is a start key.
            if let Ok(id) = needle.parse::<SagaId>() {
                if console.admin.show(id).await.is_ok() {
                    return Ok(see_other(&console.path(&format!("/sagas/{id}"))));
                }
            }
            let found = console
                .admin
                .list(&SagaFilter {
                    idempotency_key: Some(saga_core::IdempotencyKey::new(needle)),
                    ..SagaFilter::default()
                })
                .await?;
            if let [one] = found.as_slice() {
                return Ok(see_other(&console.path(&format!("/sagas/{}", one.id))));
            }
            let body = format!(
                "<p class=\"muted\" id=\"not-found\">No saga has the id or start key <code>{}</code>.</p>",
                escape(needle)
            );
            return Ok(page(&console, &session, "Not found", &body));
        }
        let (filter, older_than) = query.list()?.filter()?;
        let records = match older_than {
            Some(age) => console.admin.list_older_than(age, &filter).await?,
            None => console.admin.list(&filter).await?,
        };
        let mut body = String::from(
            "<table id=\"sagas\"><thead><tr><th>Saga</th><th>Type</th><th>Status</th><th>Start key</th><th>Created</th><th>Waiting for</th></tr></thead><tbody>",
        );
        for record in &records {
            let _ = write!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&console.path(&format!("/sagas/{}", record.id))),
                record.id,
                escape(record.saga_type.as_str()),
                badge(record.status.as_str()),
                or_dash(record.idempotency_key.as_ref().map(|k| k.as_str())),
                time(record.created_at),
                or_dash(record.waiting_for.as_deref()),
            );
        }
        body.push_str("</tbody></table>");
        if records.len() == filter.limit_or_default() as usize {
            if let Some(last) = records.last() {
                let _ = write!(
                    body,
                    "<p><a id=\"next-page\" href=\"{}\">Next page</a></p>",
                    escape(&query.next_page(&console, last.id)),
                );
            }
        }
        Ok(page(&console, &session, "Sagas", &body))
    }
    .await;
    render(&console, &session, result)
}

async fn saga(
    State(console): Shared,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let id: SagaId = parse_id("saga", &id)?;
        let snapshot = console.admin.show(id).await?;
        let history = console.admin.history(id).await?;
        let children = console
            .admin
            .list(&SagaFilter {
                parent: Some(id),
                limit: Some(1000),
                ..SagaFilter::default()
            })
            .await?;
        let mut body = saga_body(&console, &session, &snapshot, &history.events);
        // After the saga's facts, before its input.
        let at = body.find("<h2>Input</h2>").unwrap_or(0);
        body.insert_str(at, &family(&console, &snapshot, &children));
        Ok(page(
            &console,
            &session,
            &format!("Saga {}", snapshot.record.saga_type),
            &body,
        ))
    }
    .await;
    render(&console, &session, result)
}

/// A saga's place in its tree: the parent saga (and step) that started it, and the child sagas
/// its steps started, each linked to its own page.
fn family(
    console: &Console,
    snapshot: &SagaSnapshot,
    children: &[saga_core::SagaRecord],
) -> String {
    let mut out = String::new();
    if let Some(parent) = &snapshot.record.parent {
        let _ = write!(
            out,
            "<p id=\"saga-parent\">Child of <a href=\"{href}\">saga <code>{id}</code></a>, started by its step <code>{step}</code></p>",
            href = escape(&console.path(&format!("/sagas/{}", parent.saga))),
            id = parent.saga,
            step = escape(parent.step.as_str()),
        );
    }
    if !children.is_empty() {
        out.push_str(
            "<h2>Children</h2><table id=\"children\"><thead><tr><th>Step</th><th>Child</th><th>Type</th><th>Status</th></tr></thead><tbody>",
        );
        for child in children {
            let _ = write!(
                out,
                "<tr><td>{step}</td><td><a href=\"{href}\"><code>{id}</code></a></td><td>{kind}</td><td>{status}</td></tr>",
                step = or_dash(child.parent.as_ref().map(|parent| parent.step.as_str())),
                href = escape(&console.path(&format!("/sagas/{}", child.id))),
                id = child.id,
                kind = escape(child.saga_type.as_str()),
                status = badge(child.status.as_str()),
            );
        }
        out.push_str("</tbody></table>");
    }
    out
}

fn saga_body(
    console: &Console,
    session: &Session,
    snapshot: &SagaSnapshot,
    events: &[saga_core::Event],
) -> String {
    let record = &snapshot.record;
    let redactor = console.redactor();
    let mut input = record.input.clone();
    redactor.redact(&mut input);
    let mut out = format!(
        "<dl class=\"facts\"><dt>Id</dt><dd><code id=\"saga-id\">{id}</code></dd><dt>Status</dt><dd id=\"saga-status\">{status}</dd>\
         <dt>Why</dt><dd>{reason}</dd><dt>Start key</dt><dd><code>{key}</code></dd><dt>Version</dt><dd>{version}</dd>\
         <dt>Waiting for</dt><dd>{waiting}</dd><dt>Cancel requested</dt><dd>{cancel}</dd><dt>Created</dt><dd>{created}</dd>\
         <dt>Updated</dt><dd>{updated}</dd><dt>Trace</dt><dd><code>{trace}</code></dd></dl><h2>Input</h2>{input}",
        id = record.id,
        status = badge(record.status.as_str()),
        reason = or_dash(
            record
                .status_reason
                .as_deref()
                .map(|r| crate::redact::redact_text(redactor, r))
                .as_deref()
        ),
        key = or_dash(record.idempotency_key.as_ref().map(|k| k.as_str())),
        version = record.version,
        waiting = or_dash(record.waiting_for.as_deref()),
        cancel = or_dash(
            record
                .cancel_requested
                .as_deref()
                .map(|r| crate::redact::redact_text(redactor, r))
                .as_deref()
        ),
        created = time(record.created_at),
        updated = time(record.updated_at),
        trace = or_dash(trace_id(record.trace_context.as_deref()).as_deref()),
        input = json_block(Some(&input)),
    );
    if session.principal.can_act()
        && matches!(record.status, SagaStatus::Running)
        && record.cancel_requested.is_none()
    {
        let _ = write!(
            out,
            "<p class=\"actions\"><a class=\"button cancel\" id=\"cancel-saga\" href=\"{}\">Cancel this saga…</a></p>",
            escape(&console.path(&format!("/sagas/{}/cancel", record.id)))
        );
    }
    out.push_str("<h2>Steps</h2>");
    out.push_str(&timeline(snapshot));
    out.push_str(
        "<table id=\"steps\"><thead><tr><th>#</th><th>Step</th><th>Phase</th><th>Status</th><th>Attempt</th>\
         <th>Began</th><th>Finished</th><th>Took</th><th>Key</th><th>Output</th><th>Last error</th></tr></thead><tbody>",
    );
    for step in &snapshot.steps {
        let view = StepView::new(step, redactor);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"error\">{}</td></tr>",
            view.index,
            escape(&view.name),
            view.phase,
            badge(view.status),
            view.attempt,
            or_dash(view.started_at.as_deref()),
            or_dash(view.finished_at.as_deref()),
            view.duration_ms.map_or_else(|| "—".to_owned(), |ms| format!("{ms} ms")),
            escape(&view.key),
            json_block(view.output.as_ref()),
            or_dash(view.last_error.as_deref()),
        );
    }
    out.push_str("</tbody></table><h2>History</h2><table id=\"history\"><thead><tr><th>#</th><th>At</th><th>Event</th><th>Step</th><th>Attempt</th><th>Detail</th></tr></thead><tbody>");
    for event in events {
        let view = EventView::new(event, redactor);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td></tr>",
            view.seq,
            escape(&view.at),
            escape(view.kind),
            or_dash(view.step.as_deref()),
            or_dash(view.phase),
            view.attempt
                .map_or_else(|| "—".to_owned(), |a| a.to_string()),
            or_dash(view.detail.as_deref()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The step phases as bars on the saga's time line (SVG: no inline styles under the CSP).
fn timeline(snapshot: &SagaSnapshot) -> String {
    let start = snapshot.record.created_at;
    let end = snapshot
        .steps
        .iter()
        .filter_map(|s| s.finished_at.or(s.started_at))
        .chain([snapshot.record.updated_at])
        .max()
        .unwrap_or(start);
    let span = (end - start).num_milliseconds().max(1) as f64;
    let rows = snapshot.steps.len().max(1);
    let (width, row) = (720.0, 18.0);
    let mut bars = String::new();
    for (i, step) in snapshot.steps.iter().enumerate() {
        let Some(began) = step.started_at else {
            continue;
        };
        let finished = step.finished_at.unwrap_or(end);
        let x = (began - start).num_milliseconds().max(0) as f64 / span * (width - 200.0) + 200.0;
        let w =
            ((finished - began).num_milliseconds().max(0) as f64 / span * (width - 200.0)).max(2.0);
        let y = i as f64 * row;
        let _ = write!(
            bars,
            "<text x=\"0\" y=\"{ty:.1}\">{name} ({phase})</text><rect class=\"{status} {phase}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\"><title>{name} {phase}: {status}, attempt {attempt}</title></rect>",
            ty = y + 13.0,
            name = escape(step.name.as_str()),
            phase = step.phase.as_str(),
            status = step.status.as_str(),
            attempt = step.attempt.0,
            h = row - 4.0,
        );
    }
    format!(
        "<figure class=\"timeline\"><svg viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"step timeline\">{bars}</svg></figure>",
        height = rows as f64 * row
    )
}

async fn cancel_form(
    State(console): Shared,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        session.operator()?;
        let id: SagaId = parse_id("saga", &id)?;
        let snapshot = console.admin.show(id).await?;
        let body = format!(
            "<p class=\"warning\">No further step of saga <code>{id}</code> ({}) begins, and the steps it completed are compensated in reverse.</p>{}",
            escape(snapshot.record.saga_type.as_str()),
            action_form(&session, &console.path(&format!("/sagas/{id}/cancel")), "Confirm cancel", "")
        );
        Ok(page(&console, &session, "Cancel this saga?", &body))
    }
    .await;
    render(&console, &session, result)
}

async fn cancel(
    State(console): Shared,
    Extension(session): Extension<Session>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(fields): Fields,
) -> Response {
    let result = async {
        let (by, reason) = posted(&session, &method, &headers, &fields)?;
        let id: SagaId = parse_id("saga", &id)?;
        console.admin.cancel_saga(id, by, &reason).await?;
        Ok(see_other(&console.path(&format!("/sagas/{id}"))))
    }
    .await;
    render(&console, &session, result)
}

// ---------------------------------------------------------------- login

fn login_page(console: &Console, message: Option<&str>) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in · saga console</title>\
         <link rel=\"stylesheet\" href=\"{css}\"></head><body class=\"login\"><main><h1>saga console</h1>{message}\
         <form method=\"post\" action=\"{action}\"><label for=\"token\">Access token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" required autocomplete=\"current-password\">\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form></main></body></html>",
        css = escape(&console.path("/assets/console.css")),
        action = escape(&console.path("/login")),
        message = message.map_or_else(String::new, |m| format!("<p class=\"error\" id=\"error\">{}</p>", escape(m))),
    )
}

pub(crate) async fn login_form(State(console): Shared) -> Response {
    Html(login_page(&console, None)).into_response()
}

pub(crate) async fn login(
    State(console): Shared,
    method: Method,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Response {
    // No session yet: only the origin checks apply (a login forged from another site).
    if let Err(err) = check_forgery(
        &method,
        &headers,
        &Credentials::None,
        None,
        console.options.public_origin.as_deref(),
    ) {
        return error_page(&console, None, &err);
    }
    let token = fields.get("token").map(|t| t.trim()).unwrap_or_default();
    let principal = match &console.options.authorizer {
        Some(authorizer) if !token.is_empty() => authorizer.authorize(token).await,
        _ => None,
    };
    if principal.is_none() || token.contains([';', ',', ' ', '"', '\\']) {
        let mut response = Html(login_page(
            &console,
            Some("That token is not accepted here; ask an operator for yours."),
        ))
        .into_response();
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let cookie = format!(
        "{COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict; Max-Age=43200{secure}",
        path = if console.options.base_path.is_empty() {
            "/"
        } else {
            &console.options.base_path
        },
        secure = if console.options.secure_cookies {
            "; Secure"
        } else {
            ""
        },
    );
    let mut response = see_other(&console.path("/"));
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(crate) async fn logout(
    State(console): Shared,
    method: Method,
    headers: HeaderMap,
    Form(fields): Fields,
) -> Response {
    // Signing someone out from another site is a nuisance, refused like any forged action.
    let credentials = Credentials::from_headers(&headers);
    if let Err(err) = check_forgery(
        &method,
        &headers,
        &credentials,
        fields.get(CSRF_FIELD).map(String::as_str),
        console.options.public_origin.as_deref(),
    ) {
        return error_page(&console, None, &err);
    }
    let mut response = see_other(&console.path("/login"));
    let cookie = format!(
        "{COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0",
        if console.options.base_path.is_empty() {
            "/"
        } else {
            &console.options.base_path
        }
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
