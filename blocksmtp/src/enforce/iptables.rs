//! `--mode iptables`: the old daemon's chain, for hosts without XDP.
//!
//! Layout (per address family, `iptables` for IPv4 and `ip6tables` for IPv6):
//!
//! ```text
//! -N SPAM_UNAME_GUESSERS
//! -I INPUT -p tcp --dport 25 [-d MAILER_IP] -j SPAM_UNAME_GUESSERS        (one per port)
//! -A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp --dport 25 \
//!      -m comment --comment "blocksmtp until=1767225600 boot=86400@1a2b3c4d" -j DROP   (one per source per port)
//! ```
//!
//! **Expiry runs on CLOCK_BOOTTIME**, as in the XDP maps, so a wall-clock step changes
//! nothing: `boot=<seconds>@<boot id>` is the end on CLOCK_BOOTTIME of the boot with that
//! id (the first 8 hex digits of `/proc/sys/kernel/random/boot_id`). `until=` (wall-clock
//! unix seconds) is kept for people reading the rules and for rules of another boot (a
//! saved ruleset restored after a reboot) or of older versions, which have only
//! `until=`: their remaining time by the wall clock is taken over once, and the rule
//! rewritten in the current form. A manual ban's comment ends in ` manual`.
//!
//! **Reconcile.** [`Enforcer::reconcile`] checks, every few seconds, that the chain
//! exists, that INPUT jumps to it for every port, and that every active ban has its
//! rules; whatever a firewall reload (`iptables -F`, `-X`, an `iptables-restore` of a
//! ruleset without the chain) removed is restored in one batch with every active ban,
//! and each repair is reported.
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
//! edited the chain behind our back), the enforcer repairs the chain from its own record
//! of the bans (every one, not only those still listed) and retries once.
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    /// End on CLOCK_BOOTTIME (seconds): what expiry is decided by.
    until: u64,
    /// End on the wall clock (unix seconds) as it read when the ban was set: shown in the
    /// comment, used only for rules of another boot.
    wall: u64,
    manual: bool,
}

impl Ban {
    /// The wall-clock end to show: the one recorded when the ban was set while it agrees
    /// with the time left on CLOCK_BOOTTIME (stable from one listing to the next), else —
    /// the wall clock was stepped since — now plus the time left.
    fn wall_expiry(&self, now_boot: u64, now_wall: SystemTime) -> SystemTime {
        let left = self.until.saturating_sub(now_boot);
        let recorded = UNIX_EPOCH + Duration::from_secs(self.wall);
        let by_boot = now_wall + Duration::from_secs(left);
        let skew = recorded.duration_since(by_boot).or_else(|_| by_boot.duration_since(recorded)).unwrap_or_default();
        if skew <= Duration::from_secs(2) { recorded } else { by_boot }
    }

    /// The later of two bans on the same source (manual if either is).
    fn merge(self, other: Ban) -> Ban {
        let later = if other.until > self.until { other } else { self };
        Ban { manual: self.manual | other.manual, ..later }
    }
}

/// The clocks a comment is read against.
#[derive(Clone, Copy, Debug)]
struct Now<'a> {
    wall: u64,
    boot: u64,
    boot_id: &'a str,
}

impl Now<'static> {
    fn get() -> Self {
        Self { wall: now_secs(), boot: crate::dataplane::clock::boottime_ns() / 1_000_000_000, boot_id: boot_id() }
    }
}

/// This boot's id, short: rules of another boot have a meaningless `boot=`.
fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().chars().filter(char::is_ascii_hexdigit).take(8).collect())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// How often the chain is checked against the kernel, at least; a large chain (whose
/// listing costs more) is checked less often (20 times the last check's run time).
const CHECK_EVERY: Duration = Duration::from_secs(3);

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
    /// The comment is in the current form (else the rule is rewritten at adoption).
    canonical: bool,
}

/// The iptables enforcer. See the module documentation.
pub struct IptablesEnforcer {
    cfg: IptablesConfig,
    families: Vec<Family>,
    bans: BTreeMap<SourceAddr, Ban>,
    shut: bool,
    /// When the chain was last checked against the kernel, and the pause until the next.
    last_check: Option<Instant>,
    check_every: Duration,
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
    let manual = if ban.manual { " manual" } else { "" };
    format!("{COMMENT_TAG} until={} boot={}@{}{manual}", ban.wall, ban.until, boot_id())
}

