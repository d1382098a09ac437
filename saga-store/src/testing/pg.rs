//! TestPg: a real, isolated PostgreSQL database per test.
//!
//! `DATABASE_URL` when set; else, with the `testcontainers` feature and a Docker daemon that
//! answers, a `postgres:15` container; else a throwaway cluster started from the local PostgreSQL binaries
//! (`initdb` + `postgres` in a temp dir on a free loopback port, as the `postgres` OS user when
//! running as root, since the server refuses root). One cluster per test process, a fresh
//! database per test. A supervisor shell stops the server and deletes its directory as soon as
//! the test process exits, however it exits (success, failure, panic or SIGKILL).

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use saga_core::Error;
use sqlx::{Connection, Executor, PgConnection};

/// Where the test databases live.
#[derive(Debug, Clone)]
pub struct TestPg {
    /// URL of the server's maintenance database (`postgres`), used to create test databases.
    admin_url: String,
}

static SERVER: OnceLock<Result<TestPg, String>> = OnceLock::new();

impl TestPg {
    /// The server for this test process: `DATABASE_URL`, or a cluster started on first use.
    ///
    /// # Errors
    /// [`Error::Configuration`] when no PostgreSQL binaries are found or the cluster fails to
    /// start, with what to install or set.
    pub fn server() -> Result<TestPg, Error> {
        SERVER
            .get_or_init(|| match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => Ok(TestPg { admin_url: url }),
                _ => start_container()
                    .or_else(|_| start_cluster())
                    .map(|admin_url| TestPg { admin_url }),
            })
            .clone()
            .map_err(Error::Configuration)
    }

    /// A fresh, empty database on the test server; returns its URL.
    ///
    /// # Errors
    /// As [`TestPg::server`], or when the database cannot be created.
    pub async fn fresh_database() -> Result<String, Error> {
        let server = tokio::task::spawn_blocking(TestPg::server)
            .await
            .map_err(|err| Error::Configuration(format!("starting the test cluster: {err}")))??;
        let name = format!("saga_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = connect_when_ready(&server.admin_url).await?;
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .map_err(|err| Error::Configuration(format!("CREATE DATABASE {name}: {err}")))?;
        let _ = conn.close().await;
        Ok(with_database(&server.admin_url, &name))
    }

    /// URL of the server's maintenance database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

/// A cluster of its own, for tests that stop and restart the server.
#[derive(Debug)]
pub struct TestCluster {
    url: String,
    dir: PathBuf,
}

impl TestCluster {
    /// Starts a new cluster from the local PostgreSQL binaries (`DATABASE_URL` is not used: a
    /// shared server cannot be restarted by a test).
    ///
    /// # Errors
    /// [`Error::Configuration`] when no PostgreSQL binaries are found or the cluster fails to start.
    pub async fn start() -> Result<TestCluster, Error> {
        let (admin_url, dir) = tokio::task::spawn_blocking(|| start_cluster_in(true))
            .await
            .map_err(|err| Error::Configuration(format!("starting a test cluster: {err}")))?
            .map_err(Error::Configuration)?;
        let mut conn = connect_when_ready(&admin_url).await?;
        conn.execute("CREATE DATABASE saga_test")
            .await
            .map_err(|err| Error::Configuration(format!("CREATE DATABASE saga_test: {err}")))?;
        let _ = conn.close().await;
        Ok(TestCluster {
            url: with_database(&admin_url, "saga_test"),
            dir,
        })
    }

    /// URL of the cluster's test database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection dropped) and starts it again on the same port; returns once it accepts
    /// connections.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the server cannot be found or does not come back.
    pub async fn restart_immediately(&self) -> Result<(), Error> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
            .ok_or_else(|| {
                Error::Configuration(format!("no server pid in {}", pid_file.display()))
            })?;
        std::fs::write(self.dir.join("restart"), b"")
            .map_err(|err| Error::Configuration(format!("marking the restart: {err}")))?;
        let status = Command::new("kill")
            .args(["-QUIT", pid.trim()])
            .status()
            .map_err(|err| Error::Configuration(format!("kill -QUIT {pid}: {err}")))?;
        if !status.success() {
            return Err(Error::Configuration(format!("kill -QUIT {pid} failed")));
        }
        // Wait for the old server to go and a new one to accept connections.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.dir.join("restart").exists() {
            if Instant::now() > deadline {
                return Err(Error::Configuration("the server did not restart".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let conn = connect_when_ready(&self.url).await?;
        let _ = conn.close().await;
        Ok(())
    }
}

/// Replaces the database name (the URL's path) with `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

async fn connect_when_ready(url: &str) -> Result<PgConnection, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "test server not ready yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => {
                return Err(Error::Configuration(format!(
                    "the test PostgreSQL server at {url} did not accept connections: {err}"
                )))
            }
        }
    }
}

