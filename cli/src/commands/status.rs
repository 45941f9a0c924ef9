//! `warren status`: recent commits as a table.

use super::Context;
use crate::api::CommitQuery;
use crate::cli::StatusArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::format::{age_or_dash, duration_or_dash, short_sha, truncate};
use crate::style::Style;
use crate::table::{Cell, Table};

/// Characters of a commit's summary shown in the table.
const SUMMARY_WIDTH: usize = 50;

pub(super) fn run(args: &StatusArgs, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let query = CommitQuery {
        repo: args.repo.clone(),
        branch: args.branch.clone(),
        status: args.status.clone(),
        sha: None,
        limit: Some(args.limit),
    };
    let answer = ctx.client.commits(&query)?;
    if ctx.json {
        ctx.print_raw(&answer.raw)?;
        return Ok(Exit::Success);
    }
    let commits = answer.value.commits;
    if commits.is_empty() {
        writeln!(ctx.out, "no commits")?;
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&[
        "COMMIT", "REPO", "BRANCH", "STATUS", "JOBS", "DURATION", "SUMMARY", "AGE",
    ]);
    for commit in &commits {
        let jobs = match (commit.jobs_done, commit.jobs) {
            (Some(done), Some(total)) => format!("{done}/{total}"),
            (None, Some(total)) => format!("?/{total}"),
            _ => "-".to_owned(),
        };
        table.row(vec![
            short_sha(&commit.sha).into(),
            commit.repo.as_str().into(),
            commit.branch.as_deref().unwrap_or("-").into(),
            Cell::styled(commit.status.as_str(), Style::of(&commit.status)),
            jobs.into(),
            duration_or_dash(commit.duration_ms).into(),
            truncate(commit.summary.as_deref().unwrap_or(""), SUMMARY_WIDTH).into(),
            age_or_dash(commit.detected_at, ctx.now).into(),
        ]);
    }
    write!(ctx.out, "{}", table.render(ctx.paint, 0))?;
    Ok(Exit::Success)
}
