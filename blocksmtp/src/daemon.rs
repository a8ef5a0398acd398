//! `blocksmtp run`: the long-running service.
//!
//! Log sources feed lines to one loop that owns the detector and the enforcer:
//! line → `Detector::feed` → ban decision → enforcer (kernel map or iptables chain) →
//! the banned client's open sendmail sessions are ended. The same loop answers the
//! control socket, sweeps expired bans, runs the stuck-session reaper, saves state, and
//! handles SIGTERM/SIGINT (clean stop) and SIGHUP (reload whitelist and config, reopen
//! logs).
use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    addr::SourceAddr,
    control::{BanRow, DEFAULT_SOCKET, Request, Response, SourceStatus, Status},
    dataplane::{AttachMode, DEFAULT_PIN_ROOT, DataplaneConfig, PinDir},
    duration::{HumanDuration, format_duration},
    enforce::{Enforcer, dryrun::DryRun, iptables::IptablesEnforcer, xdp::XdpEnforcer},
    metrics::Metrics,
    detect::{DetectArgs, Detector},
    policy::BanDecision,
    proctitle::ProcTitles,
    reaper::{ReapAction, Reaper, ReaperConfig},
    source::{
        follow::{FollowOptions, Follower, LogLine},
        journal::{Journal, JournalOptions},
        stdin::stdin_lines,
    },
    whitelist::Whitelist,
};

/// How bans are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The eBPF dataplane (XDP, falling back to TC).
    Xdp,
    /// The old daemon's iptables chain (and ip6tables), for plain hosts.
    Iptables,
    /// Detect and log only.
    DryRun,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Follow this log file (repeatable). Default: /var/log/mail.log if present, else
    /// /var/log/maillog, else the journal.
    #[arg(long = "log", visible_alias = "syslog-msgs-file", value_name = "FILE")]
    pub log: Vec<PathBuf>,
    /// Read the systemd journal (journalctl -f -o json).
    #[arg(long)]
    pub journal: bool,
    /// Read log lines from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Read followed files from their beginning instead of their end.
    #[arg(long)]
    pub from_start: bool,
    /// How bans are enforced.
    #[arg(long, value_enum, default_value = "xdp")]
    pub mode: Mode,
    /// Interface to protect in xdp mode (repeatable). Default: the default route's.
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// How the xdp mode attaches: XDP native, else XDP generic, else TC (auto).
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachMode,
    /// bpffs directory for the pinned maps and links (xdp mode).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_dir: PathBuf,
    /// On exit, leave the bans in force (pinned maps and links, or the iptables chain)
    /// for the next start.
    #[arg(long)]
    pub keep_bans: bool,
    /// Only drop packets to this address (one IPv4 and/or one IPv6). Default: any.
    #[arg(long = "mailer-ip", value_name = "IP")]
    pub mailer_ip: Vec<IpAddr>,
    /// The SMTP port to protect.
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    pub mailer_port: u16,
    /// More ports to protect, besides --mailer-port (e.g. 465,587; up to 8 in all).
    #[arg(long, value_name = "PORT,...", value_delimiter = ',')]
    pub ports: Vec<u16>,
    /// The iptables chain (iptables mode).
    #[arg(long, value_name = "NAME", default_value = crate::enforce::iptables::DEFAULT_CHAIN)]
    pub iptables_chain_name: String,
    /// The iptables binary (iptables, iptables-nft, iptables-legacy or a path).
    #[arg(long, value_name = "CMD", default_value = "iptables")]
    pub iptables: PathBuf,
    /// The ip6tables binary; "none" leaves IPv6 alone in iptables mode.
    #[arg(long, value_name = "CMD", default_value = "ip6tables")]
    pub ip6tables: PathBuf,
    /// Kill sendmail children sitting in "cmd read" longer than this (0 disables).
    #[arg(long, value_name = "DUR", default_value = "300s")]
    pub cmd_read_timeout: HumanDuration,
    /// Do not end a banned client's open sendmail sessions.
    #[arg(long)]
    pub no_kill_sessions: bool,
    /// The control socket (blocksmtp status, list, ban, unban); root only.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Where the offence history and ban details are kept across restarts.
    #[arg(long, value_name = "FILE", default_value = "/var/lib/blocksmtp/state.json")]
    pub state_file: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9325). Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log verbosity 0-3 (0: bans and warnings, 1: decisions, 2: every guess, 3: everything).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "1", value_parser = clap::value_parser!(u8).range(0..=3))]
    pub debug: Option<u8>,
    /// Log to syslog (facility mail) instead of standard error.
    #[arg(long)]
    pub debug_to_syslog: bool,
    /// Config file (TOML; keys are these options' long names). Default:
    /// /etc/blocksmtp/blocksmtp.toml if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The config file actually read (set by the parser, not an option).
    #[arg(skip)]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    pub detect: DetectArgs,
}

