//! CrowdSec's Local API (LAPI): share bans across a fleet of MX hosts.
//!
//! Both directions, each optional:
//! * **pull** (as a bouncer, `--crowdsec-bouncer-key-file`): the decision stream's
//!   `ban` decisions of scope `Ip` and `Range` are enforced on the protected ports for
//!   their remaining duration; deleted ones are lifted.
//! * **push** (as a machine, `--crowdsec-machine-file`): each ban this host's detection
//!   makes goes to LAPI as an alert carrying a ban decision of the same duration.
//!
//! The HTTP calls run on a thread of their own ([`link`]), so a slow or dead LAPI never
//! stalls detection or enforcement; alerts made while LAPI is away are queued (bounded,
//! persisted) and sent when it is back.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{addr::SourceAddr, duration::HumanDuration};

pub mod fleet;
pub mod lapi;
pub mod link;

/// Our alerts' scenario; decisions that come back with it and a source we pushed are
/// our own echo.
pub const SCENARIO: &str = "blocksmtp/smtp-harvest";
/// The origin our pushed decisions carry.
pub const ORIGIN: &str = "blocksmtp";

/// `blocksmtp run`'s CrowdSec options (the same keys in blocksmtp.toml).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CrowdsecArgs {
    /// CrowdSec Local API base URL (http or https), e.g. http://192.0.2.10:8080.
    /// Default: the machine file's `url`.
    #[arg(long, value_name = "URL")]
    pub crowdsec_url: Option<String>,
    /// CA certificate (PEM) for an https LAPI signed by a private CA.
    #[arg(long, value_name = "FILE")]
    pub crowdsec_ca_file: Option<PathBuf>,
    /// Pull decisions with the bouncer key in FILE (`cscli bouncers add NAME -o raw`);
    /// root-only.
    #[arg(long, value_name = "FILE")]
    pub crowdsec_bouncer_key_file: Option<PathBuf>,
    /// Push bans as alerts with the machine credentials in FILE (`cscli machines add
    /// NAME --password P -f FILE`); root-only.
    #[arg(long, value_name = "FILE")]
    pub crowdsec_machine_file: Option<PathBuf>,
    /// How often to pull decision changes.
    #[arg(long, value_name = "DUR", default_value = "2s")]
    pub crowdsec_pull_interval: HumanDuration,
    /// Only enforce decisions of these origins (cscli, crowdsec, blocksmtp, …;
    /// repeatable or comma-separated). Default: every origin.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    pub crowdsec_origins: Vec<String>,
    /// Only enforce decisions whose scenario starts with one of these (repeatable or
    /// comma-separated). Default: every scenario.
    #[arg(long, value_name = "SCENARIO", value_delimiter = ',')]
    pub crowdsec_scenarios: Vec<String>,
}

impl CrowdsecArgs {
    /// Whether any CrowdSec link is asked for.
    pub fn enabled(&self) -> bool {
        self.crowdsec_bouncer_key_file.is_some() || self.crowdsec_machine_file.is_some()
    }

    /// Settings that cannot work, found before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.crowdsec_url.is_some() && !self.enabled() {
            bail!("--crowdsec-url is set but neither --crowdsec-bouncer-key-file nor --crowdsec-machine-file");
        }
        if self.crowdsec_bouncer_key_file.is_some() && self.crowdsec_url.is_none() && self.crowdsec_machine_file.is_none() {
            bail!("--crowdsec-bouncer-key-file needs --crowdsec-url (or a machine file naming the url)");
        }
        if self.enabled() && self.crowdsec_pull_interval.0 < Duration::from_millis(100) {
            bail!("--crowdsec-pull-interval must be at least 100ms, not {}", self.crowdsec_pull_interval);
        }
        Ok(())
    }
}

/// Read a secret file; refuse one that others can read or write (a key or password
/// there is anyone's ban list). The content is never logged.
pub fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{what} {} is readable or writable by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The bouncer key file: the key on its first non-empty line.
pub fn read_bouncer_key(path: &Path) -> anyhow::Result<String> {
    let s = read_secret(path, "CrowdSec bouncer key file")?;
    let key = s.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("CrowdSec bouncer key file {}: no key in it (expected the output of `cscli bouncers add NAME -o raw`)", path.display());
    }
    Ok(key.to_string())
}

