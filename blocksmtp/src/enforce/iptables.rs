//! `--mode iptables`: the old daemon's chain, for hosts without XDP.
//!
//! Layout (per address family, `iptables` for IPv4 and `ip6tables` for IPv6):
//!
//! ```text
//! -N SPAM_UNAME_GUESSERS
//! -I INPUT -p tcp --dport 25 [-d MAILER_IP] -j SPAM_UNAME_GUESSERS        (one per port)
//! -A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp --dport 25 \
//!      -m comment --comment "blocksmtp until=1767225600" -j DROP          (one per source per port)
//! ```
//!
//! A manual ban's comment reads `"blocksmtp until=<unix-seconds> manual"`.
//!
//! **State lives in the rules.** Each rule carries its expiry in its comment, so a new
//! enforcer *adopts* an existing chain (`iptables -S CHAIN`): it recovers every source
//! and expiry, removes duplicate rules and rules for ports no longer protected, adds
//! missing ones, and inserts only the jumps that are missing (duplicate or stale
//! jumps into the chain are removed). Rules in the chain without a blocksmtp comment
//! (e.g. left by the old Perl daemon) are left alone and reported; `shutdown(false)`
//! removes the whole chain, them included.
//!
//! **Batching.** Every change to the chain goes through one `iptables-restore -w
//! --noflush` call per family (`ban`, `ban_many`, `unban`, `sweep_expired`), so 10,000
//! bans are one process, not 10,000. The `-restore` binary is the configured binary's
//! name with `-restore` appended (`iptables-legacy` → `iptables-legacy-restore`).
//!
//! **Backends.** iptables-nft and iptables-legacy both work; the user picks the
//! binaries and [`IptablesEnforcer::backends`] reports what `-V` says they drive.
//!
//! **Errors** name the command line and quote its stderr. If a batch fails (someone
//! edited the chain behind our back), the enforcer re-reads the chain and retries
//! once.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow, bail};

use super::{ActiveBan, Enforcer};
use crate::addr::SourceAddr;

/// Default chain name, as in the old daemon.
pub const DEFAULT_CHAIN: &str = "SPAM_UNAME_GUESSERS";
const COMMENT_TAG: &str = "blocksmtp";

/// Settings for [`IptablesEnforcer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IptablesConfig {
    /// `--iptables-chain-name`.
    pub chain: String,
    /// Protected TCP ports: one jump each, one DROP rule per source each.
    pub ports: Vec<u16>,
    /// The mailer's IPv4 address (`-d` on the IPv4 jumps), if it should be restricted.
    pub mailer_ip_v4: Option<std::net::Ipv4Addr>,
    /// The mailer's IPv6 address (`-d` on the IPv6 jumps).
    pub mailer_ip_v6: Option<std::net::Ipv6Addr>,
    /// Binary for IPv4 (`iptables`, `iptables-nft`, `iptables-legacy`, or a path).
    pub iptables: PathBuf,
    /// Binary for IPv6; `None` disables IPv6 (IPv6 bans are then refused).
    pub ip6tables: Option<PathBuf>,
    /// Seconds to wait for the xtables lock (`-w`).
    pub lock_wait_secs: u32,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        Self {
            chain: DEFAULT_CHAIN.to_string(),
            ports: vec![25],
            mailer_ip_v4: None,
            mailer_ip_v6: None,
            iptables: "iptables".into(),
            ip6tables: Some("ip6tables".into()),
            lock_wait_secs: 30,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ban {
    until: u64,
    manual: bool,
}

struct Family {
    v6: bool,
    bin: PathBuf,
    restore: PathBuf,
    mailer_ip: Option<IpAddr>,
    backend: String,
}

/// One `-A CHAIN …` rule of ours, parsed from `iptables -S`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChainRule {
    source: SourceAddr,
    port: u16,
    ban: Ban,
    /// Everything after `-A CHAIN`, as listed (counters removed): the `-D` spec.
    spec: String,
    packets: u64,
}

