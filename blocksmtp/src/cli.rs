//! The command line. Kept in the library so the man page and shell completions are
//! generated from the same definition (`cargo xtask deb`).
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "blocksmtp", version, about = "Stops SMTP directory-harvest attacks: reads the mail log, drops guessers in the kernel")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run over logs: which sources would be banned, no kernel touched, no root needed.
    Replay(crate::replay::ReplayArgs),
}
