//! Drives the console in headless Chromium through WebDriver, as a person would: a chromedriver
//! started for the test (on a free loopback port, killed on drop), a fantoccini session over a
//! plain HTTP connector, the console served on a loopback port, bounded waits, and screenshots
//! written to `target/console-screenshots/`.
//!
//! Chromium and chromedriver must be installed (`apt-get install chromium chromium-driver`);
//! without them the tests fail, saying so, rather than pass without having looked.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// How long a scenario may take in all before it fails instead of hanging.
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);

/// A chromedriver process of this test's own, on a free loopback port; killed on drop.
pub struct Driver {
    child: Child,
    url: String,
}

/// The chromedriver to run: `$CHROMEDRIVER`, else `chromedriver` on the `PATH`.
fn chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromedriver"))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromedriver is not installed, so the console's browser tests cannot run. Install \
             Chromium and its driver (Debian: `apt-get install -y --no-install-recommends \
             chromium chromium-driver`; .ci/run does it), or point CHROMEDRIVER at a chromedriver."
        )
    })
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Driver {
    /// Starts chromedriver and waits (bounded) until it answers `/status` as ready.
    pub async fn start() -> Self {
        let binary = chromedriver();
        let mut last_error = String::new();
        // The free port may be taken between our probe and chromedriver's bind: try a few.
        for _ in 0..3 {
            let port = free_port();
            // Without --allowed-ips chromedriver listens on the loopback interface only.
            let child = Command::new(&binary)
                .arg(format!("--port={port}"))
                .arg("--log-level=SEVERE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "could not start {} ({err}); install chromium and chromium-driver",
                        binary.display()
                    )
                });
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            match driver.ready(Duration::from_secs(15)).await {
                Ok(()) => return driver,
                Err(err) => last_error = err,
            }
        }
        panic!("chromedriver did not become ready: {last_error}");
    }

    async fn ready(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let address = self.url.trim_start_matches("http://").to_owned();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited ({status})"));
            }
            if says_ready(&address).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no ready answer from {} within {within:?}",
                    self.url
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new browser session: headless Chromium, a 1280×900 window, no sandbox (the tests may
    /// run as root), no GPU.
    pub async fn session(&self) -> Client {
        let mut options = json!({
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--no-first-run",
                format!("--window-size={},{}", WINDOW.0, WINDOW.1),
                "--hide-scrollbars",
            ],
        });
        // chromedriver finds the Chromium it came with; $CHROMIUM names another.
        if let Some(binary) = std::env::var_os("CHROMIUM") {
            options["binary"] = json!(binary.to_string_lossy());
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "chromedriver at {} could not open a Chromium session: {err}; is chromium installed?",
                    self.url
                )
            })
    }

    /// Runs `scenario` in a new browser session, then ends the session (DELETE, which closes the
    /// browser) whether the scenario passed, failed or overran [`SCENARIO_LIMIT`]; a failure is
    /// raised again afterwards.
    pub async fn run<F, Fut>(&self, scenario: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let client = self.session().await;
        let task = tokio::spawn(tokio::time::timeout(
            SCENARIO_LIMIT,
            scenario(client.clone()),
        ));
        let outcome = task.await;
        if let Err(err) = client.close().await {
            eprintln!("ending the browser session: {err}");
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("the scenario took longer than {SCENARIO_LIMIT:?}"),
            Err(err) => match err.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(err) => panic!("the scenario did not finish: {err}"),
            },
        }
    }
}

