//! The systemd journal as a log source: `journalctl -f -o json` as a child process.
//!
//! Each journal entry is one JSON object on one line; it is delivered as is (the
//! parser reads `MESSAGE`, `SYSLOG_IDENTIFIER`, `_PID`, `__REALTIME_TIMESTAMP`, and
//! judges the sender by `_UID`, `_EXE`, `_COMM`). The
//! child is killed when the [`Journal`] is dropped. If journalctl exits, `next`
//! returns an error carrying its exit status and what it wrote on stderr.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::{
    io::AsyncReadExt,
    process::{Child, ChildStderr, ChildStdout, Command},
};

use super::{LogLine, stdin::LineReader};

/// How to run journalctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalOptions {
    /// The journalctl binary.
    pub journalctl: PathBuf,
    /// Only entries with these syslog identifiers (`-t sm-mta -t sendmail …`); empty:
    /// every identifier (the parser's filter picks the MTAs' tags: `postfix/…/smtpd`,
    /// `postfix-NAME/…`, `exim4`, which journalctl's exact `-t` cannot express).
    pub identifiers: Vec<String>,
    /// Only entries journald received from processes of these uids (`_UID=N`, ORed): the
    /// MTAs' users. The uid comes from the kernel (SCM_CREDENTIALS), so a user cannot
    /// choose it; this also spares the daemon most other programs' lines. Empty: all.
    pub uids: Vec<u32>,
    /// Start with new entries only (`--lines=0`); otherwise journalctl's default of
    /// the last 10 entries comes first.
    pub new_only: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            journalctl: "journalctl".into(),
            identifiers: Vec::new(),
            uids: crate::parse::JournalTrust::mta_defaults().uids().to_vec(),
            new_only: true,
        }
    }
}

impl JournalOptions {
    /// The arguments passed to journalctl.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["--follow", "--output=json", "--no-pager", "--quiet"].map(String::from).to_vec();
        if self.new_only {
            a.push("--lines=0".into());
        }
        for t in &self.identifiers {
            a.push("--identifier".into());
            a.push(t.clone());
        }
        a.extend(self.uids.iter().map(|u| format!("_UID={u}")));
        a
    }
}

/// A running `journalctl -f -o json`.
pub struct Journal {
    child: Child,
    lines: LineReader<ChildStdout>,
    stderr: Option<ChildStderr>,
    journalctl: PathBuf,
}

impl Journal {
    /// Start journalctl. Must be called inside a tokio runtime.
    pub fn spawn(opts: &JournalOptions) -> std::io::Result<Self> {
        let mut child = Command::new(&opts.journalctl)
            .args(opts.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{}: not found: reading the systemd journal needs journalctl; \
                             on a host without systemd, follow the mail log file instead",
                            opts.journalctl.display()
                        ),
                    )
                } else {
                    std::io::Error::new(e.kind(), format!("{}: {e}", opts.journalctl.display()))
                }
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take();
        Ok(Self {
            child,
            lines: LineReader::new(stdout, Path::new("journal"), 1 << 20),
            stderr,
            journalctl: opts.journalctl.clone(),
        })
    }

    /// Pid of the journalctl child.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next journal entry, one JSON object, tagged with the source `journal`.
    pub async fn next(&mut self) -> std::io::Result<LogLine> {
        if let Some(l) = self.lines.next().await? {
            return Ok(l);
        }
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        let status = self.child.wait().await?;
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} exited ({status}): {}", self.journalctl.display(), err.trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, time::Duration};

    use super::*;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("journalctl");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn yields_json_lines_passes_args_and_kills_child_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let args_file = d.path().join("args");
        let bin = script(
            d.path(),
            &format!(
                "echo \"$@\" > {}\nprintf '%s\\n' '{{\"MESSAGE\":\"a\",\"SYSLOG_IDENTIFIER\":\"sm-mta\"}}' '{{\"MESSAGE\":\"b\"}}'\nexec sleep 60",
                args_file.display()
            ),
        );
        let opts = JournalOptions { journalctl: bin, identifiers: vec!["sm-mta".into(), "sendmail".into()], uids: vec![0, 107], new_only: true };
        let mut j = Journal::spawn(&opts).unwrap();
        let a = tokio::time::timeout(Duration::from_secs(5), j.next()).await.unwrap().unwrap();
        assert_eq!(a.line, br#"{"MESSAGE":"a","SYSLOG_IDENTIFIER":"sm-mta"}"#);
        assert_eq!(&*a.source, Path::new("journal"));
        let b = j.next().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b.line).unwrap();
        assert_eq!(v["MESSAGE"], "b");
        assert_eq!(
            std::fs::read_to_string(&args_file).unwrap().trim(),
            "--follow --output=json --no-pager --quiet --lines=0 --identifier sm-mta --identifier sendmail _UID=0 _UID=107"
        );
        let pid = j.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(j);
        // Killed: gone, or a zombie awaiting tokio's reaper.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
                break;
            }
            assert!(std::time::Instant::now() < end, "journalctl child {pid} survived drop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn exit_is_an_error_with_stderr() {
        let d = tempfile::tempdir().unwrap();
        let bin = script(d.path(), "echo 'No journal files were found.' >&2\nexit 1");
        let mut j = Journal::spawn(&JournalOptions { journalctl: bin, ..Default::default() }).unwrap();
        let e = j.next().await.unwrap_err().to_string();
        assert!(e.contains("No journal files were found.") && e.contains("exit status: 1"), "{e}");
    }

    #[tokio::test]
    async fn missing_journalctl_is_a_clear_error() {
        let opts = JournalOptions { journalctl: "/nonexistent/journalctl".into(), ..Default::default() };
        let e = Journal::spawn(&opts).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/journalctl") && e.contains("needs journalctl"), "{e}");
    }
}
