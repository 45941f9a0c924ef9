//! The `sandbox` executor: the command inside bubblewrap (`bwrap`).
//!
//! What the command sees: the system's programs and libraries read-only
//! (`/usr`, `/bin`, `/sbin`, `/lib*`, `/etc`, and `worker.sandbox_read_only`),
//! its checkout read-write at the same path, a private `/tmp`, `/var/tmp`
//! and `/dev/shm`, a minimal `/dev` and its own `/proc`. Nothing else of
//! the host: not the worker's `work_dir` (other slots' checkouts, state),
//! its config file, the git credentials, home folders, `/run`, `/var`.
//! Those of them that sit under a folder that is shown (a config in
//! `/etc/warren/`, say), and the host's own secrets in `/etc` (`shadow`,
//! ssh host keys, TLS private keys), are covered: an empty file or folder
//! is mounted over them.
//!
//! New user, pid, ipc, uts and cgroup namespaces (the command is root of
//! nothing: every capability dropped); a new network namespace (only its
//! own loopback) when the job has no network. `--die-with-parent`, and
//! bwrap's init as pid 1: when the command ends, or bwrap is killed,
//! everything it started goes with it.

use super::ExecutorError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// System folders shown read-only (those that exist; a symlink, as `/bin`
/// on a merged-/usr system, is recreated as the same symlink).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];

/// The host's own secrets under `/etc`, covered even though `/etc` is shown.
const HOST_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/sudoers",
    "/etc/sudoers.d",
];

/// The checked sandbox settings.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    bwrap: PathBuf,
    /// Extra folders shown read-only (`worker.sandbox_read_only`).
    read_only: Vec<PathBuf>,
    /// Paths covered inside the sandbox (the worker's config, credentials
    /// and work folder, and [`HOST_SECRETS`]).
    hidden: Vec<PathBuf>,
}

impl Sandbox {
    /// Checks that bwrap runs here with the namespaces the sandbox needs,
    /// by running it once (`true` in a sandbox like a job's, without network).
    pub(crate) fn start(
        bwrap: PathBuf,
        read_only: Vec<PathBuf>,
        hidden: Vec<PathBuf>,
    ) -> Result<Self, ExecutorError> {
        let unavailable = |message: String| ExecutorError::Unavailable {
            kind: "sandbox",
            message,
        };
        for path in &read_only {
            if !path.is_absolute() || !path.exists() {
                return Err(unavailable(format!(
                    "worker.sandbox_read_only: {} is not an existing absolute path",
                    path.display()
                )));
            }
        }
        let mut hidden = hidden;
        hidden.extend(HOST_SECRETS.iter().map(PathBuf::from));
        let sandbox = Self {
            bwrap,
            read_only,
            hidden,
        };
        let probe_dir = std::env::temp_dir().join(format!(
            "warren-probe-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&probe_dir)
            .map_err(|e| unavailable(format!("cannot make a folder for the check: {e}")))?;
        let (program, args) = sandbox.command_line(&probe_dir, false, "true".into(), vec![]);
        let output = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .output();
        let _ = std::fs::remove_dir(&probe_dir);
        let output = output.map_err(|error| {
            unavailable(format!(
                "cannot run bubblewrap ({}): {error}; install it (Debian: apt-get install \
                     bubblewrap) or set worker.sandbox_bwrap",
                sandbox.bwrap.display()
            ))
        })?;
        if !output.status.success() {
            return Err(unavailable(format!(
                "bubblewrap ({}) cannot make a sandbox here ({}): {}; user namespaces may be \
                 disabled (sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces)",
                sandbox.bwrap.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(sandbox)
    }

    /// For the start-up log.
    pub(crate) fn describe(&self) -> String {
        format!("bubblewrap ({})", self.bwrap.display())
    }

    /// bwrap's command line running `program args` in `checkout`.
    pub(crate) fn command_line(
        &self,
        checkout: &Path,
        network: bool,
        program: OsString,
        args: Vec<OsString>,
    ) -> (OsString, Vec<OsString>) {
        let mut line: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            line.extend(items.iter().map(|item| item.as_ref().to_os_string()));
        };
        push(&[
            &"--unshare-user",
            &"--unshare-pid",
            &"--unshare-ipc",
            &"--unshare-uts",
            &"--unshare-cgroup-try",
            &"--hostname",
            &"warren-sandbox",
            &"--die-with-parent",
            &"--cap-drop",
            &"ALL",
        ]);
        if !network {
            push(&[&"--unshare-net"]);
        }
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::read_link(path) {
                Ok(target) => push(&[&"--symlink", &target, &path]),
                Err(_) if path.is_dir() => push(&[&"--ro-bind", &path, &path]),
                Err(_) => {}
            }
        }
        push(&[
            &"--proc",
            &"/proc",
            &"--dev",
            &"/dev",
            &"--tmpfs",
            &"/dev/shm",
            &"--tmpfs",
            &"/tmp",
            &"--tmpfs",
            &"/var/tmp",
        ]);
        // After the private /tmp: a folder shown from under /tmp (a build
        // tree in a temporary folder) would be covered by it otherwise.
        for path in &self.read_only {
            push(&[&"--ro-bind", path, path]);
        }
        // Covers go after the binds they cover, and only where something
        // would show: a path outside the shown folders is not there at all.
        for path in &self.hidden {
            if !self.shown(path) {
                continue;
            }
            if path.is_dir() {
                push(&[&"--tmpfs", path]);
            } else if path.exists() {
                push(&[&"--ro-bind", &"/dev/null", path]);
            }
        }
        push(&[
            &"--bind",
            &checkout,
            &checkout,
            &"--chdir",
            &checkout,
            &"--setenv",
            &"HOME",
            &"/tmp",
            &"--",
            &program,
        ]);
        line.extend(args);
        (self.bwrap.clone().into_os_string(), line)
    }

    /// Whether `path` is inside a folder the sandbox shows.
    fn shown(&self, path: &Path) -> bool {
        SYSTEM_DIRS
            .iter()
            .map(Path::new)
            .chain(self.read_only.iter().map(PathBuf::as_path))
            .any(|dir| path.starts_with(dir))
    }
}
