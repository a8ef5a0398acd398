//! `blocksmtp replay`: detection over log files, no kernel touched, no root needed —
//! like `fail2ban-regex`. The same [`Detector`] and policy as the daemon, with guess
//! times taken from the log's own timestamps.
//!
//! Output: a table of would-be bans and the line totals, or with `--json` one
//! document:
//!
//! ```json
//! {"lines": 101, "skipped": 0, "guesses": 70,
//!  "bans": [{"source": "192.0.2.66", "guesses": 24, "first_seen": "2026-11-27T12:35:47Z",
//!            "last_seen": "2026-11-27T12:36:04Z", "reason": "…", "mta": "sendmail",
//!            "ban_time": 3600, "offence": 1, "samples": ["<tpwjzbwb15@example.com>", …],
//!            "guesses_at_ban": 5, "banned_at": "…", "rule": "address"}],
//!  "kinds": {…}, "correlation": {…}, "policy": {…}}
//! ```
//!
//! `source` is an address, an IPv6 prefix, or a network (`192.0.2.0/24`) for a prefix
//! ban; `rule` names the evidence (`address`, `prefix`, `dictionary`, `surge`,
//! `returning`); `banned_at` is when the decision was made: the time of the guess that
//! completed the evidence (the daemon, attributing sendmail's guesses live through
//! process titles, decides then), also as `banned_at_unix` with sub-second precision.
//! `guesses` of a ban counts the guesses that triggered it plus those the source made
//! while it would have been banned; `guesses_at_ban` only the former. The top-level
//! `guesses` counts every guess attributed to a source (whitelisted ones excluded).
//! Exit status: 0 on success, 2 on bad arguments or unreadable input.
use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    duration::format_duration,
    parse::time::format_rfc3339,
    detect::{Clock, DetectArgs, Detector, DetectorStats},
    policy::BanDecision,
    source::file::{Input, LineReader},
};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Log files (plain or gzip-compressed), or - for standard input; read in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub detect: DetectArgs,
}

/// One would-be ban as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportedBan {
    pub source: String,
    pub guesses: u32,
    pub first_seen: String,
    pub last_seen: String,
    pub reason: String,
    pub mta: String,
    /// Seconds.
    pub ban_time: u64,
    pub offence: u32,
    pub samples: Vec<String>,
    pub guesses_at_ban: u32,
    pub banned_at: String,
    /// `banned_at` as unix seconds with the log's sub-second precision.
    pub banned_at_unix: f64,
    pub rule: &'static str,
}

/// The whole replay result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub lines: u64,
    pub skipped: u64,
    pub guesses: u64,
    pub bans: Vec<ReportedBan>,
    pub kinds: crate::detect::LineStats,
    pub correlation: crate::correlate::CorrelatorStats,
    pub policy: crate::policy::PolicyStats,
    /// Lines cut at 1 MiB.
    pub truncated_lines: u64,
}

/// An input problem: the message names the input.
#[derive(Debug, thiserror::Error)]
#[error("{input}: {source}")]
pub struct InputError {
    pub input: Input,
    #[source]
    pub source: std::io::Error,
}

/// Run detection over `inputs` in order.
pub fn run(args: &DetectArgs, inputs: &[Input]) -> anyhow::Result<Report> {
    let mut detector = Detector::new(args)?.with_clock(Clock::Log);
    // Open everything first: an unreadable input fails before any output.
    let mut readers = Vec::with_capacity(inputs.len());
    for input in inputs {
        let r = LineReader::open(input).map_err(|source| InputError { input: input.clone(), source })?;
        readers.push((input, r));
    }
    let now = SystemTime::now();
    let mut decisions: Vec<(BanDecision, SystemTime)> = Vec::new();
    let mut truncated = 0;
    for (input, mut reader) in readers {
        loop {
            let line = match reader.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(source) => return Err(InputError { input: input.clone(), source }.into()),
            };
            for ban in detector.feed(line, now) {
                // The decision is made at the guess that completes the evidence.
                let at = ban.last_seen;
                decisions.push((ban, at));
            }
        }
        truncated += reader.truncated();
    }
    let stats = detector.stats();
    let bans = decisions.into_iter().map(|(d, at)| report_ban(&detector, d, at)).collect();
    Ok(report(stats, bans, truncated))
}


