//! Who is asking, and what they may do.
//!
//! Every request names a principal, or is refused: an `Authorization: Bearer <token>` header
//! (scripts, the API), or the console's session cookie that the login form sets from the same
//! token (the browser). An [`Authorizer`] turns a token into a [`Principal`]; [`Tokens`] is the
//! one that comes with the console. Viewers read; operators also act. Anonymous access exists
//! only when configured, and only from the loopback interface.

use std::net::SocketAddr;

use async_trait::async_trait;
use axum::http::{header, HeaderMap, Method};
use sha2::{Digest, Sha256};

use crate::error::ConsoleError;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads sagas, histories, the inbox and the overview.
    Viewer,
    /// Reads, and acts: retries, resolves, cancels, approves, pauses, prunes.
    Operator,
}

impl Role {
    /// `viewer` or `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// Someone the console knows: recorded as who acted on every action they take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The name recorded in the saga's history.
    pub name: String,
    /// What they may do.
    pub role: Role,
}

impl Principal {
    /// Whether they may act (retry, resolve, cancel, approve, pause, prune).
    pub fn can_act(&self) -> bool {
        self.role == Role::Operator
    }
}

/// Turns a presented token into a principal, or refuses it. Implement it to plug in your own
/// authentication (a session store, signed tokens); [`Tokens`] is the built-in one.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// The principal `token` names, or `None` to refuse it.
    async fn authorize(&self, token: &str) -> Option<Principal>;
}

/// Bearer tokens, each naming a principal. Only the tokens' SHA-256 digests are kept, and every
/// check compares against all of them in constant time.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Principal)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field(
                "principals",
                &self
                    .entries
                    .iter()
                    .map(|(_, principal)| principal)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// No tokens yet: everyone is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token` for `name` with `role`.
    ///
    /// # Errors
    /// [`ConsoleError::BadInput`] for an empty name, a token shorter than [`MIN_TOKEN_LEN`] or
    /// one already given to someone else.
    pub fn with(
        mut self,
        name: &str,
        role: Role,
        token: &str,
    ) -> std::result::Result<Self, ConsoleError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ConsoleError::BadInput(
                "a console token needs the name of whom it belongs to".to_owned(),
            ));
        }
        if !token
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, ';' | ',' | '"' | '\\'))
        {
            return Err(ConsoleError::BadInput(format!(
                "the console token of `{name}` holds a character a cookie cannot carry (a space, `;`, `,`, `\"`, `\\` or a non-ASCII one); use letters, digits and `-_.~`, as `openssl rand -hex 24` gives"
            )));
        }
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(ConsoleError::BadInput(format!(
                "the console token of `{name}` is shorter than {MIN_TOKEN_LEN} characters; use a long random one (for example `openssl rand -hex 24`)"
            )));
        }
        let digest = digest(token);
        if self.entries.iter().any(|(known, _)| *known == digest) {
            return Err(ConsoleError::BadInput(format!(
                "the console token of `{name}` is already someone else's; give each person their own"
            )));
        }
        self.entries.push((
            digest,
            Principal {
                name: name.to_owned(),
                role,
            },
        ));
        Ok(self)
    }

    /// Reads `name:role:token` entries separated by commas or new lines (`role` is `viewer` or
    /// `operator`), as `saga serve` reads `SAGA_CONSOLE_TOKENS`.
    ///
    /// # Errors
    /// [`ConsoleError::BadInput`] naming the entry that is malformed and how to write it.
    pub fn parse(spec: &str) -> std::result::Result<Self, ConsoleError> {
        let mut tokens = Self::new();
        for (number, entry) in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
        {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(token)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConsoleError::BadInput(format!(
                    "console token entry {} is not `name:role:token`; write for example `alice:operator:<token>`",
                    number + 1
                )));
            };
            let role = match role.trim() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                other => {
                    return Err(ConsoleError::BadInput(format!(
                    "console token entry {} gives the role `{other}`; use `viewer` or `operator`",
                    number + 1
                )))
                }
            };
            tokens = tokens.with(name, role, token.trim())?;
        }
        Ok(tokens)
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[async_trait]
impl Authorizer for Tokens {
    async fn authorize(&self, token: &str) -> Option<Principal> {
        let presented = digest(token);
        let mut found = None;
        for (known, principal) in &self.entries {
            if constant_time_eq(known, &presented) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's name.
pub const COOKIE: &str = "saga_console";

/// The form field (and `X-CSRF-Token` header) that a cookie-authenticated POST must carry.
pub const CSRF_FIELD: &str = "csrf";

/// The anti-forgery token of a session: derived from its secret token, which a page of another
/// site can neither read nor compute.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::digest(format!("saga-console csrf\u{0}{session_token}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// An `Authorization: Bearer` header: no ambient authority, so no forgery check.
    Bearer(String),
    /// The session cookie: a POST must also carry the session's CSRF token.
    Cookie(String),
    /// Nothing.
    None,
}

impl Credentials {
    /// Reads the bearer header, else the session cookie.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        if let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            if let Some(token) = value.strip_prefix("Bearer ") {
                return Self::Bearer(token.trim().to_owned());
            }
        }
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for pair in value.split(';') {
                if let Some((name, token)) = pair.trim().split_once('=') {
                    if name == COOKIE && !token.is_empty() {
                        return Self::Cookie(token.to_owned());
                    }
                }
            }
        }
        Self::None
    }

    /// The token presented, if any.
    pub fn token(&self) -> Option<&str> {
        match self {
            Self::Bearer(token) | Self::Cookie(token) => Some(token),
            Self::None => None,
        }
    }
}

