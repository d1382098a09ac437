//! Tests made of worker processes, without the libtest harness: the test binary re-runs itself
//! with `--saga-worker URL NAME` to become a worker process.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use saga::Store;

/// What this run of the test binary is.
pub(crate) enum Role {
    /// Listed by the test runner: print the test's name and exit.
    List,
    /// A worker process on the database at `url`, named `name`.
    Worker { url: String, name: String },
    /// The test itself, which starts the workers.
    Parent,
}

/// This run's role, from its arguments; prints the listing line for [`Role::List`].
pub(crate) fn role(test: &str) -> Role {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--list") {
        println!("{test}: test");
        return Role::List;
    }
    match args.iter().position(|arg| arg == "--saga-worker") {
        Some(at) => Role::Worker {
            url: args.get(at + 1).expect("database URL").clone(),
            name: args.get(at + 2).expect("worker name").clone(),
        },
        None => Role::Parent,
    }
}

/// The runtime of a worker or of the test: two worker threads, as on the CI machine.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits, in a worker, until no saga in `store` is active any more; `FAILURE` after `limit`.
pub(crate) async fn until_idle(store: &dyn Store, name: &str, limit: Duration) -> ExitCode {
    let deadline = Instant::now() + limit;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let counts = store.count_by_status().await.expect("count");
        let active: u64 = counts
            .iter()
            .filter(|(status, _)| status.is_active())
            .map(|(_, n)| n)
            .sum();
        if active == 0 {
            return ExitCode::SUCCESS;
        }
        if Instant::now() > deadline {
            eprintln!("{name} gave up with {active} sagas still active");
            return ExitCode::FAILURE;
        }
    }
}

/// The worker processes (`worker-1`…); killed should the test stop early (a failed check),
/// so that none outlives it.
pub(crate) struct Workers(Vec<Child>);

impl Workers {
    /// Starts `count` worker processes on the database at `url`.
    pub(crate) fn spawn(url: &str, count: usize) -> Self {
        Self::spawn_with(url, count, &[])
    }

    /// As [`Workers::spawn`], with environment variables set for the workers.
    pub(crate) fn spawn_with(url: &str, count: usize, env: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("own path");
        Self(
            (1..=count)
                .map(|n| {
                    Command::new(&exe)
                        .args(["--saga-worker", url, &format!("worker-{n}")])
                        .envs(env.iter().copied())
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("spawn a worker process")
                })
                .collect(),
        )
    }

    /// Kills `worker-{n}` with SIGKILL and reaps it; [`Workers::wait`] then waits for the others.
    pub(crate) fn kill(&mut self, n: usize) {
        let mut child = self.0.remove(n - 1);
        child.kill().expect("kill a worker");
        let _ = child.wait();
    }

    /// Waits for every worker to exit, at most `limit`, and checks that each exited cleanly.
    pub(crate) async fn wait(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut statuses = vec![None; self.0.len()];
        while statuses.iter().any(Option::is_none) {
            for (child, status) in self.0.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    *status = child.try_wait().expect("poll a worker");
                }
            }
            assert!(
                Instant::now() < deadline,
                "workers did not finish within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for (n, status) in statuses.iter().enumerate() {
            assert!(
                status.is_some_and(|status| status.success()),
                "worker-{} failed: {status:?}",
                n + 1
            );
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