/// Read a rule's comment: `(ban, canonical)`. A `boot=` of this boot is the expiry; else
/// (another boot, or an older version's comment with `until=` only) the wall-clock time
/// left is carried over.
fn parse_comment(c: &str, now: &Now) -> Option<(Ban, bool)> {
    let mut words = c.split_whitespace();
    if words.next()? != COMMENT_TAG {
        return None;
    }
    let wall: u64 = words.next()?.strip_prefix("until=")?.parse().ok()?;
    let mut boot = None;
    let mut manual = false;
    for w in words {
        if let Some(b) = w.strip_prefix("boot=") {
            let (secs, id) = b.split_once('@')?;
            boot = Some((secs.parse::<u64>().ok()?, id));
        } else if w == "manual" {
            manual = true;
        }
    }
    let until = match boot {
        Some((secs, id)) if id == now.boot_id => secs,
        _ => now.boot + wall.saturating_sub(now.wall),
    };
    let ban = Ban { until, wall, manual };
    let canonical = boot.is_some_and(|(_, id)| id == now.boot_id) && c == comment_for(ban);
    Some((ban, canonical))
}

/// A jump `-A INPUT … -j CHAIN` of `iptables -S`: (its --dport, its -d address).
fn parse_jump(line: &str, chain: &str) -> Option<(Option<u16>, Option<IpAddr>, Vec<String>)> {
    let w = split_words(line);
    if w.len() < 2 || w[0] != "-A" || w[1] != "INPUT" {
        return None;
    }
    let j = w.iter().position(|x| x == "-j")?;
    if w.get(j + 1).map(String::as_str) != Some(chain) {
        return None;
    }
    let port = w.iter().position(|x| x == "--dport").and_then(|i| w.get(i + 1)?.parse::<u16>().ok());
    let dest = w.iter().position(|x| x == "-d").and_then(|i| w.get(i + 1)?.parse::<ipnet::IpNet>().ok()).map(|n| n.addr());
    Some((port, dest, w))
}

