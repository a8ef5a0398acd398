//! `cargo xtask bench` (distributed harvests): each campaign shape of
//! `blocksmtp_tests::loggen::distributed_shapes`, with every innocent beside it, in
//! sendmail and Postfix form, through `blocksmtp replay --json` (release build) with
//! and without `--per-address-only`, through fail2ban-regex (filters `postfix` /
//! `sendmail-reject`, jail maxretry 5 / findtime 10m / bantime 1h simulated over its
//! matches), and through CrowdSec's replay mode (`crowdsec -dsn file://LOG -type syslog
//! -no-api`, the hub's Postfix collection, a private local API on 127.0.0.1:18081 with
//! its own sqlite; Postfix form only: the hub has no sendmail parser). Prints, per shape
//! and tool: the share of the campaign's guesses answered before a covering ban was in
//! force, the share of its addresses any ban covered, and the innocents banned.
//! Never asserts (the CI test `distributed_replay` does, on the same generators).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use blocksmtp_tests::{
    distributed::{Ban, Score, jail, score},
    loggen::{Form, distributed_shapes},
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests sits in the workspace").to_path_buf()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn replay(bin: &Path, log: &Path, wl: Option<&Path>, extra: &[&str]) -> anyhow::Result<Vec<Ban>> {
    let mut c = Command::new(bin);
    c.arg("replay").arg("--json").args(extra);
    if let Some(w) = wl {
        c.arg("--white-list").arg(w);
    }
    let out = c.arg(log).stderr(Stdio::inherit()).output().context("running blocksmtp replay")?;
    if !out.status.success() {
        bail!("blocksmtp replay failed: {}", out.status);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["bans"].as_array().context("no bans array")?.iter().map(Ban::from_replay).collect()
}

