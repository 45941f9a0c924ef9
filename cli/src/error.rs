//! Everything that can stop a command, each variant with its exit code.

use crate::exit::Exit;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or a bad `--url`: fix the command line. Exit 2.
    #[error("{0}")]
    Usage(String),

    /// No commit, job or worker with that name (a 404, or a prefix that
    /// matched nothing). Exit 2.
    #[error("{0}")]
    NotFound(String),

    /// A prefix that matches several commits; the message lists them so the
    /// user can type more digits or add `--repo`. Exit 2.
    #[error("{prefix} is ambiguous; it matches:\n{candidates}")]
    Ambiguous { prefix: String, candidates: String },

    /// Nothing answered (refused, timed out, unknown host, TLS refused,
    /// connection lost mid-answer): start the dispatcher or fix `--url`.
    /// Exit 4.
    #[error("cannot reach the dispatcher at {url}: {reason}")]
    Unreachable { url: String, reason: String },

    /// The server answered with an error status; `message` is its
    /// `{"error"}` text. Exit 2 for 404, 1 otherwise.
    #[error("{message} (HTTP {status})")]
    Server { status: u16, message: String },

    /// The action was refused because of the commit's state (a 409): the
    /// message says what to do instead. Exit 1.
    #[error("{0}")]
    Conflict(String),

    /// The server's answer was not what docs/API.md describes: a bug on
    /// one side or a version mismatch. Exit 1.
    #[error("unexpected answer from {what}: {reason}")]
    Protocol { what: String, reason: String },

    /// Writing to stdout failed (a closed pipe is handled by `main`). Exit 1.
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) | Self::NotFound(_) | Self::Ambiguous { .. } => Exit::Usage,
            Self::Server { status: 404, .. } => Exit::Usage,
            Self::Unreachable { .. } => Exit::Unreachable,
            Self::Server { .. } | Self::Conflict(_) | Self::Protocol { .. } | Self::Output(_) => {
                Exit::Failure
            }
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.exit().code()
    }

    /// stdout was closed under us (`warren status | head`): not worth a
    /// message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}
