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
//!
//! Settings: the detection options of /etc/blocksmtp/blocksmtp.toml (or `--config`),
//! as the daemon reads them, so that replay's verdicts are the daemon's; the command
//! line wins. Files are read oldest first, by modification time (rotated logs given
//! newest first, as `mail.log mail.log.1` is, would otherwise change the result).
use std::{
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Condvar, Mutex, mpsc},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    duration::format_duration,
    parse::time::format_rfc3339,
    detect::{Clock, DetectArgs, Detector, DetectorStats, LineStats},
    parse::{MailerFilter, Parsed, stored::StoredEvent, with_parsed},
    policy::BanDecision,
    source::file::{Input, LineReader, block_lines},
};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Log files (plain or gzip-compressed), or - for standard input; read in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Read the detection settings from this config file (default:
    /// /etc/blocksmtp/blocksmtp.toml if it exists); the command line wins.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Ignore the config file.
    #[arg(long, conflicts_with = "config")]
    pub no_config: bool,
    /// Threads that frame and parse lines (0: one per CPU; 1: the sequential path), one
    /// of them the thread that correlates and decides in log order (it parses when it
    /// has nothing to decide). The result is the same either way.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
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

/// Run detection over `inputs` in order (framing and parsing on every CPU).
pub fn run(args: &DetectArgs, inputs: &[Input]) -> anyhow::Result<Report> {
    run_with(args, inputs, 0)
}

/// As [`run`] with `threads` parsing threads (0: one per CPU; 1: the sequential path).
pub fn run_with(args: &DetectArgs, inputs: &[Input], threads: usize) -> anyhow::Result<Report> {
    run_keeping(args, inputs, threads).map(|(report, _detector)| report)
}

/// As [`run_with`], handing back the detector too, for a caller about to exit to leave
/// undropped (freeing its maps entry by entry only delays the exit).
fn run_keeping(args: &DetectArgs, inputs: &[Input], threads: usize) -> anyhow::Result<(Report, Detector)> {
    let mut detector = Detector::new(args)?.with_clock(Clock::Log);
    // Open everything first: an unreadable input fails before any output.
    let mut readers = Vec::with_capacity(inputs.len());
    for input in inputs {
        let r = LineReader::open(input).map_err(|source| InputError { input: input.clone(), source })?;
        readers.push((input, r));
    }
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    // One timestamp for the whole run: it only anchors the year of BSD timestamps.
    let now = SystemTime::now();
    let mut decisions: Vec<(BanDecision, SystemTime)> = Vec::new();
    let truncated = if threads <= 1 {
        sequential(&mut detector, readers, now, &mut decisions)?
    } else {
        parallel(&mut detector, readers, now, threads, &mut decisions)?
    };
    let stats = detector.stats();
    let bans = decisions.into_iter().map(|(d, at)| report_ban(&detector, d, at)).collect();
    Ok((report(stats, bans, truncated), detector))
}

fn decided(bans: impl IntoIterator<Item = BanDecision>, decisions: &mut Vec<(BanDecision, SystemTime)>) {
    for ban in bans {
        // The decision is made at the guess that completes the evidence.
        let at = ban.last_seen;
        decisions.push((ban, at));
    }
}

/// One line at a time through [`Detector::feed`], as the daemon reads.
fn sequential(
    detector: &mut Detector,
    readers: Vec<(&Input, LineReader)>,
    now: SystemTime,
    decisions: &mut Vec<(BanDecision, SystemTime)>,
) -> anyhow::Result<u64> {
    let mut truncated = 0;
    for (input, mut reader) in readers {
        loop {
            let line = match reader.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(source) => return Err(InputError { input: input.clone(), source }.into()),
            };
            decided(detector.feed(line, now), decisions);
        }
        truncated += reader.truncated();
    }
    Ok(truncated)
}

/// A block's lines framed and parsed: the counts, and the lines that may matter.
#[derive(Default)]
struct ParsedBlock {
    stats: LineStats,
    events: Vec<StoredEvent>,
    arena: Vec<u8>,
    cut: u64,
}