/// What `cscli machines add -f FILE` writes.
#[derive(Clone, Deserialize)]
pub struct MachineCredentials {
    pub url: Option<String>,
    pub login: String,
    pub password: String,
}

impl fmt::Debug for MachineCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineCredentials").field("url", &self.url).field("login", &self.login).finish_non_exhaustive()
    }
}

pub fn read_machine_file(path: &Path) -> anyhow::Result<MachineCredentials> {
    let s = read_secret(path, "CrowdSec machine file")?;
    let m: MachineCredentials = serde_saphyr::from_str(&s).map_err(|e| {
        // The parser's message may quote the file (the password): name the place only.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("");
        anyhow::anyhow!(
            "CrowdSec machine file {}: not the YAML `cscli machines add NAME --password P -f FILE` writes (url, login, password){}",
            path.display(),
            if first.contains(':') { String::new() } else { format!(": {first}") }
        )
    })?;
    if m.login.is_empty() || m.password.is_empty() {
        bail!("CrowdSec machine file {}: login or password is empty", path.display());
    }
    Ok(m)
}

/// One decision as LAPI sends it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RawDecision {
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub scenario: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
    /// Time LEFT, a Go duration ("59m59.2s"; negative once expired).
    pub duration: String,
}

/// A ban decision we can enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    pub origin: String,
    pub scenario: String,
    pub source: SourceAddr,
    /// Time left.
    pub remaining: Duration,
}

/// Why a pulled decision is not enforced (for the debug log; not an error).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unenforceable {
    #[error("type {0:?} (only ban is enforced)")]
    Type(String),
    #[error("scope {0:?} (only Ip and Range)")]
    Scope(String),
    #[error("value {0:?} is not an address or prefix of its scope")]
    Value(String),
    #[error("duration {0:?}")]
    Duration(String),
    #[error("already expired")]
    Expired,
    #[error("origin {0:?} is filtered out")]
    Origin(String),
    #[error("scenario {0:?} is filtered out")]
    Scenario(String),
}

impl RawDecision {
    /// The decision as something to enforce, with IPv6 addresses counted per
    /// `v6_prefix` as every ban is (an `Ip` decision on an IPv6 host bans its /64).
    pub fn to_decision(&self, v6_prefix: u8, args: &CrowdsecArgs) -> Result<Decision, Unenforceable> {
        if !self.kind.eq_ignore_ascii_case("ban") {
            return Err(Unenforceable::Type(self.kind.clone()));
        }
        if !args.crowdsec_origins.is_empty() && !args.crowdsec_origins.iter().any(|o| o == &self.origin) {
            return Err(Unenforceable::Origin(self.origin.clone()));
        }
        if !args.crowdsec_scenarios.is_empty() && !args.crowdsec_scenarios.iter().any(|s| self.scenario.starts_with(s.as_str())) {
            return Err(Unenforceable::Scenario(self.scenario.clone()));
        }
        let source = match self.scope.to_ascii_lowercase().as_str() {
            "ip" => {
                let ip: IpAddr = self.value.trim().parse().map_err(|_| Unenforceable::Value(self.value.clone()))?;
                SourceAddr::from_ip(ip, v6_prefix)
            }
            "range" => {
                let net: ipnet::IpNet = self.value.trim().parse().map_err(|_| Unenforceable::Value(self.value.clone()))?;
                SourceAddr::from_net(net.trunc())
            }
            _ => return Err(Unenforceable::Scope(self.scope.clone())),
        };
        let remaining = go_duration(&self.duration).ok_or_else(|| Unenforceable::Duration(self.duration.clone()))?;
        let remaining = match remaining {
            Some(d) if !d.is_zero() => d,
            _ => return Err(Unenforceable::Expired),
        };
        Ok(Decision { id: self.id, origin: self.origin.clone(), scenario: self.scenario.clone(), source, remaining })
    }
}

/// `GET /v1/decisions/stream`'s answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Stream {
    #[serde(default, deserialize_with = "null_is_empty")]
    pub new: Vec<RawDecision>,
    #[serde(default, deserialize_with = "null_is_empty")]
    pub deleted: Vec<RawDecision>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RawDecision>, D::Error> {
    Ok(Option::<Vec<RawDecision>>::deserialize(d)?.unwrap_or_default())
}

