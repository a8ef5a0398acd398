//! The command line. Kept in the library so the man page and shell completions are
//! generated from the same definition (`blocksmtp generate`).
use std::{
    ffi::OsString,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::{
    control::{ClientArgs, DEFAULT_SOCKET},
    dataplane::{AttachMode, DEFAULT_PIN_ROOT, DataplaneConfig},
    detect::DetectArgs,
    duration::HumanDuration,
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
    /// /var/log/maillog, and /var/log/exim4/mainlog if present; with none of them, the journal.
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
    /// Read no mail log: only enforce what CrowdSec's LAPI decides (an MX host of a
    /// fleet whose detection runs on a central log host).
    #[arg(long, conflicts_with_all = ["log", "journal", "stdin"])]
    pub no_log: bool,
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
    /// Do not end a banned client's open sessions (TCP reset of its connections to the
    /// protected ports, and sendmail's serving children).
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
    /// Where each option taken from the config file was set: long name → `FILE:LINE`
    /// (set by the parser), so errors found after parsing name the line.
    #[arg(skip)]
    pub config_origins: std::collections::BTreeMap<String, String>,
    #[command(flatten)]
    pub detect: DetectArgs,
    #[command(flatten)]
    pub crowdsec: crate::crowdsec::CrowdsecArgs,
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

    pub fn dataplane_config(&self) -> DataplaneConfig {
        DataplaneConfig {
            ports: self.protected_ports(),
            mailer_ips: self.mailer_ip.clone(),
            v6_prefix: self.detect.v6_prefix,
            // The programs' own log events are "everything" (--debug 3).
            log_events: self.debug.unwrap_or(0) >= 3,
        }
    }

    /// Check what clap cannot check alone. An error about an option set in the config
    /// file names the file and line.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::detect::DetectError as E;
        let at = |keys: &[&str], msg: String| -> anyhow::Error {
            match keys.iter().find_map(|k| self.config_origins.get(*k).map(|o| (k, o))) {
                Some((k, origin)) => anyhow::anyhow!("{origin}: key `{k}`: {msg}"),
                None => anyhow::anyhow!("{msg}"),
            }
        };
        if let Err(e) = self.detect.validate() {
            let keys: &[&str] = match &e {
                E::MaxUnknown => &["max-unknown"],
                E::V6Prefix(_) => &["v6-prefix"],
                E::Window => &["window"],
                E::BanTime => &["ban-time"],
                E::BanTimeMax { .. } => &["ban-time-max", "ban-time"],
                _ => &["white-list"],
            };
            return Err(at(keys, e.to_string()));
        }
        if self.mailer_port == 0 {
            return Err(at(&["mailer-port"], "--mailer-port must be a TCP port (1-65535), not 0".into()));
        }
        if self.ports.contains(&0) {
            return Err(at(&["ports"], "--ports: 0 is not a TCP port (1-65535)".into()));
        }
        if let Err(e) = self.dataplane_config().to_kernel() {
            return Err(at(&["ports", "mailer-ip", "mailer-port"], format!("{e:#}")));
        }
        if let Err(e) = self.crowdsec.validate() {
            return Err(at(&["crowdsec-url", "crowdsec-bouncer-key-file", "crowdsec-pull-interval"], format!("{e:#}")));
        }
        if self.no_log && self.crowdsec.crowdsec_bouncer_key_file.is_none() {
            return Err(at(&["no-log"], "--no-log reads no mail log: it needs --crowdsec-bouncer-key-file, or nothing would ever be banned".into()));
        }
        Ok(())
    }
}


