//! `saga serve`: the console stand-alone, as an operator starts it, answering over real HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OPERATOR: &str = "operator-token-0123456789";

/// A migrated, empty SQLite store in `dir`.
async fn store(dir: &tempfile::TempDir) -> String {
    let db = format!("sqlite://{}", dir.path().join("console.db").display());
    saga_store::SqliteStore::connect(&db).await.unwrap();
    db
}

fn serve(db: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_saga"));
    command
        .arg("--db")
        .arg(db)
        .arg("serve")
        .args(args)
        .env_remove("SAGA_CONSOLE_TOKENS")
        .env_remove("SAGA_APPROVERS")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts the console and returns it with the address it says it listens on.
fn started(mut command: Command) -> (Child, String) {
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("the console did not say where it listens: {line:?}"))
        .to_owned();
    (child, address)
}

/// One HTTP/1.1 GET; returns the status code and the body.
fn get(address: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    (status, response)
}

#[tokio::test]
async fn the_console_refuses_to_start_open_to_everyone_or_to_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(&dir).await;
    let nobody = serve(&db, &["--listen", "127.0.0.1:0"], &[])
        .output()
        .unwrap();
    assert_eq!(
        nobody.status.code(),
        Some(2),
        "no token, no anonymous access"
    );
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("would refuse everyone"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    let open = serve(
        &db,
        &["--listen", "0.0.0.0:0", "--anonymous-loopback", "operator"],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(
        open.status.code(),
        Some(2),
        "anonymous access beyond loopback"
    );
    assert!(String::from_utf8_lossy(&open.stderr).contains("reachable from others"));
    let short = serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("SAGA_CONSOLE_TOKENS", "alice:operator:short")],
    )
    .output()
    .unwrap();
    assert_eq!(short.status.code(), Some(2), "a guessable token");
}

#[tokio::test]
async fn the_console_answers_tokens_and_refuses_anonymous_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db = store(&dir).await;
    let (mut child, address) = started(serve(
        &db,
        &["--listen", "127.0.0.1:0"],
        &[("SAGA_CONSOLE_TOKENS", &format!("alice:operator:{OPERATOR}"))],
    ));
    let (anonymous, body) = get(&address, "/api/sagas", None);
    assert_eq!(anonymous, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthenticated\""), "{body}");
    let (wrong, _) = get(&address, "/api/sagas", Some("not-the-token-at-all"));
    assert_eq!(wrong, 401);
    let (ok, body) = get(&address, "/api/sagas", Some(OPERATOR));
    assert_eq!(ok, 200, "{body}");
    assert!(body.contains("\"sagas\":[]"), "{body}");
    let (page, body) = get(&address, "/", None);
    assert_eq!(
        page, 303,
        "a browser without a session is sent to the login page: {body}"
    );
    assert!(
        body.to_ascii_lowercase().contains("location: /login"),
        "{body}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
