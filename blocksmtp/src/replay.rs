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
    collections::{BTreeMap, VecDeque},
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Condvar, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    duration::format_duration,
    parse::time::format_rfc3339,
    detect::{Clock, Correlating, Deciding, DetectArgs, Detector, DetectorStats, LineStats, Steps},
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
    /// Threads to run on (0: one per CPU; 1: the sequential path). Blocks of lines are
    /// framed and parsed on all of them, then correlated and decided in log order, each
    /// stage on whichever thread is free. The result is the same either way.
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

/// Parsed blocks in flight at once (being parsed, parsed and waiting), per thread.
const PARSED_PER_THREAD: usize = 3;
/// Correlated blocks in flight at once (being correlated, waiting, being decided).
const CORRELATED: usize = 3;

/// The inputs, read a block at a time by whichever thread parses it next (a reading
/// thread of its own cost more in wake-ups and hand-offs than the copy itself on two
/// CPUs).
struct Feed<'i> {
    inputs: std::vec::IntoIter<(&'i Input, LineReader)>,
    current: Option<(&'i Input, crate::source::file::Blocks)>,
    seq: u64,
    truncated: u64,
    /// The end of the last input, or a read error: nothing more to read.
    finished: bool,
    error: Option<InputError>,
}

impl Feed<'_> {
    /// Read the next block into `buf`: its number and longest line, or `None` at the end
    /// (or after an error, kept to be reported).
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

/// A block's steps for the policy, in log order, with its lines' counts.
#[derive(Default)]
struct CorrelatedBlock {
    stats: LineStats,
    steps: Steps,
}

/// The policy's stage with what it writes to.
struct Decide<'d, 'o> {
    deciding: Deciding<'d>,
    decisions: &'o mut Vec<(BanDecision, SystemTime)>,
    bans: Vec<BanDecision>,
}

/// Where the three stages stand. Parsing takes any block, in any order, on any
/// thread; correlating and deciding take the blocks in the log's order, one thread at
/// a time each — but on two threads at once, a block apart, so that the in-order work
/// (the critical path) is spread over both CPUs. A stage in use is taken out of here
/// (`None`) by the thread running it.
struct Stages<'d, 'o> {
    /// Parsed blocks waiting for their turn to be correlated, by number.
    parsed: BTreeMap<u64, ParsedBlock>,
    next: u64,
    /// Correlated blocks, in order, waiting to be decided.
    correlated: VecDeque<CorrelatedBlock>,
    correlating: Option<Correlating<'d>>,
    deciding: Option<Decide<'d, 'o>>,
    /// Blocks free for reuse: they bound how far each stage runs ahead of the next.
    free_parsed: Vec<ParsedBlock>,
    free_correlated: Vec<CorrelatedBlock>,
    /// Blocks being parsed now.
    parsing: usize,
    /// Lines cut at the line limit.
    cut: u64,
    /// The feed has no more blocks.
    read_all: bool,
    /// Threads waiting for work (a wake-up is a system call: made only for them).
    waiting: usize,
    /// A thread panicked: the others stop rather than wait for its stage.
    aborted: bool,
}

/// What a thread does next.
enum Job<'d, 'o> {
    Decide(Decide<'d, 'o>, CorrelatedBlock),
    Correlate(Correlating<'d>, ParsedBlock, CorrelatedBlock),
    Parse(ParsedBlock),
    Done,
}

impl<'d, 'o> Stages<'d, 'o> {
    /// The next job, the in-order stages first (they are the critical path); `None`
    /// when nothing can be done until another thread finishes its job.
    fn job(&mut self) -> Option<Job<'d, 'o>> {
        if self.aborted {
            return Some(Job::Done);
        }
        if self.deciding.is_some()
            && let Some(block) = self.correlated.pop_front()
        {
            return Some(Job::Decide(self.deciding.take()?, block));
        }
        if self.correlating.is_some()
            && !self.free_correlated.is_empty()
            && let Some(parsed) = self.parsed.remove(&self.next)
        {
            self.next += 1;
            let out = self.free_correlated.pop()?;
            return Some(Job::Correlate(self.correlating.take()?, parsed, out));
        }
        if !self.read_all
            && let Some(parsed) = self.free_parsed.pop()
        {
            self.parsing += 1;
            return Some(Job::Parse(parsed));
        }
        let idle = self.correlating.is_some() && self.deciding.is_some() && self.parsing == 0;
        (self.read_all && idle && self.parsed.is_empty() && self.correlated.is_empty()).then_some(Job::Done)
    }
}

/// The stages, and the signal that they changed.
struct Pipeline<'d, 'o> {
    stages: Mutex<Stages<'d, 'o>>,
    changed: Condvar,
}

impl<'d, 'o> Pipeline<'d, 'o> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stages<'d, 'o>> {
        // A panicking thread holds no stage lock across its work; its flag is honoured.
        self.stages.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn next_job(&self) -> Job<'d, 'o> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.job() {
                return job;
            }
            s.waiting += 1;
            s = self.changed.wait(s).unwrap_or_else(std::sync::PoisonError::into_inner);
            s.waiting -= 1;
        }
    }

    /// Change the stages and wake a waiting thread: there may be work for it now.
    fn finish(&self, f: impl FnOnce(&mut Stages<'d, 'o>)) {
        let mut s = self.lock();
        f(&mut s);
        if s.waiting > 0 {
            self.changed.notify_all();
        }
    }
}

/// Stops the other threads when this one panics mid-job (its stage never comes back).
struct AbortOnPanic<'p, 'd, 'o>(&'p Pipeline<'d, 'o>);