fn parse_block(block: &[u8], max_line: usize, filter: &MailerFilter, out: &mut ParsedBlock) {
    out.stats = LineStats::default();
    out.events.clear();
    out.arena.clear();
    out.cut = 0;
    let ParsedBlock { stats, events, arena, cut } = out;
    for line in block_lines(block, max_line, cut) {
        with_parsed(line, filter, |p| {
            if let Some(Parsed::Mail { frame, mta, event }) = stats.count(&p) {
                events.push(StoredEvent::store(frame, *mta, event, arena));
            }
        });
    }
}

/// Blocks in flight at once (being parsed, parsed and waiting), per thread.
const IN_FLIGHT_PER_THREAD: usize = 3;

/// A parsed block on its way to the in-order thread: its number and what its lines said.
type Work = (u64, ParsedBlock);

/// What the parsing threads share: the inputs, read a block at a time by whichever
/// thread parses it next (a reading thread of its own cost more in wake-ups and
/// hand-offs than the copy itself on two CPUs), and the parsed blocks free for reuse,
/// which bound how far parsing runs ahead of the in-order thread.
struct Feed<'i> {
    inputs: std::vec::IntoIter<(&'i Input, LineReader)>,
    current: Option<(&'i Input, crate::source::file::Blocks)>,
    seq: u64,
    truncated: u64,
    /// Parsed blocks the in-order thread has finished with.
    free: Vec<ParsedBlock>,
    /// The end of the last input, or a read error: nothing more to read.
    finished: bool,
    error: Option<InputError>,
}

impl Feed<'_> {
    /// A free parsed block and the next block read into `buf` (the block stays free at
    /// the end).
    fn take(&mut self, buf: &mut Vec<u8>) -> Option<(u64, usize, ParsedBlock)> {
        let parsed = self.free.pop()?;
        match self.next_block(buf) {
            Some((seq, max_line)) => Some((seq, max_line, parsed)),
            None => {
                self.free.push(parsed);
                None
            }
        }
    }

    /// Read the next block into `buf`: its number and longest line, or `None` at the end
    /// (or after an error, kept for the in-order thread to report).
    fn next_block(&mut self, buf: &mut Vec<u8>) -> Option<(u64, usize)> {
        while !self.finished {
            let (input, blocks) = match &mut self.current {
                Some(c) => c,
                None => match self.inputs.next() {
                    Some((input, reader)) => self.current.insert((input, reader.into_blocks())),
                    None => {
                        self.finished = true;
                        break;
                    }
                },
            };
            match blocks.next_block(buf) {
                Ok(true) => {
                    self.seq += 1;
                    return Some((self.seq - 1, blocks.max_line()));
                }
                Ok(false) => {
                    self.truncated += blocks.truncated();
                    self.current = None;
                }
                Err(source) => {
                    self.error = Some(InputError { input: input.clone(), source });
                    self.finished = true;
                }
            }
        }
        None
    }
}

/// The feed and the signal that a parsed block was freed.
struct Shared<'i> {
    feed: Mutex<Feed<'i>>,
    freed: Condvar,
}

impl Shared<'_> {
    /// A free parsed block and the next block read into `buf`, waiting for a free one
    /// while parsing is far enough ahead; `None` at the end.
    fn take(&self, buf: &mut Vec<u8>) -> Option<(u64, usize, ParsedBlock)> {
        let mut feed = self.feed.lock().ok()?;
        while feed.free.is_empty() && !feed.finished {
            feed = self.freed.wait(feed).ok()?;
        }
        feed.take(buf)
    }

    /// As [`Self::take`] without waiting: `None` when another thread holds the feed or
    /// no parsed block is free (then the parsing threads are ahead).
    fn try_take(&self, buf: &mut Vec<u8>) -> Option<(u64, usize, ParsedBlock)> {
        self.feed.try_lock().ok()?.take(buf)
    }

    fn give_back(&self, parsed: ParsedBlock) {
        if let Ok(mut feed) = self.feed.lock() {
            feed.free.push(parsed);
        }
        self.freed.notify_one();
    }
}