impl RunArgs {
    /// --mailer-port first, then --ports, without repeats.
    pub fn protected_ports(&self) -> Vec<u16> {
        let mut v = vec![self.mailer_port];
        for p in &self.ports {
            if !v.contains(p) {
                v.push(*p);
            }
        }
        v
    }

    fn dataplane_config(&self) -> DataplaneConfig {
        DataplaneConfig { ports: self.protected_ports(), mailer_ips: self.mailer_ip.clone(), v6_prefix: self.detect.v6_prefix }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.detect.validate()?;
        self.dataplane_config().to_kernel()?;
        Ok(())
    }
}

/// Entry point of `blocksmtp run`; `argv` is kept for SIGHUP's re-read of the config.
pub fn main(args: RunArgs, argv: Vec<OsString>) -> std::process::ExitCode {
    crate::logging::init(args.debug.unwrap_or(0), args.debug_to_syslog);
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

type ControlMsg = (Request, oneshot::Sender<Response>);

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
    last_kill_scan: Option<Instant>,
    started: Instant,
    dirty: bool,
    sources: Vec<SourceHandle>,
}

/// A running log source task and how to ask it where it is.
struct SourceHandle {
    name: String,
    positions: mpsc::Sender<oneshot::Sender<Vec<SourceStatus>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn run(args: RunArgs, argv: Vec<OsString>) -> anyhow::Result<()> {
    args.validate()?;
    if let Some(p) = &args.config_file {
        log::info!("config: {}", p.display());
    }
    let whitelist = load_whitelist(&args.detect)?;
    let metrics = Arc::new(Metrics::default());
    let titles = ProcTitles::new();
    let mut detector =
        Detector::with_whitelist(&args.detect, whitelist.clone()).with_live_attribution(Box::new(titles.clone()));

    match crate::policy::history::load_state(&args.state_file) {
        Ok(Some(state)) => {
            let n = state.offenders.len();
            detector.restore_state(state, SystemTime::now());
            log::info!("state: {n} offenders' history restored from {}", args.state_file.display());
        }
        Ok(None) => {}
        Err(e) => log::warn!("state file {}: {e:#}; starting with no offence history", args.state_file.display()),
    }

    let enforcer = start_enforcer(&args, &whitelist)?;
    // Loading the eBPF object parses the kernel's BTF (megabytes, freed again): hand
    // that memory back now rather than carry it for the daemon's lifetime.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    let xdp = args.mode == Mode::Xdp;
    let reaper = (!args.cmd_read_timeout.0.is_zero()).then(|| {
        Reaper::new(ReaperConfig { cmd_read_timeout: args.cmd_read_timeout.0, ..ReaperConfig::default() })
    });

    let (line_tx, mut line_rx) = mpsc::channel::<(LogLine, Instant)>(4096);
    let sources = start_sources(&args, &line_tx)?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlMsg>(64);
    let socket = bind_control(&args.control_socket)?;
    let ctl_task = tokio::spawn(serve_control(socket, ctl_tx));
    let metrics_task = match args.metrics_listen {
        Some(addr) => Some(crate::metrics::serve(addr, metrics.clone()).await?),
        None => None,
    };

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
        last_kill_scan: None,
        started: Instant::now(),
        dirty: false,
        sources,
    };
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

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
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
            _ = sweep.tick() => d.sweep(),
            _ = housekeeping.tick() => d.housekeeping(),
            _ = reap.tick() => d.reap(),
            _ = sigterm.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { log::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => d.reload(&line_tx).await,
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

fn load_whitelist(detect: &DetectArgs) -> anyhow::Result<Whitelist> {
    Ok(match &detect.white_list {
        Some(p) => Whitelist::load(p)?,
        None => Whitelist::new(),
    })
}

fn start_enforcer(args: &RunArgs, whitelist: &Whitelist) -> anyhow::Result<Box<dyn Enforcer>> {
    Ok(match args.mode {
        Mode::Xdp => {
            let interfaces = if args.interfaces.is_empty() {
                vec![crate::dataplane::attach::default_interface()?]
            } else {
                args.interfaces.clone()
            };
            let mut x = XdpEnforcer::start(&args.dataplane_config(), PinDir::new(&args.pin_dir), &interfaces, args.attach)
                .context("starting the xdp dataplane (try --attach tc, or --mode iptables)")?;
            x.dataplane_mut().set_allow_list(&kernel_allow_list(whitelist))?;
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

/// Which sources to read when none is named.
fn default_sources(args: &RunArgs) -> (Vec<PathBuf>, bool) {
    if !args.log.is_empty() || args.journal || args.stdin {
        return (args.log.clone(), args.journal);
    }
    for p in ["/var/log/mail.log", "/var/log/maillog"] {
        if Path::new(p).exists() {
            return (vec![PathBuf::from(p)], false);
        }
    }
    (vec![], true)
}

fn start_sources(args: &RunArgs, tx: &mpsc::Sender<(LogLine, Instant)>) -> anyhow::Result<Vec<SourceHandle>> {
    let (files, journal) = default_sources(args);
    let mut out = Vec::new();
    if !files.is_empty() {
        let opts = FollowOptions { from_start: args.from_start, ..FollowOptions::default() };
        let mut follower = Follower::new(files.clone(), opts).context("following the log files")?;
        let (ptx, mut prx) = mpsc::channel::<oneshot::Sender<Vec<SourceStatus>>>(4);
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = follower.next() => match r {
                        Ok(line) => {
                            if tx.send((line, Instant::now())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            log::error!("reading the log files: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    },
                    Some(reply) = prx.recv() => {
                        let _ = reply.send(follower.positions().into_iter().map(|p| SourceStatus {
                            name: p.path.display().to_string(),
                            position: Some(p.offset),
                            lines: p.lines,
                            open: p.open,
                        }).collect());
                    }
                }
            }
        });
        let name = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ");
        out.push(SourceHandle { name, positions: ptx, task });
    }
    if journal {
        let mut j = Journal::spawn(&JournalOptions::default()).context("reading the journal")?;
        let (ptx, mut prx) = mpsc::channel::<oneshot::Sender<Vec<SourceStatus>>>(4);
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            let mut lines = 0u64;
            loop {
                tokio::select! {
                    r = j.next() => match r {
                        Ok(line) => {
                            lines += 1;
                            if tx.send((line, Instant::now())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            log::error!("journal: {e}");
                            return;
                        }
                    },
                    Some(reply) = prx.recv() => {
                        let _ = reply.send(vec![SourceStatus { name: "journal".into(), position: None, lines, open: true }]);
                    }
                }
            }
        });
        out.push(SourceHandle { name: "journal".into(), positions: ptx, task });
    }
    if args.stdin {
        let mut r = stdin_lines();
        let (ptx, mut prx) = mpsc::channel::<oneshot::Sender<Vec<SourceStatus>>>(4);
        let tx = tx.clone();
        let task = tokio::spawn(async move {
            let mut lines = 0u64;
            let mut open = true;
            loop {
                tokio::select! {
                    r = r.next(), if open => match r {
                        Ok(Some(line)) => {
                            lines += 1;
                            if tx.send((line, Instant::now())).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            log::info!("standard input ended after {lines} lines; still running (bans expire, control socket open)");
                            open = false;
                        }
                        Err(e) => {
                            log::error!("standard input: {e}");
                            open = false;
                        }
                    },
                    Some(reply) = prx.recv() => {
                        let _ = reply.send(vec![SourceStatus { name: "stdin".into(), position: None, lines, open }]);
                    }
                }
            }
        });
        out.push(SourceHandle { name: "stdin".into(), positions: ptx, task });
    }
    if out.is_empty() {
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
            log::error!("ban of {} failed: {e:#}", d.source);
            self.metrics.ban_failed();
            return;
        }
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
        self.end_sessions(d.source);
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
        self.titles.kill_sessions_of_any(&std::mem::take(&mut self.pending_kills));
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
        if self.whitelist.overlaps(&src) {
            return Response::err(format!("{src} is whitelisted (or overlaps the whitelist): refusing to ban it"));
        }
        let d = secs.map(Duration::from_secs).unwrap_or(self.args.detect.ban_time.0);
        match self.enforcer.ban(&src, d, true) {
            Ok(()) => {
                log::warn!("ban {src} for {} (manual, from the control socket)", format_duration(d));
                self.metrics.banned("manual", Duration::ZERO);
                self.dirty = true;
                self.end_sessions(src);
                self.refresh_gauges();
                Response::ok(format!("banned {src} for {}", format_duration(d)))
            }
            Err(e) => Response::err(format!("ban of {src} failed: {e:#}")),
        }
    }

    fn manual_unban(&mut self, s: &str) -> Response {
        let src = match self.parse_source(s) {
            Ok(x) => x,
            Err(e) => return Response::err(e),
        };
        match self.enforcer.unban(&src) {
            Ok(true) => {
                self.detector.policy_mut().lift(&src);
                self.metrics.unbanned("manual");
                self.dirty = true;
                log::warn!("unban {src} (manual, from the control socket)");
                self.refresh_gauges();
                Response::ok(format!("unbanned {src}"))
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
                BanRow {
                    source: b.source.to_string(),
                    reason: match offence {
                        Some(o) if !b.manual => o.reason_for(&b.source),
                        _ => "manual".into(),
                    },
                    guesses: offence.filter(|_| !b.manual).map_or(0, |o| o.guesses),
                    expires_in_secs: b.expires_at.duration_since(now).unwrap_or_default().as_secs(),
                    dropped: b.dropped,
                    manual: b.manual,
                }
            })
            .collect();
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
            sources.push(SourceStatus { name: s.name.clone(), position: None, lines: 0, open: false });
        }
        let stats = self.detector.stats();
        let (interfaces, packets) = self.dataplane_status();
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
        }
    }

    fn dataplane_status(&self) -> (Vec<(String, String)>, Vec<(String, u64)>) {
        let Some(x) = crate::enforce::downcast_ref::<XdpEnforcer>(&*self.enforcer) else {
            return (vec![], vec![]);
        };
        let ifaces = x.attachments().into_iter().map(|(i, a)| (i, a.to_string())).collect();
        let packets = x
            .stats()
            .map(|s| s.by_verdict.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .unwrap_or_default();
        (ifaces, packets)
    }

    /// Twice a second: end the sessions of bans made in a burst, lift expired bans,
    /// refresh the gauges (O(1) per enforcer).
    fn sweep(&mut self) {
        self.flush_kills();
        match self.enforcer.sweep_expired() {
            Ok(gone) => {
                for s in &gone {
                    log::info!("ban of {s} expired");
                    self.metrics.unbanned("expired");
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
        if self.xdp
            && let Some(x) = crate::enforce::downcast_ref::<XdpEnforcer>(&*self.enforcer)
            && let Ok(s) = x.stats()
        {
            self.metrics.set_packets(s.by_verdict.iter().map(|(k, v)| (*k, *v)).collect());
        }
    }

    fn housekeeping(&mut self) {
        self.detector.tick(SystemTime::now());
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
        match crate::policy::history::write_state(&self.args.state_file, self.detector.policy()) {
            Ok(()) => self.dirty = false,
            Err(e) => log::error!("saving state to {}: {e:#}", self.args.state_file.display()),
        }
    }

    /// SIGHUP: re-read the config file and the whitelist, apply what can change live,
    /// reopen the logs.
    async fn reload(&mut self, line_tx: &mpsc::Sender<(LogLine, Instant)>) {
        log::info!("SIGHUP: reloading");
        let new = match crate::cli::parse(self.argv.clone()) {
            Ok(crate::cli::Cli { command: crate::cli::Command::Run(a), .. }) => *a,
            Ok(_) => return,
            Err(crate::cli::CliError::Config(e)) => {
                log::error!("reload: {e:#}; keeping the running configuration");
                return;
            }
            Err(crate::cli::CliError::Clap(e)) => {
                log::error!("reload: {e}; keeping the running configuration");
                return;
            }
        };
        if let Err(e) = new.validate() {
            log::error!("reload: {e:#}; keeping the running configuration");
            return;
        }
        let whitelist = match load_whitelist(&new.detect) {
            Ok(w) => w,
            Err(e) => {
                log::error!("reload: {e:#}; keeping the running configuration");
                return;
            }
        };
        for (what, changed) in [
            ("--mode", new.mode != self.args.mode),
            ("--interface", new.interfaces != self.args.interfaces),
            ("--attach", new.attach != self.args.attach),
            ("--pin-dir", new.pin_dir != self.args.pin_dir),
            ("--control-socket", new.control_socket != self.args.control_socket),
            ("--metrics-listen", new.metrics_listen != self.args.metrics_listen),
            ("--iptables-chain-name", new.iptables_chain_name != self.args.iptables_chain_name),
        ] {
            if changed {
                log::warn!("reload: {what} changed; it takes effect at the next start");
            }
        }
        if let Some(x) = crate::enforce::downcast_mut::<XdpEnforcer>(&mut *self.enforcer) {
            let dp = x.dataplane_mut();
            if let Err(e) = dp.reconfigure(&new.dataplane_config()).and_then(|()| dp.set_allow_list(&kernel_allow_list(&whitelist))) {
                log::error!("reload: dataplane: {e:#}");
            }
        }
        let state = self.detector.save_state();
        self.detector = Detector::with_whitelist(&new.detect, whitelist.clone()).with_live_attribution(Box::new(self.titles.clone()));
        self.detector.restore_state(state, SystemTime::now());
        self.reaper = (!new.cmd_read_timeout.0.is_zero())
            .then(|| Reaper::new(ReaperConfig { cmd_read_timeout: new.cmd_read_timeout.0, ..ReaperConfig::default() }));
        self.whitelist = whitelist;
        // Reopen the logs: restart the sources (a follower resumes at the end).
        for s in self.sources.drain(..) {
            s.task.abort();
        }
        let mut src_args = new.clone();
        src_args.from_start = false;
        match start_sources(&src_args, line_tx) {
            Ok(s) => self.sources = s,
            Err(e) => log::error!("reload: reopening the logs: {e:#}"),
        }
        let keep_name = self.args.config_file.clone();
        self.args = new;
        if self.args.config_file.is_none() {
            self.args.config_file = keep_name;
        }
        log::info!("reloaded: whitelist has {} entries", self.whitelist.nets().len());
    }
}

fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a crashed daemon: remove it, unless a live daemon answers on it.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("another blocksmtp daemon is listening on {}", path.display());
        }
        let _ = std::fs::remove_file(path);
    }
    // Created with no permission for others from the start (umask), then 0600.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

async fn serve_control(l: UnixListener, tx: mpsc::Sender<ControlMsg>) {
    let me = unsafe { libc::geteuid() };
    loop {
        let Ok((stream, _)) = l.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            // Only root (or the daemon's own user) may talk to the daemon.
            let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
            let (r, mut w) = stream.into_split();
            if uid != 0 && uid != me {
                let _ = w.write_all(b"{\"ok\":false,\"error\":\"permission denied: root only\"}\n").await;
                return;
            }
            let mut line = String::new();
            let mut r = BufReader::new(r).take(64 * 1024);
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (otx, orx) = oneshot::channel();
                    if tx.send((req, otx)).await.is_err() {
                        return;
                    }
                    orx.await.unwrap_or_else(|_| Response::err("the daemon is stopping"))
                }
                Err(e) => Response::err(format!("bad request: {e}")),
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
}

use tokio::io::AsyncReadExt as _;