#[derive(Debug, Parser)]
#[command(
    name = "blocksmtp",
    version,
    about = "Stops SMTP directory-harvest attacks: reads the mail log, drops guessers in the kernel",
    long_about = "Stops SMTP directory-harvest attacks: follows the mail server's log (sendmail, \
                  Postfix, Exim; files or journald), recognises a client guessing usernames, and \
                  drops its SMTP packets in the kernel (XDP/TC eBPF, or an iptables chain) for a while.\n\n\
                  Invoked with options but no command (the old daemon's way: \
                  `blocksmtp --debug=1 --white-list=FILE`), it runs the daemon."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: follow the mail log, ban harvesters, reap stuck sessions.
    Run(Box<RunArgs>),
    /// Dry run over logs: which sources would be banned, no kernel touched, no root needed.
    Replay(Box<crate::replay::ReplayArgs>),
    /// The running daemon's state: mode, interfaces, sources, counters.
    Status(ClientArgs),
    /// Active bans: source, reason, guesses, time left, packets dropped.
    List(ClientArgs),
    /// Ban an address or IPv6 prefix by hand.
    Ban {
        /// An address (192.0.2.66, 2001:db8::66) or IPv6 prefix (2001:db8::/64).
        source: String,
        /// How long (30s, 10m, 1h, 7d); default: the daemon's --ban-time.
        #[arg(long = "for", value_name = "DUR")]
        duration: Option<crate::duration::HumanDuration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make the running daemon re-read its config file and whitelist (what SIGHUP does),
    /// and report whether it accepted them: exit 1 with the reason when it did not.
    Reload(ClientArgs),
    /// Lift a ban.
    Unban {
        source: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a config file with every option of `run` at its default, commented out.
    Config,
    /// Write the man pages (sections 8 and 5) and bash, zsh and fish completions into DIR (for packagers).
    Generate { dir: std::path::PathBuf },
}

/// Subcommand names, for telling the old daemon's invocation (options only) apart.
const SUBCOMMANDS: &[&str] = &["run", "replay", "status", "list", "ban", "unban", "reload", "config", "generate", "help"];

/// `blocksmtp --debug=2 --white-list=F` (no command) means `blocksmtp run --debug=2 …`.
pub fn normalize_argv(mut argv: Vec<OsString>) -> Vec<OsString> {
    let first = argv.get(1).and_then(|a| a.to_str()).map(str::to_string);
    if let Some(first) = first
        && first.starts_with('-')
        && !["-h", "--help", "-V", "--version"].contains(&first.as_str())
        && !SUBCOMMANDS.contains(&first.as_str())
    {
        argv.insert(1, "run".into());
    }
    argv
}

/// Parse the command line; for `run`, add the config file's options the command line
/// did not set. Errors in the config file name file, line and key.
pub fn parse(argv: Vec<OsString>) -> Result<Cli, CliError> {
    let argv = normalize_argv(argv);
    let cmd = Cli::command();
    let matches = cmd.clone().try_get_matches_from(&argv).map_err(CliError::Clap)?;
    let Some(("run", run_matches)) = matches.subcommand() else {
        return Cli::from_arg_matches(&matches).map_err(CliError::Clap);
    };
    let explicit = run_matches.get_one::<std::path::PathBuf>("config").cloned();
    let path = crate::config::config_path(explicit.as_deref()).map_err(CliError::Config)?;
    let Some(path) = path else {
        return Cli::from_arg_matches(&matches).map_err(CliError::Clap);
    };
    let run_cmd = cmd.find_subcommand("run").expect("run subcommand").clone();
    let (extra, origins) = crate::config::overlay_with_origins(&run_cmd, run_matches, &path).map_err(CliError::Config)?;
    // Insert the file's options right after `run`: the command line's own come later.
    let pos = argv.iter().position(|a| a == "run").expect("run is in argv");
    let mut full = argv.clone();
    for (i, a) in extra.into_iter().enumerate() {
        full.insert(pos + 1 + i, a);
    }
    let mut cli = Cli::try_parse_from(&full).map_err(CliError::Clap)?;
    if let Command::Run(r) = &mut cli.command {
        r.config_file = Some(path);
        r.config_origins = origins;
    }
    Ok(cli)
}

#[derive(Debug)]
pub enum CliError {
    /// Usage errors (clap prints them and exits 2).
    Clap(clap::Error),
    /// The config file.
    Config(anyhow::Error),
}

/// Write the man pages — `blocksmtp.8` and one `blocksmtp-CMD.8` per subcommand (the
/// binary is in /usr/sbin: section 8), `blocksmtp.toml.5` (the config file) and
/// `blocksmtp-whitelist.5` — into DIR/man, and completions for bash, zsh and fish into
/// DIR/completions, `--interface` completing the host's interface names.
pub fn generate(dir: &std::path::Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let write_page = |c: &clap::Command, extra: &str| -> anyhow::Result<()> {
        let page = clap_mangen::Man::new(c.clone()).section("8").manual("System Administration");
        let mut out = Vec::new();
        page.render(&mut out)?;
        for part in [MAN_EXIT, MAN_FILES, extra, MAN_SEE_ALSO] {
            out.extend_from_slice(part.as_bytes());
        }
        std::fs::write(man.join(page.get_filename()), out).context("writing man pages")?;
        Ok(())
    };
    write_page(&cmd, MAN_MAIN_EXTRA)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let extra = match sub.get_name() {
            "run" => MAN_RUN_EXTRA,
            "replay" => MAN_REPLAY_EXTRA,
            _ => MAN_CLIENT_EXTRA,
        };
        write_page(sub, extra)?;
    }
    let run_cmd = cmd.find_subcommand("run").expect("run subcommand");
    std::fs::write(man.join("blocksmtp.toml.5"), config_page(run_cmd)).context("writing blocksmtp.toml.5")?;
    std::fs::write(man.join("blocksmtp-whitelist.5"), MAN_WHITELIST).context("writing blocksmtp-whitelist.5")?;

    let cmd = Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd.clone(), "blocksmtp", &comp).context("writing completions")?;
        let text = std::fs::read_to_string(&path)?;
        let fixed = complete_interfaces(shell, &text)
            .with_context(|| format!("{}: no --interface completion to adjust (clap_complete changed its output?)", path.display()))?;
        std::fs::write(&path, fixed)?;
    }
    Ok(())
}