/// The next parsed block for the in-order thread: one a parsing thread finished, else
/// one read and parsed here rather than idle (on two cores this thread waited a third
/// of the time while the parsing threads were the bottleneck), else the next to finish.
/// `None` at the end.
fn next_parsed(done: &mpsc::Receiver<Work>, shared: &Shared<'_>, buf: &mut Vec<u8>, filter: &MailerFilter) -> Option<Work> {
    match done.try_recv() {
        Ok(w) => return Some(w),
        Err(mpsc::TryRecvError::Disconnected) => return None,
        Err(mpsc::TryRecvError::Empty) => {}
    }
    if let Some((seq, max_line, mut parsed)) = shared.try_take(buf) {
        parse_block(buf, max_line, filter, &mut parsed);
        return Some((seq, parsed));
    }
    done.recv().ok()
}

/// Framing and parsing on `threads` threads, block by block: `threads - 1` parsing
/// threads and this one, which correlates and decides in the order of the log and
/// parses a block itself when none is ready. Same result as [`sequential`] (tested).
/// (With a parsing thread per CPU, this thread — the critical path — shared its CPU with
/// them: one fewer was 10% faster on two CPUs.)
fn parallel(
    detector: &mut Detector,
    readers: Vec<(&Input, LineReader)>,
    now: SystemTime,
    threads: usize,
    decisions: &mut Vec<(BanDecision, SystemTime)>,
) -> anyhow::Result<u64> {
    let filter = detector.filter().clone();
    let in_flight = threads * IN_FLIGHT_PER_THREAD;
    // At most `in_flight` parsed blocks exist; they go round, so none allocates after
    // the first rounds.
    let shared = Shared {
        feed: Mutex::new(Feed {
            inputs: readers.into_iter(),
            current: None,
            seq: 0,
            truncated: 0,
            free: (0..in_flight).map(|_| ParsedBlock::default()).collect(),
            finished: false,
            error: None,
        }),
        freed: Condvar::new(),
    };
    let (done_tx, done_rx) = mpsc::sync_channel::<Work>(in_flight);
    let cut = std::thread::scope(|scope| {
        let (shared, filter) = (&shared, &filter);
        for _ in 1..threads {
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut buf = Vec::new();
                while let Some((seq, max_line, mut parsed)) = shared.take(&mut buf) {
                    parse_block(&buf, max_line, filter, &mut parsed);
                    if done_tx.send((seq, parsed)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // In order: blocks finished early wait here for their predecessors.
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0u64;
        let mut cut = 0;
        let mut bans = Vec::new();
        let mut buf = Vec::new();
        while let Some((seq, parsed)) = next_parsed(&done_rx, shared, &mut buf, filter) {
            waiting.insert(seq, parsed);
            while let Some(parsed) = waiting.remove(&next) {
                detector.add_line_stats(&parsed.stats);
                cut += parsed.cut;
                for e in &parsed.events {
                    let l = e.load(&parsed.arena);
                    detector.feed_event(l.host, l.pid, l.time, l.mta, &l.event, now, &mut bans);
                    decided(bans.drain(..), decisions);
                }
                next += 1;
                shared.give_back(parsed);
            }
        }
        // The parsing threads end when the feed does; none is left waiting.
        shared.freed.notify_all();
        cut
    });
    let feed = shared.feed.into_inner().map_err(|_| anyhow::anyhow!("a parsing thread panicked"))?;
    match feed.error {
        Some(e) => Err(e.into()),
        None => Ok(feed.truncated + cut),
    }
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

/// Up to three samples, whole, within 60 characters (at least one, however long), and
/// `…` when some were left out: an address cut in the middle reads as another address.
fn samples_cell(samples: &[String]) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for s in samples.iter().take(3) {
        let add = if out.is_empty() { s.chars().count() } else { s.chars().count() + 2 };
        if shown > 0 && out.chars().count() + add > 60 {
            break;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(s);
        shown += 1;
    }
    if shown < samples.len() {
        out.push_str(", …");
    }
    out
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
                let samples = samples_cell(&b.samples);
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
            for (i, (w, c)) in width.iter_mut().zip(row).enumerate() {
                *w = (*w).max(if i == 5 { c.chars().count() } else { c.chars().count().min(60) });
            }
        }
        let line = |cells: &[String], out: &mut dyn Write| -> std::io::Result<()> {
            for (i, c) in cells.iter().enumerate() {
                // Samples are whole addresses already (samples_cell); others cut at 60.
                let c: String = if i == 5 { c.clone() } else { c.chars().take(60).collect() };
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

/// Duration unit words: `--window 10 minutes` leaves `minutes` among the files.
const UNIT_WORDS: &[&str] = &[
    "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes", "h", "hour", "hours", "d", "day",
    "days", "w", "week", "weeks",
];

/// `argv` with the config file's detection settings inserted after `replay` (the
/// daemon's own reading of the file, then only the keys replay knows; the command
/// line's settings win); `None` when no config file applies.
fn with_config(args: &ReplayArgs, argv: &[OsString]) -> anyhow::Result<Option<Vec<OsString>>> {
    use clap::CommandFactory as _;
    if args.no_config {
        return Ok(None);
    }
    let Some(path) = crate::config::config_path(args.config.as_deref())? else { return Ok(None) };
    let cli = crate::cli::Cli::command();
    let run_cmd = cli.find_subcommand("run").expect("run subcommand").clone();
    let replay_cmd = cli.find_subcommand("replay").expect("replay subcommand").clone();
    let run_matches = run_cmd.clone().no_binary_name(true).try_get_matches_from(Vec::<OsString>::new())?;
    let from_file = crate::config::overlay(&run_cmd, &run_matches, &path)?;
    let argv = crate::cli::normalize_argv(argv.to_vec());
    let pos = argv.iter().position(|a| a == "replay").ok_or_else(|| anyhow::anyhow!("no `replay` in the command line"))?;
    let replay_matches = replay_cmd.clone().no_binary_name(true).try_get_matches_from(&argv[pos + 1..])?;
    let mut extra = Vec::new();
    for a in from_file {
        let text = a.to_string_lossy();
        let long = text.trim_start_matches("--").split('=').next().unwrap_or_default().to_string();
        let Some(arg) = replay_cmd.get_arguments().find(|x| x.get_long() == Some(long.as_str())) else { continue };
        if ["files", "json", "config", "no_config"].contains(&arg.get_id().as_str()) {
            continue;
        }
        if replay_matches.value_source(arg.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        extra.push(a);
    }
    let mut full = argv[..=pos].to_vec();
    full.extend(extra);
    full.extend_from_slice(&argv[pos + 1..]);
    Ok(Some(full))
}

/// The inputs oldest first: files by modification time (stable for equal times),
/// standard input where it was given. Returns whether the order changed.
fn time_order(inputs: &mut [Input]) -> std::io::Result<bool> {
    if inputs.iter().any(|i| matches!(i, Input::Stdin)) {
        return Ok(false);
    }
    let mut keyed = Vec::with_capacity(inputs.len());
    for (n, i) in inputs.iter().enumerate() {
        let Input::File(p) = i else { unreachable!() };
        let m = std::fs::metadata(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        keyed.push((m.modified()?, n, i.clone()));
    }
    keyed.sort_by_key(|(t, n, _)| (*t, *n));
    let changed = keyed.iter().enumerate().any(|(i, (_, n, _))| i != *n);
    for (slot, (_, _, i)) in inputs.iter_mut().zip(keyed) {
        *slot = i;
    }
    Ok(changed)
}

pub fn main(args: ReplayArgs, argv: Vec<OsString>) -> ExitCode {
    let args = match with_config(&args, &argv) {
        Ok(None) => args,
        Ok(Some(full)) => match <crate::cli::Cli as clap::Parser>::try_parse_from(&full).map(|c| c.command) {
            Ok(crate::cli::Command::Replay(a)) => *a,
            Ok(_) => unreachable!("replay stays replay"),
            Err(e) => {
                eprintln!("blocksmtp replay: with the config file's settings: {e}");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("blocksmtp replay: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = args.detect.validate() {
        eprintln!("blocksmtp replay: {e}");
        return ExitCode::from(2);
    }
    for f in &args.files {
        if let Some(word) = f.to_str()
            && UNIT_WORDS.contains(&word.to_ascii_lowercase().as_str())
            && !Path::new(word).exists()
        {
            eprintln!(
                "blocksmtp replay: `{word}` is not a log file: a duration is one word (--window 10m, or --window '10 {word}')"
            );
            return ExitCode::from(2);
        }
    }
    let mut inputs: Vec<Input> = args.files.iter().map(|p| Input::from_arg(p)).collect();
    match time_order(&mut inputs) {
        Ok(true) => eprintln!(
            "blocksmtp replay: reading oldest first (by modification time): {}",
            inputs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ),
        Ok(false) => {}
        Err(e) => {
            eprintln!("blocksmtp replay: {e}");
            return ExitCode::from(2);
        }
    }
    let (report, detector) = match run_keeping(&args.detect, &inputs, args.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blocksmtp replay: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The process ends after the report: its memory goes back whole, not entry by entry.
    std::mem::forget(detector);
    let stdout = std::io::stdout();
    // A report of thousands of bans is megabytes of JSON: written in large pieces.
    let mut out = std::io::BufWriter::with_capacity(1 << 18, stdout.lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from).and_then(|()| writeln!(out))
    } else {
        write_table(&report, &mut out)
    };
    let written = written.and_then(|()| out.flush());
    std::mem::forget(report);
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not a failure of the replay.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blocksmtp replay: writing the report: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(argv: &[&str]) -> (ReplayArgs, Vec<OsString>) {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        match <crate::cli::Cli as clap::Parser>::try_parse_from(&argv).unwrap().command {
            crate::cli::Command::Replay(a) => (*a, argv),
            _ => panic!("not replay"),
        }
    }

    /// Exim's arrival lines are valid mail: of two Exim sources making the same two
    /// guesses at harvest-dictionary names, the one that delivered mail first is not
    /// banned; the one without is.
    #[test]
    fn an_exim_sender_with_valid_mail_is_spared_the_strict_rules() {
        let d = tempfile::tempdir().unwrap();
        let mut log = String::new();
        let mut sec = 0;
        let mut line = |msg: &str| {
            sec += 7;
            log.push_str(&format!("2026-11-27 10:{:02}:{:02} +0000 {msg}\n", sec / 60, sec % 60));
        };
        let reject = |ip: &str, rcpt: &str| {
            format!("H=(x.invalid) [{ip}]:40000 I=[192.0.2.25]:25 F=<a@example.net> rejected RCPT <{rcpt}>: Unknown user")
        };
        // Harvesters of four networks teach the dictionary john and mary (two domains).
        for ip in ["198.18.1.9", "198.18.2.9", "198.18.3.9", "198.18.4.9"] {
            for rcpt in ["john@example.com", "mary@example.com", "john@example.org", "mary@example.org"] {
                line(&reject(ip, rcpt));
            }
        }
        // A sender whose mail was accepted, then the same two names as a newcomer of
        // another network (valid mail from a network spares its neighbours too).
        line("1tXyzA-000Abc-1F <= b@example.net H=mail.example.net [192.0.2.10]:40001 I=[192.0.2.25]:25 P=esmtps S=2345 id=x@example.net");
        for (ip, rcpt) in [("192.0.2.10", "john@example.net"), ("203.0.113.20", "john@example.net"), ("192.0.2.10", "mary@example.net"), ("203.0.113.20", "mary@example.net")] {
            line(&reject(ip, rcpt));
        }
        let file = d.path().join("mainlog");
        std::fs::write(&file, &log).unwrap();
        let r = run(&DetectArgs::default(), &[Input::File(file)]).unwrap();
        let banned: Vec<&str> = r.bans.iter().map(|b| b.source.as_str()).collect();
        assert!(banned.contains(&"203.0.113.20"), "the newcomer without valid mail: {banned:?}");
        assert!(!banned.contains(&"192.0.2.10"), "the sender with valid mail: {banned:?}");
        assert_eq!(r.kinds.session, 1, "the arrival line was read");
        assert_eq!(r.policy.deliveries, 1);
    }

    #[test]
    fn config_detection_keys_apply_and_the_command_line_wins() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("b.toml");
        std::fs::write(&cfg, "mode = \"iptables\"\nmax-unknown = 10\nwindow = \"2m\"\nkeep-bans = true\n").unwrap();
        let c = cfg.to_str().unwrap();
        let (a, argv) = args_of(&["blocksmtp", "replay", "--config", c, "--window", "7m", "x.log"]);
        let full = with_config(&a, &argv).unwrap().unwrap();
        let full: Vec<String> = full.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert!(full.contains(&"--max-unknown=10".to_string()), "{full:?}");
        assert!(!full.iter().any(|s| s.starts_with("--window=")), "the command line's --window wins: {full:?}");
        assert!(!full.iter().any(|s| s.starts_with("--mode") || s.starts_with("--keep-bans")), "daemon-only keys: {full:?}");
        let (a, argv) = args_of(&["blocksmtp", "replay", "--no-config", "x.log"]);
        assert!(with_config(&a, &argv).unwrap().is_none());
        std::fs::write(&cfg, "max-unknown = \"x\"\n").unwrap();
        let (a, argv) = args_of(&["blocksmtp", "replay", "--config", c, "x.log"]);
        let e = with_config(&a, &argv).unwrap_err().to_string();
        assert!(e.contains("b.toml:1: key `max-unknown`"), "{e}");
    }

    /// A gzip file corrupt half-way: every thread count fails the same way, naming the
    /// file, after a clean file before it was read whole (no thread is left waiting).
    #[test]
    fn a_read_error_half_way_is_the_same_error_with_any_thread_count() {
        use flate2::{Compression, write::GzEncoder};
        let d = tempfile::tempdir().unwrap();
        let mut log = Vec::new();
        for i in 0..40_000u32 {
            log.extend_from_slice(format!("Nov 27 12:00:{:02} mx cron[{i}]: (root) CMD (true)\n", i % 60).as_bytes());
        }
        let clean = d.path().join("mail.log.1");
        std::fs::write(&clean, &log).unwrap();
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        std::io::Write::write_all(&mut gz, &log).unwrap();
        let mut gz = gz.finish().unwrap();
        let mid = gz.len() / 2;
        gz[mid..mid + 64].fill(0xa5);
        let bad = d.path().join("mail.log.2.gz");
        std::fs::write(&bad, &gz).unwrap();
        let (args, _) = args_of(&["blocksmtp", "replay", "x"]);
        let inputs = [Input::File(clean), Input::File(bad.clone())];
        for threads in [1, 2, 3] {
            let e = run_with(&args.detect, &inputs, threads).expect_err("a corrupt gzip file is an error");
            let e = format!("{e:#}");
            assert!(e.contains(&bad.display().to_string()), "{threads} threads: {e}");
        }
    }

    #[test]
    fn files_are_read_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("mail.log");
        let old = d.path().join("mail.log.1");
        std::fs::write(&new, "").unwrap();
        std::fs::write(&old, "").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)).unwrap();
        let mut inputs = vec![Input::File(new.clone()), Input::File(old.clone())];
        assert!(time_order(&mut inputs).unwrap());
        assert_eq!(inputs, vec![Input::File(old.clone()), Input::File(new.clone())]);
        assert!(!time_order(&mut inputs).unwrap(), "already in order");
        let mut with_stdin = vec![Input::File(new), Input::Stdin];
        assert!(!time_order(&mut with_stdin).unwrap(), "standard input keeps the given order");
    }

    #[test]
    fn samples_are_whole_addresses() {
        let s: Vec<String> = ["<tpwjzbwb15@example.com>", "<alice@example.com>", "<bob-the-builder@example.com>"].map(String::from).to_vec();
        let c = samples_cell(&s);
        assert_eq!(c, "<tpwjzbwb15@example.com>, <alice@example.com>, …");
        assert_eq!(samples_cell(&s[..1]), "<tpwjzbwb15@example.com>");
        let long = vec!["<".to_string() + &"x".repeat(70) + "@example.com>"];
        assert_eq!(samples_cell(&long), long[0], "one sample is shown whole however long");
        assert_eq!(samples_cell(&[]), "");
    }
}