impl Drop for AbortOnPanic<'_, '_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = self.0.lock();
            s.aborted = true;
            self.0.changed.notify_all();
        }
    }
}

/// One thread's loop: whatever job is ready, until the end.
fn work(pipeline: &Pipeline<'_, '_>, feed: &Mutex<Feed<'_>>, filter: &MailerFilter, now: SystemTime) {
    let _abort = AbortOnPanic(pipeline);
    let mut buf = Vec::new();
    loop {
        match pipeline.next_job() {
            Job::Done => return,
            Job::Parse(mut parsed) => {
                let block = feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next_block(&mut buf);
                match block {
                    Some((seq, max_line)) => {
                        parse_block(&buf, max_line, filter, &mut parsed);
                        pipeline.finish(|s| {
                            s.parsing -= 1;
                            s.parsed.insert(seq, parsed);
                        });
                    }
                    None => pipeline.finish(|s| {
                        s.parsing -= 1;
                        s.read_all = true;
                        s.free_parsed.push(parsed);
                    }),
                }
            }
            Job::Correlate(mut correlating, parsed, mut out) => {
                out.stats = parsed.stats;
                for e in &parsed.events {
                    let l = e.load(&parsed.arena);
                    correlating.event(l.host, l.pid, l.time, l.mta, &l.event, now, None, &mut out.steps);
                }
                pipeline.finish(|s| {
                    s.cut += parsed.cut;
                    s.correlating = Some(correlating);
                    s.correlated.push_back(out);
                    s.free_parsed.push(parsed);
                });
            }
            Job::Decide(mut decide, mut block) => {
                decide.deciding.add_line_stats(&block.stats);
                decide.deciding.steps(&mut block.steps, &mut decide.bans);
                decided(decide.bans.drain(..), decide.decisions);
                pipeline.finish(|s| {
                    s.deciding = Some(decide);
                    s.free_correlated.push(block);
                });
            }
        }
    }
}

/// Framing and parsing on `threads` threads, block by block, and the two in-order
/// stages — correlating, then deciding — on whichever thread is free when a block's
/// turn comes (see [`Stages`]). Same result as [`sequential`] (tested).
fn parallel(
    detector: &mut Detector,
    readers: Vec<(&Input, LineReader)>,
    now: SystemTime,
    threads: usize,
    decisions: &mut Vec<(BanDecision, SystemTime)>,
) -> anyhow::Result<u64> {
    let filter = detector.filter().clone();
    let feed = Mutex::new(Feed { inputs: readers.into_iter(), current: None, seq: 0, truncated: 0, finished: false, error: None });
    let (correlating, deciding) = detector.stages();
    // At most this many blocks exist; they go round, so none allocates after the first
    // rounds.
    let pipeline = Pipeline {
        stages: Mutex::new(Stages {
            parsed: BTreeMap::new(),
            next: 0,
            correlated: VecDeque::new(),
            correlating: Some(correlating),
            deciding: Some(Decide { deciding, decisions, bans: Vec::new() }),
            free_parsed: (0..threads * PARSED_PER_THREAD).map(|_| ParsedBlock::default()).collect(),
            free_correlated: (0..CORRELATED).map(|_| CorrelatedBlock::default()).collect(),
            parsing: 0,
            cut: 0,
            read_all: false,
            waiting: 0,
            aborted: false,
        }),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        let (pipeline, feed, filter) = (&pipeline, &feed, &filter);
        for _ in 1..threads {
            scope.spawn(move || work(pipeline, feed, filter, now));
        }
        work(pipeline, feed, filter, now);
    });
    let cut = pipeline.stages.into_inner().map_err(|_| anyhow::anyhow!("a replay thread panicked"))?.cut;
    let feed = feed.into_inner().map_err(|_| anyhow::anyhow!("a replay thread panicked"))?;
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

/// A replay is a batch run whose heap grows to its peak within milliseconds, and on a
/// VM each fresh 4 KiB page costs 1.6–1.9 µs to fault in: 2,000 of them were a twentieth
/// of a run's CPU. So replay's heap is one arena grown in large steps, advised for
/// transparent huge pages (Debian's THP mode is `madvise`): the kernel maps it 2 MiB at
/// a time, and the peak RSS is a few MiB higher. The daemon, whose memory is kept small
/// rather than quick to grow, does not do this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn batch_heap() {
    /// How far the heap grows at a time (reserved address space; only touched pages count).
    const STEP: usize = 64 << 20;
    // SAFETY: mallopt only changes glibc's malloc parameters; called before any other
    // thread exists. sbrk(0) reads the break. The block is malloc's own, freed at once.
    // madvise covers only the heap's pages past the old break, which are this process's
    // and stay mapped (trimming is off).
    unsafe {
        // One arena: a second thread's own arena would be outside the advised range.
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Everything from the heap (a 256 KiB buffer no longer mmapped and unmapped),
        // and the heap kept at its peak rather than trimmed between blocks.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, STEP as libc::c_int);
        let before = libc::sbrk(0) as usize;
        // One block beyond the top grows the heap by STEP now (black_box: the compiler
        // would drop a malloc freed unused).
        libc::free(std::hint::black_box(libc::malloc(1 << 20)));
        let after = libc::sbrk(0) as usize;
        let page = 4096;
        let start = before.next_multiple_of(page);
        if after > start {
            libc::madvise(start as *mut libc::c_void, after - start, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn batch_heap() {}

pub fn main(args: ReplayArgs, argv: Vec<OsString>) -> ExitCode {
    batch_heap();
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