/// `--interface` completes interface names (clap has no value hint for them).
fn complete_interfaces(shell: clap_complete::Shell, text: &str) -> Option<String> {
    let (from, to) = match shell {
        clap_complete::Shell::Bash => (
            "                --interface)\n                    COMPREPLY=($(compgen -f \"${cur}\"))",
            "                --interface)\n                    COMPREPLY=($(compgen -W \"$(ls /sys/class/net 2>/dev/null)\" -- \"${cur}\"))",
        ),
        clap_complete::Shell::Zsh => (":IFACE:_default'", ":IFACE:_net_interfaces'"),
        clap_complete::Shell::Fish => ("-l interface -d ", "-l interface -f -a \"(__fish_print_interfaces)\" -d "),
        _ => return Some(text.to_string()),
    };
    text.contains(from).then(|| text.replacen(from, to, 1))
}

/// roff: escape backslashes and leading dots/quotes of a text line, hyphens as `\-`.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

/// blocksmtp.toml(5): the format, then every key with its help and default, from the
/// same definition as `blocksmtp config`.
fn config_page(run_cmd: &clap::Command) -> String {
    let mut out = String::from(MAN_CONFIG_HEAD);
    out.push_str(".SH KEYS\n");
    // The template gives each key's help first, then `# key = default`.
    let mut help = Vec::new();
    for line in crate::config::template(run_cmd).lines() {
        let Some(text) = line.strip_prefix("# ") else {
            help.clear();
            continue;
        };
        if text.starts_with("blocksmtp configuration:") || text.starts_with("Uncomment to change.") {
            continue;
        }
        if text.split_once(" = ").is_some_and(|(k, _)| !k.is_empty() && !k.contains(' ')) {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n", roff_text(text)));
            for h in help.drain(..) {
                out.push_str(&format!("{}\n", roff_text(h)));
            }
        } else {
            help.push(text);
        }
    }
    out.push_str(MAN_CONFIG_TAIL);
    out
}