/// Parse one `-A CHAIN …` line of `iptables [-v] -S CHAIN`. `Ok(None)` for lines that
/// are not rules of `chain`; `Err(spec)` for a rule of the chain that is not ours.
fn parse_rule(line: &str, chain: &str, now: &Now) -> Result<Option<ChainRule>, String> {
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
    match (source, port, comment.as_deref().and_then(|c| parse_comment(c, now)), target.as_deref()) {
        (Some(source), Some(port), Some((ban, canonical)), Some("DROP")) => {
            Ok(Some(ChainRule { source, port, ban, spec, packets, canonical }))
        }
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
        let mut me =
            Self { cfg, families, bans: BTreeMap::new(), shut: false, last_check: Some(Instant::now()), check_every: CHECK_EVERY };
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
        let now = Now::get();
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        for line in listing.lines() {
            match parse_rule(line, &self.cfg.chain, &now) {
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
            *b = b.merge(r.ban);
        }
        // Reconcile: keep exactly one rule per (source, configured port), with the
        // recovered expiry; delete the rest.
        let mut script = Vec::new();
        let mut kept: BTreeSet<(SourceAddr, u16)> = BTreeSet::new();
        for r in &rules {
            let want = found[&r.source];
            if self.cfg.ports.contains(&r.port) && r.ban == want && r.canonical && kept.insert((r.source, r.port)) {
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
            let Some((port, dest, w)) = parse_jump(line, chain) else { continue };
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
                log::warn!("{first:#}; checking chain {} against the kernel and retrying", self.cfg.chain);
                // Repair from our own record of the bans: every active ban, not only the
                // rules that survived whatever happened to the chain.
                for r in self.heal(fam).context("repairing the chain after a failed batch")? {
                    log::warn!("iptables: repaired: {r}");
                }
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

    /// `-p tcp -m tcp --dport P [-d MAILER] -j CHAIN`: the jump for port `p`.
    fn jump_spec(&self, fam: usize, p: u16) -> String {
        let dst = self.families[fam].mailer_ip.map(|m| format!(" -d {m}")).unwrap_or_default();
        format!("-p tcp -m tcp --dport {p}{dst} -j {}", self.cfg.chain)
    }

    /// Compare family `fam`'s chain, its rules and the INPUT jumps with what should be in
    /// force; restore what is missing in one batch. One line per kind of repair.
    fn heal(&mut self, fam: usize) -> anyhow::Result<Vec<String>> {
        let chain = self.cfg.chain.clone();
        let listing = self.ipt(fam, &["-S"])?;
        let now = Now::get();
        let new_line = format!("-N {chain}");
        let exists = listing.lines().any(|l| l.trim_end() == new_line);
        let mailer = self.families[fam].mailer_ip;
        let mut have: BTreeSet<(SourceAddr, u16)> = BTreeSet::new();
        let mut jumps: BTreeSet<u16> = BTreeSet::new();
        for line in listing.lines() {
            if let Ok(Some(r)) = parse_rule(line, &chain, &now) {
                if self.bans.get(&r.source) == Some(&r.ban) {
                    have.insert((r.source, r.port));
                }
            } else if let Some((Some(port), dest, _)) = parse_jump(line, &chain)
                && dest == mailer
            {
                jumps.insert(port);
            }
        }
        let v6 = self.families[fam].v6;
        let mut script = Vec::new();
        if !exists {
            // Declaring the chain in a --noflush restore creates it.
            script.push(format!(":{chain} - [0:0]"));
        }
        let mut rules = 0;
        let mut sources = 0;
        for (s, b) in self.bans.iter().filter(|(s, b)| s.is_v4() != v6 && b.until > now.boot) {
            let before = rules;
            for &p in &self.cfg.ports {
                if !have.contains(&(*s, p)) {
                    script.push(format!("-A {chain} {}", self.rule_spec(s, p, *b)));
                    rules += 1;
                }
            }
            sources += usize::from(rules > before);
        }
        let missing_jumps: Vec<u16> = self.cfg.ports.iter().copied().filter(|p| !jumps.contains(p)).collect();
        for &p in &missing_jumps {
            script.push(format!("-I INPUT {}", self.jump_spec(fam, p)));
        }
        if script.is_empty() {
            return Ok(Vec::new());
        }
        self.restore(fam, &script).context("repairing the chain")?;
        let who = self.families[fam].bin.display().to_string();
        let mut out = Vec::new();
        if !exists {
            out.push(format!("{who}: chain {chain} was gone: re-created"));
        }
        if rules > 0 {
            out.push(format!("{who}: {rules} missing rule(s) of {sources} active ban(s) restored in chain {chain}"));
        }
        if !missing_jumps.is_empty() {
            out.push(format!("{who}: the INPUT jump(s) to {chain} for port(s) {missing_jumps:?} restored"));
        }
        Ok(out)
    }

    fn remove_all(&mut self) -> anyhow::Result<()> {
        let chain = self.cfg.chain.clone();
        for fam in 0..self.families.len() {
            let listing = self.ipt(fam, &["-S", "INPUT"])?;
            for line in listing.lines() {
                if let Some((_, _, w)) = parse_jump(line, &chain) {
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
        let now = Now::get();
        let mut changes: BTreeMap<SourceAddr, Option<Ban>> = BTreeMap::new();
        for (s, d, manual) in bans {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let new = Ban { until: now.boot + secs, wall: now.wall + secs, manual: *manual };
            let merged = match changes.get(s).copied().flatten().or(self.bans.get(s).copied()) {
                Some(old) => old.merge(new),
                None => new,
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
        let now = Now::get().boot;
        let wall = SystemTime::now();
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
                expires_at: b.wall_expiry(now, wall),
                dropped: dropped.get(s).copied(),
                manual: b.manual,
            })
            .collect())
    }

    fn contains(&self, source: &SourceAddr) -> anyhow::Result<bool> {
        // The record is kept true by `reconcile` (every few seconds) and by the repair of
        // a failed batch: no process to run per question.
        Ok(self.bans.get(source).is_some_and(|b| b.until > Now::get().boot))
    }

    fn reconcile(&mut self) -> anyhow::Result<Vec<String>> {
        if self.shut || self.last_check.is_some_and(|t| t.elapsed() < self.check_every) {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let mut out = Vec::new();
        let mut error = None;
        for fam in 0..self.families.len() {
            match self.heal(fam) {
                Ok(r) => out.extend(r),
                Err(e) => error = Some(e),
            }
        }
        self.last_check = Some(Instant::now());
        self.check_every = CHECK_EVERY.max(started.elapsed() * 20);
        match error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    fn reconfigure(&mut self, cfg: &crate::dataplane::DataplaneConfig, _allow: &[ipnet::IpNet]) -> anyhow::Result<()> {
        let v4 = cfg.mailer_ips.iter().find_map(|ip| if let IpAddr::V4(a) = ip { Some(*a) } else { None });
        let v6 = cfg.mailer_ips.iter().find_map(|ip| if let IpAddr::V6(a) = ip { Some(*a) } else { None });
        if cfg.ports == self.cfg.ports && v4 == self.cfg.mailer_ip_v4 && v6 == self.cfg.mailer_ip_v6 {
            return Ok(());
        }
        if cfg.ports.is_empty() {
            bail!("iptables enforcer: no port to protect");
        }
        self.cfg.ports = cfg.ports.clone();
        self.cfg.mailer_ip_v4 = v4;
        self.cfg.mailer_ip_v6 = v6;
        for f in &mut self.families {
            f.mailer_ip = if f.v6 { v6.map(IpAddr::V6) } else { v4.map(IpAddr::V4) };
        }
        // Adoption rewrites the rules and jumps for the new ports and addresses.
        for fam in 0..self.families.len() {
            self.adopt(fam)?;
        }
        log::info!("iptables: chain {} now on ports {:?}", self.cfg.chain, self.cfg.ports);
        Ok(())
    }

    fn sweep_expired(&mut self) -> anyhow::Result<Vec<SourceAddr>> {
        let now = Now::get().boot;
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

    const NOW: Now<'static> = Now { wall: 1_699_999_000, boot: 5000, boot_id: "1a2b3c4d" };

    #[test]
    fn parses_listed_rules() {
        // An older version's comment: the wall-clock time left (1000 s) is carried over.
        let l = r#"-A SPAM_UNAME_GUESSERS -s 192.0.2.66/32 -p tcp -m tcp --dport 25 -m comment --comment "blocksmtp until=1700000000" -c 7 420 -j DROP"#;
        let r = parse_rule(l, "SPAM_UNAME_GUESSERS", &NOW).unwrap().unwrap();
        assert_eq!(r.source.to_string(), "192.0.2.66");
        assert_eq!(r.port, 25);
        assert_eq!(r.ban, Ban { until: 6000, wall: 1_700_000_000, manual: false });
        assert!(!r.canonical);
        assert_eq!(r.packets, 7);
        assert_eq!(r.spec, r#"-s 192.0.2.66/32 -p tcp -m tcp --dport 25 -m comment --comment "blocksmtp until=1700000000" -j DROP"#);

        let l6 = r#"-A X -s 2001:db8::/64 -p tcp -m tcp --dport 587 -m comment --comment "blocksmtp until=5 manual" -j DROP"#;
        let r6 = parse_rule(l6, "X", &NOW).unwrap().unwrap();
        assert_eq!((r6.source.to_string().as_str(), r6.port, r6.ban.manual), ("2001:db8::/64", 587, true));

        assert_eq!(parse_rule("-N X", "X", &NOW), Ok(None));
        assert_eq!(parse_rule("-A Y -s 192.0.2.1/32 -j DROP", "X", &NOW), Ok(None));
        assert!(parse_rule("-A X -s 192.0.2.1/32 -p tcp -m tcp --dport 25 -j DROP", "X", &NOW).is_err(), "no comment: foreign");
        assert!(parse_rule(r#"-A X -s 192.0.2.1/32 -p tcp -m tcp --dport 25 -m comment --comment "other" -j DROP"#, "X", &NOW).is_err());
    }

    #[test]
    fn expiry_is_on_boottime_and_survives_wall_clock_steps() {
        let now = Now { boot_id: boot_id(), ..NOW };
        let ban = Ban { until: 8600, wall: 1_700_002_600, manual: true };
        let c = comment_for(ban);
        assert!(c.starts_with("blocksmtp until=1700002600 boot=8600@") && c.ends_with(" manual"), "{c}");
        assert_eq!(parse_comment(&c, &now), Some((ban, true)));
        // The wall clock stepped by +2 h (or -1 day): this boot's expiry does not move.
        for wall in [now.wall + 7200, now.wall - 86_400] {
            assert_eq!(parse_comment(&c, &Now { wall, ..now }), Some((ban, true)));
        }
        // Another boot (a saved ruleset restored after a reboot): the wall-clock time left.
        let other = Now { boot: 10, boot_id: "ffffffff", ..now };
        let (b, canonical) = parse_comment(&c, &other).unwrap();
        assert_eq!((b.until, canonical), (10 + 3600, false));
        assert_eq!(Ban { until: 1, wall: 1, manual: false }.merge(ban), Ban { until: 8600, wall: 1_700_002_600, manual: true });
    }

    #[test]
    fn words_and_quotes_round_trip() {
        assert_eq!(split_words(r#"-m comment --comment "a b \"c\"" -j X"#), vec!["-m", "comment", "--comment", r#"a b "c""#, "-j", "X"]);
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(split_words(&quote(r#"x "y" z"#)), vec![r#"x "y" z"#]);
        let now = Now { boot_id: boot_id(), ..NOW };
        let b = Ban { until: 42, wall: 43, manual: true };
        assert_eq!(parse_comment(&comment_for(b), &now), Some((b, true)));
        assert_eq!(parse_comment("blocksmtp until=x", &now), None);
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