/// The iptables enforcer. See the module documentation.
pub struct IptablesEnforcer {
    cfg: IptablesConfig,
    families: Vec<Family>,
    bans: BTreeMap<SourceAddr, Ban>,
    shut: bool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn restore_binary(bin: &Path) -> PathBuf {
    let mut name = bin.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-restore");
    bin.with_file_name(name)
}

fn cmdline(bin: &Path, args: &[String]) -> String {
    let mut s = bin.display().to_string();
    for a in args {
        s.push(' ');
        if a.contains(' ') || a.is_empty() { s.push_str(&format!("{a:?}")) } else { s.push_str(a) }
    }
    s
}

/// Run a command; stdout on success, an error naming the command and its stderr
/// otherwise.
fn run(bin: &Path, args: &[String], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("`{}`: command not found (is iptables installed, and is the binary name right?)", bin.display())
        } else {
            anyhow!("`{}`: {e}", cmdline(bin, args))
        }
    })?;
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("piped");
        // A failing command may close stdin early; its exit status tells the story.
        let _ = w.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().with_context(|| format!("`{}`", cmdline(bin, args)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmdline(bin, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Split an `iptables -S` line into words, honouring double quotes.
fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_q = !in_q;
                has = true;
            }
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !in_q => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

fn quote(w: &str) -> String {
    if w.is_empty() || w.contains([' ', '"', '\\']) {
        format!("\"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        w.to_string()
    }
}

fn comment_for(ban: Ban) -> String {
    if ban.manual {
        format!("{COMMENT_TAG} until={} manual", ban.until)
    } else {
        format!("{COMMENT_TAG} until={}", ban.until)
    }
}

fn parse_comment(c: &str) -> Option<Ban> {
    let mut words = c.split_whitespace();
    if words.next()? != COMMENT_TAG {
        return None;
    }
    let until = words.next()?.strip_prefix("until=")?.parse().ok()?;
    let manual = words.next() == Some("manual");
    Some(Ban { until, manual })
}

/// Parse one `-A CHAIN …` line of `iptables [-v] -S CHAIN`. `Ok(None)` for lines that
/// are not rules of `chain`; `Err(spec)` for a rule of the chain that is not ours.
fn parse_rule(line: &str, chain: &str) -> Result<Option<ChainRule>, String> {
    let w = split_words(line);
    if w.len() < 2 || w[0] != "-A" || w[1] != chain {
        return Ok(None);
    }
    let mut source = None;
    let mut port = None;
    let mut comment = None;
    let mut target = None;
    let mut packets = 0;
    let mut spec: Vec<String> = Vec::new();
    let mut i = 2;
    while i < w.len() {
        match w[i].as_str() {
            "-c" if i + 2 < w.len() => {
                packets = w[i + 1].parse().unwrap_or(0);
                i += 3;
                continue;
            }
            "-s" if i + 1 < w.len() => source = w[i + 1].parse::<SourceAddr>().ok(),
            "--dport" if i + 1 < w.len() => port = w[i + 1].parse::<u16>().ok(),
            "--comment" if i + 1 < w.len() => comment = Some(w[i + 1].clone()),
            "-j" if i + 1 < w.len() => target = Some(w[i + 1].clone()),
            _ => {}
        }
        spec.push(quote(&w[i]));
        i += 1;
    }
    let spec = spec.join(" ");
    match (source, port, comment.as_deref().and_then(parse_comment), target.as_deref()) {
        (Some(source), Some(port), Some(ban), Some("DROP")) => Ok(Some(ChainRule { source, port, ban, spec, packets })),
        _ => Err(spec),
    }
}

impl IptablesEnforcer {
    /// Set up (or adopt) the chain and its jumps in both families.
    pub fn new(cfg: IptablesConfig) -> anyhow::Result<Self> {
        if cfg.ports.is_empty() {
            bail!("iptables enforcer: no port to protect");
        }
        if cfg.chain.is_empty() || cfg.chain.len() > 28 || cfg.chain.contains(char::is_whitespace) {
            bail!("iptables chain name {:?} is invalid (1-28 characters, no blanks)", cfg.chain);
        }
        let mut families = vec![Family::new(false, &cfg.iptables, cfg.mailer_ip_v4.map(IpAddr::V4))?];
        if let Some(b6) = &cfg.ip6tables {
            families.push(Family::new(true, b6, cfg.mailer_ip_v6.map(IpAddr::V6))?);
        }
        let mut me = Self { cfg, families, bans: BTreeMap::new(), shut: false };
        for i in 0..me.families.len() {
            me.adopt(i)?;
        }
        log::info!(
            "iptables: chain {} on ports {:?} ({}), {} ban(s) adopted",
            me.cfg.chain,
            me.cfg.ports,
            me.backends().join(", "),
            me.bans.len()
        );
        Ok(me)
    }

    /// `iptables: iptables v1.8.9 (nf_tables)`, … one entry per family, from `-V`.
    pub fn backends(&self) -> Vec<String> {
        self.families.iter().map(|f| format!("{}: {}", f.bin.display(), f.backend)).collect()
    }

    pub fn config(&self) -> &IptablesConfig {
        &self.cfg
    }

    fn family(&self, v6: bool) -> Option<usize> {
        self.families.iter().position(|f| f.v6 == v6)
    }

    fn wait_arg(&self) -> Vec<String> {
        vec!["-w".into(), self.cfg.lock_wait_secs.to_string()]
    }

    fn ipt(&self, fam: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut a = self.wait_arg();
        a.extend(args.iter().map(|s| s.to_string()));
        run(&self.families[fam].bin, &a, None)
    }

    /// Rules of our chain in family `fam`, with counters; `None` if the chain is absent.
    fn read_chain(&self, fam: usize) -> anyhow::Result<Option<(Vec<ChainRule>, Vec<String>)>> {
        let f = &self.families[fam];
        // The whole filter table: whether the chain exists is read from its `-N` line
        // (iptables-nft 1.8.9 answers `-S MISSING` with a misleading error).
        let listing = self.ipt(fam, &["-v", "-S"])?;
        let new_line = format!("-N {}", self.cfg.chain);
        if !listing.lines().any(|l| l.trim_end() == new_line) {
            return Ok(None);
        }
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        for line in listing.lines() {
            match parse_rule(line, &self.cfg.chain) {
                Ok(Some(r)) if r.source.is_v4() != f.v6 => ours.push(r),
                Ok(Some(r)) => foreign.push(r.spec),
                Ok(None) => {}
                Err(spec) => foreign.push(spec),
            }
        }
        Ok(Some((ours, foreign)))
    }

    fn rule_spec(&self, source: &SourceAddr, port: u16, ban: Ban) -> String {
        format!(
            "-s {} -p tcp -m tcp --dport {port} -m comment --comment {} -j DROP",
            source.net(),
            quote(&comment_for(ban))
        )
    }

    /// Create the chain if needed, fix the jumps, and take over the rules found.
    fn adopt(&mut self, fam: usize) -> anyhow::Result<()> {
        let chain = self.cfg.chain.clone();
        let (rules, foreign) = match self.read_chain(fam)? {
            Some(x) => x,
            None => {
                self.ipt(fam, &["-N", &chain])?;
                (Vec::new(), Vec::new())
            }
        };
        if !foreign.is_empty() {
            log::warn!(
                "{}: chain {chain} holds {} rule(s) without a blocksmtp expiry; left as they are",
                self.families[fam].bin.display(),
                foreign.len()
            );
        }
        // Per source: the latest expiry, and which rules exist.
        let mut found: BTreeMap<SourceAddr, Ban> = BTreeMap::new();
        for r in &rules {
            let b = found.entry(r.source).or_insert(r.ban);
            if r.ban.until > b.until {
                b.until = r.ban.until;
            }
            b.manual |= r.ban.manual;
        }
        // Reconcile: keep exactly one rule per (source, configured port), with the
        // recovered expiry; delete the rest.
        let mut script = Vec::new();
        let mut kept: BTreeSet<(SourceAddr, u16)> = BTreeSet::new();
        for r in &rules {
            let want = found[&r.source];
            if self.cfg.ports.contains(&r.port) && r.ban == want && kept.insert((r.source, r.port)) {
                continue;
            }
            script.push(format!("-D {chain} {}", r.spec));
        }
        for (src, ban) in &found {
            for &p in &self.cfg.ports {
                if !kept.contains(&(*src, p)) {
                    script.push(format!("-A {chain} {}", self.rule_spec(src, p, *ban)));
                }
            }
        }
        if !script.is_empty() {
            self.restore(fam, &script)?;
        }
        self.bans.extend(found);
        self.fix_jumps(fam)
    }

    /// Exactly one jump per configured port (with the mailer address), nothing else
    /// jumping to the chain.
    fn fix_jumps(&self, fam: usize) -> anyhow::Result<()> {
        let chain = &self.cfg.chain;
        let mailer = self.families[fam].mailer_ip;
        let listing = self.ipt(fam, &["-S", "INPUT"])?;
        let mut have: BTreeSet<u16> = BTreeSet::new();
        for line in listing.lines() {
            let w = split_words(line);
            if w.len() < 2 || w[0] != "-A" || w[1] != "INPUT" {
                continue;
            }
            let Some(j) = w.iter().position(|x| x == "-j") else { continue };
            if w.get(j + 1) != Some(chain) {
                continue;
            }
            let port = w.iter().position(|x| x == "--dport").and_then(|i| w.get(i + 1)?.parse::<u16>().ok());
            let dest = w
                .iter()
                .position(|x| x == "-d")
                .and_then(|i| w.get(i + 1)?.parse::<ipnet::IpNet>().ok())
                .map(|n| n.addr());
            let wanted = port.is_some_and(|p| self.cfg.ports.contains(&p)) && dest == mailer;
            if wanted && have.insert(port.unwrap()) {
                continue;
            }
            let mut del: Vec<&str> = vec!["-D", "INPUT"];
            del.extend(w[2..].iter().map(String::as_str));
            self.ipt(fam, &del)?;
        }
        for &p in &self.cfg.ports {
            if have.contains(&p) {
                continue;
            }
            let port = p.to_string();
            let dst = mailer.map(|m| m.to_string());
            let mut args = vec!["-I", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", &port];
            if let Some(d) = &dst {
                args.extend(["-d", d.as_str()]);
            }
            args.extend(["-j", chain.as_str()]);
            self.ipt(fam, &args)?;
        }
        Ok(())
    }

    /// One `iptables-restore --noflush` transaction on the filter table.
    fn restore(&self, fam: usize, lines: &[String]) -> anyhow::Result<()> {
        let mut input = String::with_capacity(lines.len() * 100 + 32);
        input.push_str("*filter\n");
        for l in lines {
            input.push_str(l);
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        let mut a = self.wait_arg();
        a.push("--noflush".into());
        run(&self.families[fam].restore, &a, Some(&input))
            .map(|_| ())
            .with_context(|| format!("applying {} rule change(s) to chain {}", lines.len(), self.cfg.chain))
    }

    /// Apply new expiries for `changes` (`None` = remove), one batch per family; on
    /// failure re-read the chain and retry once.
    fn apply(&mut self, changes: &BTreeMap<SourceAddr, Option<Ban>>) -> anyhow::Result<()> {
        for v6 in [false, true] {
            let subset: Vec<_> = changes.iter().filter(|(s, _)| s.is_v4() != v6).collect();
            if subset.is_empty() {
                continue;
            }
            let Some(fam) = self.family(v6) else {
                bail!("IPv6 ban of {} refused: no ip6tables configured", subset[0].0);
            };
            let script = self.script_for(v6, &subset);
            if let Err(first) = self.restore(fam, &script) {
                log::warn!("{first:#}; re-reading chain {} and retrying", self.cfg.chain);
                self.bans.retain(|s, _| s.is_v4() == v6);
                self.adopt(fam).context("re-reading the chain after a failed batch")?;
                let script = self.script_for(v6, &subset);
                self.restore(fam, &script)?;
            }
            for (s, b) in subset {
                match b {
                    Some(b) => self.bans.insert(*s, *b),
                    None => self.bans.remove(s),
                };
            }
        }
        Ok(())
    }

    /// The restore lines for `subset`. Deleting a rule by its spec makes iptables search
    /// the chain, so many deletions at once (a mass expiry) would be quadratic: then the
    /// family's chain is flushed and rewritten instead, linear in its size. (Rewritten
    /// rules start their packet counters afresh.)
    fn script_for(&self, v6: bool, subset: &[(&SourceAddr, &Option<Ban>)]) -> Vec<String> {
        let deletes = subset.iter().filter(|(s, _)| self.bans.contains_key(s)).count();
        let size = self.bans.keys().filter(|s| s.is_v4() != v6).count();
        if deletes <= 64 || deletes * 8 <= size {
            return self.script(subset);
        }
        let mut after: BTreeMap<SourceAddr, Ban> =
            self.bans.iter().filter(|(s, _)| s.is_v4() != v6).map(|(s, b)| (*s, *b)).collect();
        for (s, new) in subset {
            match new {
                Some(b) => after.insert(**s, *b),
                None => after.remove(*s),
            };
        }
        let chain = &self.cfg.chain;
        let mut script = Vec::with_capacity(1 + after.len() * self.cfg.ports.len());
        script.push(format!("-F {chain}"));
        for (s, b) in &after {
            for &p in &self.cfg.ports {
                script.push(format!("-A {chain} {}", self.rule_spec(s, p, *b)));
            }
        }
        script
    }

    fn script(&self, subset: &[(&SourceAddr, &Option<Ban>)]) -> Vec<String> {
        let chain = &self.cfg.chain;
        let mut script = Vec::with_capacity(subset.len() * self.cfg.ports.len() * 2);
        for (s, new) in subset {
            if let Some(old) = self.bans.get(s) {
                for &p in &self.cfg.ports {
                    script.push(format!("-D {chain} {}", self.rule_spec(s, p, *old)));
                }
            }
            if let Some(new) = new {
                for &p in &self.cfg.ports {
                    script.push(format!("-A {chain} {}", self.rule_spec(s, p, *new)));
                }
            }
        }
        script
    }

    fn remove_all(&mut self) -> anyhow::Result<()> {
        let chain = self.cfg.chain.clone();
        for fam in 0..self.families.len() {
            let listing = self.ipt(fam, &["-S", "INPUT"])?;
            for line in listing.lines() {
                let w = split_words(line);
                let j = w.iter().position(|x| x == "-j");
                if w.len() > 2 && w[0] == "-A" && w[1] == "INPUT" && j.and_then(|j| w.get(j + 1)) == Some(&chain) {
                    let mut del: Vec<&str> = vec!["-D", "INPUT"];
                    del.extend(w[2..].iter().map(String::as_str));
                    self.ipt(fam, &del)?;
                }
            }
            if self.read_chain(fam)?.is_some() {
                self.ipt(fam, &["-F", &chain])?;
                self.ipt(fam, &["-X", &chain])?;
            }
        }
        self.bans.clear();
        Ok(())
    }
}

impl Family {
    fn new(v6: bool, bin: &Path, mailer_ip: Option<IpAddr>) -> anyhow::Result<Self> {
        let v = run(bin, &["-V".to_string()], None)?;
        // `iptables v1.8.9 (nf_tables)` / `iptables v1.8.9 (legacy)`; older releases
        // print no backend and are legacy.
        let v = v.trim();
        let backend = if v.contains("nf_tables") || v.contains("legacy") { v.to_string() } else { format!("{v} (legacy)") };
        let restore = restore_binary(bin);
        Ok(Self { v6, bin: bin.to_path_buf(), restore, mailer_ip, backend })
    }
}

impl Enforcer for IptablesEnforcer {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn ban(&mut self, source: &SourceAddr, duration: Duration, manual: bool) -> anyhow::Result<()> {
        self.ban_many(&[(*source, duration, manual)])
    }

    fn ban_many(&mut self, bans: &[(SourceAddr, Duration, bool)]) -> anyhow::Result<()> {
        let now = now_secs();
        let mut changes: BTreeMap<SourceAddr, Option<Ban>> = BTreeMap::new();
        for (s, d, manual) in bans {
            let until = now + d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let merged = match (changes.get(s).copied().flatten().or(self.bans.get(s).copied()), until) {
                (Some(old), until) => Ban { until: old.until.max(until), manual: old.manual | manual },
                (None, until) => Ban { until, manual: *manual },
            };
            if self.bans.get(s) != Some(&merged) {
                changes.insert(*s, Some(merged));
            }
        }
        self.apply(&changes)
    }

    fn unban(&mut self, source: &SourceAddr) -> anyhow::Result<bool> {
        if !self.bans.contains_key(source) {
            return Ok(false);
        }
        self.apply(&BTreeMap::from([(*source, None)]))?;
        Ok(true)
    }

    /// From memory, without running iptables (the daemon asks twice a second).
    fn active_count(&self) -> anyhow::Result<usize> {
        Ok(self.bans.len())
    }

    fn list(&self) -> anyhow::Result<Vec<ActiveBan>> {
        let now = now_secs();
        let mut dropped: BTreeMap<SourceAddr, u64> = BTreeMap::new();
        for fam in 0..self.families.len() {
            if let Some((rules, _)) = self.read_chain(fam)? {
                for r in rules {
                    *dropped.entry(r.source).or_default() += r.packets;
                }
            }
        }
        Ok(self
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(s, b)| ActiveBan {
                source: *s,
                expires_at: UNIX_EPOCH + Duration::from_secs(b.until),
                dropped: dropped.get(s).copied(),
                manual: b.manual,
            })
            .collect())
    }

    fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>> {
        let now = now_secs();
        let gone: Vec<SourceAddr> = self.bans.iter().filter(|(_, b)| b.until <= now).map(|(s, _)| *s).collect();
        let changes = gone.iter().map(|s| (*s, None)).collect();
        self.apply(&changes)?;
        Ok(gone)
    }

    fn shutdown(&mut self, keep_bans: bool) -> anyhow::Result<()> {
        if self.shut {
            return Ok(());
        }
        if keep_bans {
            log::info!("iptables: leaving chain {} and {} ban(s) in place (--keep-bans)", self.cfg.chain, self.bans.len());
        } else {
            self.remove_all()?;
            log::info!("iptables: removed chain {} and its jumps", self.cfg.chain);
        }
        self.shut = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listed_rules() {
        let l = r#"-A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp -m tcp --dport 25 -m comment --comment "blocksmtp until=1700000000" -c 7 420 -j DROP"#;
        let r = parse_rule(l, "SPAM_UNAME_GUESSERS").unwrap().unwrap();
        assert_eq!(r.source.to_string(), "192.0.2.66");
        assert_eq!(r.port, 25);
        assert_eq!(r.ban, Ban { until: 1_700_000_000, manual: false });
        assert_eq!(r.packets, 7);
        assert_eq!(r.spec, r#"-s 192.0.2.66/32 -p tcp -m tcp --dport 25 -m comment --comment "blocksmtp until=1700000000" -j DROP"#);

        let l6 = r#"-A X -s 2001:db8::/64 -p tcp -m tcp --dport 587 -m comment --comment "blocksmtp until=5 manual" -j DROP"#;
        let r6 = parse_rule(l6, "X").unwrap().unwrap();
        assert_eq!((r6.source.to_string().as_str(), r6.port, r6.ban.manual), ("2001:db8::/64", 587, true));

        assert_eq!(parse_rule("-N X", "X"), Ok(None));
        assert_eq!(parse_rule("-A Y -s 192.0.2.1/32 -j DROP", "X"), Ok(None));
        assert!(parse_rule("-A X -s 192.0.2.1/32 -p tcp -m tcp --dport 25 -j DROP", "X").is_err(), "no comment: foreign");
        assert!(parse_rule(r#"-A X -s 192.0.2.1/32 -p tcp -m tcp --dport 25 -m comment --comment "other" -j DROP"#, "X").is_err());
    }

    #[test]
    fn words_and_quotes_round_trip() {
        assert_eq!(split_words(r#"-m comment --comment "a b \"c\"" -j X"#), vec!["-m", "comment", "--comment", r#"a b "c""#, "-j", "X"]);
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(split_words(&quote(r#"x "y" z"#)), vec![r#"x "y" z"#]);
        assert_eq!(parse_comment(&comment_for(Ban { until: 42, manual: true })), Some(Ban { until: 42, manual: true }));
        assert_eq!(parse_comment("blocksmtp until=x"), None);
    }

    #[test]
    fn restore_binary_names() {
        assert_eq!(restore_binary(Path::new("iptables")), PathBuf::from("iptables-restore"));
        assert_eq!(restore_binary(Path::new("/usr/sbin/iptables-legacy")), PathBuf::from("/usr/sbin/iptables-legacy-restore"));
        assert_eq!(restore_binary(Path::new("ip6tables-nft")), PathBuf::from("ip6tables-nft-restore"));
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let cfg = IptablesConfig { iptables: "/nonexistent/iptables".into(), ..Default::default() };
        let e = IptablesEnforcer::new(cfg).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/iptables") && e.contains("not found"), "{e}");
    }
}