/// fail2ban-regex's matches `(ip, unix seconds)` (`-o row`), then the jail over them.
/// Also returns how many failures the filter matched.
fn fail2ban(f2b: &Path, log: &Path, form: Form, whitelist: &[String]) -> anyhow::Result<(Vec<Ban>, usize)> {
    let filter = match form {
        Form::Postfix => "/etc/fail2ban/filter.d/postfix.conf",
        Form::Sendmail => "/etc/fail2ban/filter.d/sendmail-reject.conf",
    };
    let out = Command::new(f2b).args(["-o", "row"]).arg(log).arg(filter).stderr(Stdio::null()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ignore: Vec<ipnet::IpNet> = whitelist.iter().filter_map(|w| w.parse().ok()).collect();
    let mut failures = Vec::new();
    for l in text.lines() {
        // ['192.0.2.66',	1795782947,	{...}],
        let Some(rest) = l.strip_prefix("['") else { continue };
        let Some((ip, rest)) = rest.split_once("',") else { continue };
        let Ok(ip) = ip.parse::<IpAddr>() else { continue };
        let Some(t) = rest.trim().split(',').next().and_then(|t| t.trim().parse::<f64>().ok()) else { continue };
        if !ignore.iter().any(|n| n.contains(&ip)) {
            failures.push((ip, t as i64));
        }
    }
    Ok((jail(&failures, 5, 600, 3600), failures.len()))
}

/// A private CrowdSec: a copy of /etc/crowdsec with its own paths, the hub's Postfix
/// collection linked in by hand (cscli would ask the online hub), a machine account,
/// and a local API (LAPI) process that receives the replay's alerts; stopped on drop.
struct CrowdSec {
    dir: PathBuf,
    config: PathBuf,
    lapi: std::process::Child,
}

impl CrowdSec {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        if find_in_path("crowdsec").is_none() || find_in_path("cscli").is_none() {
            bail!("not installed (Debian: crowdsec, see ../shared/hosts/crowdsec.md)");
        }
        let _ = std::fs::remove_dir_all(dir);
        for d in ["data", "log"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let cp = |from: &str, to: &Path| -> anyhow::Result<()> {
            let st = Command::new("cp").arg("-a").arg(from).arg(to).status()?;
            if !st.success() {
                bail!("copying {from}");
            }
            Ok(())
        };
        cp("/etc/crowdsec", &dir.join("etc"))?;
        cp("/var/lib/crowdsec/hub", &dir.join("hub"))?;
        let d = dir.display().to_string();
        let cfg = std::fs::read_to_string("/etc/crowdsec/config.yaml")?
            .replace("daemonize: true", "daemonize: false")
            .replace("log_dir: /var/log/", &format!("log_dir: {d}/log/"))
            .replace("/etc/crowdsec/", &format!("{d}/etc/"))
            .replace("/var/lib/crowdsec/data/", &format!("{d}/data/"))
            .replace("/var/lib/crowdsec/hub/", &format!("{d}/hub/"))
            .replace("127.0.0.1:8080", "127.0.0.1:18081")
            .replace("prometheus:\n  enabled: true", "prometheus:\n  enabled: false")
            // No Central API: its client block goes.
            .lines()
            .filter(|l| !l.contains("online_client") && !l.contains("online_api_credentials"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        let config = dir.join("etc/config.yaml");
        std::fs::write(&config, cfg)?;
        for (item, to) in [
            ("parsers/s01-parse/crowdsecurity/postfix-logs.yaml", "parsers/s01-parse/postfix-logs.yaml"),
            ("parsers/s01-parse/crowdsecurity/postscreen-logs.yaml", "parsers/s01-parse/postscreen-logs.yaml"),
            ("scenarios/crowdsecurity/postfix-spam.yaml", "scenarios/postfix-spam.yaml"),
            ("collections/crowdsecurity/postfix.yaml", "collections/postfix.yaml"),
        ] {
            let target = dir.join("etc").join(to);
            std::fs::create_dir_all(target.parent().unwrap())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(dir.join("hub").join(item), &target)?;
        }
        let out = Command::new("cscli")
            .current_dir(dir)
            .arg("-c")
            .arg(&config)
            .args(["machines", "add", "bench", "--password", "bench-distributed-pw", "--force", "-f"])
            .arg(dir.join("etc/local_api_credentials.yaml"))
            .output()?;
        if !out.status.success() {
            bail!("cscli machines add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let lapi = Command::new("crowdsec")
            .current_dir(dir)
            .arg("-c")
            .arg(&config)
            .arg("-no-cs")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let cs = Self { dir: dir.to_path_buf(), config, lapi };
        // The LAPI listens once its port answers.
        for _ in 0..100 {
            if std::net::TcpStream::connect("127.0.0.1:18081").is_ok() {
                return Ok(cs);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        bail!("the private CrowdSec LAPI did not listen on 127.0.0.1:18081 within 10 s")
    }

    fn cscli(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let out = Command::new("cscli").current_dir(&self.dir).arg("-c").arg(&self.config).args(args).stderr(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("cscli {} failed", args.join(" "));
        }
        Ok(out.stdout)
    }

    /// Replay `log`; its alerts as bans (decided at the alert's end, 4h as the default
    /// profile gives), whitelisted addresses left out (as a whitelist parser would).
    /// Also returns how many alerts it raised in all (whitelisted ones included).
    fn replay(&self, log: &Path, whitelist: &[String]) -> anyhow::Result<(Vec<Ban>, usize)> {
        self.cscli(&["alerts", "delete", "--all"])?;
        let st = Command::new("crowdsec")
            .current_dir(&self.dir)
            .arg("-c")
            .arg(&self.config)
            .arg("-dsn")
            .arg(format!("file://{}", log.display()))
            .args(["-type", "syslog", "-no-api"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("crowdsec replay of {} failed: {st}", log.display());
        }
        let alerts: serde_json::Value = serde_json::from_slice(&self.cscli(&["alerts", "list", "-o", "json", "-l", "0"])?)?;
        let ignore: Vec<ipnet::IpNet> = whitelist.iter().filter_map(|w| w.parse().ok()).collect();
        let mut bans = Vec::new();
        for a in alerts.as_array().map_or(&[][..], Vec::as_slice) {
            let (Some(ip), Some(stop)) = (a["source"]["ip"].as_str(), a["stop_at"].as_str()) else { continue };
            let Ok(ip) = ip.parse::<IpAddr>() else { continue };
            if ignore.iter().any(|n| n.contains(&ip)) {
                continue;
            }
            // "2026-11-27 21:30:46.463628 +0000 UTC"
            let iso = stop.split(' ').take(2).collect::<Vec<_>>().join("T") + "Z";
            let Some(t) = blocksmtp::parse::time::parse_rfc3339(iso.as_bytes()) else { continue };
            let at_us = t.duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64;
            bans.push(Ban { net: ipnet::IpNet::from(ip), at_us, secs: 4 * 3600 });
        }
        Ok((bans, alerts.as_array().map_or(0, Vec::len)))
    }
}

impl Drop for CrowdSec {
    fn drop(&mut self) {
        let _ = self.lapi.kill();
        let _ = self.lapi.wait();
    }
}

fn pct(x: f64) -> String {
    format!("{:5.1}%", 100.0 * x)
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = workspace_root();
    let dir = root.join("target").join("bench-distributed");
    std::fs::create_dir_all(&dir)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo).current_dir(&root).args(["build", "--release", "-p", "blocksmtp", "--bin", "blocksmtp"]).status()?;
    if !st.success() {
        bail!("cargo build --release -p blocksmtp failed");
    }
    let bin = root.join("target/release/blocksmtp");
    let f2b = find_in_path("fail2ban-regex").filter(|_| Path::new("/etc/fail2ban/filter.d/postfix.conf").is_file());
    let shapes = distributed_shapes(42);
    let forms: &[Form] = if quick { &[Form::Postfix] } else { &Form::ALL };
    let crowdsec = CrowdSec::start(&dir.join("crowdsec"));
    if let Err(e) = &crowdsec {
        println!("crowdsec: {e:#}");
    }
    let tools = ["blocksmtp", "per-address", "fail2ban", "crowdsec"];
    // totals[tool] = (answered, guesses); one-network worst share per tool.
    let mut totals = [(0usize, 0usize); 4];
    let mut one_net_worst = [0f64; 4];
    let mut innocents = [0usize; 4];
    println!(
        "{:<17} {:<8} {:<11} {:>8} {:>8} {:>9}  {:>6}",
        "shape", "form", "tool", "answered", "covered", "innocents", "bans"
    );
    for (name, one_network, s) in &shapes {
        for form in forms {
            let r = s.render(*form, 42);
            let log = dir.join(format!("{name}-{}.log", form.name()));
            std::fs::write(&log, &r.log)?;
            let wl = dir.join(format!("{name}.whitelist"));
            std::fs::write(&wl, s.whitelist.join("\n") + "\n")?;
            let wl = (!s.whitelist.is_empty()).then_some(wl.as_path());
            let f2b_run = match &f2b {
                Some(f) => Some(fail2ban(f, &log, *form, &s.whitelist)?),
                None => None,
            };
            let matched = f2b_run.as_ref().map_or(0, |r| r.1);
            let mut alerts = 0;
            let mut scores: Vec<Option<Score>> = vec![
                Some(score(s, &r, &replay(&bin, &log, wl, &[])?)),
                Some(score(s, &r, &replay(&bin, &log, wl, &["--per-address-only"])?)),
                f2b_run.map(|(bans, _)| score(s, &r, &bans)),
                match (&crowdsec, form) {
                    (Ok(cs), Form::Postfix) => {
                        let (bans, n) = cs.replay(&log, &s.whitelist)?;
                        alerts = n;
                        Some(score(s, &r, &bans))
                    }
                    _ => None,
                },
            ];
            for (i, sc) in scores.iter_mut().enumerate() {
                let Some(sc) = sc else {
                    let why = match i {
                        2 => "not installed (apt-get install fail2ban)",
                        _ if *form == Form::Sendmail => "n/a: the hub has no sendmail parser",
                        _ => "not run (see above)",
                    };
                    println!("{name:<17} {:<8} {:<11} {why}", form.name(), tools[i]);
                    continue;
                };
                totals[i].0 += sc.answered;
                totals[i].1 += sc.guesses;
                innocents[i] += sc.innocents_banned.len();
                if *one_network {
                    one_net_worst[i] = one_net_worst[i].max(sc.answered_share());
                }
                println!(
                    "{name:<17} {:<8} {:<11} {:>8} {:>8} {:>9}  {:>6}{}",
                    form.name(),
                    tools[i],
                    pct(sc.answered_share()),
                    pct(sc.covered_share()),
                    sc.innocents_banned.len(),
                    sc.bans,
                    match i {
                        2 => format!("  ({matched} lines matched by the filter)"),
                        3 => format!("  ({alerts} alerts before the whitelist)"),
                        _ => String::new(),
                    }
                        + &if sc.innocents_banned.is_empty() { String::new() } else { format!("  {:?}", sc.innocents_banned) }
                );
            }
        }
    }
    println!();
    println!("over all shapes (campaign guesses answered before a covering ban; innocents banned):");
    for (i, tool) in tools.iter().enumerate() {
        if totals[i].1 == 0 {
            continue;
        }
        println!(
            "  {tool:<11} {} of {} guesses answered ({}), one-network shapes at worst {}, innocents banned {}",
            totals[i].0,
            totals[i].1,
            pct(totals[i].0 as f64 / totals[i].1 as f64).trim(),
            pct(one_net_worst[i]).trim(),
            innocents[i]
        );
    }
    if crowdsec.is_ok() {
        println!("  (crowdsec: Postfix form only, hub collection crowdsecurity/postfix, whitelisted networks left out)");
    }
    println!("  (fail2ban's sendmail-reject filter reads only `ruleset=check_rcpt` rejects, not sendmail's `<x>... User unknown`)");
    println!("targets: ≤ 35% over all shapes, ≤ 10% for the one-network shapes, 0 innocents");
    Ok(())
}
