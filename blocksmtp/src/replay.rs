//! `blocksmtp replay`: detection over log files, no kernel touched. (in progress)

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Log files (plain, .gz) or - for stdin.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
}

pub fn main(_args: ReplayArgs) -> std::process::ExitCode {
    eprintln!("blocksmtp replay: not built yet");
    std::process::ExitCode::from(2)
}
