use std::process::ExitCode;

use blocksmtp::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => blocksmtp::replay::main(args),
    }
}
