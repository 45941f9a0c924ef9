//! `warren logs`: the output of a commit's jobs, stored or streamed.
//!
//! A decided job's output comes from the commit's JSON. With `--follow`, a
//! job still running is streamed from `GET /api/jobs/{id}/log` until its
//! `end` event, and the command exits with the jobs' verdict. Several
//! running jobs are followed one after the other, in shard order.
//!
//! Shards are counted from 1 for people (headers, notes, `--job N`), as
//! `show` and the status page count them; the `--json` objects keep the
//! API's 0-based index in their `shard` field.

use super::Context;
use crate::cli::LogsArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::format::shard_words;
use crate::model::{Job, Verdict};
use crate::resolve::{CommitRef, resolve};
use serde_json::json;
use std::io::Write;

pub(super) fn run(args: &LogsArgs, ctx: &mut Context<'_>) -> Result<Exit, Error> {
    let target = resolve(&ctx.client, &args.commit.sha, args.commit.repo.as_deref())?;
    let commit = ctx.client.commit(&target.repo, &target.sha)?.value;
    let jobs: Vec<&Job> = match args.job {
        None => commit.jobs.iter().collect(),
        Some(_) if commit.jobs.is_empty() => {
            return Err(Error::NotFound(format!(
                "{} {} has no jobs",
                target.repo, target.sha
            )));
        }
        // `--job N` counts from 1, like `show`.
        Some(number) => {
            let job = commit
                .jobs
                .iter()
                .find(|job| job.number() == number)
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "{} {} has no job {number} (its shards are numbered 1 to {})",
                        target.repo,
                        target.sha,
                        commit.jobs.len()
                    ))
                })?;
            vec![job]
        }
    };
    if jobs.is_empty() {
        writeln!(
            ctx.err,
            "warren: {} {} has no jobs",
            target.repo, target.sha
        )?;
        return Ok(if args.follow {
            Exit::of_verdict(&commit.status)
        } else {
            Exit::Success
        });
    }
    // Headers only when several outputs follow each other, so a single
    // job's output can be piped as it is.
    let headers = jobs.len() > 1 && !ctx.json;
    let mut exit = Exit::Success;
    for job in jobs {
        let verdict = if args.follow && !job.status.is_decided() {
            if headers {
                writeln!(ctx.out, "==> {} ({}, running) <==", name(job), worker(job))?;
            }
            follow(job, &target, ctx)?
        } else {
            if headers {
                let status = job.status.as_str();
                writeln!(ctx.out, "==> {} ({}, {status}) <==", name(job), worker(job))?;
            }
            print_stored(job, ctx)?;
            job.status.clone()
        };
        exit = exit.worst(Exit::of_verdict(&verdict));
    }
    Ok(if args.follow { exit } else { Exit::Success })
}

/// "shard 2 of 4": the job as people count it, from 1.
fn name(job: &Job) -> String {
    shard_words(job.number(), job.count())
}

fn worker(job: &Job) -> &str {
    job.worker.as_deref().unwrap_or("no worker yet")
}

/// A job's output as the commit's JSON holds it (as one `line` object
/// and, once decided, an `end` object, with `--json`).
fn print_stored(job: &Job, ctx: &mut Context<'_>) -> Result<(), Error> {
    if ctx.json {
        if let Some(output) = &job.output {
            line_object(job, output, ctx)?;
        }
        if job.status.is_decided() {
            end_object(job, &job.status, ctx)?;
        }
        return Ok(());
    }
    match &job.output {
        Some(output) => write_lines(ctx.out, output)?,
        None if !job.status.is_decided() => {
            writeln!(
                ctx.err,
                "warren: {} is still running (--follow streams its output)",
                name(job)
            )?;
        }
        None => {}
    }
    if job.output_truncated {
        let size = job
            .output_bytes
            .map_or_else(String::new, |bytes| format!(" ({bytes} bytes)"));
        writeln!(
            ctx.err,
            "warren: the middle of the output of {}{size} was cut; its head and tail are above",
            name(job)
        )?;
    }
    Ok(())
}

