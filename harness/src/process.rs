//! Starting the real binaries, and waiting for what they produce.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The folder with the `warren-*` binaries: `WARREN_BIN_DIR`, or the cargo
/// target folder this executable was built into (after building the
/// binaries there, so a test never runs a stale one).
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WARREN_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let exe = std::env::current_exe().expect("current exe");
        // Test binaries live in target/<profile>/deps, the demo and the
        // benchmark in target/<profile>.
        let mut dir = exe.parent().expect("exe folder").to_path_buf();
        let is_test = dir.ends_with("deps");
        if is_test {
            dir.pop();
        }
        build_binaries(&dir, is_test);
        dir
    })
    .clone()
}

/// Runs `cargo build` for the binaries with the same target selection the
/// caller was built with, so that cargo resolves the same features and finds
/// everything up to date (a different selection would rebuild and relink
/// the binaries on every call).
fn build_binaries(profile_dir: &Path, for_tests: bool) {
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let mut command = Command::new(env!("CARGO"));
    command.args(["build", "--quiet", "--workspace", "--bins"]);
    if for_tests {
        command.arg("--tests");
    }
    if release {
        command.arg("--release");
    }
    // Cargo sets CARGO_MANIFEST_DIR, CARGO_PKG_* and the like for a test it
    // runs; some build scripts (ring's) track those, so passing them on
    // would make the nested build see a changed environment and rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && name != "CARGO_HOME" {
            command.env_remove(name.as_ref());
        }
    }
    if let Some(target) = profile_dir.parent() {
        command.env("CARGO_TARGET_DIR", target);
    }
    let status = command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build for the warren binaries");
    assert!(
        status.success(),
        "cargo build of the warren binaries failed"
    );
}

/// A running component; killed when dropped.
pub struct Component {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Whether component logs go to the terminal (`TEST_LOG=1`) or to files.
fn show_logs() -> bool {
    std::env::var_os("TEST_LOG").is_some()
}

impl Component {
    /// Starts `binary` (`warren-worker`…) with `args`, logging to
    /// `log_dir/<name>.log` (or to the terminal with `TEST_LOG=1`).
    pub fn start(binary: &str, name: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::start_with_env(binary, name, args, log_dir, &[])
    }

    /// Like [`Component::start`], with extra environment variables.
    pub fn start_with_env(
        binary: &str,
        name: &str,
        args: &[&str],
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        std::fs::create_dir_all(log_dir).expect("log dir");
        let log = log_dir.join(format!("{name}.log"));
        let mut command = Command::new(bin_dir().join(binary));
        command.args(args).stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        if show_logs() {
            command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            let file = std::fs::File::create(&log).expect("log file");
            command
                .stdout(file.try_clone().expect("log file"))
                .stderr(file);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_memory_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// What the component logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit; returns the exit
    /// code (None if it had to be killed or died of a signal).
    pub fn stop(&mut self, timeout: Duration) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit on its own; kills it
    /// after that. Returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    eprintln!("{} did not exit in {timeout:?}; killing it", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 20 ms until it is true or `timeout` passes;
/// returns whether it became true. Tests wait for conditions, not for time.
pub fn wait_until(timeout: Duration, condition: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, Duration::from_millis(20), condition)
}

/// The async form of [`wait_until_every`], for async tests: `condition`
/// may await (a request, a publish) and the runtime is not blocked between
/// polls. Returns whether it became true before `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, interval: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

/// [`wait_until`] polling every `interval`.
pub fn wait_until_every(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
