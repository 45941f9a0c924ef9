//! Running one command in a process group of its own.
//!
//! The command is the leader of a new process group, so everything it starts
//! (a test runner's workers, a server in the background) can be signalled at
//! once: at the timeout the whole group gets SIGTERM, then SIGKILL after the
//! kill grace; after a normal exit whatever the command left running gets the
//! same treatment, with a short grace, so the next job starts clean.
//!
//! stdout and stderr share one pipe, so their interleaving is kept. The pipe
//! is read asynchronously into a bounded [`OutputCapture`]; once the group is
//! gone the rest is drained for a bounded time only, because a grandchild that
//! escaped the group (`setsid`) may hold the pipe open for ever.

use crate::executor::{CommandSpec, Executor, LimitHit, RunError};
use crate::live::LiveSink;
use crate::output::{CapturedOutput, OutputCapture};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, warn};

/// Longest grace between SIGTERM and SIGKILL for processes a command left
/// behind after it exited by itself: they had their chance, and the next job
/// waits for them.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// How long to wait for a group to vanish after SIGKILL. SIGKILL cannot be
/// caught, so only a process stuck in the kernel (or a zombie whose parent is
/// not this worker) outlives it; after this the worker gives up and goes on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often the group is checked while waiting for it to vanish.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// How long the output pipe is drained after the command's group is gone.
/// Whatever the group wrote is already in the pipe's buffer; only a process
/// that escaped the group can keep the pipe open longer.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Size of one read from the output pipe, in bytes (a Linux pipe's buffer).
const READ_CHUNK: usize = 64 * 1024;

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it (not one of ours).
    Signalled(i32),
    /// It ran past its timeout; its group was stopped.
    TimedOut,
    /// Stopped from outside: the worker's forced shutdown, or the job's
    /// cancellation.
    Aborted,
    /// It hit a limit (memory, processes, CPU time, disk) and was killed.
    LimitReached(LimitHit),
}

/// A command that ran.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// How it ended.
    pub ending: Ending,
    /// What it wrote to stdout and stderr.
    pub output: CapturedOutput,
    /// From start to the end of the command (not of the output drain).
    pub duration: Duration,
}

/// `docker run`'s exit status when the engine (not the command) failed.
const DOCKER_RUN_FAILED: i32 = 125;

/// Makes this process adopt the orphans of its descendants (Linux "child
/// subreaper"), so a background process that a job's command left behind can
/// be reaped here instead of staying a zombie in the job's group (inside a
/// container, PID 1 often does not reap). Process-wide and idempotent.
pub(crate) fn adopt_orphans() {
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        warn!(%error, "cannot become a child subreaper; leftovers of jobs may linger as zombies");
    }
}

