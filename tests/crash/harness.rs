//! The parent's side of the worker processes: spawn, SIGKILL, SIGSTOP/SIGCONT, restart, and
//! what their stderr says (fault points hit, ambiguous commits injected, leases lost).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child::WorkerSpec;

/// What the workers reported on stderr, over all their incarnations.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// Fault point name -> times a worker aborted there.
    pub(crate) faults: BTreeMap<String, u64>,
    /// Kind of write ("completion", "transition", "final") -> ambiguous answers injected.
    pub(crate) ambiguous: BTreeMap<String, u64>,
    /// Times a worker logged that it lost a lease and stopped writing, per worker name.
    pub(crate) leases_lost: BTreeMap<String, u64>,
    /// Drives a worker abandoned on a store error (it writes nothing more for that saga).
    pub drives_abandoned: BTreeMap<String, u64>,
    /// (saga, step) of each permit under a cap whose worker died right after it was granted.
    pub(crate) permit_deaths: Vec<(String, String)>,
    /// Times a worker logged a step panic.
    pub(crate) panics: u64,
    /// Worker processes that came up (all incarnations).
    pub(crate) ready: u64,
    /// The last lines each worker wrote, for failure reports.
    pub(crate) tail: BTreeMap<String, VecDeque<String>>,
}

impl Reports {
    fn read(&mut self, worker: &str, line: &str) {
        if let Some(rest) = line.split("fault injected at ").nth(1) {
            let point = rest.split(':').next().unwrap_or(rest).trim().to_owned();
            *self.faults.entry(point).or_default() += 1;
        }
        if let Some(what) = line.strip_prefix("CRASH-HARNESS ambiguous ") {
            *self.ambiguous.entry(what.trim().to_owned()).or_default() += 1;
        }
        if let Some(what) = line.strip_prefix("CRASH-HARNESS permit death ") {
            if let Some((saga, step)) = what.trim().split_once(' ') {
                self.permit_deaths.push((saga.to_owned(), step.to_owned()));
            }
        }
        if line.contains("lease lost") || line.contains("stopped writing") {
            *self.leases_lost.entry(worker.to_owned()).or_default() += 1;
        }
        if line.contains("driving saga failed") {
            *self.drives_abandoned.entry(worker.to_owned()).or_default() += 1;
        }
        if line.contains("panicked") {
            self.panics += 1;
        }
        if line.contains("CRASH-HARNESS ready") {
            self.ready += 1;
        }
        let tail = self.tail.entry(worker.to_owned()).or_default();
        if tail.len() == 12 {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }
}

struct Running {
    child: Child,
    stopped: bool,
}

/// A fixed set of worker slots, each running one process at a time.
pub(crate) struct Workers {
    exe: PathBuf,
    specs: Vec<WorkerSpec>,
    env: Vec<(String, String)>,
    running: Vec<Option<Running>>,
    incarnations: u64,
    pub(crate) kills: u64,
    pub(crate) restarts: u64,
    pub(crate) reports: Arc<Mutex<Reports>>,
}

impl Workers {
    /// Starts one process per spec; `env` is set on every one of them.
    pub(crate) fn start(specs: Vec<WorkerSpec>, env: Vec<(String, String)>) -> Workers {
        let mut workers = Workers {
            exe: std::env::current_exe().expect("own path"),
            running: specs.iter().map(|_| None).collect(),
            specs,
            env,
            incarnations: 0,
            kills: 0,
            restarts: 0,
            reports: Arc::new(Mutex::new(Reports::default())),
        };
        for slot in 0..workers.specs.len() {
            workers.spawn(slot);
        }
        workers
    }

    pub(crate) fn len(&self) -> usize {
        self.specs.len()
    }

    pub(crate) fn name(&self, slot: usize) -> &str {
        &self.specs[slot].name
    }

    fn spawn(&mut self, slot: usize) {
        self.incarnations += 1;
        let spec = &self.specs[slot];
        let mut child = Command::new(&self.exe)
            .arg("--saga-worker")
            .arg(serde_json::to_string(spec).expect("spec"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "SAGA_FAULT_SEED",
                (spec.seed ^ self.incarnations.wrapping_mul(0x9e37_79b9)).to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a worker process");
        let stderr = child.stderr.take().expect("worker stderr");
        let reports = Arc::clone(&self.reports);
        let name = spec.name.clone();
        let echo = std::env::var_os("SAGA_CRASH_VERBOSE").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{name}] {line}");
                }
                if let Ok(mut reports) = reports.lock() {
                    reports.read(&name, &line);
                }
            }
        });
        self.running[slot] = Some(Running {
            child,
            stopped: false,
        });
    }

    /// SIGKILLs the worker in `slot` (a no-op if it is not running) and reaps it.
    pub(crate) fn kill(&mut self, slot: usize) {
        if let Some(mut running) = self.running[slot].take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
            self.kills += 1;
        }
    }

    /// Starts a new process in `slot` (after a kill or an abort).
    pub(crate) fn restart(&mut self, slot: usize) {
        self.kill_quietly(slot);
        self.spawn(slot);
        self.restarts += 1;
    }

    fn kill_quietly(&mut self, slot: usize) {
        if let Some(mut running) = self.running[slot].take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    fn signal(&mut self, slot: usize, signal: &str) {
        let Some(running) = self.running[slot].as_mut() else {
            return;
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(running.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        running.stopped = signal == "STOP";
    }

    /// Freezes the worker (SIGSTOP): it holds its leases but does nothing, as a paused VM does.
    pub(crate) fn freeze(&mut self, slot: usize) {
        self.signal(slot, "STOP");
    }

    /// Lets a frozen worker run again (SIGCONT).
    pub(crate) fn thaw(&mut self, slot: usize) {
        self.signal(slot, "CONT");
    }

    /// Restarts every worker that exited on its own (a fault point aborted it); returns how
    /// many.
    pub(crate) fn restart_exited(&mut self) -> u64 {
        let mut restarted = 0;
        for slot in 0..self.running.len() {
            let exited = match self.running[slot].as_mut() {
                Some(running) => matches!(running.child.try_wait(), Ok(Some(_))),
                None => true,
            };
            if exited {
                self.running[slot] = None;
                self.spawn(slot);
                self.restarts += 1;
                restarted += 1;
            }
        }
        restarted
    }

    /// SIGKILLs every worker (thawing frozen ones first is not needed: SIGKILL ends them too).
    pub(crate) fn stop_all(&mut self) {
        for slot in 0..self.running.len() {
            self.kill_quietly(slot);
        }
    }

    /// Waits (bounded) until every incarnation started so far said it is ready, so that
    /// kills hit live orchestrators rather than processes still connecting.
    pub(crate) async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ready = self
                .reports
                .lock()
                .map(|reports| reports.ready)
                .unwrap_or(0);
            if ready >= self.incarnations || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of every worker's stderr.
    pub(crate) fn tails(&self) -> String {
        let reports = self.reports.lock().expect("reports");
        reports
            .tail
            .iter()
            .map(|(name, lines)| {
                format!(
                    "--- {name}\n{}",
                    lines.iter().cloned().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop_all();
    }
}
