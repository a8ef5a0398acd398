//! Faults injected into the tools the daemon drives, to test what it does when they fail.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// `iptables` and `iptables-restore` wrappers around the real binaries; while
/// `fail(true)` holds, `iptables-restore` exits 4 ("simulated failure"), so every ban the
/// iptables enforcer makes is refused. Pass `args()` to the daemon (`--iptables PATH`).
pub struct FailingIptables {
    dir: tempfile::TempDir,
    flag: PathBuf,
}

impl FailingIptables {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let flag = dir.path().join("fail");
        let ipt = dir.path().join("iptables");
        std::fs::write(&ipt, format!("#!/bin/sh\nexec {} \"$@\"\n", real("iptables")?))?;
        let restore = dir.path().join("iptables-restore");
        std::fs::write(
            &restore,
            format!(
                "#!/bin/sh\nif [ -e {} ]; then echo 'iptables-restore: simulated failure' >&2; exit 4; fi\nexec {} \"$@\"\n",
                flag.display(),
                real("iptables-restore")?
            ),
        )?;
        for p in [&ipt, &restore] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Self { dir, flag })
    }

    /// The `iptables` wrapper (its `iptables-restore` sits next to it).
    pub fn iptables(&self) -> PathBuf {
        self.dir.path().join("iptables")
    }

    pub fn fail(&self, on: bool) -> anyhow::Result<()> {
        if on {
            std::fs::write(&self.flag, "")?;
        } else if self.flag.exists() {
            std::fs::remove_file(&self.flag)?;
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn real(name: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output()?;
    let path = String::from_utf8(out.stdout)?.trim().to_string();
    anyhow::ensure!(!path.is_empty(), "{name} is not installed");
    Ok(path)
}
