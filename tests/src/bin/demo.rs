//! `cargo xtask demo`: blocksmtp stopping a real directory-harvest attack, live.
//!
//! A real sendmail 8.17 runs in a private network namespace (192.0.2.25) with its own
//! syslog; blocksmtp follows that log and guards the namespace's interface with XDP. From
//! a second namespace a legitimate sender (192.0.2.67) and a harvester (192.0.2.66)
//! connect. Everything is removed at the end, also on Ctrl-C or failure.
use std::{
    io::{BufRead as _, Write as _},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use blocksmtp_tests::{
    daemon::Daemon,
    lab::{HARVESTER_V4, HarvestOptions, LEGIT_V4, MailLab, SendmailConfig},
};

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Print a step; `false` after Ctrl-C, so the caller returns and the guards clean up.
fn step(t0: Instant, text: &str) -> bool {
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("\ninterrupted: cleaning up");
        return false;
    }
    println!("\n{BOLD}[{:>5.1}s] {text}{RESET}", t0.elapsed().as_secs_f64());
    true
}

fn main() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo needs root (network namespaces, XDP): run `cargo xtask demo` as root");
    }
    blocksmtp_tests::lab::Sendmail::available().map_err(|e| anyhow::anyhow!("{e} (cargo xtask demo installs it)"))?;
    // Ctrl-C ends the demo at the next step, through the cleanup below.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let t0 = Instant::now();
    step(t0, "Starting a real sendmail 8.17 in a private network namespace, listening on 192.0.2.25:25");
    let lab = MailLab::start(SendmailConfig::default())?;
    println!("  server namespace {}, clients in {}", lab.topo.server.name, lab.topo.client.name);
    println!("  sendmail logs through its own syslog receiver to {}", lab.sendmail.log_path().display());

    if !step(t0, "Starting blocksmtp: follows that log, bans after 5 guesses, drops with XDP on vs0") {
        return Ok(());
    }
    let mut d = Daemon::start_following(
        Some(&lab.topo.server),
        Some(&lab.sendmail.log_path()),
        &["--interface", "vs0", "--max-unknown", "5", "--ban-time", "10m"],
    )?;
    println!("  {}", String::from_utf8_lossy(&d.ctl(&["status"])?.stdout).lines().take(3).collect::<Vec<_>>().join("\n  "));

    // Live echo of the two logs: what sendmail writes and what blocksmtp decides.
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        let mail = lab.sendmail.log_path();
        let bsm = d.stderr.clone();
        std::thread::spawn(move || {
            let mut mail_pos = std::fs::metadata(&mail).map(|m| m.len()).unwrap_or(0);
            let mut bsm_pos = std::fs::metadata(&bsm).map(|m| m.len()).unwrap_or(0);
            while !stop.load(Ordering::Relaxed) {
                for (path, pos, tag, color) in [(&mail, &mut mail_pos, "mail.log ", DIM), (&bsm, &mut bsm_pos, "blocksmtp", YELLOW)] {
                    let Ok(mut f) = std::fs::File::open(path) else { continue };
                    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(*pos));
                    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                        *pos += line.len() as u64 + 1;
                        let shown = if tag == "blocksmtp" {
                            // `[time LEVEL ] message`: bans and ended sessions only.
                            let msg = line.split_once("] ").map_or(line.as_str(), |(_, m)| m);
                            if !(msg.starts_with("ban ") || msg.starts_with("ended ")) {
                                continue;
                            }
                            msg
                        } else {
                            // `Nov 27 12:35:47 mx sm-mta[123]: message`
                            line.split_once("]: ").map_or(line.as_str(), |(_, m)| m)
                        };
                        println!("  {color}{tag} │ {shown}{RESET}");
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };

    if !step(t0, "A legitimate sender (192.0.2.67) delivers mail to alice@example.com") {
        return Ok(());
    }
    let m = lab.deliver(ip(LEGIT_V4), "carol@example.net", "alice@example.com", "Hello Alice")?;
    println!("  {GREEN}✔ accepted: {}{RESET}", m.reply.text());

    if !step(t0, "A harvester (192.0.2.66) starts guessing usernames: 30 RCPT TO: attempts") {
        return Ok(());
    }
    let report = lab.harvest_with(ip(HARVESTER_V4), HarvestOptions { guesses: 30, ..Default::default() })?;
    std::thread::sleep(Duration::from_millis(200));
    for g in &report.guesses {
        match &g.reply {
            Some(r) => println!("  harvester: RCPT TO:<{}> → {}", g.address, r.text()),
            None => println!("  harvester: RCPT TO:<{}> → {RED}no answer{RESET}", g.address),
        }
    }
    println!("  {RED}✘ the harvest was cut off after {} of 30 guesses ({:?}){RESET}", report.replied(), report.end);

    if !step(t0, "The harvester tries to connect again") {
        return Ok(());
    }
    let back = lab.can_connect(ip(HARVESTER_V4), Duration::from_secs(2))?;
    if back {
        println!("  {RED}connected (unexpected){RESET}");
    } else {
        println!("  {RED}✘ timed out: its SYNs die in the XDP program before the TCP stack sees them{RESET}");
    }

    if !step(t0, "The legitimate sender delivers again") {
        return Ok(());
    }
    let m = lab.deliver(ip(LEGIT_V4), "carol@example.net", "bob@example.com", "Hello Bob")?;
    println!("  {GREEN}✔ accepted: {}{RESET}", m.reply.text());

    if !step(t0, "blocksmtp list") {
        return Ok(());
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    print!("{}", String::from_utf8_lossy(&d.ctl(&["list"])?.stdout));
    let st = d.status()?;
    if let Some(p) = st["packets"].as_object() {
        let drops = p.get("drop").and_then(|x| x.as_u64()).unwrap_or(0);
        println!("  packets dropped in XDP so far: {drops}");
    }

    step(t0, "Cleaning up: blocksmtp (detaching XDP, removing its pins), sendmail, namespaces");
    d.stop()?;
    drop(d);
    drop(lab);
    let _ = std::io::stdout().flush();
    println!("  done.");
    if back || report.completed() {
        anyhow::bail!("the demo did not go as expected");
    }
    Ok(())
}
