//! Guesses a harvester gets on a real sendmail 8.17 before it is cut off: blocksmtp
//! (live attribution through process titles, session ended at the ban) against
//! fail2ban-server with Debian's `sendmail-reject` filter (banning with iptables) on the
//! same log, both set to ban at 5. Prints figures; asserts nothing.
use std::{net::IpAddr, time::Duration};

use blocksmtp_tests::{
    bench::{
        self, Table, blocksmtp_bin,
        fail2ban::{self, Fail2ban, Fail2banConfig},
    },
    daemon::Daemon,
    lab::{HARVESTER_V4, HarvestOptions, MailLab, SendmailConfig, smtp::Timeouts},
};

const GUESSES: usize = 30;
const MAX_UNKNOWN: u32 = 5;

struct Run {
    answered: usize,
    logged: usize,
    completed: bool,
}

fn harvest(lab: &MailLab) -> anyhow::Result<Run> {
    let mark = lab.sendmail.syslog().mark();
    let t = Timeouts { read: Duration::from_secs(3), ..Timeouts::default() };
    let r = lab.harvest_with(HARVESTER_V4.parse()?, HarvestOptions { guesses: GUESSES, timeouts: t, ..Default::default() })?;
    std::thread::sleep(Duration::from_millis(300));
    let logged = lab.sendmail.syslog().lines_since(mark).iter().filter(|l| l.line.contains("User unknown")).count();
    Ok(Run { answered: r.unknown(), logged, completed: r.completed() })
}

fn main() -> anyhow::Result<()> {
    bench::require_root("bench-guesses")?;
    let reps = if bench::quick() { 2 } else { 5 };
    let harvester: IpAddr = HARVESTER_V4.parse()?;
    println!("== guesses before cut-off: real sendmail 8.17, a harvest of {GUESSES} unknown recipients, ban at {MAX_UNKNOWN} ==");
    println!("{}", bench::machine());
    blocksmtp_bin()?;
    let lab = MailLab::start(SendmailConfig::default())?;
    let mut table = Table::new(&["tool", "run", "answers to the harvester", "User unknown lines", "harvest completed", "new connection"]);

    // blocksmtp, xdp mode, following sendmail's log.
    {
        let d = Daemon::start_following(
            Some(&lab.topo.server),
            Some(&lab.sendmail.log_path()),
            &["--interface", "vs0", "--max-unknown", &MAX_UNKNOWN.to_string(), "--cmd-read-timeout", "0"],
        )?;
        for rep in 1..=reps {
            let r = harvest(&lab)?;
            let blocked = !lab.can_connect(harvester, Duration::from_millis(500))?;
            table.row(vec![
                "blocksmtp".into(),
                rep.to_string(),
                r.answered.to_string(),
                r.logged.to_string(),
                r.completed.to_string(),
                if blocked { "dropped".into() } else { "accepted".into() },
            ]);
            let out = d.ctl(&["unban", HARVESTER_V4])?;
            anyhow::ensure!(out.status.success(), "unban: {out:?}");
        }
    }

    // fail2ban-server on the same log.
    if fail2ban::available() {
        let cfg = Fail2banConfig { maxretry: MAX_UNKNOWN, logpath: Some(lab.sendmail.log_path()), ..Default::default() };
        let f2b = Fail2ban::start(&lab.topo.server.name, &cfg)?;
        for rep in 1..=reps {
            let r = harvest(&lab)?;
            // Give it time: it bans on its own schedule.
            std::thread::sleep(Duration::from_secs(2));
            let blocked = !lab.can_connect(harvester, Duration::from_millis(500))?;
            table.row(vec![
                "fail2ban sendmail-reject".into(),
                rep.to_string(),
                r.answered.to_string(),
                r.logged.to_string(),
                r.completed.to_string(),
                if blocked { "dropped".into() } else { "accepted".into() },
            ]);
        }
        println!("fail2ban banned {} address(es) in all", f2b.banned()?);
    } else {
        println!("fail2ban is not installed (apt-get install fail2ban): only blocksmtp measured");
    }
    table.print();
    println!(
        "target: the harvester gets at most --max-unknown ({MAX_UNKNOWN}) answers with blocksmtp. sendmail 8.17's `User unknown` \
         lines carry no client address; fail2ban's sendmail-reject filter cannot attribute them."
    );
    Ok(())
}
