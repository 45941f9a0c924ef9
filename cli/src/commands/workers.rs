//! `warren workers`: who is working on what.

use super::Context;
use crate::error::Error;
use crate::exit::Exit;
use crate::format::{age_or_dash, short_sha};
use crate::table::Table;

pub(super) fn run(ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let answer = ctx.client.workers()?;
    if ctx.json {
        ctx.print_raw(&answer.raw)?;
        return Ok(Exit::Success);
    }
    let workers = answer.value.workers;
    if workers.is_empty() {
        writeln!(ctx.out, "no worker heard from in the last 10 minutes")?;
        return Ok(Exit::Success);
    }
    let mut table = Table::new(&[
        "ID",
        "HOST",
        "SLOTS",
        "BUSY",
        "JOBS DONE",
        "LAST SEEN",
        "CURRENT JOBS",
    ]);
    let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for worker in &workers {
        let current: Vec<String> = worker
            .current_jobs
            .iter()
            .map(|job| match job.attempt {
                Some(attempt) if attempt > 1 => {
                    format!("{} {} (attempt {attempt})", job.repo, short_sha(&job.sha))
                }
                _ => format!("{} {}", job.repo, short_sha(&job.sha)),
            })
            .collect();
        table.row(vec![
            worker.id.as_str().into(),
            worker.host.as_deref().unwrap_or("-").into(),
            number(worker.slots).into(),
            number(worker.busy).into(),
            number(worker.jobs_done).into(),
            age_or_dash(worker.last_seen, ctx.now).into(),
            current.join(", ").into(),
        ]);
    }
    write!(ctx.out, "{}", table.render(ctx.paint, 0))?;
    Ok(Exit::Success)
}
