//! `warren show`: one commit's verdict, shards and tests.
//!
//! Shards are counted from 1 ("1/4", "shard 1 of 4"), as the status page
//! counts them; `--json` prints the API's 0-based `shard.index` unchanged.

use super::Context;
use crate::cli::CommitArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::format::{age, clean, duration, duration_or_dash, shard_fraction, shard_words};
use crate::model::{Commit, Job, Verdict};
use crate::resolve::resolve;
use crate::style::Style;
use crate::table::{Cell, Table};
use std::io::Write;

/// Failed tests listed; the rest are counted (`--json` has them all).
const MAX_FAILED_TESTS: usize = 50;

/// Lines of one failure message shown; the rest are counted.
const MAX_MESSAGE_LINES: usize = 12;

pub(super) fn run(args: &CommitArgs, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let target = resolve(&ctx.client, &args.sha, args.repo.as_deref())?;
    let answer = ctx.client.commit(&target.repo, &target.sha)?;
    let exit = Exit::of_verdict(&answer.value.status);
    if ctx.json {
        ctx.print_raw(&answer.raw)?;
    } else {
        print(&answer.value, ctx)?;
    }
    Ok(exit)
}

fn print(commit: &Commit, ctx: &mut Context<'_>) -> Result<(), Error> {
    let status = ctx
        .paint
        .paint(Style::of(&commit.status), commit.status.as_str());
    let mut fields: Vec<(&str, String)> = vec![
        ("commit", clean(&commit.sha)),
        ("repo", clean(&commit.repo)),
        ("branch", clean(commit.branch.as_deref().unwrap_or("-"))),
        ("author", clean(commit.author.as_deref().unwrap_or("-"))),
        ("summary", clean(commit.summary.as_deref().unwrap_or(""))),
        ("status", status),
    ];
    if let Some(message) = &commit.message {
        fields.push(("why", clean(message)));
    }
    if let Some(detected) = commit.detected_at {
        fields.push(("detected", age(detected, ctx.now)));
    }
    match (&commit.status, commit.duration_ms, commit.detected_at) {
        (Verdict::Running, _, Some(detected)) => {
            let ms = (ctx.now - detected)
                .num_milliseconds()
                .max(0)
                .unsigned_abs();
            fields.push(("running", format!("for {}", duration(ms))));
        }
        (_, Some(ms), _) => fields.push(("took", duration(ms))),
        _ => {}
    }
    if let Some(counts) = &commit.test_counts {
        fields.push((
            "tests",
            format!(
                "{} passed, {} failed, {} errors, {} skipped, {} flaky (of {})",
                counts.passed,
                counts.failed,
                counts.errors,
                counts.skipped,
                counts.flaky,
                counts.total
            ),
        ));
    }
    if let Some(selection) = &commit.selection {
        let mut text = clean(selection.mode.as_deref().unwrap_or("?"));
        if let (Some(selected), Some(of)) = (selection.selected, selection.of) {
            text.push_str(&format!(": {selected} of {of} files"));
        }
        if let Some(reason) = &selection.reason {
            text.push_str(&format!(" ({})", clean(reason)));
        }
        fields.push(("selection", text));
    }
    for (name, value) in &fields {
        writeln!(ctx.out, "{:<10} {value}", format!("{name}:"))?;
    }

    if !commit.jobs.is_empty() {
        writeln!(ctx.out, "\nShards")?;
        let mut table = Table::new(&["SHARD", "WORKER", "STATUS", "DURATION", "FILES"]);
        for job in &commit.jobs {
            table.row(vec![
                shard_fraction(job.number(), job.count()).into(),
                job.worker.as_deref().unwrap_or("-").into(),
                Cell::styled(job.status.as_str(), Style::of(&job.status)),
                duration_or_dash(job.duration_ms).into(),
                job.files
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |f| f.len().to_string())
                    .into(),
            ]);
        }
        write!(ctx.out, "{}", table.render(ctx.paint, 2))?;
        for job in &commit.jobs {
            for problem in job_problems(job) {
                let shard = shard_words(job.number(), job.count());
                writeln!(ctx.out, "  {shard}: {}", clean(&problem))?;
            }
        }
    }

    let failed: Vec<_> = commit
        .tests
        .iter()
        .filter(|test| test.is_failure())
        .collect();
    if !failed.is_empty() {
        writeln!(ctx.out, "\nFailed tests ({})", failed.len())?;
        for test in failed.iter().take(MAX_FAILED_TESTS) {
            let status = test.status.as_deref().unwrap_or("failed");
            let mut name = clean(&test.name);
            if let Some(class) = test.classname.as_deref().filter(|c| !c.is_empty()) {
                name = format!("{} :: {name}", clean(class));
            }
            // A test's `shard` is the API's index, from 0.
            let shard = test.shard.map(|index| {
                let count = commit
                    .jobs
                    .iter()
                    .find(|job| job.index() == index)
                    .and_then(Job::count);
                shard_words(index.saturating_add(1), count)
            });
            let place = match (test.file.as_deref(), shard) {
                (Some(file), Some(shard)) => format!(" ({}, {shard})", clean(file)),
                (Some(file), None) => format!(" ({})", clean(file)),
                (None, Some(shard)) => format!(" ({shard})"),
                (None, None) => String::new(),
            };
            let word = ctx.paint.paint(Style::Bad, status);
            writeln!(ctx.out, "  {word}  {name}{place}")?;
            if let Some(message) = &test.message {
                print_message(ctx.out, message)?;
            }
        }
        if failed.len() > MAX_FAILED_TESTS {
            writeln!(
                ctx.out,
                "  and {} more (--json lists them all)",
                failed.len() - MAX_FAILED_TESTS
            )?;
        }
    }

    if !commit.flaky_tests.is_empty() {
        writeln!(ctx.out, "\nFlaky tests ({})", commit.flaky_tests.len())?;
        for test in &commit.flaky_tests {
            let mut line = format!("  {}", clean(&test.name));
            if let Some(class) = test.classname.as_deref().filter(|c| !c.is_empty()) {
                line.push_str(&format!(" ({})", clean(class)));
            }
            if let Some(times) = test.times_flaky {
                let commits = if times == 1 { "commit" } else { "commits" };
                line.push_str(&format!(": flaky in {times} {commits} of this repository"));
            }
            writeln!(ctx.out, "{line}")?;
        }
    }
    Ok(())
}

