use std::process::ExitCode;

use blocksmtp::cli::{self, Command, CliError};

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().collect();
    let cli = match cli::parse(argv.clone()) {
        Ok(c) => c,
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("blocksmtp: {e:#}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run(args) => blocksmtp::daemon::main(*args, argv),
        Command::Replay(args) => blocksmtp::replay::main(*args, argv),
        Command::Status(c) => blocksmtp::control::client_main(&c, blocksmtp::control::Request::Status),
        Command::List(c) => blocksmtp::control::client_main(&c, blocksmtp::control::Request::List),
        Command::Ban { source, duration, client } => blocksmtp::control::client_main(
            &client,
            blocksmtp::control::Request::Ban { source, secs: duration.map(|d| d.0.as_secs()) },
        ),
        Command::Reload(c) => blocksmtp::control::client_main(&c, blocksmtp::control::Request::Reload),
        Command::Unban { source, client } => {
            blocksmtp::control::client_main(&client, blocksmtp::control::Request::Unban { source })
        }
        Command::Config => {
            let cmd = <cli::Cli as clap::CommandFactory>::command();
            print!("{}", blocksmtp::config::template(cmd.find_subcommand("run").expect("run")));
            ExitCode::SUCCESS
        }
        Command::Generate { dir } => match cli::generate(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("blocksmtp: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