/// Runs `spec` through `executor` to its end, its timeout, a limit, or
/// `abort`.
pub(crate) async fn run(
    spec: &CommandSpec,
    executor: &Executor,
    abort: &CancellationToken,
) -> Result<Finished, RunError> {
    let program = spec.program.to_string_lossy().into_owned();
    let spawn_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => RunError::NotFound {
            program: program.clone(),
        },
        io::ErrorKind::PermissionDenied => RunError::NotExecutable {
            program: program.clone(),
        },
        _ => RunError::Spawn {
            program: program.clone(),
            source,
        },
    };
    let (reader, writer) = io::pipe().map_err(spawn_error)?;
    let stderr = writer.try_clone().map_err(spawn_error)?;
    let mut launch = executor.launch(spec)?;
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .process_group(0)
        // A backstop for a dropped job future; the group is stopped below.
        .kill_on_drop(true);
    let started = Instant::now();
    let spawned = command.spawn();
    // The command holds our copies of the pipe's write end: drop it, so the
    // pipe ends when the command's processes are done with it.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            launch.guard.finish().await;
            return Err(spawn_error(error));
        }
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| {
            spawn_error(io::Error::other(
                "the command exited before its id was known",
            ))
        })?;
    debug!(pid = group.as_raw(), "command started");

    let stop_reading = CancellationToken::new();
    let receiver = pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(spawn_error)?;
    let mut reader = tokio::spawn(read_output(
        receiver,
        spec.output_limit,
        spec.live.clone(),
        stop_reading.clone(),
        Span::current(),
    ));

    let ending = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => ending_of(status),
            Err(error) => {
                warn!(%error, "waiting for the command failed; stopping its group");
                Ending::Aborted
            }
        },
        () = tokio::time::sleep(spec.timeout) => {
            debug!("timeout reached; stopping the command's group");
            Ending::TimedOut
        }
        () = abort.cancelled() => {
            debug!("stopped from outside (worker stopping or job cancelled); stopping the command's group");
            Ending::Aborted
        }
        hit = launch.guard.breached() => {
            debug!(%hit, "limit reached; stopping the command's group");
            Ending::LimitReached(hit)
        }
    };
    let duration = started.elapsed();
    let grace = match ending {
        Ending::TimedOut | Ending::Aborted => spec.kill_grace,
        // A job over its limit is not asked to clean up: it could use the
        // grace to go on (forking, allocating, writing).
        Ending::LimitReached(_) => Duration::ZERO,
        Ending::Exited(_) | Ending::Signalled(_) => spec.kill_grace.min(LEFTOVER_GRACE),
    };
    if matches!(
        ending,
        Ending::TimedOut | Ending::Aborted | Ending::LimitReached(_)
    ) {
        launch.guard.stop().await;
    }
    stop_group(group, &mut child, grace).await;
    // A limit found only now (the kernel killed a process at the memory
    // limit and the command then exited) is what ended the run.
    let end = launch.guard.finish().await;
    let ending = match (end.hit, ending) {
        (Some(hit), Ending::Exited(_) | Ending::Signalled(_)) => Ending::LimitReached(hit),
        (_, ending) => ending,
    };

    let (capture, complete) = match tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut reader).await {
        Ok(joined) => reader_result(joined),
        Err(_) => {
            // The group is gone but the pipe is still open: stop reading and
            // keep what arrived, rather than wait for ever.
            stop_reading.cancel();
            reader_result(reader.await)
        }
    };
    spec.live.end_of_run();
    let mut output = capture.finish();
    // A container that never ran: what `docker run` wrote is the engine's
    // message. (A command that itself exits 125 ran: its own status.)
    if end.never_started && ending == Ending::Exited(DOCKER_RUN_FAILED) {
        return Err(RunError::ContainerNotStarted {
            message: engine_message(&output.text),
        });
    }
    if !complete {
        warn!("a process outside the command's group keeps its output open; stopped reading");
        output.text.push_str(
            "\n[warren: stopped reading: a process that left the job's process group kept the output open]\n",
        );
    }
    Ok(Finished {
        ending,
        output,
        duration,
    })
}

/// Docker's own message from what `docker run` wrote: its text without the
/// usage hint, on one line.
fn engine_message(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains("'docker run --help'"))
        .collect();
    if lines.is_empty() {
        return format!("docker run exited with status {DOCKER_RUN_FAILED} and said nothing");
    }
    lines.join(" ")
}

fn ending_of(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signalled(signal),
        // Neither code nor signal: only for stopped/continued, which wait() does not report.
        (None, None) => Ending::Signalled(0),
    }
}

fn reader_result(
    joined: Result<(OutputCapture, bool), tokio::task::JoinError>,
) -> (OutputCapture, bool) {
    joined.unwrap_or_else(|error| {
        warn!(%error, "the output reader failed");
        (OutputCapture::new(0), false)
    })
}

/// Reads the pipe into a capture (and to `live`) until its end (returns
/// true) or `stop` (returns false). Logs in `span`, the job's: entered only
/// to log, not on every read of a flood (as instrumenting the task would).
async fn read_output(
    mut pipe: pipe::Receiver,
    limit: usize,
    live: LiveSink,
    stop: CancellationToken,
    span: Span,
) -> (OutputCapture, bool) {
    let mut capture = OutputCapture::new(limit);
    let mut buffer = vec![0_u8; READ_CHUNK];
    loop {
        tokio::select! {
            // `stop` first: a process flooding the pipe must not keep the
            // reader from noticing it.
            biased;
            () = stop.cancelled() => return (capture, false),
            read = pipe.read(&mut buffer) => match read {
                Ok(0) => return (capture, true),
                Ok(n) => {
                    capture.push(&buffer[..n]);
                    live.push(&buffer[..n]);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    span.in_scope(|| warn!(%error, "reading the command's output failed"));
                    return (capture, true);
                }
            },
        }
    }
}