impl Drop for Driver {
    /// Asks chromedriver to shut down (it ends any session left and reaps its browser), waits
    /// for it a moment, then kills it.
    fn drop(&mut self) {
        use std::io::Write as _;
        let address = self.url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write!(stream, "GET /shutdown HTTP/1.1\r\nHost: {address}\r\n\r\n");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether chromedriver at `address` answers `GET /status` with `"ready": true`. (It keeps the
/// connection open whatever the request says, so this reads only until the answer says.)
async fn says_ready(address: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream
            .write_all(format!("GET /status HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let read = stream.read(&mut chunk).await.ok()?;
            if read == 0 {
                return None;
            }
            answer.extend_from_slice(&chunk[..read]);
            let text = String::from_utf8_lossy(&answer).replace(' ', "");
            if text.contains("\"ready\":true") {
                return Some(());
            }
            if text.contains("\"ready\":false") {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Serves `router` on a free loopback port (with the peer address, as the console expects) in a
/// background task; returns the base URL, `http://127.0.0.1:PORT`.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the console");
    let address = listener.local_addr().expect("the console's address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("the console server");
    });
    format!("http://{address}")
}

/// Polls `probe` every 100 ms until it gives a value, failing after `within` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `url` and waits (bounded) until the page is loaded.
pub async fn open(client: &Client, url: &str) {
    client
        .goto(url)
        .await
        .unwrap_or_else(|err| panic!("opening {url}: {err}"));
}

/// The element `css` selects, waiting (bounded) for it to appear.
pub async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    let client = client.clone();
    eventually(
        &format!("an element `{css}` on the page"),
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move { client.find(Locator::Css(css)).await.ok() }
        },
    )
    .await
}

/// How many elements `css` selects now.
pub async fn count(client: &Client, css: &str) -> usize {
    client
        .find_all(Locator::Css(css))
        .await
        .map(|found| found.len())
        .unwrap_or(0)
}

/// The text of the element `css` selects, waiting (bounded) for it. Found and read again when
/// the page's live part replaced it in between.
pub async fn text(client: &Client, css: &str) -> String {
    eventually(
        &format!("the text of `{css}`"),
        Duration::from_secs(10),
        || async move {
            let element = client.find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()
        },
    )
    .await
}

/// Clicks the element `css` selects, waiting (bounded) for it. Found again when the page's live
/// part replaced it in between.
pub async fn click(client: &Client, css: &str) {
    eventually(
        &format!("a click on `{css}`"),
        Duration::from_secs(10),
        || async move {
            let element = client.find(Locator::Css(css)).await.ok()?;
            element.click().await.ok()
        },
    )
    .await;
}

/// The path of the current page (`/inbox`, `/sagas/…`).
pub async fn path(client: &Client) -> String {
    client
        .current_url()
        .await
        .map(|url| url.path().to_owned())
        .expect("the current URL")
}

/// Signs in through the login form with `token`, as a person would: type it, press the button,
/// land on the overview.
pub async fn sign_in(client: &Client, base: &str, token: &str) {
    open(client, &format!("{base}/login")).await;
    find(client, "#token")
        .await
        .send_keys(token)
        .await
        .expect("typing the token");
    find(client, "#sign-in")
        .await
        .click()
        .await
        .expect("pressing Sign in");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_overview = client
            .current_url()
            .await
            .is_ok_and(|url| url.path() == "/");
        if on_overview && client.find(Locator::Css("#who")).await.is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            let url = client
                .current_url()
                .await
                .map(|url| url.to_string())
                .unwrap_or_default();
            let shown = match client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("signing in did not land on the overview; the browser shows {url}:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where screenshots go: `target/console-screenshots/` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp
        .parent()
        .map_or_else(|| tmp.clone(), |target| target.join("console-screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    dir
}

/// The browser window's width, and its height but for [`screenshot`].
const WINDOW: (u32, u32) = (1280, 900);

/// Writes a PNG of the whole page (the window grown to the page's height for the shot) to
/// `target/console-screenshots/<name>.png`, says where in the test output, and returns the path.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    // The page's height, plus what of the window is not page (headless Chromium keeps some).
    let height = client
        .execute(
            "return Math.ceil(document.documentElement.scrollHeight) \
               + Math.max(0, window.outerHeight - window.innerHeight);",
            vec![],
        )
        .await
        .ok()
        .and_then(|height| height.as_u64())
        .and_then(|height| u32::try_from(height).ok())
        .unwrap_or(WINDOW.1)
        .clamp(WINDOW.1, 4000);
    let grown = height > WINDOW.1;
    if grown {
        client
            .set_window_size(WINDOW.0, height)
            .await
            .unwrap_or_else(|err| panic!("growing the window for {name}: {err}"));
    }
    let png = client
        .screenshot()
        .await
        .unwrap_or_else(|err| panic!("screenshot {name}: {err}"));
    if grown {
        client
            .set_window_size(WINDOW.0, WINDOW.1)
            .await
            .unwrap_or_else(|err| panic!("restoring the window after {name}: {err}"));
    }
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot {name} is a PNG"
    );
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, &png).expect("writing the screenshot");
    println!("screenshot: {} ({} bytes)", path.display(), png.len());
    path
}

/// Whether a JavaScript dialog (alert, confirm, prompt) is open: WebDriver's Get Alert Text
/// answers only while one is.
pub async fn dialog_open(client: &Client) -> Option<String> {
    client.get_alert_text().await.ok()
}