/// A Go `time.Duration` string ("1h2m3.5s", "59m59.234762429s", "-7.25ms", "0s"):
/// `Some(None)` for a negative one, `None` when it is not a duration.
pub fn go_duration(s: &str) -> Option<Option<Duration>> {
    let s = s.trim();
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    if neg && total > 0.0 {
        return Some(None);
    }
    // Bans longer than a century are not meant literally; cap before converting.
    Some(Some(Duration::from_secs_f64(total.min(100.0 * 365.0 * 86_400.0))))
}

/// A Go duration for LAPI from ours: whole seconds ("3600s").
pub fn to_go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// The daemon's CrowdSec side: the link to LAPI and what was decided through it.
#[derive(Debug)]
pub struct Crowdsec {
    link: link::Link,
    pub fleet: fleet::Fleet,
    push: bool,
    max_unknown: u32,
    window: Duration,
}

/// `status`'s view of CrowdSec.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CrowdsecStatus {
    #[serde(flatten)]
    pub link: link::LinkStatus,
    /// Bans held because LAPI decided them.
    pub held: usize,
    /// Our own pushes seen coming back (not enforced twice).
    pub echoes: u64,
    pub skipped_whitelisted: u64,
}

impl Crowdsec {
    /// Start the link if `args` ask for one. `state_file`'s directory keeps the queue.
    pub fn start(args: &CrowdsecArgs, v6_prefix: u8, max_unknown: u32, window: Duration, state_file: &Path) -> anyhow::Result<Option<Self>> {
        if !args.enabled() {
            return Ok(None);
        }
        let machine = args.crowdsec_machine_file.as_deref().map(read_machine_file).transpose()?;
        let url = args
            .crowdsec_url
            .clone()
            .or_else(|| machine.as_ref().and_then(|m| m.url.clone()))
            .context("no CrowdSec URL: give --crowdsec-url (the machine file names none)")?;
        let lapi = lapi::Lapi::new(&url, args.crowdsec_ca_file.as_deref())?;
        let pull = args.crowdsec_bouncer_key_file.as_deref().map(read_bouncer_key).transpose()?.map(|k| (lapi.clone(), k));
        let push = machine.map(|m| (lapi.clone(), m));
        let what = match (pull.is_some(), push.is_some()) {
            (true, true) => "pulling decisions and pushing bans",
            (true, false) => "pulling decisions",
            _ => "pushing bans",
        };
        log::info!("crowdsec: LAPI {}: {what}, every {}", lapi.base(), args.crowdsec_pull_interval);
        let has_push = push.is_some();
        let link = link::Link::start(link::LinkConfig {
            pull,
            push,
            interval: args.crowdsec_pull_interval.0,
            queue_file: Some(state_file.with_file_name("crowdsec-queue.json")),
        })?;
        Ok(Some(Self { link, fleet: fleet::Fleet::new(args, v6_prefix), push: has_push, max_unknown, window }))
    }

    /// Pulled decisions, for the daemon's loop (taken once: the loop owns it).
    pub fn take_pulled(&mut self) -> tokio::sync::mpsc::Receiver<link::Pulled> {
        let (_, dead) = tokio::sync::mpsc::channel(1);
        std::mem::replace(&mut self.link.pulled, dead)
    }

    /// Our detection banned a source: tell LAPI (queued; returns at once).
    pub fn pushed_ban(&mut self, d: &crate::policy::BanDecision) {
        if !self.push {
            return;
        }
        let evidence = d.evidence.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let message = format!(
            "{}: {}{}",
            d.source,
            d.reason,
            if evidence.is_empty() { String::new() } else { format!("; tried {evidence}") }
        );
        self.link.push(lapi::Alert::for_ban(
            &d.source,
            d.duration,
            d.guesses,
            d.first_seen,
            d.last_seen,
            message,
            self.max_unknown,
            self.window,
        ));
        self.fleet.pushed(d.source, d.duration);
    }

    pub fn status(&self) -> CrowdsecStatus {
        CrowdsecStatus {
            link: self.link.status(),
            held: self.fleet.held(),
            echoes: self.fleet.echoes,
            skipped_whitelisted: self.fleet.skipped_whitelisted,
        }
    }
}

