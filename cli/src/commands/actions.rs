//! `warren retry` and `warren cancel`: the two actions on a commit.

use super::Context;
use crate::cli::CommitArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::format::short_sha;
use crate::resolve::resolve;

/// HTTP 409: the commit's state does not allow the action.
const CONFLICT: u16 = 409;

pub(super) fn retry(args: &CommitArgs, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let commit = resolve(&ctx.client, &args.sha, args.repo.as_deref())?;
    let name = format!("{} {}", commit.repo, short_sha(&commit.sha));
    let answer = ctx
        .client
        .retry(&commit.repo, &commit.sha)
        .map_err(|error| match error {
            Error::Server {
                status: CONFLICT,
                message,
            } => Error::Conflict(format!(
                "{name} is still running, so it cannot be retried yet: wait for its verdict, \
             or cancel it first (the dispatcher says: {message})"
            )),
            other => other,
        })?;
    if ctx.json {
        ctx.print_raw(&answer.raw)?;
    } else {
        let status = answer.value.status.as_deref().unwrap_or("queued");
        writeln!(
            ctx.out,
            "{name}: its jobs run again ({status}); `warren show {}` tells the verdict",
            short_sha(&commit.sha)
        )?;
    }
    Ok(Exit::Success)
}

pub(super) fn cancel(args: &CommitArgs, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let commit = resolve(&ctx.client, &args.sha, args.repo.as_deref())?;
    let name = format!("{} {}", commit.repo, short_sha(&commit.sha));
    let answer = ctx.client.cancel(&commit.repo, &commit.sha).map_err(|error| match error {
        Error::Server { status: CONFLICT, message } => Error::Conflict(format!(
            "{name} has already finished: there is nothing to cancel (the dispatcher says: {message})"
        )),
        other => other,
    })?;
    if ctx.json {
        ctx.print_raw(&answer.raw)?;
    } else {
        match answer.value.jobs {
            Some(1) => writeln!(ctx.out, "{name}: cancelled 1 job")?,
            Some(jobs) => writeln!(ctx.out, "{name}: cancelled {jobs} jobs")?,
            None => writeln!(ctx.out, "{name}: cancelled")?,
        }
    }
    Ok(Exit::Success)
}
