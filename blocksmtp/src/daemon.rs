//! `blocksmtp run`: the long-running service.
//!
//! Log sources feed lines to one loop that owns the detector and the enforcer:
//! line → `Detector::feed` → ban decision → enforcer (kernel map or iptables chain) →
//! the banned client's open sendmail sessions are ended. The same loop answers the
//! control socket, sweeps expired bans, runs the stuck-session reaper, saves state, and
//! handles SIGTERM/SIGINT (clean stop) and SIGHUP (reload whitelist and config).
//!
//! **The kernel is the truth.** A source counts as banned (its guesses decide nothing)
//! only while its ban is in force in the enforcer: a restored offence history whose bans
//! were lifted at the last stop, a ban that expired early or was removed behind the
//! daemon's back, is lifted in the policy too, so the source is counted and banned again.
//! A ban the enforcer refused is kept *pending* and retried with backoff until it holds
//! or its time is up (`status`, `list`, a metric and the log say so). Once a second the
//! enforcer reconciles itself with the kernel (the iptables chain and jumps, the XDP
//! attachments) and each repair is logged.
//!
//! **Reload** (SIGHUP or `blocksmtp reload`) keeps the followers' positions and the
//! detector's windows and counters; followers reopen only files that rotated (they watch
//! for that themselves).
use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

pub use crate::cli::{Mode, RunArgs};
use crate::{
    addr::SourceAddr,
    crowdsec::{Crowdsec, fleet::Action as CsAction, link::Pulled},
    control::{BanRow, ControlMsg, InterfaceStatus, Request, Response, SourceStatus, Status},
    dataplane::PinDir,
    duration::format_duration,
    enforce::{
        Enforcer,
        dryrun::DryRun,
        iptables::IptablesEnforcer,
        sockdiag::{SessionKiller, Support},
        xdp::XdpEnforcer,
    },
    logging::RateLimit,
    metrics::Metrics,
    detect::{DetectArgs, Detector},
    parse::time::format_rfc3339,
    policy::BanDecision,
    proctitle::ProcTitles,
    reaper::{ReapAction, Reaper, ReaperConfig},
    source::{
        SourceHandle,
        LogLine,
        follow::{FollowOptions, Follower},
        journal::{Journal, JournalOptions},
        stdin::stdin_lines,
    },
    whitelist::Whitelist,
};

