//! What the tests that run an example share: the example's binary, built by cargo so that it
//! matches the sources under test, and the `name=value` figures it prints.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary of example `name`, (re)built in the test's own profile.
pub(crate) fn binary(name: &str) -> PathBuf {
    binary_with(name, &[])
}

/// The binary of example `name` built with the facade's `features` too (e.g. `postgres`).
pub(crate) fn binary_with(name: &str, features: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let joined = features.join(",");
    let mut args = vec!["build", "--example", name];
    if !features.is_empty() {
        args.extend(["--features", joined.as_str()]);
    }
    if profile_dir.ends_with("release") {
        args.push("--release");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .status()
        .expect("run cargo build --example");
    assert!(status.success(), "building the {name} example failed");
    profile_dir.join("examples").join(name)
}

/// Runs example `name` with `args` to its end; panics with its output unless it exits 0.
/// Returns its standard output.
pub(crate) fn run(name: &str, args: &[&str]) -> String {
    let output = Command::new(binary(name))
        .args(args)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {name} example failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// The `name=value` lines of `stdout` whose value is a whole number.
pub(crate) struct Figures<'o> {
    stdout: &'o str,
    values: HashMap<&'o str, u64>,
}

impl<'o> Figures<'o> {
    pub(crate) fn of(stdout: &'o str) -> Self {
        let values = stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter_map(|(name, value)| Some((name, value.trim().parse().ok()?)))
            .collect();
        Self { stdout, values }
    }

    /// The figure `name`; panics with the whole output when it was not printed.
    pub(crate) fn get(&self, name: &str) -> u64 {
        *self
            .values
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}=` line in the output:\n{}", self.stdout))
    }
}

/// The lines of one report in an example's output: the line starting with `head` and the
/// indented lines after it, up to the next report.
pub(crate) fn report<'a>(stdout: &'a str, head: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .skip_while(|line| !line.starts_with(head))
        .enumerate()
        .take_while(|(i, line)| *i == 0 || line.starts_with("  "))
        .map(|(_, line)| line)
        .collect()
}
