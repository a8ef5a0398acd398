//! Debian's `crowdsec-firewall-bouncer` as a peer: run in the foreground inside a
//! network namespace with a private config file (its own API key, LAPI URL, nftables
//! table/chain/set names, pid file and log in a temporary directory), never the
//! package's /etc config or its systemd unit. Stopped, and its nftables table removed,
//! on drop (the namespace's deletion would take the table too).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const BIN: &str = "/usr/bin/crowdsec-firewall-bouncer";

/// Whether the package is installed (`cargo xtask bench` installs it).
pub fn available() -> bool {
    Path::new(BIN).is_file()
}

pub struct FirewallBouncer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// nftables table (family ip) holding the bouncer's chain and set.
    pub table: String,
    pub set: String,
    ns: String,
}

impl FirewallBouncer {
    /// Start it in `ns`, pulling `api_url` with `api_key` every `update_frequency`; returns
    /// once its nftables set exists (the bouncer has started and made its firewall objects).
    pub fn start(ns: &str, api_url: &str, api_key: &str, update_frequency: Duration, name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("blocksmtp-bench-csfb-").tempdir()?;
        let table = format!("{name}4");
        let set = format!("{name}-bl4");
        let config = dir.path().join("bouncer.yaml");
        // The package's own file with what a private instance must change; anything else
        // (deny_action DROP, supported_decisions_types ban, ipset/nftables code) as shipped.
        let yaml = format!(
            "mode: nftables\n\
             pid_dir: {dir}/\n\
             update_frequency: {freq}ms\n\
             daemonize: false\n\
             log_mode: file\n\
             log_dir: {dir}/\n\
             log_level: info\n\
             log_compression: false\n\
             api_url: {url}/\n\
             api_key: {api_key}\n\
             insecure_skip_verify: false\n\
             disable_ipv6: true\n\
             deny_action: DROP\n\
             deny_log: false\n\
             supported_decisions_types:\n  - ban\n\
             blacklists_ipv4: {set}\n\
             blacklists_ipv6: {name}-bl6\n\
             ipset_type: nethash\n\
             iptables_chains:\n  - INPUT\n\
             nftables:\n  ipv4:\n    enabled: true\n    set-only: false\n    table: {table}\n    chain: {name}-chain\n\
             \x20 ipv6:\n    enabled: false\n    set-only: false\n    table: {name}6\n    chain: {name}6-chain\n\
             pf:\n  anchor_name: \"\"\n\
             prometheus:\n  enabled: false\n  listen_addr: 127.0.0.1\n  listen_port: 60601\n",
            dir = dir.path().display(),
            freq = update_frequency.as_millis(),
            url = api_url.trim_end_matches('/'),
        );
        crate::crowdsec::write_secret(&config, &yaml)?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(BIN)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout"))?)
            .stderr(std::fs::File::create(dir.path().join("stderr"))?)
            .spawn()
            .context("starting crowdsec-firewall-bouncer")?;
        let mut me = Self { child: Some(child), dir, config, table, set, ns: ns.to_string() };
        let t = Instant::now();
        loop {
            if let Some(st) = me.child.as_mut().expect("child").try_wait()? {
                bail!("crowdsec-firewall-bouncer exited at start ({st}):\n{}", me.diagnostics());
            }
            if me.set_members().is_ok() {
                return Ok(me);
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("crowdsec-firewall-bouncer made no nftables set within 30 s:\n{}", me.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its stderr and log file.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for f in ["stderr", "stdout", "crowdsec-firewall-bouncer.log"] {
            let s = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            out.push_str(&format!("{f}:\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n")));
        }
        out
    }

    fn nft(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.ns, "nft"]).args(args).output().context("running nft")?;
        if !out.status.success() {
            bail!("nft {args:?} in {}: {}", self.ns, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The text of `nft list set ip TABLE SET` (its elements are the banned addresses).
    pub fn set_members(&self) -> anyhow::Result<String> {
        self.nft(&["list", "set", "ip", &self.table, &self.set])
    }

    /// SIGTERM (it removes its table itself), then make sure the table is gone.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = crate::daemon::signal_and_wait(c, libc::SIGTERM, Duration::from_secs(10));
        }
        if self.nft(&["list", "table", "ip", &self.table]).is_ok() {
            let _ = self.nft(&["delete", "table", "ip", &self.table]);
        }
    }
}

impl Drop for FirewallBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}
