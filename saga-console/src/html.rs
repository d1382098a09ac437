//! Server-rendered HTML: escaping, the page layout, and small pieces pages share.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use crate::error::ConsoleError;
use crate::{Console, Session};

/// `text` with `& < > " '` escaped: safe in element content and in quoted attributes.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An optional text, escaped, or an em dash.
pub(crate) fn or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "—".to_owned(), escape)
}

/// A JSON value, pretty-printed and escaped, in a `<pre>`.
pub(crate) fn json_block(value: Option<&Value>) -> String {
    match value {
        Some(value) => format!(
            "<pre class=\"json\">{}</pre>",
            escape(&serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()))
        ),
        None => "<span class=\"muted\">—</span>".to_owned(),
    }
}

/// A whole page: the navigation, who is signed in, and `body`.
pub(crate) fn page(console: &Console, session: &Session, title: &str, body: &str) -> Response {
    let nav = [("/", "Overview"), ("/inbox", "Inbox"), ("/sagas", "Sagas")]
        .iter()
        .fold(String::new(), |mut out, (path, label)| {
            let _ = write!(
                out,
                "<a href=\"{}\">{label}</a>",
                escape(&console.path(path))
            );
            out
        });
    let logout = match session.credentials {
        crate::auth::Credentials::Cookie(_) => format!(
            "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" class=\"link\">Sign out</button></form>",
            escape(&console.path("/logout")),
            escape(&session.csrf())
        ),
        _ => String::new(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · saga console</title>\
         <link rel=\"stylesheet\" href=\"{css}\"><script src=\"{js}\" defer></script></head>\
         <body><header><strong>saga console</strong><nav>{nav}</nav>\
         <form class=\"search\" method=\"get\" action=\"{sagas}\"><input type=\"search\" name=\"q\" \
         placeholder=\"saga id or start key\" aria-label=\"Find a saga\" id=\"search\"></form>\
         <span class=\"who\" id=\"who\">{who} ({role}){logout}</span></header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title),
        css = escape(&console.path("/assets/console.css")),
        js = escape(&console.path("/assets/console.js")),
        sagas = escape(&console.path("/sagas")),
        who = escape(&session.principal.name),
        role = session.principal.role.as_str(),
    );
    Html(html).into_response()
}

/// A page that says what went wrong.
pub(crate) fn error_page(
    console: &Console,
    session: Option<&Session>,
    err: &ConsoleError,
) -> Response {
    let body = format!(
        "<p class=\"error\" id=\"error\" data-code=\"{code}\">{message}</p><p><a href=\"{home}\">Back to the overview</a></p>",
        code = err.code(),
        message = escape(&err.to_string()),
        home = escape(&console.path("/")),
    );
    let mut response = match session {
        Some(session) => page(console, session, "Refused", &body),
        None => Html(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Refused</title></head><body>{body}</body></html>"
        ))
        .into_response(),
    };
    *response.status_mut() = err.status();
    response
}

/// A form that posts to `action` with the session's anti-forgery token, a required reason and
/// `extra` fields, submitted by a button labelled `label`.
pub(crate) fn action_form(session: &Session, action: &str, label: &str, extra: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{action}\" class=\"confirm\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{extra}\
         <label for=\"reason\">Reason (recorded with your name)</label>\
         <textarea id=\"reason\" name=\"reason\" required minlength=\"3\" rows=\"3\"></textarea>\
         <button type=\"submit\" id=\"confirm\">{label}</button></form>",
        action = escape(action),
        csrf = escape(&session.csrf()),
        label = escape(label),
    )
}

/// A status as a labelled badge.
pub(crate) fn badge(status: &str) -> String {
    format!(
        "<span class=\"badge {class}\">{text}</span>",
        class = escape(status),
        text = escape(&status.replace('_', " "))
    )
}

/// The redirect after a POST (303: the browser follows with a GET).
pub(crate) fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, location.to_owned())],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
