//! The operator console of saga: an HTTP admin API and a server-rendered web dashboard over the
//! same actions as the `saga` CLI, as an axum [`Router`] to mount in your own service (or run
//! stand-alone with `saga serve`).
//!
//! - **Secure by default**: no request is served without credentials an [`Authorizer`] accepts
//!   (bearer tokens out of the box: [`Tokens`]), unless anonymous access is configured, and then
//!   only from the loopback interface. Viewers read; operators act. Every action requires a
//!   reason, and who and why are recorded in the saga's history.
//! - **Safe against cross-site requests**: the API takes bearer headers (no ambient authority);
//!   the dashboard's session cookie is `HttpOnly` and `SameSite=Strict`, and every form carries
//!   an anti-forgery token derived from the session.
//! - **Escaped and redacted**: every value is escaped in HTML, and a [`Redactor`] hides fields
//!   (card numbers, emails) before anything leaves the server.
//!
//! ```no_run
//! use std::sync::Arc;
//! use saga_console::{ConsoleOptions, RedactFields, Role, Tokens};
//!
//! # async fn run(admin: saga_core::Admin) -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = Tokens::new()
//!     .with("alice", Role::Operator, "a-long-random-operator-token")?
//!     .with("dashboards", Role::Viewer, "a-long-random-viewer-token")?;
//! let options = ConsoleOptions::new(Arc::new(tokens))
//!     .base_path("/console")
//!     .redact(Arc::new(RedactFields::new(["card_number", "email"])));
//! let app = axum::Router::new().nest("/console", saga_console::router(admin, options));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```

mod api;
pub mod auth;
mod error;
mod html;
mod pages;
pub mod redact;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use saga_core::Admin;

pub use auth::{Authorizer, Principal, Role, Tokens};
pub use error::ConsoleError;
pub use redact::{RedactFields, Redactor};

/// How the console authenticates, redacts and reads.
#[derive(Clone)]
pub struct ConsoleOptions {
    authorizer: Option<Arc<dyn Authorizer>>,
    anonymous_on_loopback: Option<Role>,
    redactor: Option<Arc<dyn Redactor>>,
    base_path: String,
    secure_cookies: bool,
    stuck_after: Duration,
    window: Duration,
    bucket: Duration,
    refresh: Duration,
    max_batch: usize,
    public_origin: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for ConsoleOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOptions")
            .field("authorizer", &self.authorizer.is_some())
            .field("anonymous_on_loopback", &self.anonymous_on_loopback)
            .field("redactor", &self.redactor.is_some())
            .field("base_path", &self.base_path)
            .field("secure_cookies", &self.secure_cookies)
            .field("stuck_after", &self.stuck_after)
            .finish_non_exhaustive()
    }
}

impl ConsoleOptions {
    /// Requests are authorized by `authorizer` (for example [`Tokens`]).
    pub fn new(authorizer: Arc<dyn Authorizer>) -> Self {
        Self {
            authorizer: Some(authorizer),
            ..Self::refusing_everyone()
        }
    }

    /// No authorizer: every request is refused until one (or anonymous loopback access) is
    /// configured.
    pub fn refusing_everyone() -> Self {
        Self {
            authorizer: None,
            anonymous_on_loopback: None,
            redactor: None,
            base_path: String::new(),
            secure_cookies: false,
            stuck_after: Duration::from_secs(15 * 60),
            window: Duration::from_secs(24 * 60 * 60),
            bucket: Duration::from_secs(60 * 60),
            refresh: Duration::from_secs(5),
            max_batch: 100,
            public_origin: None,
        }
    }

    /// For development on your own machine: requests without credentials that come from the
    /// loopback interface, sent to a loopback host name (`localhost`, `127.0.0.1`, `[::1]`), are
    /// served as `anonymous` with `role` (and recorded as such). Requests from anywhere else
    /// still need credentials; so do requests whose peer address the server does not pass on
    /// (serve with `into_make_service_with_connect_info::<SocketAddr>()`), and requests sent to
    /// another name (a page of another site whose name resolves to 127.0.0.1), and requests a
    /// proxy says it relayed (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `Via`). An action
    /// without credentials must also carry `Origin` or `Sec-Fetch-Site` of this console, as a
    /// browser's do.
    pub fn anonymous_on_loopback(mut self, role: Role) -> Self {
        self.anonymous_on_loopback = Some(role);
        self
    }

    /// Hides fields with `redactor` before anything leaves the server.
    pub fn redact(mut self, redactor: Arc<dyn Redactor>) -> Self {
        self.redactor = Some(redactor);
        self
    }

    /// Where the router is mounted (`/console` for `Router::nest("/console", ...)`): links and
    /// the session cookie's path start with it. Default: the root.
    pub fn base_path(mut self, path: &str) -> Self {
        self.base_path = path.trim_end_matches('/').to_owned();
        self
    }