const MAN_SEE_ALSO: &str = ".SH \"SEE ALSO\"\n\\fBblocksmtp\\fR(8), \\fBblocksmtp\\-run\\fR(8), \\fBblocksmtp\\-replay\\fR(8), \
\\fBblocksmtp.toml\\fR(5), \\fBblocksmtp\\-whitelist\\fR(5), \\fBjournalctl\\fR(1), \\fBsystemctl\\fR(1), \\fBiptables\\fR(8), \
\\fBbpftool\\fR(8), /usr/share/doc/blocksmtp/README.Debian\n";

const MAN_FILES: &str = ".SH FILES\n\
.TP\n/etc/blocksmtp/blocksmtp.toml\nSettings: every long option of \\fBrun\\fR as a key (see \\fBblocksmtp.toml\\fR(5)); \\fBreplay\\fR reads its detection keys too.\n\
.TP\n/etc/blocksmtp/whitelist\nHosts never banned (see \\fBblocksmtp\\-whitelist\\fR(5)).\n\
.TP\n/var/lib/blocksmtp/state.json\nOffence history and ban details, kept across restarts.\n\
.TP\n/run/blocksmtp/control.sock\nControl socket of the running daemon (root only): \\fBstatus\\fR, \\fBlist\\fR, \\fBban\\fR, \\fBunban\\fR.\n\
.TP\n/sys/fs/bpf/blocksmtp/\nPinned maps and links (xdp mode); removing the link pins detaches the programs.\n\
.TP\n/var/log/mail.log, /var/log/maillog, /var/log/exim4/mainlog\nThe logs followed when none is named; with none of them, the systemd journal.\n";

const MAN_EXIT: &str = ".SH \"EXIT STATUS\"\n\
.TP\n0\nSuccess (\\fBrun\\fR: a clean stop).\n\
.TP\n1\nFailure: the daemon could not start or stopped on an error; the control command was refused (the reason is printed).\n\
.TP\n2\nBad arguments, a bad config file or whitelist (the message names file, line and key), unreadable input, or no daemon on the control socket.\n";

const MAN_MAIN_EXTRA: &str = concat!(
    ".SH SIGNALS\n",
    ".TP\nSIGTERM, SIGINT\nClean stop: the daemon detaches its programs and removes its pins (or its iptables chain), unless \\fBkeep\\-bans\\fR is set.\n",
    ".TP\nSIGHUP\nRe\\-read the config file and the whitelist and reopen the logs; a rejected config is logged and the old one kept (\\fBsystemctl reload\\fR reports the reason).\n",
    ".SH EXAMPLES\n",
    "Dry run over the current and the last rotated mail log, as any user:\n.PP\n.RS\nblocksmtp replay /var/log/mail.log /var/log/mail.log.1\n.RE\n.PP\n",
    "The running daemon, its bans, a ban and its lifting by hand:\n.PP\n.RS\nblocksmtp status\n.br\nblocksmtp list\n.br\nblocksmtp ban 192.0.2.66 \\-\\-for 1h\n.br\nblocksmtp unban 192.0.2.66\n.RE\n.PP\n",
    "A fresh config file with every option at its default:\n.PP\n.RS\nblocksmtp config > /tmp/blocksmtp.toml\n.RE\n",
);

const MAN_RUN_EXTRA: &str = concat!(
    ".SH SIGNALS\n",
    ".TP\nSIGTERM, SIGINT\nClean stop: detach the programs and remove the pins (or the iptables chain), unless \\fBkeep\\-bans\\fR is set.\n",
    ".TP\nSIGHUP\nRe\\-read the config file and the whitelist and reopen the logs.\n",
    ".SH EXAMPLES\n",
    "Under systemd the unit runs \\fBblocksmtp run\\fR with /etc/blocksmtp/blocksmtp.toml. By hand, iptables mode following one log:\n.PP\n.RS\nblocksmtp run \\-\\-mode iptables \\-\\-log /var/log/mail.log\n.RE\n.PP\n",
    "XDP on two interfaces, the bans kept in force across restarts:\n.PP\n.RS\nblocksmtp run \\-\\-interface eth0 \\-\\-interface eth1 \\-\\-keep\\-bans\n.RE\n",
);

