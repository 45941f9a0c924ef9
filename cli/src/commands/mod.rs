//! One file per command; each returns the exit code of its outcome.

mod actions;
mod logs;
mod show;
mod status;
mod workers;

use crate::api::Client;
use crate::cli::Command;
use crate::error::Error;
use crate::exit::Exit;
use crate::style::Paint;
use chrono::{DateTime, Utc};
use std::io::Write;

/// What every command needs: the client, how to print, and the time
/// against which ages are told.
pub(crate) struct Context<'a> {
    pub client: Client,
    pub json: bool,
    pub paint: Paint,
    pub now: DateTime<Utc>,
    pub out: &'a mut dyn Write,
    /// Notes for people that must not mix into the output (a truncated
    /// log, the end of a followed job).
    pub err: &'a mut dyn Write,
}

impl Context<'_> {
    /// The server's JSON, unchanged, as one line of output.
    fn print_raw(&mut self, raw: &str) -> Result<(), Error> {
        writeln!(self.out, "{}", raw.trim_end())?;
        Ok(())
    }
}

pub(crate) fn run(command: &Command, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    match command {
        Command::Status(args) => status::run(args, ctx),
        Command::Show(args) => show::run(args, ctx),
        Command::Logs(args) => logs::run(args, ctx),
        Command::Retry(args) => actions::retry(args, ctx),
        Command::Cancel(args) => actions::cancel(args, ctx),
        Command::Workers => workers::run(ctx),
    }
}
