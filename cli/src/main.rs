//! `warren [--url URL] [--json] <command>`

use clap::Parser;
use std::io::{self, IsTerminal};
use std::process::ExitCode;
use warren_cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = io::stdout();
    let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut out = stdout.lock();
    let mut err = io::stderr();
    match warren_cli::run(&cli, &mut out, &mut err, colour) {
        Ok(exit) => ExitCode::from(exit.code()),
        // `warren status | head`: the reader has what it wanted.
        Err(error) if error.is_broken_pipe() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