const MAN_REPLAY_EXTRA: &str = concat!(
    ".SH EXAMPLES\n",
    "Rotated logs, compressed or not, in any order (they are read oldest first):\n.PP\n.RS\nblocksmtp replay /var/log/mail.log /var/log/mail.log.1 /var/log/mail.log.2.gz\n.RE\n.PP\n",
    "The journal, as JSON, with a stricter threshold than the config file's:\n.PP\n.RS\njournalctl \\-o json \\-\\-since today | blocksmtp replay \\-\\-json \\-\\-max\\-unknown 3 \\-\n.RE\n",
);

const MAN_CLIENT_EXTRA: &str = ".SH EXAMPLES\n.RS\nblocksmtp status \\-\\-json\n.br\nblocksmtp list\n.br\nblocksmtp ban 2001:db8::/64 \\-\\-for 7d\n.RE\n";

const MAN_CONFIG_HEAD: &str = ".TH blocksmtp.toml 5 \"\" \"blocksmtp\" \"File Formats\"\n\
.SH NAME\nblocksmtp.toml \\- settings of the blocksmtp daemon\n\
.SH SYNOPSIS\n/etc/blocksmtp/blocksmtp.toml\n\
.SH DESCRIPTION\nA TOML file of \\fIkey\\fR = \\fIvalue\\fR lines, one per option of \\fBblocksmtp run\\fR: the key is the long option's name \
(\\fBmax\\-unknown\\fR, or \\fBmax_unknown\\fR), the value a string, number, boolean, or an array for repeatable options. \
The command line wins over the file. Values go through the same checks as the command line; an unknown key or a bad value is an \
error naming the file, the line and the key, and the daemon does not start (or, on reload, keeps its old settings). \
\\fBblocksmtp replay\\fR reads the detection keys of the same file. \\fBblocksmtp config\\fR prints every key at its default, commented out.\n";

const MAN_CONFIG_TAIL: &str = ".SH EXAMPLE\n.RS\nwhite\\-list = \"/etc/blocksmtp/whitelist\"\n.br\nkeep\\-bans = true\n.br\nmax\\-unknown = 5\n.br\nwindow = \"10m\"\n.br\nlog = [\"/var/log/mail.log\"]\n.RE\n\
.SH \"SEE ALSO\"\n\\fBblocksmtp\\fR(8), \\fBblocksmtp\\-run\\fR(8), \\fBblocksmtp\\-whitelist\\fR(5)\n";