/// Entry point of `blocksmtp run`; `argv` is kept for SIGHUP's re-read of the config.
pub fn main(args: RunArgs, argv: Vec<OsString>) -> std::process::ExitCode {
    crate::logging::init(args.debug.unwrap_or(0), args.debug_to_syslog);
    // A fixed mmap threshold. glibc's moves up to the largest block freed so far (the
    // kernel's BTF, 5 MB, read at start); above it the history and expiry tables then
    // grow by copying inside the heap, and the copies they leave stay resident (measured:
    // 4.7 MiB of 23.9 at 100,000 bans). Fixed, every large table is mapped on its own,
    // grows by mremap and goes back to the kernel when freed.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blocksmtp: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(args, argv));
    // A blocking read of standard input (--stdin) must not keep the process alive.
    rt.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            if crate::logging::to_syslog() {
                eprintln!("blocksmtp: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

struct Daemon {
    args: RunArgs,
    argv: Vec<OsString>,
    detector: Detector,
    whitelist: Whitelist,
    enforcer: Box<dyn Enforcer>,
    xdp: bool,
    metrics: Arc<Metrics>,
    titles: ProcTitles,
    reaper: Option<Reaper>,
    /// Banned sources whose open sessions are still to be ended, and when /proc was
    /// last scanned for that: a burst of bans costs one scan per sweep tick, a lone ban
    /// is acted on at once.
    pending_kills: Vec<SourceAddr>,
    /// Resets banned sources' TCP sessions (any MTA); None where the kernel cannot.
    sessions: Option<SessionKiller>,
    last_kill_scan: Option<Instant>,
    started: Instant,
    /// The offence history changed since it was last saved, and when that was: saved
    /// within about a second of a ban (batched: one write for a burst).
    dirty: bool,
    last_save: Option<Instant>,
    save_every: Duration,
    sources: Vec<SourceHandle>,
    /// Bans decided but refused by the enforcer, retried with backoff until they hold or
    /// their time is up.
    pending: BTreeMap<SourceAddr, PendingBan>,
    repairs_total: u64,
    reconcile_warn: RateLimit,
    save_warn: RateLimit,
    line_tx: mpsc::Sender<(LogLine, Instant)>,
    /// The CrowdSec LAPI link, when configured.
    crowdsec: Option<Crowdsec>,
}

#[derive(Clone, Debug)]
struct PendingBan {
    /// When the ban would have ended had it held.
    until: Instant,
    manual: bool,
    /// `crowdsec/ORIGIN` for a fleet decision the enforcer refused (None: detected or manual).
    crowdsec: Option<String>,
    attempts: u32,
    next_try: Instant,
    error: String,
}

async fn run(args: RunArgs, argv: Vec<OsString>) -> anyhow::Result<()> {
    // First: a stop asked for during the (slow) eBPF load must still detach cleanly.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    args.validate()?;
    if let Some(p) = &args.config_file {
        log::info!("config: {}", p.display());
    }
    let whitelist = load_whitelist(&args.detect)?;
    let metrics = Arc::new(Metrics::default());
    let titles = ProcTitles::new();
    let mut detector =
        Detector::with_whitelist(&args.detect, whitelist.clone()).with_live_attribution(Box::new(titles.clone()));

    // An unreadable or corrupt file is moved aside by load_state (and said so); a file of
    // an unknown version is refused: starting would overwrite it.
    if let Some(n) = crate::policy::history::load_state(&args.state_file, detector.policy_mut(), SystemTime::now())? {
        log::info!("state: {n} offenders' history restored from {}", args.state_file.display());
    }

    let enforcer = start_enforcer(&args, &whitelist)?;
    // Loading the eBPF object parses the kernel's BTF (megabytes, freed again): hand
    // that memory back now rather than carry it for the daemon's lifetime.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    raise_fd_limit();
    let xdp = args.mode == Mode::Xdp;
    let reaper = (!args.cmd_read_timeout.0.is_zero()).then(|| {
        Reaper::new(ReaperConfig { cmd_read_timeout: args.cmd_read_timeout.0, ..ReaperConfig::default() })
    });

    let (line_tx, mut line_rx) = mpsc::channel::<(LogLine, Instant)>(4096);
    let sources = start_sources(&args, &line_tx)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(64);
    let socket = crate::control::bind(&args.control_socket)?;
    let ctl_task = tokio::spawn(crate::control::serve(socket, ctl_tx));
    let metrics_task = match args.metrics_listen {
        Some(addr) => Some(crate::metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };

    let sessions = session_killer(&args);
    let mut crowdsec =
        Crowdsec::start(&args.crowdsec, args.detect.v6_prefix, args.detect.max_unknown, args.detect.window.0, &args.state_file)?;
    let mut pulled = crowdsec.as_mut().map(Crowdsec::take_pulled);
    let mut d = Daemon {
        args,
        argv,
        detector,
        whitelist,
        enforcer,
        xdp,
        metrics,
        titles,
        reaper,
        pending_kills: Vec::new(),
        sessions,
        last_kill_scan: None,
        started: Instant::now(),
        dirty: false,
        last_save: None,
        save_every: Duration::from_secs(1),
        sources,
        pending: BTreeMap::new(),
        repairs_total: 0,
        reconcile_warn: RateLimit::new(Duration::from_secs(60)),
        save_warn: RateLimit::new(Duration::from_secs(60)),
        line_tx: line_tx.clone(),
        crowdsec,
    };
    // Restored history of bans that are not in force (lifted at the last stop without
    // --keep-bans, or expired meanwhile) must not hide those sources' new guesses.
    d.sync_truth();
    d.refresh_gauges();
    log::info!(
        "blocksmtp {} running: mode {}, sources: {}; ban after {} guesses in {}, for {}",
        env!("CARGO_PKG_VERSION"),
        d.enforcer.name(),
        d.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
        d.args.detect.max_unknown,
        d.args.detect.window,
        d.args.detect.ban_time
    );

    // Interfaces re-created or renamed: re-attach on the link event, else on the tick.
    let mut link_watch = if d.xdp { Some(crate::dataplane::reconcile::LinkWatch::new()?) } else { None };
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(30));
    // Scan often enough that a session is ended within a fifth of the timeout of it.
    let reap_every = (d.args.cmd_read_timeout.0 / 5).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let mut reap = tokio::time::interval(reap_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            Some((line, seen)) = line_rx.recv() => d.on_line(&line, seen),
            Some((req, reply)) = ctl_rx.recv() => {
                let resp = d.on_request(req).await;
                let _ = reply.send(resp);
            }
            p = crate::crowdsec::next_pulled(&mut pulled) => d.on_pulled(p),
            _ = sweep.tick() => d.sweep(),
            _ = tick.tick() => d.tick(),
            _ = housekeeping.tick() => d.housekeeping(),
            _ = reap.tick() => d.reap(),
            _ = async { link_watch.as_mut().expect("watch").changed().await }, if link_watch.is_some() => d.reconcile_dataplane(),
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                log::info!("SIGHUP: reloading");
                if let Err(e) = d.reload() {
                    log::error!("reload: {e:#}; keeping the running configuration");
                }
            }
        }
    }

    ctl_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    for s in &d.sources {
        s.task.abort();
    }
    let _ = std::fs::remove_file(&d.args.control_socket);
    d.save_state();
    let keep = d.args.keep_bans;
    d.enforcer.shutdown(keep)?;
    log::info!("stopped{}", if keep { "; bans kept in force (--keep-bans)" } else { "; bans removed" });
    Ok(())
}

/// The TCP session killer, if sessions are to be ended and this kernel can destroy
/// sockets; said once at start when it cannot (sendmail's children are still ended).
fn session_killer(args: &RunArgs) -> Option<SessionKiller> {
    if args.no_kill_sessions || args.mode == Mode::DryRun {
        return None;
    }
    match SessionKiller::probe() {
        Support::Yes => Some(SessionKiller::new(&args.protected_ports())),
        Support::No(why) => {
            log::warn!("cannot reset banned sources' TCP sessions: {why}; only sendmail's sessions will be ended");
            None
        }
    }
}

/// A flood of control connections or many followed files must not run out of file
/// descriptors at the default soft limit of 1024: use the hard limit.
fn raise_fd_limit() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn load_whitelist(detect: &DetectArgs) -> anyhow::Result<Whitelist> {
    Ok(match &detect.white_list {
        Some(p) => Whitelist::load(p)?,
        None => Whitelist::new(),
    })
}

fn start_enforcer(args: &RunArgs, whitelist: &Whitelist) -> anyhow::Result<Box<dyn Enforcer>> {
    // Not root: say so, rather than a BPF or netfilter EPERM with a tc/iptables hint.
    if args.mode != Mode::DryRun && unsafe { libc::geteuid() } != 0 {
        let needs = if args.mode == Mode::Xdp { "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON" } else { "CAP_NET_ADMIN" };
        bail!(
            "{} mode: run as root (needs {needs}); `--mode dry-run` or `blocksmtp replay` need no privileges",
            if args.mode == Mode::Xdp { "xdp" } else { "iptables" }
        );
    }
    Ok(match args.mode {
        Mode::Xdp => {
            let interfaces = if args.interfaces.is_empty() {
                vec![crate::dataplane::attach::default_interface()?]
            } else {
                args.interfaces.clone()
            };
            let mut x = XdpEnforcer::start(&args.dataplane_config(), PinDir::new(&args.pin_dir), &interfaces, args.attach)
                .context("starting the xdp dataplane (try --attach tc, or --mode iptables)")?;
            x.reconfigure(&args.dataplane_config(), &kernel_allow_list(whitelist))?;
            Box::new(x)
        }
        Mode::Iptables => {
            let v4 = args.mailer_ip.iter().find_map(|ip| match ip {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            let v6 = args.mailer_ip.iter().find_map(|ip| match ip {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            });
            let e = IptablesEnforcer::new(crate::enforce::iptables::IptablesConfig {
                chain: args.iptables_chain_name.clone(),
                ports: args.protected_ports(),
                mailer_ip_v4: v4,
                mailer_ip_v6: v6,
                iptables: args.iptables.clone(),
                ip6tables: (args.ip6tables.as_os_str() != "none").then(|| args.ip6tables.clone()),
                ..Default::default()
            })?;
            log::info!("iptables mode: chain {} ({})", args.iptables_chain_name, e.backends().join(", "));
            Box::new(e)
        }
        Mode::DryRun => Box::new(DryRun::default()),
    })
}

/// The whitelist as the kernel's allow-list tries hold it. Loopback is left out: it never
/// arrives on a guarded interface and the daemon never bans it, and with empty tries the
/// program skips the lookup for banned sources.
fn kernel_allow_list(w: &Whitelist) -> Vec<ipnet::IpNet> {
    let lo4: ipnet::IpNet = "127.0.0.0/8".parse().expect("literal");
    let lo6: ipnet::IpNet = "::1/128".parse().expect("literal");
    w.nets().iter().copied().filter(|n| !lo4.contains(n) && !lo6.contains(n)).collect()
}

const EXIM4_MAINLOG: &str = "/var/log/exim4/mainlog";

/// Which sources to read when none is named.
fn default_sources(args: &RunArgs) -> (Vec<PathBuf>, bool) {
    if args.no_log {
        return (vec![], false);
    }
    if !args.log.is_empty() || args.journal || args.stdin {
        return (args.log.clone(), args.journal);
    }
    // The syslog mail log, and Debian exim4's own main log (Exim writes there, not to
    // syslog), each when present.
    let mut files: Vec<PathBuf> =
        ["/var/log/mail.log", "/var/log/maillog"].into_iter().find(|p| Path::new(p).exists()).map(PathBuf::from).into_iter().collect();
    if Path::new(EXIM4_MAINLOG).exists() {
        files.push(EXIM4_MAINLOG.into());
    }
    if !files.is_empty() {
        return (files, false);
    }
    (vec![], true)
}

fn start_sources(args: &RunArgs, tx: &mpsc::Sender<(LogLine, Instant)>) -> anyhow::Result<Vec<SourceHandle>> {
    let (files, journal) = default_sources(args);
    let mut out = Vec::new();
    if !files.is_empty() {
        let opts = FollowOptions { from_start: args.from_start, ..FollowOptions::default() };
        out.push(crate::source::spawn(Follower::new(files, opts).context("following the log files")?, tx));
    }
    if journal {
        // journalctl already leaves out other users' entries (the parser checks again).
        let opts = JournalOptions { uids: args.detect.journal_trust().uids().to_vec(), ..JournalOptions::default() };
        out.push(crate::source::spawn(Journal::spawn(&opts).context("reading the journal")?, tx));
    }
    if args.stdin {
        out.push(crate::source::spawn(stdin_lines(), tx));
    }
    if out.is_empty() && !args.no_log {
        bail!("no log source: give --log FILE, --journal or --stdin");
    }
    Ok(out)
}

impl Daemon {
    fn on_line(&mut self, line: &LogLine, seen: Instant) {
        let before = self.detector.line_stats().skipped;
        let decisions = self.detector.feed(&line.line, SystemTime::now());
        let skipped = self.detector.line_stats().skipped > before;
        self.metrics.line(&line.source.to_string_lossy(), skipped);
        for d in decisions {
            self.apply(d, seen);
        }
    }

    fn apply(&mut self, d: BanDecision, seen: Instant) {
        if self.whitelist.overlaps(&d.source) {
            log::warn!("not banning {}: it overlaps the whitelist ({})", d.source, d.reason);
            return;
        }
        if let Err(e) = self.enforcer.ban(&d.source, d.duration, false) {
            log::error!("ban of {} failed: {e:#}; pending, retrying until it holds ({})", d.source, d.reason);
            self.metrics.ban_failed();
            let now = Instant::now();
            self.pending.insert(
                d.source,
                PendingBan { until: now + d.duration, manual: false, crowdsec: None, attempts: 1, next_try: now + Duration::from_secs(1), error: format!("{e:#}") },
            );
            // The offence is on record (reason, guesses): saved like any ban.
            self.dirty = true;
            self.metrics.set_pending(self.pending.len() as u64);
            return;
        }
        self.pending.remove(&d.source);
        self.metrics.banned(d.mta.name(), seen.elapsed());
        let evidence = d.evidence.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        log::warn!(
            "ban {} for {} (offence {}): {}; evidence: {}",
            d.source,
            format_duration(d.duration),
            d.offence,
            d.reason,
            if evidence.is_empty() { "-".to_string() } else { evidence }
        );
        // Reason and guesses stay in the policy's offence history (and the state file).
        self.dirty = true;
        self.save_soon();
        if let Some(cs) = &mut self.crowdsec {
            cs.pushed_ban(&d);
        }
        self.end_sessions(d.source);
    }

    /// Decisions pulled from CrowdSec's LAPI: enforce the new, lift the deleted.
    fn on_pulled(&mut self, p: Pulled) {
        let Some(cs) = &mut self.crowdsec else { return };
        let actions = cs.fleet.on_pulled(p, &self.whitelist);
        let now = SystemTime::now();
        for a in actions {
            match a {
                CsAction::Ban { source, duration, origin } => match self.enforcer.ban(&source, duration, false) {
                    Ok(()) => {
                        self.pending.remove(&source);
                        log::warn!("ban {source} for {} ({origin}, from CrowdSec)", format_duration(duration));
                        self.metrics.banned("crowdsec", Duration::ZERO);
                        self.end_sessions(source);
                    }
                    Err(e) => {
                        // Pending like a detected ban: retried with backoff, not only at the next full pull.
                        log::error!("ban of {source} ({origin}, from CrowdSec) failed: {e:#}; pending, retrying until it holds");
                        self.metrics.ban_failed();
                        let at = Instant::now();
                        self.pending.entry(source).or_insert(PendingBan {
                            until: at + duration,
                            manual: false,
                            crowdsec: Some(origin),
                            attempts: 1,
                            next_try: at + Duration::from_secs(1),
                            error: format!("{e:#}"),
                        });
                        self.metrics.set_pending(self.pending.len() as u64);
                    }
                },
                CsAction::Unban { source, origin } => {
                    // A fleet ban still pending here is dropped with its decision.
                    if self.pending.get(&source).is_some_and(|p| p.crowdsec.is_some()) {
                        self.pending.remove(&source);
                        self.metrics.set_pending(self.pending.len() as u64);
                        log::warn!("pending ban of {source} dropped ({origin}: decision deleted in CrowdSec)");
                        continue;
                    }
                    // A ban our own detection made on the same source stays.
                    if self.detector.policy().current_offence(&source, now).is_some() {
                        continue;
                    }
                    match self.enforcer.unban(&source) {
                        Ok(_) => {
                            log::warn!("unban {source} ({origin}: decision deleted in CrowdSec)");
                            self.metrics.unbanned("crowdsec");
                        }
                        Err(e) => log::error!("unban of {source} ({origin}) failed: {e:#}"),
                    }
                }
            }
        }
        self.refresh_gauges();
    }

    /// End the banned client's open sendmail sessions (dropped packets alone would
    /// leave them hanging until sendmail's own timeout).
    fn end_sessions(&mut self, source: SourceAddr) {
        if self.args.no_kill_sessions || self.args.mode == Mode::DryRun {
            return;
        }
        self.pending_kills.push(source);
        if self.last_kill_scan.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
            self.flush_kills();
        }
    }

    fn flush_kills(&mut self) {
        if self.pending_kills.is_empty() {
            return;
        }
        // Each ended session is logged (pid, client, state). `take`: a burst's list is
        // not kept allocated afterwards.
        let sources = std::mem::take(&mut self.pending_kills);
        if let Some(k) = &self.sessions {
            match k.end_sessions_of(&sources) {
                Ok(ended) => {
                    for s in ended {
                        log::info!("reset session of {}:{} to port {}", s.peer, s.peer_port, s.local_port);
                        self.metrics.session_reset();
                    }
                }
                Err(e) => log::warn!("resetting banned sources' sessions: {e}"),
            }
        }
        self.titles.kill_sessions_of_any(&sources);
        self.last_kill_scan = Some(Instant::now());
    }

    async fn on_request(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::ok(self.status().await),
            Request::List => match self.list() {
                Ok(rows) => Response::ok(rows),
                Err(e) => Response::err(format!("listing bans: {e:#}")),
            },
            Request::Ban { source, secs } => self.manual_ban(&source, secs),
            Request::Unban { source } => self.manual_unban(&source),
            Request::Reload => {
                log::info!("reload requested on the control socket");
                match self.reload() {
                    Ok(msg) => Response::ok(msg),
                    Err(e) => {
                        log::error!("reload: {e:#}; keeping the running configuration");
                        Response::err(format!("reload refused, the running configuration is kept: {e:#}"))
                    }
                }
            }
        }
    }

    fn parse_source(&self, s: &str) -> Result<SourceAddr, String> {
        let src: SourceAddr = s.parse().map_err(|e| format!("{e}"))?;
        // Networks are banned whole (prefix bans), but not a slice of the Internet by a typo.
        match src.net() {
            ipnet::IpNet::V4(n) if n.prefix_len() < 8 => return Err(format!("{src}: IPv4 prefixes shorter than /8 are refused")),
            ipnet::IpNet::V6(n) if n.prefix_len() < 16 => return Err(format!("{src}: IPv6 prefixes shorter than /16 are refused")),
            _ => {}
        }
        // A bare IPv6 address means its whole prefix, as bans are kept.
        Ok(match src.net() {
            ipnet::IpNet::V6(n) if n.prefix_len() > self.args.detect.v6_prefix => {
                SourceAddr::from_ip(IpAddr::V6(n.addr()), self.args.detect.v6_prefix)
            }
            _ => src,
        })
    }

    fn manual_ban(&mut self, s: &str, secs: Option<u64>) -> Response {
        let src = match self.parse_source(s) {
            Ok(x) => x,
            Err(e) => return Response::err(e),
        };
        if let Some(why) = not_a_client(&src) {
            return Response::err(format!("refusing to ban {src}: {why}"));
        }
        if self.whitelist.overlaps(&src) {
            return Response::err(format!("{src} is whitelisted (or overlaps the whitelist): refusing to ban it"));
        }
        let max = self.args.detect.ban_time_max.0;
        let d = match secs {
            Some(0) => return Response::err("a ban must last longer than 0s"),
            Some(s) if s > max.as_secs() => {
                return Response::err(format!(
                    "a ban of {} is longer than --ban-time-max ({})",
                    format_duration(Duration::from_secs(s.min(u64::from(u32::MAX) * 1000))),
                    format_duration(max)
                ));
            }
            Some(s) => Duration::from_secs(s),
            None => self.args.detect.ban_time.0,
        };
        match self.enforcer.ban(&src, d, true) {
            Ok(()) => {
                self.pending.remove(&src);
                log::warn!("ban {src} for {} (manual, from the control socket)", format_duration(d));
                self.metrics.banned("manual", Duration::ZERO);
                self.dirty = true;
                self.end_sessions(src);
                self.refresh_gauges();
                Response::ok(crate::control::BanReply {
                    action: "banned".into(),
                    source: src.to_string(),
                    secs: Some(d.as_secs()),
                    message: format!("banned {src} for {}", format_duration(d)),
                })
            }
            Err(e) => Response::err(format!("ban of {src} failed: {e:#}")),
        }
    }

    fn manual_unban(&mut self, s: &str) -> Response {
        let src = match self.parse_source(s) {
            Ok(x) => x,
            Err(e) => return Response::err(e),
        };
        let was_pending = self.pending.remove(&src).is_some();
        if was_pending {
            self.metrics.set_pending(self.pending.len() as u64);
        }
        match self.enforcer.unban(&src) {
            Ok(false) if was_pending => {
                self.detector.policy_mut().lift(&src);
                self.dirty = true;
                log::warn!("unban {src} (manual, from the control socket): its pending ban is dropped");
                Response::ok(format!("unbanned {src} (its ban was pending, not in force)"))
            }
            Ok(true) => {
                self.detector.policy_mut().lift(&src);
                if let Some(cs) = &mut self.crowdsec {
                    cs.fleet.forget(&src);
                }
                self.metrics.unbanned("manual");
                self.dirty = true;
                log::warn!("unban {src} (manual, from the control socket)");
                self.refresh_gauges();
                Response::ok(crate::control::BanReply {
                    action: "unbanned".into(),
                    source: src.to_string(),
                    secs: None,
                    message: format!("unbanned {src}"),
                })
            }
            Ok(false) => Response::err(format!("{src} is not banned")),
            Err(e) => Response::err(format!("unban of {src} failed: {e:#}")),
        }
    }

    fn list(&self) -> anyhow::Result<Vec<BanRow>> {
        let now = SystemTime::now();
        let mut rows: Vec<BanRow> = self
            .enforcer
            .list()?
            .into_iter()
            .map(|b| {
                let offence = self.detector.policy().current_offence(&b.source, now);
                let from_crowdsec = if offence.is_none() && !b.manual { self.crowdsec.as_ref().and_then(|c| c.fleet.held_ban(&b.source)) } else { None };
                BanRow {
                    source: b.source.to_string(),
                    origin: match (&from_crowdsec, b.manual) {
                        (Some(h), _) => format!("crowdsec/{}", h.origin),
                        (None, true) => "manual".into(),
                        (None, false) => "detected".into(),
                    },
                    reason: match offence {
                        _ if from_crowdsec.is_some() => from_crowdsec.as_ref().map_or(String::new(), |h| h.scenario.clone()),
                        Some(o) if !b.manual => o.reason_for(&b.source),
                        _ if b.manual => "manual".into(),
                        // Set by detection, but its offence is not in the history (lost
                        // with a state file that could not be written): say so.
                        _ => "detected (reason not in the offence history)".into(),
                    },
                    guesses: offence.filter(|_| !b.manual).map_or(0, |o| o.guesses),
                    expires_in_secs: b.expires_at.duration_since(now).unwrap_or_default().as_secs(),
                    dropped: b.dropped,
                    manual: b.manual,
                    pending: false,
                }
            })
            .collect();
        let at = Instant::now();
        for (src, p) in &self.pending {
            let offence = self.detector.policy().offences(src).last().filter(|_| !p.manual && p.crowdsec.is_none());
            let scenario = p.crowdsec.as_ref().and(self.crowdsec.as_ref()).and_then(|c| c.fleet.held_ban(src)).map(|h| h.scenario.clone());
            rows.push(BanRow {
                source: src.to_string(),
                reason: match (scenario, offence) {
                    (Some(s), _) => s,
                    (None, Some(o)) => o.reason(),
                    (None, None) if p.crowdsec.is_some() => "crowdsec".into(),
                    (None, None) => "manual".into(),
                },
                guesses: offence.map_or(0, |o| o.guesses),
                expires_in_secs: p.until.saturating_duration_since(at).as_secs(),
                dropped: None,
                manual: p.manual,
                origin: match &p.crowdsec {
                    Some(o) => o.clone(),
                    None if p.manual => "manual".into(),
                    None => "detected".into(),
                },
                pending: true,
            });
        }
        rows.sort_by_key(|r| std::cmp::Reverse(r.expires_in_secs));
        Ok(rows)
    }

    async fn status(&self) -> Status {
        let mut sources = Vec::new();
        for s in &self.sources {
            let (tx, rx) = oneshot::channel();
            if s.positions.send(tx).await.is_ok()
                && let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(2), rx).await
            {
                sources.extend(v);
                continue;
            }
            sources.push(SourceStatus {
                name: s.name.clone(),
                position: None,
                lines: 0,
                open: false,
                trusted: s.name == "journal",
                trust: String::new(),
            });
        }
        let stats = self.detector.stats();
        let attachments: Vec<InterfaceStatus> = self
            .enforcer
            .attachments()
            .into_iter()
            .map(|a| InterfaceStatus {
                iface: a.iface,
                attached: a.attached.map(|h| h.to_string()),
                since: format_rfc3339(a.since),
                detail: a.detail,
            })
            .collect();
        // `xdp-native since … (why)`, or `DETACHED since …: why` — never a stale mode.
        let interfaces = attachments
            .iter()
            .map(|a| {
                let state = match &a.attached {
                    Some(how) => format!("{how} since {} ({})", a.since, a.detail),
                    None => format!("DETACHED since {}: {}", a.since, a.detail),
                };
                (a.iface.clone(), state)
            })
            .collect();
        let packets = self.enforcer.packet_stats().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            mode: self.enforcer.name().into(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces,
            sources,
            lines: stats.lines.lines,
            skipped: stats.lines.skipped,
            guesses: stats.lines.unknown_recipient + stats.lines.probe,
            active_bans: self.enforcer.active_count().unwrap_or(0),
            bans_total: self.metrics.bans_total(),
            unbans_total: self.metrics.unbans_total(),
            reaped_total: self.metrics.reaped_total(),
            packets,
            pending_bans: self.pending.len(),
            repairs_total: self.repairs_total,
            attachments,
            crowdsec: self.crowdsec.as_ref().map(Crowdsec::status),
        }
    }

    /// Twice a second: end the sessions of bans made in a burst, lift expired bans,
    /// refresh the gauges (O(1) per enforcer).
    fn sweep(&mut self) {
        self.flush_kills();
        self.save_soon();
        match self.enforcer.sweep_expired() {
            Ok(gone) => {
                for s in &gone {
                    log::info!("ban of {s} expired");
                    self.metrics.unbanned("expired");
                    // The enforcer's clock (CLOCK_BOOTTIME) decides; if the wall clock
                    // stepped back, the policy must not think the source still banned.
                    self.detector.policy_mut().lift(s);
                    if let Some(cs) = &mut self.crowdsec {
                        cs.fleet.forget(s);
                    }
                }
                self.dirty |= !gone.is_empty();
            }
            Err(e) => log::error!("sweeping expired bans: {e:#}"),
        }
        self.refresh_gauges();
    }

    fn refresh_gauges(&self) {
        self.metrics.set_detector(self.detector.stats());
        let active = self.enforcer.active_count().unwrap_or(0);
        self.metrics.set_active(active as u64);
        self.metrics.set_pending(self.pending.len() as u64);
        self.metrics.set_crowdsec(self.crowdsec.as_ref().map(|c| c.status().link));
        if self.xdp {
            self.metrics.set_packets(self.enforcer.packet_stats());
            self.metrics.set_ban_capacity(blocksmtp_common::MAX_BANS.into());
            let attachments = self.enforcer.attachments();
            self.metrics.set_detached(attachments.iter().filter(|a| a.attached.is_none()).count() as u64);
            self.metrics.set_attachments(attachments.into_iter().map(|a| (a.iface, a.attached.map(|h| h.as_str()))).collect());
        }
    }

    /// Once a second: retry pending bans, reconcile the enforcer with the kernel, save the
    /// state if a ban changed it.
    fn tick(&mut self) {
        self.retry_pending();
        self.reconcile();
        self.save_soon();
    }

    /// Let the enforcer compare itself with the kernel and repair; each repair is logged
    /// and counted. Cheap to call often (a link event may call it too).
    fn reconcile(&mut self) {
        match self.enforcer.reconcile() {
            Ok(repairs) => {
                for r in &repairs {
                    log::warn!("{} enforcer: kernel state differed, repaired: {r}", self.enforcer.name());
                }
                self.repairs_total += repairs.len() as u64;
                self.metrics.repaired(repairs.len() as u64);
            }
            Err(e) => {
                if let Some(n) = self.reconcile_warn.hit() {
                    log::error!("checking the {} enforcer against the kernel: {e:#}{}", self.enforcer.name(), RateLimit::suffix(n));
                }
            }
        }
    }

    /// Save a changed history now unless a save was made less than `save_every` ago: a
    /// lone ban is on disk at once, a burst's bans are written together (the sweep and
    /// the tick call this again).
    fn save_soon(&mut self) {
        if self.dirty && self.last_save.is_none_or(|t| t.elapsed() >= self.save_every) {
            self.save_state();
        }
    }

    /// Retry the pending bans that are due, in one batch (one iptables-restore however
    /// many piled up while the enforcer failed).
    fn retry_pending(&mut self) {
        let now = Instant::now();
        let mut batch = Vec::new();
        for (src, p) in self.pending.clone() {
            if p.next_try > now {
                continue;
            }
            let left = p.until.saturating_duration_since(now);
            if left < Duration::from_secs(1) {
                log::warn!("pending ban of {src} given up: its time ran out after {} failed attempt(s) ({})", p.attempts, p.error);
                self.pending.remove(&src);
                self.detector.policy_mut().lift(&src);
                continue;
            }
            batch.push((src, left, p.manual, p.crowdsec.is_some()));
        }
        if batch.is_empty() {
            self.metrics.set_pending(self.pending.len() as u64);
            return;
        }
        let plain: Vec<_> = batch.iter().map(|&(src, left, manual, _)| (src, left, manual)).collect();
        match self.enforcer.ban_many(&plain) {
            Ok(()) => {
                for (src, left, manual, fleet) in batch {
                    let attempts = self.pending.remove(&src).map_or(0, |p| p.attempts);
                    log::warn!("ban {src} for {} now in force (after {attempts} failed attempt(s))", format_duration(left));
                    self.metrics.banned(if manual { "manual" } else if fleet { "crowdsec" } else { "retried" }, Duration::ZERO);
                    self.end_sessions(src);
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                for (src, _, _, _) in &batch {
                    let Some(p) = self.pending.get_mut(src) else { continue };
                    p.attempts += 1;
                    // 1 s, 2 s, 4 s … up to 16 s between attempts.
                    let wait = Duration::from_secs(1u64 << (p.attempts.min(5) - 1));
                    p.next_try = now + wait;
                    p.error = e.clone();
                    if p.attempts <= 3 || p.attempts % 10 == 0 {
                        log::error!("ban of {src} still failing (attempt {}): {e}; next try in {}", p.attempts, format_duration(wait));
                    }
                }
            }
        }
        self.metrics.set_pending(self.pending.len() as u64);
    }

    /// Lift, in the policy, every current ban that is not in force in the enforcer (nor
    /// pending): those sources' guesses count again.
    fn sync_truth(&mut self) {
        let now = SystemTime::now();
        let mut lifted = Vec::new();
        for src in self.detector.policy().current_bans(now) {
            if self.pending.contains_key(&src) {
                continue;
            }
            match self.enforcer.contains(&src) {
                Ok(true) => {}
                Ok(false) => lifted.push(src),
                Err(e) => {
                    log::debug!("checking the ban of {src}: {e:#}");
                    return;
                }
            }
        }
        for src in &lifted {
            self.detector.policy_mut().lift(src);
        }
        if !lifted.is_empty() {
            let some: Vec<String> = lifted.iter().take(5).map(|s| s.to_string()).collect();
            log::info!(
                "{} ban(s) of the offence history are not in force in the kernel ({}{}): counting those sources' guesses again",
                lifted.len(),
                some.join(", "),
                if lifted.len() > 5 { ", …" } else { "" }
            );
            self.dirty = true;
        }
    }

    /// A link event: re-check the interfaces at once (re-created, renamed back) rather
    /// than at the next tick.
    fn reconcile_dataplane(&mut self) {
        self.reconcile();
        self.refresh_gauges();
    }

    fn housekeeping(&mut self) {
        self.detector.tick(SystemTime::now());
        self.sync_truth();
        self.refresh_gauges();
        if self.dirty {
            self.save_state();
        }
    }

    fn reap(&mut self) {
        let Some(r) = self.reaper.as_mut() else { return };
        for a in r.run_once(&self.titles, Instant::now()) {
            if matches!(a, ReapAction::Term { .. } | ReapAction::Kill { .. }) {
                self.metrics.reaped();
            }
        }
    }

    fn save_state(&mut self) {
        let started = Instant::now();
        match crate::policy::history::write_state(&self.args.state_file, self.detector.policy()) {
            Ok(()) => self.dirty = false,
            // Retried at the next tick while it fails (disk full, read-only): said once a minute.
            Err(e) => {
                if let Some(n) = self.save_warn.hit() {
                    log::error!(
                        "saving state to {}: {e:#}; the reasons of new bans are at risk until it works{}",
                        self.args.state_file.display(),
                        RateLimit::suffix(n)
                    );
                }
            }
        }
        self.last_save = Some(Instant::now());
        // A huge history costs more to write: never spend more than a tenth of the time on it.
        self.save_every = Duration::from_secs(1).max(started.elapsed() * 10);
    }

    /// SIGHUP or `blocksmtp reload`: re-read the config file and the whitelist and apply
    /// what can change live. Followers keep their positions (they reopen rotated files by
    /// themselves) and the detector its windows and counters. On error nothing changes.
    fn reload(&mut self) -> anyhow::Result<String> {
        let new = match crate::cli::parse(self.argv.clone()) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Run(a), .. }) => *a,
            Ok(_) => bail!("the daemon's command line no longer parses as `run`"),
            Err(crate::cli::CliError::Config(e)) => return Err(e),
            Err(crate::cli::CliError::Clap(e)) => bail!("{}", e.to_string().trim()),
        };
        new.validate()?;
        let whitelist = load_whitelist(&new.detect)?;
        for (what, changed) in [
            ("--mode", new.mode != self.args.mode),
            ("--interface", new.interfaces != self.args.interfaces),
            ("--attach", new.attach != self.args.attach),
            ("--pin-dir", new.pin_dir != self.args.pin_dir),
            ("--control-socket", new.control_socket != self.args.control_socket),
            ("--metrics-listen", new.metrics_listen != self.args.metrics_listen),
            ("--iptables-chain-name", new.iptables_chain_name != self.args.iptables_chain_name),
            ("--state-file", new.state_file != self.args.state_file),
            ("--crowdsec-*", new.crowdsec != self.args.crowdsec),
        ] {
            if changed {
                log::warn!("reload: {what} changed; it takes effect at the next start");
            }
        }
        self.enforcer
            .reconfigure(&new.dataplane_config(), &kernel_allow_list(&whitelist))
            .context("applying the new configuration to the enforcer")?;
        let old = &self.args.detect;
        if new.detect.mailer_syslog_name == old.mailer_syslog_name
            && new.detect.mailer_syslog_host == old.mailer_syslog_host
            && new.detect.v6_prefix == old.v6_prefix
        {
            // Same line filter and keys: keep the windows, sessions and counters.
            self.detector.policy_mut().reconfigure(new.detect.policy_config(), whitelist.clone());
        } else {
            log::warn!("reload: --mailer-syslog-name/-host or --v6-prefix changed: open guess windows start afresh");
            let state = self.detector.save_state();
            self.detector = Detector::with_whitelist(&new.detect, whitelist.clone()).with_live_attribution(Box::new(self.titles.clone()));
            self.detector.restore_state(state, SystemTime::now());
        }
        self.reaper = (!new.cmd_read_timeout.0.is_zero())
            .then(|| Reaper::new(ReaperConfig { cmd_read_timeout: new.cmd_read_timeout.0, ..ReaperConfig::default() }));
        self.whitelist = whitelist;
        self.lift_whitelisted();
        // Sources: only a changed set is restarted (new ones are read from their end).
        let (old_files, old_journal) = default_sources(&self.args);
        let (new_files, new_journal) = default_sources(&new);
        if (old_files, old_journal, self.args.stdin) != (new_files, new_journal, new.stdin) {
            let mut src_args = new.clone();
            src_args.from_start = false;
            src_args.stdin = false;
            let started = start_sources(&src_args, &self.line_tx).context("opening the new log sources")?;
            let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sources).into_iter().partition(|s| s.name == "stdin");
            for s in stop {
                s.task.abort();
            }
            self.sources = keep;
            log::info!("reload: log sources now: {}", started.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "));
            self.sources.extend(started);
        }
        let keep_name = self.args.config_file.clone();
        self.args = new;
        if self.args.config_file.is_none() {
            self.args.config_file = keep_name;
        }
        let msg = format!("reloaded: whitelist has {} entries", self.whitelist.nets().len());
        log::info!("{msg}");
        Ok(msg)
    }

    /// A source whitelisted now is no longer banned (nor pending).
    fn lift_whitelisted(&mut self) {
        let bans = match self.enforcer.list() {
            Ok(b) => b,
            Err(e) => {
                log::error!("reload: listing bans to lift whitelisted ones: {e:#}");
                return;
            }
        };
        let mut lift: Vec<SourceAddr> = bans.into_iter().map(|b| b.source).filter(|s| self.whitelist.overlaps(s)).collect();
        lift.extend(self.pending.keys().filter(|s| self.whitelist.overlaps(s)).copied());
        for src in lift {
            self.pending.remove(&src);
            match self.enforcer.unban(&src) {
                Ok(_) => {
                    self.detector.policy_mut().lift(&src);
                    self.metrics.unbanned("whitelisted");
                    self.dirty = true;
                    log::warn!("unban {src}: it is whitelisted now");
                }
                Err(e) => log::error!("unban of whitelisted {src} failed: {e:#}"),
            }
        }
    }
}

/// Why `src` cannot be a client that guesses (a ban of it would be a mistake), if so.
fn not_a_client(src: &SourceAddr) -> Option<&'static str> {
    let ip = src.net().addr();
    let bad = match ip {
        IpAddr::V4(a) => {
            if a.is_unspecified() {
                "the unspecified address"
            } else if a.is_broadcast() {
                "the broadcast address"
            } else if a.is_multicast() {
                "a multicast address"
            } else {
                return None;
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                "the unspecified address"
            } else if a.is_multicast() {
                "a multicast address"
            } else if src.net().prefix_len() < 16 {
                "a prefix that large"
            } else {
                return None;
            }
        }
    };
    Some(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_possible_clients_are_banned_by_hand() {
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "239.1.2.3", "::", "ff02::1", "2000::/8"] {
            assert!(not_a_client(&bad.parse().unwrap()).is_some(), "{bad}");
        }
        for ok in ["192.0.2.66", "2001:db8::66", "2001:db8::/64"] {
            assert_eq!(not_a_client(&ok.parse().unwrap()), None, "{ok}");
        }
    }
}
