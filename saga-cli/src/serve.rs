//! `saga serve`: the operator console, stand-alone, over the store the command line names.

use std::net::SocketAddr;
use std::sync::Arc;

use saga::Admin;
use saga_console::{ConsoleOptions, RedactFields, Role, Tokens};

use crate::{bad_input, Failure};

/// What `saga serve` was given.
pub(crate) struct Settings {
    pub(crate) listen: String,
    pub(crate) tokens: Option<String>,
    pub(crate) anonymous_loopback: Option<String>,
    pub(crate) redact: Option<String>,
    pub(crate) secure_cookies: bool,
    pub(crate) public_origin: Option<String>,
}

/// The console's options from the settings; refuses a console nobody could use, and anonymous
/// access on an address other machines reach.
fn options(settings: &Settings, listen: SocketAddr) -> Result<ConsoleOptions, Failure> {
    let tokens = Tokens::parse(settings.tokens.as_deref().unwrap_or_default())
        .map_err(|err| bad_input(format!("SAGA_CONSOLE_TOKENS (or --tokens): {err}")))?;
    let anonymous = match settings.anonymous_loopback.as_deref() {
        None => None,
        Some("viewer") => Some(Role::Viewer),
        Some("operator") => Some(Role::Operator),
        Some(other) => {
            return Err(bad_input(format!(
                "--anonymous-loopback `{other}` is not a role; use viewer or operator"
            )))
        }
    };
    if anonymous.is_some() && !listen.ip().is_loopback() {
        return Err(bad_input(format!(
            "--anonymous-loopback is for development on this machine, and {listen} is reachable from others; listen on 127.0.0.1 or give tokens instead"
        )));
    }
    if tokens.is_empty() && anonymous.is_none() {
        return Err(bad_input(
            "the console would refuse everyone: set SAGA_CONSOLE_TOKENS (or --tokens) to `name:role:token` entries, e.g. `alice:operator:$(openssl rand -hex 24)`, or pass --anonymous-loopback operator for development on this machine"
                .into(),
        ));
    }
    let mut options = ConsoleOptions::new(Arc::new(tokens)).secure_cookies(settings.secure_cookies);
    if let Some(role) = anonymous {
        options = options.anonymous_on_loopback(role);
    }
    if let Some(origin) = settings.public_origin.as_deref() {
        options = options.public_origin(origin);
    }
    if let Some(fields) = settings.redact.as_deref() {
        options = options.redact(Arc::new(RedactFields::parse(fields)));
    }
    Ok(options)
}

/// Serves the console until the process is interrupted.
pub(crate) async fn run(admin: Admin, settings: Settings) -> Result<u8, Failure> {
    let listen: SocketAddr = settings.listen.parse().map_err(|_| {
        bad_input(format!(
            "--listen `{}` is not an address; write it as 127.0.0.1:8080",
            settings.listen
        ))
    })?;
    let options = options(&settings, listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| Failure {
            code: 1,
            message: format!("cannot listen on {listen}: {err}; pick a free port with --listen"),
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    eprintln!("saga console on http://{bound}/ (Ctrl-C stops it)");
    let app = saga_console::router(admin, options);
    saga_console::serve(listener, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|err| Failure {
        code: 1,
        message: format!("the console stopped: {err}"),
    })?;
    Ok(0)
}