const MAN_WHITELIST: &str = ".TH blocksmtp\\-whitelist 5 \"\" \"blocksmtp\" \"File Formats\"\n\
.SH NAME\nblocksmtp\\-whitelist \\- hosts blocksmtp never bans\n\
.SH SYNOPSIS\n/etc/blocksmtp/whitelist (the config key \\fBwhite\\-list\\fR names the file)\n\
.SH DESCRIPTION\nOne entry per line: an IPv4 or IPv6 address, a CIDR prefix, or an IPv4 address with a netmask. \
A \\fB#\\fR in column zero starts a comment; blank lines are allowed; blanks around an entry are ignored. \
A bad entry is an error naming the file and the line: the daemon does not start, or on reload keeps the old list. \
Loopback (127.0.0.0/8, ::1) is always whitelisted.\n.PP\n\
Guesses from a whitelisted address are not counted. A source is not banned when the whitelist overlaps it in any way: \
an IPv6 source is banned per prefix (\\fBv6\\-prefix\\fR, /64 by default), and a prefix holding one whitelisted host is not banned.\n\
.SH EXAMPLE\n.nf\n# our own relays\n192.0.2.25\n198.51.100.0/24\n192.0.2.0/255.255.255.0\n2001:db8::/48\n.fi\n\
.SH FILES\n/etc/blocksmtp/whitelist\n\
.SH \"SEE ALSO\"\n\\fBblocksmtp\\fR(8), \\fBblocksmtp.toml\\fR(5)\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn old_invocation_runs_the_daemon() {
        let a = normalize_argv(argv(&["blocksmtp", "--debug=2", "--white-list=/etc/wl"]));
        assert_eq!(a[1], "run");
        let cli = Cli::try_parse_from(&a).unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert_eq!(r.debug, Some(2));
        assert_eq!(r.detect.white_list.as_deref(), Some(std::path::Path::new("/etc/wl")));
        assert_eq!(normalize_argv(argv(&["blocksmtp", "--help"]))[1], "--help");
        assert_eq!(normalize_argv(argv(&["blocksmtp", "list"]))[1], "list");
    }

    #[test]
    fn old_flags_are_accepted() {
        let cli = Cli::try_parse_from(argv(&[
            "blocksmtp",
            "run",
            "--syslog-msgs-file=/var/log/mail.log",
            "--mailer-ip=192.0.2.25",
            "--mailer-port=2525",
            "--mailer-syslog-host=mx",
            "--mailer-syslog-name=sm-mta",
            "--iptables-chain-name=GUESSERS",
            "--debug-to-syslog",
            "--debug",
        ]))
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert_eq!(r.log, vec![std::path::PathBuf::from("/var/log/mail.log")]);
        assert_eq!(r.mailer_port, 2525);
        assert_eq!(r.iptables_chain_name, "GUESSERS");
        assert_eq!(r.debug, Some(1), "--debug alone is level 1");
        assert!(r.debug_to_syslog);
        assert_eq!(r.protected_ports(), vec![2525]);
    }

    #[test]
    fn semantic_errors_name_the_config_line() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("b.toml");
        for (text, want) in [
            ("max-unknown = 3\nwindow = \"0s\"\n", ":2: key `window`"),
            ("ban-time = \"2h\"\n\nban-time-max = \"1h\"\n", ":3: key `ban-time-max`"),
            ("mailer-port = 0\n", ":1: key `mailer-port`"),
            ("ports = [1,2,3,4,5,6,7,8,9]\n", ":1: key `ports`"),
        ] {
            std::fs::write(&cfg, text).unwrap();
            let cli = parse(argv(&["blocksmtp", "run", "--config", cfg.to_str().unwrap()])).unwrap_or_else(|_| panic!("{text}"));
            let Command::Run(r) = cli.command else { panic!("not run") };
            let e = r.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("{}{want}", cfg.display())), "{text}: {e}");
        }
        // The same mistake on the command line names the option only.
        let cli = Cli::try_parse_from(argv(&["blocksmtp", "run", "--mailer-port", "0"])).unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert_eq!(r.validate().unwrap_err().to_string(), "--mailer-port must be a TCP port (1-65535), not 0");
    }

    #[test]
    fn generate_writes_section_8_and_5_pages_and_interface_completion() {
        let d = tempfile::tempdir().unwrap();
        generate(d.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        let main = read("man/blocksmtp.8");
        assert!(main.starts_with(".ie") || main.contains(".TH blocksmtp 8"), "{}", &main[..200]);
        for s in [".SH \"EXIT STATUS\"", ".SH FILES", ".SH SIGNALS", ".SH EXAMPLES", ".SH \"SEE ALSO\""] {
            assert!(main.contains(s), "blocksmtp.8 lacks {s}");
        }
        assert!(read("man/blocksmtp-run.8").contains(".TH blocksmtp-run 8"));
        let toml = read("man/blocksmtp.toml.5");
        assert!(toml.contains(".TH blocksmtp.toml 5") && toml.contains("\\fBmax\\-unknown = 5\\fR"), "{toml}");
        assert!(read("man/blocksmtp-whitelist.5").contains("column zero"));
        assert!(!d.path().join("man/blocksmtp.1").exists());
        assert!(read("completions/blocksmtp.bash").contains("/sys/class/net"));
        assert!(read("completions/_blocksmtp").contains(":IFACE:_net_interfaces"));
        assert!(read("completions/blocksmtp.fish").contains("-l interface -f -a \"(__fish_print_interfaces)\""));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
