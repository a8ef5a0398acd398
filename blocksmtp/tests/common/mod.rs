//! Helpers shared by the replay integration tests: run the built binary, read its
//! JSON report. The log generator is the workspace's `tests/src/loggen.rs`.
#![allow(dead_code)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

#[path = "../../../tests/src/loggen.rs"]
pub mod loggen;

#[allow(unused_imports)]
pub use loggen::{LogGen, Style};
use serde_json::Value;

/// A log start time: two days ago, so BSD timestamps fall in the current year's past
/// (or last year's, which the year inference handles the same way).
pub fn start() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    now - 2 * 86_400
}

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Run `blocksmtp replay ARGS`, with `stdin` fed when given.
pub fn replay_raw(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blocksmtp"));
    cmd.arg("replay").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("run blocksmtp");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&data);
        });
    }
    child.wait_with_output().unwrap()
}

/// Run `blocksmtp replay --json ARGS` and parse the report; panics unless exit 0.
pub fn replay_json(args: &[&str], stdin: Option<&[u8]>) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = replay_raw(&a, stdin);
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Replay a generated log written to a file.
pub fn replay_log(log: &[u8], extra: &[&str]) -> Value {
    let dir = Dir::new();
    let p = dir.write("mail.log", log);
    let mut args: Vec<&str> = extra.to_vec();
    let ps = p.to_str().unwrap().to_string();
    args.push(&ps);
    replay_json(&args, None)
}

/// The banned sources, in decision order.
pub fn sources(report: &Value) -> Vec<String> {
    report["bans"].as_array().unwrap().iter().map(|b| b["source"].as_str().unwrap().to_string()).collect()
}

pub fn ban<'a>(report: &'a Value, source: &str) -> &'a Value {
    report["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["source"] == source)
        .unwrap_or_else(|| panic!("no ban of {source}: {report:#}"))
}