/// The next pulled decisions, or never when there is no link.
pub async fn next_pulled(rx: &mut Option<tokio::sync::mpsc::Receiver<link::Pulled>>) -> link::Pulled {
    match rx {
        Some(r) => match r.recv().await {
            Some(p) => p,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = |n: u64| Some(Some(Duration::from_millis(n)));
        for (s, want) in [
            ("1h", ms(3_600_000)),
            ("59m59.5s", ms(3_599_500)),
            ("1h2m3s", ms(3_723_000)),
            ("300ms", ms(300)),
            ("1.5h", ms(5_400_000)),
            ("0s", ms(0)),
            ("0", ms(0)),
            ("-7.250615ms", Some(None)),
            ("", None),
            ("5", None),
            ("5d", None),
            ("h", None),
            ("1h-2m", None),
        ] {
            assert_eq!(go_duration(s).map(|o| o.map(|d| Duration::from_millis(d.as_millis() as u64))), want, "{s:?}");
        }
        assert_eq!(to_go_duration(Duration::from_secs(3600)), "3600s");
    }

    fn raw(scope: &str, value: &str, duration: &str) -> RawDecision {
        RawDecision {
            id: 7,
            origin: "cscli".into(),
            scenario: "manual 'ban' from 'cli'".into(),
            scope: scope.into(),
            kind: "ban".into(),
            value: value.into(),
            duration: duration.into(),
        }
    }

    #[test]
    fn decisions_to_bans() {
        let a = CrowdsecArgs::default();
        let d = raw("Ip", "192.0.2.9", "59m59.2s").to_decision(64, &a).unwrap();
        assert_eq!((d.source.to_string(), d.remaining.as_secs()), ("192.0.2.9".into(), 3599));
        let d = raw("Ip", "2001:db8::9", "1h").to_decision(64, &a).unwrap();
        assert_eq!(d.source.to_string(), "2001:db8::/64", "an IPv6 host is banned per /64, as every ban is");
        let d = raw("Range", "2001:db8:bad::/48", "1h").to_decision(64, &a).unwrap();
        assert_eq!(d.source.to_string(), "2001:db8:bad::/48");
        assert_eq!(raw("Ip", "192.0.2.9", "-1s").to_decision(64, &a), Err(Unenforceable::Expired));
        assert!(matches!(raw("Country", "FR", "1h").to_decision(64, &a), Err(Unenforceable::Scope(_))));
        assert!(matches!(raw("Ip", "192.0.2.300", "1h").to_decision(64, &a), Err(Unenforceable::Value(_))));
        assert!(matches!(raw("Ip", "192.0.2.9", "soon").to_decision(64, &a), Err(Unenforceable::Duration(_))));
        let mut captcha = raw("Ip", "192.0.2.9", "1h");
        captcha.kind = "captcha".into();
        assert!(matches!(captcha.to_decision(64, &a), Err(Unenforceable::Type(_))));
        let only = CrowdsecArgs { crowdsec_origins: vec!["crowdsec".into()], ..CrowdsecArgs::default() };
        assert!(matches!(raw("Ip", "192.0.2.9", "1h").to_decision(64, &only), Err(Unenforceable::Origin(_))));
        let scen = CrowdsecArgs { crowdsec_scenarios: vec!["crowdsecurity/".into()], ..CrowdsecArgs::default() };
        assert!(matches!(raw("Ip", "192.0.2.9", "1h").to_decision(64, &scen), Err(Unenforceable::Scenario(_))));
    }

    #[test]
    fn stream_nulls_and_secrets() {
        let s: Stream = serde_json::from_str(r#"{"deleted":null,"new":null}"#).unwrap();
        assert_eq!(s, Stream::default());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, "abc123\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_bouncer_key(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("abc123"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_bouncer_key(&p).unwrap(), "abc123");
        let m = dir.path().join("m.yaml");
        std::fs::write(&m, "url: http://192.0.2.10:8080\nlogin: mx1\npassword: s3cr3t\n").unwrap();
        std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = read_machine_file(&m).unwrap();
        assert_eq!((c.url.as_deref(), c.login.as_str(), c.password.as_str()), (Some("http://192.0.2.10:8080"), "mx1", "s3cr3t"));
        assert!(!format!("{c:?}").contains("s3cr3t"), "the password never reaches a log");
        std::fs::write(&m, "password: s3cr3t\n- [\n").unwrap();
        let e = read_machine_file(&m).unwrap_err().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