/// Streams a running job's output until its `end` event; its verdict.
fn follow(job: &Job, commit: &CommitRef, ctx: &mut Context<'_>) -> Result<Verdict, Error> {
    let events = ctx.client.job_log(&job.id)?;
    let mut broke = None;
    for event in events {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                broke = Some(error.to_string());
                break;
            }
        };
        match event.name.as_str() {
            "line" => {
                if ctx.json {
                    line_object(job, &event.data, ctx)?;
                } else if event.data.ends_with('\n') {
                    write!(ctx.out, "{}", event.data)?;
                } else {
                    // An empty chunk is one empty line.
                    writeln!(ctx.out, "{}", event.data)?;
                }
                // Lines as they come, even into a pipe.
                ctx.out.flush()?;
            }
            "end" => {
                let verdict = Verdict::parse(&end_status(&event.data));
                finished(job, &verdict, ctx)?;
                return Ok(verdict);
            }
            _ => {} // events the API does not name: a newer server
        }
    }
    stream_lost(job, commit, broke, ctx)
}

/// The stream closed (or broke) before `end`: the job may have finished
/// meanwhile, so its state is read again (the dispatcher unreachable now:
/// exit 4). Decided: its verdict; still running: `Running` (exit 3), with
/// a note to follow it again.
fn stream_lost(
    job: &Job,
    commit: &CommitRef,
    broke: Option<String>,
    ctx: &mut Context<'_>,
) -> Result<Verdict, Error> {
    let how = broke.map_or_else(|| "ended".to_owned(), |error| format!("broke ({error})"));
    let again = ctx.client.commit(&commit.repo, &commit.sha)?.value;
    let verdict = again
        .jobs
        .into_iter()
        .find(|j| j.id == job.id)
        .map_or(Verdict::Running, |j| j.status);
    if verdict.is_decided() {
        writeln!(
            ctx.err,
            "warren: the log stream of {} {how} before its end; the job has finished",
            name(job)
        )?;
        finished(job, &verdict, ctx)?;
    } else {
        writeln!(
            ctx.err,
            "warren: the log stream of {} {how} before its end; the job is still running \
             (run the command again to go on following it)",
            name(job)
        )?;
    }
    Ok(verdict)
}

/// A followed job's verdict: an `end` object, or a note for people.
fn finished(job: &Job, verdict: &Verdict, ctx: &mut Context<'_>) -> Result<(), Error> {
    if ctx.json {
        end_object(job, verdict, ctx)?;
    } else {
        writeln!(ctx.err, "warren: {} {}", name(job), verdict.as_str())?;
    }
    ctx.out.flush()?;
    Ok(())
}

/// Stored output, ending in a newline if there is any.
fn write_lines(out: &mut dyn Write, text: &str) -> Result<(), Error> {
    if text.is_empty() {
        return Ok(());
    }
    write!(out, "{text}")?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// The status in an `end` event's data: `passed`, or the same as a JSON
/// string, or an object with a `status` field.
fn end_status(data: &str) -> String {
    let data = data.trim();
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(serde_json::Value::String(status)) => status,
        Ok(serde_json::Value::Object(object)) => match object.get("status") {
            Some(serde_json::Value::String(status)) => status.clone(),
            _ => data.to_owned(),
        },
        _ => data.to_owned(),
    }
}

/// `shard` is the API's index, from 0, as in the commit's JSON.
fn line_object(job: &Job, data: &str, ctx: &mut Context<'_>) -> Result<(), Error> {
    let object = json!({"job_id": job.id, "shard": job.index(), "event": "line", "data": data});
    writeln!(ctx.out, "{object}")?;
    Ok(())
}

fn end_object(job: &Job, verdict: &Verdict, ctx: &mut Context<'_>) -> Result<(), Error> {
    let object =
        json!({"job_id": job.id, "shard": job.index(), "event": "end", "status": verdict.as_str()});
    writeln!(ctx.out, "{object}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_data_may_be_plain_a_json_string_or_an_object() {
        assert_eq!(end_status("passed\n"), "passed");
        assert_eq!(end_status("\"failed\""), "failed");
        assert_eq!(end_status(r#"{"status": "timed_out"}"#), "timed_out");
    }
}
