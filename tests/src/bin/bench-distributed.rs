//! `cargo xtask bench` (distributed harvests): each campaign shape of
//! `blocksmtp_tests::loggen::distributed_shapes`, with every innocent beside it, in
//! sendmail and Postfix form, through `blocksmtp replay --json` (release build) with
//! and without `--per-address-only`, through fail2ban-regex (filters `postfix` /
//! `sendmail-reject`, jail maxretry 5 / findtime 10m / bantime 1h simulated over its
//! matches), and through CrowdSec's replay mode when it can run here. Prints, per shape
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

/// CrowdSec's replay mode needs its hub's Postfix collection and a local API to
/// receive alerts; this says why not when it cannot run.
fn crowdsec_unavailable() -> Option<String> {
    if find_in_path("crowdsec").is_none() {
        return Some("crowdsec is not installed (Debian: crowdsec, see ../shared/hosts/crowdsec.md)".into());
    }
    Some("installed, but not run: a replay needs a private local API (sqlite) beside the agent and the hub's \
          postfix collection installed into a private config; not automated here yet (its postfix-spam \
          scenario counts ~6 rejects per address, like fail2ban)"
        .into())
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
    let tools = ["blocksmtp", "per-address", "fail2ban"];
    // totals[tool] = (answered, guesses); one-network worst share per tool.
    let mut totals = [(0usize, 0usize); 3];
    let mut one_net_worst = [0f64; 3];
    let mut innocents = [0usize; 3];
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
            let mut scores: Vec<Option<Score>> = vec![
                Some(score(s, &r, &replay(&bin, &log, wl, &[])?)),
                Some(score(s, &r, &replay(&bin, &log, wl, &["--per-address-only"])?)),
                f2b_run.map(|(bans, _)| score(s, &r, &bans)),
            ];
            for (i, sc) in scores.iter_mut().enumerate() {
                let Some(sc) = sc else {
                    println!("{name:<17} {:<8} {:<11} not installed (apt-get install fail2ban)", form.name(), tools[i]);
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
                    if i == 2 { format!("  ({matched} lines matched by the filter)") } else { String::new() }
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
    if let Some(why) = crowdsec_unavailable() {
        println!("  crowdsec    {why}");
    }
    println!("  (fail2ban's sendmail-reject filter reads only `ruleset=check_rcpt` rejects, not sendmail's `<x>... User unknown`)");
    println!("targets: ≤ 35% over all shapes, ≤ 10% for the one-network shapes, 0 innocents");
    Ok(())
}