/// A `postgres:15` container, when the `testcontainers` feature is on and a Docker daemon
/// answers. A watcher removes the container once this process is gone.
#[cfg(feature = "testcontainers")]
fn start_container() -> Result<String, String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::SyncRunner;
    use testcontainers_modules::testcontainers::ImageExt;

    let daemon =
        std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists();
    if !daemon {
        return Err("no Docker daemon".to_owned());
    }
    let container = Postgres::default()
        .with_tag("15-alpine")
        .start()
        .map_err(|err| format!("starting a postgres container: {err}"))?;
    let port = container
        .get_host_port_ipv4(5432)
        .map_err(|err| format!("the container's port: {err}"))?;
    let id = container.id().to_owned();
    // Keep it for the whole process; remove it when the process is gone, however it ends.
    std::mem::forget(container);
    let script =
        r#"while [ -d "/proc/$1" ]; do sleep 0.5; done; docker rm -f "$2" >/dev/null 2>&1"#;
    Command::new("sh")
        .args(["-c", script, "sh", &std::process::id().to_string(), &id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|err| format!("starting the container watcher: {err}"))?;
    Ok(format!(
        "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
    ))
}

/// Without the `testcontainers` feature: no container.
#[cfg(not(feature = "testcontainers"))]
fn start_container() -> Result<String, String> {
    Err("built without the testcontainers feature".to_owned())
}

/// Finds a PostgreSQL binary on PATH or under /usr/lib/postgresql/<version>/bin.
fn binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin").join(name)))
            .filter(|candidate| candidate.is_file())
            .collect();
        versions.sort();
        versions.pop()
    })
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|err| format!("no free loopback port: {err}"))
}

/// (uid, gid) to run the server as: the `postgres` user when this process is root.
fn server_user() -> Result<Option<(u32, u32)>, String> {
    let uid = std::fs::metadata("/proc/self")
        .map(|meta| meta.uid())
        .map_err(|err| format!("cannot tell the current user: {err}"))?;
    if uid != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|err| format!("running `id`: {err}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                "running as root, and there is no `postgres` user to run the test server as (PostgreSQL refuses to run as root); install PostgreSQL (apt-get install postgresql) or set DATABASE_URL".to_owned()
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn start_cluster() -> Result<String, String> {
    start_cluster_in(false).map(|(url, _)| url)
}

/// Starts a cluster; returns its URL and directory. `restartable` clusters acknowledge a commit
/// only once its WAL is written (`synchronous_commit=on`): an immediate stop loses WAL that sat
/// in the server's buffers, so without it a restart could forget commits already acknowledged,
/// which no real durable setup does. (`fsync=off` stays: an immediate stop keeps the OS cache.)
fn start_cluster_in(restartable: bool) -> Result<(String, PathBuf), String> {
    let missing = "PostgreSQL binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin; install PostgreSQL 15 (apt-get install postgresql) or set DATABASE_URL";
    let initdb = binary("initdb").ok_or(missing)?;
    let postgres = binary("postgres").ok_or(missing)?;
    let user = server_user()?;
    let dir = std::env::temp_dir().join(format!(
        "saga-testpg-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|err| format!("creating {}: {err}", dir.display()))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|err| format!("handing {} to the postgres user: {err}", dir.display()))?;
    }
    let data = dir.join("data");
    let as_server_user = |command: &mut Command| {
        if let Some((uid, gid)) = user {
            command.uid(uid).gid(gid);
        }
    };

    let mut init = Command::new(&initdb);
    init.arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_server_user(&mut init);
    let out = init
        .output()
        .map_err(|err| format!("running {}: {err}", initdb.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let port = free_port()?;
    let synchronous_commit = if restartable { "on" } else { "off" };
    supervise(
        &postgres,
        &dir,
        &data,
        port,
        synchronous_commit,
        as_server_user,
    )?;
    Ok((
        format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        dir,
    ))
}

/// Starts the server under a shell that stops it and removes `dir` once this process is gone.
fn supervise(
    postgres: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    synchronous_commit: &str,
    as_server_user: impl Fn(&mut Command),
) -> Result<(), String> {
    // Runs the server; restarts it when it exits with a `restart` marker in the directory
    // (see `TestCluster::restart_immediately`); a watcher stops it when the test process is
    // gone; then the directory is removed.
    let script = r#"
        ( while [ -d "/proc/$5" ]; do sleep 0.3; done
          kill -INT "$(head -n 1 "$2/postmaster.pid" 2>/dev/null)" 2>/dev/null ) &
        while :; do
            "$1" -D "$2" -p "$3" -k "$4" -c listen_addresses=127.0.0.1 \
                 -c fsync=off -c synchronous_commit="$6" -c full_page_writes=off \
                 -c max_connections=400 -c shared_buffers=64MB >>"$4/server.log" 2>&1 &
            wait $!
            if [ -e "$4/restart" ] && [ -d "/proc/$5" ]; then rm -f "$4/restart"; continue; fi
            break
        done
        rm -rf "$4"
    "#;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(postgres)
        .arg(data)
        .arg(port.to_string())
        .arg(dir)
        .arg(std::process::id().to_string())
        .arg(synchronous_commit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    as_server_user(&mut command);
    command
        .spawn()
        .map(drop)
        .map_err(|err| format!("starting postgres: {err}"))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_in_any_url_shape() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "t1"),
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://h:5432?sslmode=disable", "t1"),
            "postgres://h:5432/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h/db?x=1", "t2"),
            "postgres://h/t2?x=1"
        );
    }
}