    /// Marks the session cookie `Secure` (sent over HTTPS only). Turn it on whenever the
    /// console is reached over HTTPS, as it should be beyond a developer's machine.
    pub fn secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// The origin browsers reach the console at (`https://ops.example.com`), when a proxy in
    /// front of it rewrites `Host`: a form post's `Origin` must then be exactly this. Without
    /// it, `Origin` must match the request's `Host`.
    pub fn public_origin(mut self, origin: &str) -> Self {
        self.public_origin = Some(origin.trim_end_matches('/').into());
        self
    }

    /// A step phase begun longer ago than this is shown as stuck (default 15 minutes).
    pub fn stuck_after(mut self, age: Duration) -> Self {
        self.stuck_after = age;
        self
    }

    /// The overview's chart covers `window` in buckets of `bucket` (default 24 hours by hour).
    pub fn chart(mut self, window: Duration, bucket: Duration) -> Self {
        self.window = window;
        self.bucket = bucket;
        self
    }

    /// How often open pages look for news (default 5 seconds).
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    /// The largest bound a bulk retry may be given (default 100).
    pub fn max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }
}

/// What every handler shares.
pub(crate) struct Console {
    pub(crate) admin: Admin,
    pub(crate) options: ConsoleOptions,
}

impl Console {
    pub(crate) fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.options.base_path)
    }

    pub(crate) fn redactor(&self) -> &dyn Redactor {
        static NONE: RedactFields = RedactFields::none();
        self.options
            .redactor
            .as_deref()
            .unwrap_or(&NONE as &dyn Redactor)
    }
}

/// Who is asking, and how they proved it; put on every authenticated request.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) principal: Principal,
    pub(crate) credentials: auth::Credentials,
    /// The console's configured public origin, if any (see [`ConsoleOptions::public_origin`]).
    pub(crate) public_origin: Option<std::sync::Arc<str>>,
}

impl Session {
    /// The anti-forgery token the session's forms carry (empty for bearer or anonymous access).
    pub(crate) fn csrf(&self) -> String {
        match &self.credentials {
            auth::Credentials::Cookie(token) => auth::csrf_token(token),
            _ => String::new(),
        }
    }

    /// Refuses a viewer.
    pub(crate) fn operator(&self) -> Result<&Principal, ConsoleError> {
        if self.principal.can_act() {
            Ok(&self.principal)
        } else {
            Err(ConsoleError::Forbidden(format!(
                "{} is a viewer and may not act; ask for an operator's token",
                self.principal.name
            )))
        }
    }
}

/// The console: the JSON API under `/api`, the dashboard's pages, its login and its assets.
/// Mount it with `Router::nest` (and tell [`ConsoleOptions::base_path`] where).
pub fn router(admin: Admin, options: ConsoleOptions) -> Router {
    let console = Arc::new(Console { admin, options });
    let protected = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&console),
            authenticate,
        ));
    Router::new()
        .merge(protected)
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/assets/console.css", get(css))
        .route("/assets/console.js", get(js))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// Serves `app` (a console router, or your service with one nested) on `listener` until
/// `shutdown` completes, passing each connection's peer address on (which anonymous loopback
/// access needs).
///
/// # Errors
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn authenticate(
    State(console): State<Arc<Console>>,
    mut request: Request,
    next: Next,
) -> Response {
    let credentials = auth::Credentials::from_headers(request.headers());
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let principal = match (credentials.token(), &console.options.authorizer) {
        (Some(token), Some(authorizer)) => authorizer.authorize(token).await,
        (None, _) => console
            .options
            .anonymous_on_loopback
            .filter(|_| {
                auth::is_loopback(peer)
                    && !auth::proxied(request.headers())
                    && auth::names_loopback(
                        request.headers(),
                        request.uri().authority().map(|a| a.as_str()),
                    )
            })
            .map(|role| Principal {
                name: "anonymous (loopback)".to_owned(),
                role,
            }),
        (Some(_), None) => None,
    };
    let Some(principal) = principal else {
        let api = request.uri().path().starts_with("/api");
        return if api {
            api::error_response(&ConsoleError::Unauthenticated)
        } else {
            Redirect::to(&console.path("/login")).into_response()
        };
    };
    request.extensions_mut().insert(Session {
        principal,
        credentials,
        public_origin: console.options.public_origin.clone(),
    });
    next.run(request).await
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null` with
    // the console's own form posts, which the forgery check (rightly) refuses. Saga ids in URLs
    // still never leave for another site.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::method_not_allowed()
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "this page does not take that method; use the console's links and forms",
        )
            .into_response()
    }
}

async fn css() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/console.js"),
    )
}
