//! The docker CLI, the container executor's only way to the engine: a
//! command run to its end within a time limit, its stdout or its error.

use super::DOCKER;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for one engine command (inspect, kill, rm, image inspect):
/// a hung engine must not hold a job for ever.
pub(super) const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a docker CLI command did not do its work.
#[derive(Debug, thiserror::Error)]
pub(super) enum CliError {
    #[error("the docker command is not installed")]
    Missing,
    #[error("docker {command}: {message}")]
    Failed { command: String, message: String },
    #[error("docker {command} did not answer within {timeout:?}")]
    TimedOut { command: String, timeout: Duration },
}

/// Runs `docker args` to its end (at most [`ENGINE_TIMEOUT`]); its stdout,
/// or its stderr's text as the error.
pub(super) async fn docker(args: &[&str]) -> Result<String, CliError> {
    let command = args.first().copied().unwrap_or_default().to_owned();
    let child = tokio::process::Command::new(DOCKER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| spawn_error(&command, &error))?;
    let output = tokio::time::timeout(ENGINE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| CliError::TimedOut {
            command: command.clone(),
            timeout: ENGINE_TIMEOUT,
        })?
        .map_err(|error| spawn_error(&command, &error))?;
    cli_result(
        command,
        output.status.success(),
        &output.stdout,
        &output.stderr,
    )
}

/// [`docker`] for the worker's start, before the async runtime (and for
/// a dropped guard's removal): the child is waited for, its output read
/// whole, on a thread of its own, so a full pipe never holds it up; after
/// `timeout` it is killed.
pub(super) fn blocking_docker(args: &[&str], timeout: Duration) -> Result<String, CliError> {
    let command = args.first().copied().unwrap_or_default().to_owned();
    let child = Command::new(DOCKER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| spawn_error(&command, &error))?;
    let pid = child.id();
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(timeout) {
        Ok(Ok(output)) => cli_result(
            command,
            output.status.success(),
            &output.stdout,
            &output.stderr,
        ),
        Ok(Err(error)) => Err(spawn_error(&command, &error)),
        Err(_) => {
            // The thread still waits for it, so it is not reaped yet and
            // the pid is still its own.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            Err(CliError::TimedOut { command, timeout })
        }
    }
}

fn spawn_error(command: &str, error: &std::io::Error) -> CliError {
    if error.kind() == std::io::ErrorKind::NotFound {
        CliError::Missing
    } else {
        CliError::Failed {
            command: command.to_owned(),
            message: error.to_string(),
        }
    }
}

fn cli_result(
    command: String,
    success: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<String, CliError> {
    if success {
        return Ok(String::from_utf8_lossy(stdout).into_owned());
    }
    let message = String::from_utf8_lossy(stderr).trim().to_owned();
    Err(CliError::Failed { command, message })
}