fn report_ban(detector: &Detector, d: BanDecision, at: SystemTime) -> ReportedBan {
    // Guesses made while banned were added to the offence record.
    let record = detector
        .policy()
        .offences(&d.source)
        .iter()
        .find(|o| o.number == d.offence && o.first_seen == crate::policy::secs32(d.first_seen));
    let (guesses, last_seen) = match record {
        Some(o) if o.last_seen > crate::policy::secs32(d.last_seen) => {
            (o.guesses.max(d.guesses), UNIX_EPOCH + std::time::Duration::from_secs(o.last_seen.into()))
        }
        Some(o) => (o.guesses.max(d.guesses), d.last_seen),
        None => (d.guesses, d.last_seen),
    };
    ReportedBan {
        source: d.source.to_string(),
        guesses,
        first_seen: format_rfc3339(d.first_seen),
        last_seen: format_rfc3339(last_seen),
        reason: d.reason,
        mta: d.mta.to_string(),
        ban_time: d.duration.as_secs(),
        offence: d.offence,
        samples: d.evidence,
        guesses_at_ban: d.guesses,
        banned_at: format_rfc3339(at),
        banned_at_unix: at.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        rule: d.rule.name(),
    }
}

fn report(stats: DetectorStats, bans: Vec<ReportedBan>, truncated: u64) -> Report {
    Report {
        lines: stats.lines.lines,
        skipped: stats.lines.skipped,
        guesses: stats.policy.guesses,
        bans,
        kinds: stats.lines,
        correlation: stats.correlator,
        policy: stats.policy,
        truncated_lines: truncated,
    }
}

/// Write the human-readable report.
pub fn write_table(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    if r.bans.is_empty() {
        writeln!(out, "No source would be banned.")?;
    } else {
        let rows: Vec<[String; 7]> = r
            .bans
            .iter()
            .map(|b| {
                let samples = b.samples.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
                [
                    b.source.clone(),
                    b.guesses.to_string(),
                    b.first_seen.clone(),
                    b.last_seen.clone(),
                    format_duration(std::time::Duration::from_secs(b.ban_time)),
                    if samples.is_empty() { "-".into() } else { samples },
                    b.reason.clone(),
                ]
            })
            .collect();
        let head = ["SOURCE", "GUESSES", "FIRST SEEN", "LAST SEEN", "BAN", "SAMPLES", "REASON"];
        let mut width = head.map(str::len);
        for row in &rows {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count().min(60));
            }
        }
        let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
            for (i, c) in cells.iter().enumerate() {
                let c: String = c.chars().take(60).collect();
                if i + 1 == cells.len() {
                    writeln!(out, "{c}")?;
                } else if i == 1 {
                    write!(out, "{c:>w$}  ", w = width[i])?;
                } else {
                    write!(out, "{c:<w$}  ", w = width[i])?;
                }
            }
            Ok(())
        };
        line(&head.map(String::from), out)?;
        for row in &rows {
            line(row, out)?;
        }
    }
    let k = &r.kinds;
    writeln!(out)?;
    writeln!(out, "Lines read:             {}", r.lines)?;
    writeln!(out, "  mail program lines:   {}", k.mail)?;
    writeln!(out, "    unknown recipient:  {}", k.unknown_recipient)?;
    writeln!(out, "    VRFY/EXPN probe:    {}", k.probe)?;
    writeln!(out, "    RCPT flood alarm:   {}", k.flood)?;
    writeln!(out, "    VRFY/EXPN alarm:    {}", k.probe_attack)?;
    writeln!(out, "    session client:     {}", k.session)?;
    writeln!(out, "    unattributable:     {}", k.unattributable)?;
    writeln!(out, "    other:              {}", k.other)?;
    writeln!(out, "  other programs/hosts: {}", k.foreign)?;
    writeln!(out, "  skipped (no shape):   {}", r.skipped)?;
    if r.truncated_lines > 0 {
        writeln!(out, "  cut at 1 MiB:         {}", r.truncated_lines)?;
    }
    writeln!(out, "Guesses counted:        {}", r.guesses)?;
    writeln!(out, "  whitelisted, ignored: {}", k.whitelisted)?;
    writeln!(out, "  never attributed:     {}", r.correlation.expired)?;
    writeln!(out, "Would-be bans:          {}", r.bans.len())?;
    if r.policy.bans_whitelisted > 0 {
        writeln!(out, "  spared (whitelisted): {}", r.policy.bans_whitelisted)?;
    }
    Ok(())
}

pub fn main(args: ReplayArgs) -> ExitCode {
    if let Err(e) = args.detect.validate() {
        eprintln!("blocksmtp replay: {e}");
        return ExitCode::from(2);
    }
    let inputs: Vec<Input> = args.files.iter().map(|p| Input::from_arg(p)).collect();
    let report = match run(&args.detect, &inputs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blocksmtp replay: {e:#}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from).and_then(|()| writeln!(out))
    } else {
        write_table(&report, &mut out)
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not a failure of the replay.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blocksmtp replay: writing the report: {e}");
            ExitCode::from(1)
        }
    }
}