/// Refuses a state-changing request that another site could have made a browser send: a
/// cookie-authenticated POST whose CSRF token is missing or wrong, or that says it comes from
/// another origin (`Origin`, `Sec-Fetch-Site`).
///
/// # Errors
/// [`ConsoleError::Forbidden`] saying why.
pub fn check_forgery(
    method: &Method,
    headers: &HeaderMap,
    credentials: &Credentials,
    presented_csrf: Option<&str>,
    public_origin: Option<&str>,
) -> std::result::Result<(), ConsoleError> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(ConsoleError::Forbidden(format!(
                "this request came from another site ({site}); act from the console's own pages"
            )));
        }
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (origin, public_origin) {
        // Behind a proxy that rewrites Host, the console's address is configured.
        (Some(origin), Some(public)) => {
            if !origin.eq_ignore_ascii_case(public.trim_end_matches('/')) {
                return Err(ConsoleError::Forbidden(format!(
                    "this request came from {origin}, not from this console ({public}); act from the console's own pages"
                )));
            }
        }
        (Some(origin), None) => {
            if let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
                let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
                if origin_host != host {
                    return Err(ConsoleError::Forbidden(format!(
                        "this request came from {origin}, not from this console ({host}); act from the console's own pages (behind a proxy that rewrites Host, set the console's public origin)"
                    )));
                }
            }
        }
        (None, _) => {}
    }
    if let Credentials::Cookie(session) = credentials {
        let expected = csrf_token(session);
        let matches = presented_csrf
            .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.as_bytes()));
        if !matches {
            return Err(ConsoleError::Forbidden(
                "the form's anti-forgery token is missing or stale; reload the page and try again"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Whether a proxy says it forwarded the request (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
/// `Via`): a request relayed by a proxy on this machine comes from a loopback peer whoever sent
/// it, so anonymous loopback access never serves it.
pub fn proxied(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name == "forwarded"
            || name.starts_with("x-forwarded-")
            || name == "x-real-ip"
            || name == "via"
    })
}

/// Refuses an action taken without credentials (anonymous loopback access) that does not say
/// where it comes from: with no token to derive an anti-forgery token from, `Origin` or
/// `Sec-Fetch-Site` (which browsers send, and [`check_forgery`] checks) is what proves the
/// request came from the console's own pages.
///
/// # Errors
/// [`ConsoleError::Forbidden`] saying what to do.
pub fn check_anonymous_origin(
    headers: &HeaderMap,
    credentials: &Credentials,
) -> std::result::Result<(), ConsoleError> {
    if *credentials == Credentials::None
        && headers.get("sec-fetch-site").is_none()
        && headers.get(header::ORIGIN).is_none()
    {
        return Err(ConsoleError::Forbidden(
            "an action without credentials must say where it comes from (a browser sends Origin); act from the console's own pages or send a token"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Whether `peer` is on this machine's loopback interface.
pub fn is_loopback(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|peer| peer.ip().is_loopback())
}

/// Whether the host a request was sent to (`Host`, else the request target's authority) names
/// this machine's loopback interface: `localhost` (or a name under it), `127.0.0.1` and the rest
/// of 127/8, `[::1]`; a request that names no host passes. A page of another site whose name
/// it made resolve to 127.0.0.1 (DNS rebinding) sends that name, so it is no local user even
/// though it comes from the loopback interface.
pub fn names_loopback(headers: &HeaderMap, authority: Option<&str>) -> bool {
    let host = match headers.get(header::HOST) {
        Some(value) => match value.to_str() {
            Ok(host) => host,
            Err(_) => return false,
        },
        None => match authority {
            Some(authority) => authority,
            None => return true,
        },
    };
    let host = host.trim();
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_name_their_principal_and_refuse_the_rest() {
        let tokens =
            Tokens::parse("alice:operator:aaaaaaaaaaaaaaaaaaaa, bob:viewer:bbbbbbbbbbbbbbbbbbbb")
                .unwrap();
        assert_eq!(
            tokens.authorize("aaaaaaaaaaaaaaaaaaaa").await,
            Some(Principal {
                name: "alice".to_owned(),
                role: Role::Operator
            })
        );
        assert_eq!(
            tokens
                .authorize("bbbbbbbbbbbbbbbbbbbb")
                .await
                .map(|p| p.role),
            Some(Role::Viewer)
        );
        assert_eq!(tokens.authorize("cccccccccccccccccccc").await, None);
        assert_eq!(tokens.authorize("").await, None);
    }

    #[test]
    fn malformed_token_lists_are_refused_with_the_entry() {
        for (spec, says) in [
            ("alice:operator", "entry 1 is not `name:role:token`"),
            ("alice:root:aaaaaaaaaaaaaaaaaaaa", "role `root`"),
            ("alice:viewer:short", "shorter than 16"),
            (
                "a:viewer:aaaaaaaaaaaaaaaaaaaa,b:operator:aaaaaaaaaaaaaaaaaaaa",
                "already someone else's",
            ),
        ] {
            let err = Tokens::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }

    #[test]
    fn a_cookie_post_needs_its_csrf_token_and_the_same_origin() {
        let session = Credentials::Cookie("s".repeat(20));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        let good = csrf_token(&"s".repeat(20));
        assert!(check_forgery(&Method::POST, &headers, &session, Some(&good), None).is_ok());
        assert!(check_forgery(&Method::POST, &headers, &session, None, None).is_err());
        assert!(check_forgery(&Method::POST, &headers, &session, Some("00"), None).is_err());
        assert!(check_forgery(&Method::GET, &headers, &session, None, None).is_ok());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(check_forgery(&Method::POST, &headers, &session, Some(&good), None).is_err());
        let bearer = Credentials::Bearer("t".repeat(20));
        assert!(
            check_forgery(&Method::POST, &HeaderMap::new(), &bearer, None, None).is_ok(),
            "a bearer header is no ambient authority"
        );
    }

    #[test]
    fn a_configured_public_origin_is_the_only_one_accepted() {
        let session = Credentials::Cookie("s".repeat(20));
        let good = csrf_token(&"s".repeat(20));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "10.0.0.7:8080".parse().unwrap());
        headers.insert(header::ORIGIN, "https://ops.example.com".parse().unwrap());
        let public = Some("https://ops.example.com/");
        assert!(check_forgery(&Method::POST, &headers, &session, Some(&good), public).is_ok());
        assert!(
            check_forgery(&Method::POST, &headers, &session, Some(&good), None).is_err(),
            "without it, the Origin must match the Host"
        );
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_forgery(&Method::POST, &headers, &session, Some(&good), public).is_err());
    }
}
