//! The command line. Kept in the library so the man page and shell completions are
//! generated from the same definition (`blocksmtp generate`).
use std::ffi::OsString;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::{control::ClientArgs, daemon::RunArgs};

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
    Replay(crate::replay::ReplayArgs),
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
    /// Lift a ban.
    Unban {
        source: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a config file with every option of `run` at its default, commented out.
    Config,
    /// Write the man page and shell completions into DIR (used for packaging).
    #[command(hide = true)]
    Generate { dir: std::path::PathBuf },
}

/// Subcommand names, for telling the old daemon's invocation (options only) apart.
const SUBCOMMANDS: &[&str] = &["run", "replay", "status", "list", "ban", "unban", "config", "generate", "help"];

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
    let extra = crate::config::overlay(&run_cmd, run_matches, &path).map_err(CliError::Config)?;
    // Insert the file's options right after `run`: the command line's own come later.
    let pos = argv.iter().position(|a| a == "run").expect("run is in argv");
    let mut full = argv.clone();
    for (i, a) in extra.into_iter().enumerate() {
        full.insert(pos + 1 + i, a);
    }
    let mut cli = Cli::try_parse_from(&full).map_err(CliError::Clap)?;
    if let Command::Run(r) = &mut cli.command {
        r.config_file = Some(path);
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

/// Write `blocksmtp.1` (+ one page per subcommand) and completions for bash, zsh, fish.
pub fn generate(dir: &std::path::Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).context("writing man pages")?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "blocksmtp", &comp).context("writing completions")?;
    }
    Ok(())
}

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
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
