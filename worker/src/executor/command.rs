//! What a job's command is before it runs: the program, where, with which
//! environment and limits ([`CommandSpec`]), and why it may not start at
//! all ([`RunError`]). The executor turns it into what is spawned;
//! `run.rs` runs that to its end.

use super::Isolation;
use crate::live::LiveSink;
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What to run, where, and under which limits.
#[derive(Debug, Clone)]
pub(crate) struct CommandSpec {
    /// The program (looked up in the command's `PATH` when it has no `/`).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The working directory.
    pub cwd: PathBuf,
    /// The complete environment (nothing else is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Time allowed before the group is stopped.
    pub timeout: Duration,
    /// SIGTERM → SIGKILL delay when the group is stopped.
    pub kill_grace: Duration,
    /// Bytes of output kept.
    pub output_limit: usize,
    /// Where the output also goes as it is read (never waits).
    pub live: LiveSink,
    /// The run's name, network and limits, for the executor.
    pub isolation: Isolation,
}

/// The command could not be started; nothing ran. The job's status is
/// `error`, with this text as its message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("command not found: {program}")]
    NotFound { program: String },
    #[error("command not executable: {program} (permission denied)")]
    NotExecutable { program: String },
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// `docker run` exited 125 and no container ran: the engine's failure
    /// (a bad mount, an image gone since the check), not the test's.
    #[error("the container could not be started: {message}")]
    ContainerNotStarted { message: String },
}