/// What went wrong with a job that did not pass, and a report that could
/// not be read: one line each.
fn job_problems(job: &Job) -> Vec<String> {
    let mut problems = Vec::new();
    if job.status.is_decided() && job.status != Verdict::Passed {
        let mut how = Vec::new();
        if let Some(message) = &job.message {
            how.push(message.clone());
        }
        if let Some(signal) = &job.signal {
            how.push(format!(
                "killed by signal {}",
                signal
                    .as_str()
                    .map_or_else(|| signal.to_string(), str::to_owned)
            ));
        } else if let Some(code) = job.exit_code.filter(|_| job.message.is_none()) {
            how.push(format!("exit code {code}"));
        }
        if !how.is_empty() {
            problems.push(how.join("; "));
        }
    }
    if let Some(problem) = &job.report_problem {
        problems.push(format!("JUnit report: {problem}"));
    }
    problems
}

/// A failure message under its test, indented, long ones cut.
fn print_message(out: &mut dyn Write, message: &str) -> Result<(), Error> {
    let lines: Vec<&str> = message.lines().collect();
    for line in lines.iter().take(MAX_MESSAGE_LINES) {
        writeln!(out, "      {}", clean(line).trim_end())?;
    }
    if lines.len() > MAX_MESSAGE_LINES {
        writeln!(
            out,
            "      ... {} more lines",
            lines.len() - MAX_MESSAGE_LINES
        )?;
    }
    Ok(())
}
