//! `warren`, the command-line client of the dispatcher's HTTP API
//! (docs/API.md): recent commits, one commit's verdict, job logs (live with
//! `--follow`), retry and cancel, workers.
//!
//! - [`cli`]: the command line (clap).
//! - [`api`]: a typed blocking HTTP client, with timeouts; [`model`] the
//!   JSON it decodes; [`sse`] server-sent events read line by line.
//! - [`resolve`]: a sha prefix to one commit.
//! - [`commands`]: one file per command.
//! - [`table`], [`format`], [`style`]: ASCII tables, relative times and
//!   human durations, colour only on a terminal.
//! - [`error`] and [`exit`]: what can go wrong, and the exit codes.

mod api;
mod cli;
mod commands;
mod error;
mod exit;
mod format;
mod model;
mod resolve;
mod sse;
mod style;
mod table;

pub use cli::Cli;
pub use error::Error;
pub use exit::Exit;

use std::io::Write;

/// The dispatcher's token: from `--token-file`, else `WARREN_TOKEN`.
fn token(cli: &Cli) -> Result<Option<String>, Error> {
    if let Some(path) = &cli.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::Usage(format!("--token-file {}: {error}", path.display())))?;
        let token = text.trim_end_matches(['\r', '\n']);
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(Error::Usage(format!(
                "--token-file {}: must hold one line, the token",
                path.display()
            )));
        }
        return Ok(Some(token.to_owned()));
    }
    Ok(std::env::var("WARREN_TOKEN")
        .ok()
        .filter(|token| !token.is_empty()))
}

/// Runs one command line: its output to `out`, notes for people to `err`,
/// colour if `colour`. The exit code of the outcome, or what stopped it.
pub fn run(
    cli: &Cli,
    out: &mut dyn Write,
    err: &mut dyn Write,
    colour: bool,
) -> Result<Exit, Error> {
    let client = api::Client::new(&cli.url)?.with_token(token(cli)?);
    let mut ctx = commands::Context {
        client,
        json: cli.json,
        paint: style::Paint { enabled: colour },
        now: chrono::Utc::now(),
        out,
        err,
    };
    let exit = commands::run(&cli.command, &mut ctx)?;
    ctx.out.flush()?;
    Ok(exit)
}