/// Stops every process of `group`: SIGTERM, up to `grace` for them to go,
/// then SIGKILL. Returns at once when the group is already empty. Reaps the
/// leader (through tokio) and the orphans this worker adopted.
async fn stop_group(group: Pid, child: &mut Child, grace: Duration) {
    let mut leader_done = false;
    if group_is_empty(group, child, &mut leader_done) {
        return;
    }
    signal_group(group, Signal::SIGTERM);
    for (deadline, next) in [
        (Instant::now() + grace, Some(Signal::SIGKILL)),
        (Instant::now() + grace + KILL_WAIT, None),
    ] {
        while Instant::now() < deadline {
            if group_is_empty(group, child, &mut leader_done) {
                return;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        match next {
            Some(signal) => {
                debug!(
                    pgid = group.as_raw(),
                    "group still alive after the grace; SIGKILL"
                );
                signal_group(group, signal);
            }
            None => warn!(
                pgid = group.as_raw(),
                "processes of the job's group outlived SIGKILL; going on without them"
            ),
        }
    }
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => warn!(pgid = group.as_raw(), %error, ?signal, "signalling the job's group"),
    }
}

/// Whether no process of `group` is left (zombies count as left, so the
/// leader and adopted orphans are reaped first).
fn group_is_empty(group: Pid, child: &mut Child, leader_done: &mut bool) -> bool {
    if !*leader_done {
        *leader_done = !matches!(child.try_wait(), Ok(None));
    }
    // Only once tokio has reaped the leader: reaping by group could
    // otherwise take the leader's exit status away from tokio.
    if *leader_done {
        reap_orphans(group);
    }
    matches!(killpg(group, None), Err(Errno::ESRCH))
}

/// Reaps the exited processes of `group` that are children of this process
/// (orphans adopted as subreaper). Never blocks.
fn reap_orphans(group: Pid) {
    let any_in_group = Pid::from_raw(-group.as_raw());
    while let Ok(status) = waitpid(any_in_group, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Isolation;
    use std::path::Path;

    fn shell(script: &str, dir: &Path) -> CommandSpec {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: dir.to_path_buf(),
            env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_millis(300),
            output_limit: 1024 * 1024,
            live: LiveSink::disabled(),
            isolation: Isolation::new(true, Default::default()),
        }
    }

    async fn run_ok(spec: &CommandSpec) -> Finished {
        adopt_orphans();
        run(spec, &Executor::process(), &CancellationToken::new())
            .await
            .unwrap()
    }

    /// Whether `pid` is still a live (not zombie) process.
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(") ")
                    .next()
                    .and_then(|rest| rest.chars().next());
                state != Some('Z')
            }
            Err(_) => false,
        }
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn exit_codes_and_signals_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let passed = run_ok(&shell("echo hello", dir.path())).await;
        assert_eq!(passed.ending, Ending::Exited(0));
        assert_eq!(passed.output.text, "hello\n");
        assert_eq!(passed.output.total_bytes, 6);

        let failed = run_ok(&shell("echo nope; exit 3", dir.path())).await;
        assert_eq!(failed.ending, Ending::Exited(3));

        let killed = run_ok(&shell("kill -9 $$", dir.path())).await;
        assert_eq!(killed.ending, Ending::Signalled(9));
    }

    #[tokio::test]
    async fn stdout_and_stderr_are_interleaved_in_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let script = "echo one; echo two >&2; echo three; echo four >&2";
        let finished = run_ok(&shell(script, dir.path())).await;
        assert_eq!(finished.output.text, "one\ntwo\nthree\nfour\n");
    }

    #[tokio::test]
    async fn the_working_directory_and_environment_are_the_given_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = shell(
            "pwd; echo \"[$ONLY]\" \"[$HOME]\"; read x; echo \"read=$?\"",
            dir.path(),
        );
        spec.env.push(("ONLY".into(), "this".into()));
        let finished = run_ok(&spec).await;
        let expected = format!(
            "{}\n[this] []\nread=1\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(finished.output.text, expected);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        // A background grandchild, and a child that ignores SIGTERM (and
        // whose own children inherit that), and a leader that waits.
        let script = r#"
            sleep 1000 & echo $! > bg.pid
            sh -c 'trap "" TERM; echo $$ > stubborn.pid; while :; do sleep 0.05; done' &
            while [ ! -s stubborn.pid ]; do sleep 0.01; done
            echo ready
            sleep 1000
        "#;
        let mut spec = shell(script, dir.path());
        // Long enough for the script to get going on a loaded machine.
        spec.timeout = Duration::from_secs(2);
        let start = std::time::Instant::now();
        let finished = run_ok(&spec).await;
        assert_eq!(finished.ending, Ending::TimedOut);
        assert_eq!(finished.output.text, "ready\n");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        for file in ["bg.pid", "stubborn.pid"] {
            let pid = read_pid(&dir.path().join(file));
            assert!(!alive(pid), "{file}: {pid} survived");
        }
    }

    #[tokio::test]
    async fn leftovers_are_killed_after_a_normal_exit() {
        let dir = tempfile::tempdir().unwrap();
        // The background sleep holds the output pipe: without the group
        // clean-up the output would never end.
        let script = "sleep 1000 & echo $! > bg.pid; echo done";
        let start = std::time::Instant::now();
        let finished = run_ok(&shell(script, dir.path())).await;
        assert_eq!(finished.ending, Ending::Exited(0));
        assert_eq!(finished.output.text, "done\n");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(!alive(read_pid(&dir.path().join("bg.pid"))));
    }

    #[tokio::test]
    async fn an_escaped_grandchild_cannot_hold_the_output_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let script = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' & \
                      while [ ! -s escaped.pid ]; do sleep 0.01; done; echo bye";
        let start = std::time::Instant::now();
        let finished = run_ok(&shell(script, dir.path())).await;
        let escaped = read_pid(&dir.path().join("escaped.pid"));
        let _ = nix::sys::signal::kill(Pid::from_raw(escaped), Signal::SIGKILL);
        assert_eq!(finished.ending, Ending::Exited(0));
        assert!(
            finished.output.text.starts_with("bye\n"),
            "{}",
            finished.output.text
        );
        assert!(finished.output.text.contains("kept the output open"));
        assert!(start.elapsed() < OUTPUT_DRAIN_TIMEOUT + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_flood_of_output_stays_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = shell(
            "head -c 33554432 /dev/zero | tr '\\0' x; echo; echo END",
            dir.path(),
        );
        spec.output_limit = 4096;
        let finished = run_ok(&spec).await;
        assert_eq!(finished.ending, Ending::Exited(0));
        assert!(finished.output.truncated);
        assert_eq!(finished.output.total_bytes, 32 * 1024 * 1024 + 5);
        assert!(finished.output.text.len() < 4096 + 200);
        assert!(finished.output.text.ends_with("x\nEND\n"));
    }

    #[tokio::test]
    async fn abort_stops_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let abort = CancellationToken::new();
        // Written then renamed, so the file never exists half-written.
        let spec = shell(
            "echo $$ > tmp.pid; mv tmp.pid leader.pid; sleep 1000",
            dir.path(),
        );
        let pid_file = dir.path().join("leader.pid");
        let canceller = abort.clone();
        let watch = pid_file.clone();
        tokio::spawn(async move {
            while !watch.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            canceller.cancel();
        });
        adopt_orphans();
        let finished = run(&spec, &Executor::process(), &abort).await.unwrap();
        assert_eq!(finished.ending, Ending::Aborted);
        assert!(!alive(read_pid(&pid_file)));
    }

    #[test]
    fn the_engines_message_is_docker_runs_text_without_its_usage_hint() {
        let said = "docker: Error response from daemon: Minimum memory limit allowed is 6MB\n\n\
                    Run 'docker run --help' for more information\n";
        assert_eq!(
            engine_message(said),
            "docker: Error response from daemon: Minimum memory limit allowed is 6MB"
        );
        assert!(engine_message("").contains("status 125"));
    }

    #[tokio::test]
    async fn a_missing_program_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = shell("", dir.path());
        spec.program = "warren-no-such-command".into();
        spec.args.clear();
        let err = run(&spec, &Executor::process(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::NotFound { .. }), "{err:?}");
        assert_eq!(err.to_string(), "command not found: warren-no-such-command");

        std::fs::write(dir.path().join("script"), "#!/bin/sh\n").unwrap();
        spec.program = "./script".into();
        let err = run(&spec, &Executor::process(), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::NotExecutable { .. }), "{err:?}");
    }
}
