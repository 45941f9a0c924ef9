//! A run's limits, enforced with what the machine offers, chosen once at
//! start ([`Enforcement::detect`]):
//!
//! - **cgroup v1** (the `memory`, `pids` and `cpuacct` hierarchies under
//!   `/sys/fs/cgroup`, writable by the worker): one cgroup per run under
//!   `warren/`, which the command joins before it execs (a `sh` wrapper
//!   writes its pid to each `cgroup.procs`), so everything it starts is
//!   counted together. Memory and processes are the kernel's limits
//!   (`memory.limit_in_bytes`, `pids.max`); CPU time is watched
//!   (`cpuacct.usage`). A hit is seen in the counters (`oom_kill` in
//!   `memory.oom_control`, `max` in `pids.events`), and every process of
//!   the cgroup is killed, whichever process group or namespace it is in.
//! - **rlimits** (no writable cgroups): `prlimit` before the command, per
//!   process: `--as` (address space), `--nproc` (per user; root is exempt),
//!   `--cpu` (seconds). Weaker, and said so at start.
//!
//! Disk is the same on both: `--fsize` (no file grows past the limit) and a
//! watcher of the checkout's allocated size, growth over its size at the
//! run's start counted against the limit.

use super::{LimitHit, Limits};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Where the cgroup v1 hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The hierarchies a run's cgroup is made in.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuacct"];

/// The file a cgroup of each hierarchy must have to be of use.
const LIMIT_FILES: [&str; 3] = ["memory.limit_in_bytes", "pids.max", "cpuacct.usage"];

/// The folder under each hierarchy that holds the runs' cgroups (shared by
/// every worker of the host; each run's name is unique).
const PARENT: &str = "warren";

/// How often the counters of a run's cgroup are read: a fork bomb or an
/// allocation loop is stopped within about this long of its limit.
const CGROUP_POLL: Duration = Duration::from_millis(100);

/// How often the checkout's size is measured (a walk of the tree, so not
/// too often); writes beyond the limit for up to this long are possible,
/// but never a single file past it (`RLIMIT_FSIZE`).
const DISK_POLL: Duration = Duration::from_millis(500);

/// How long the processes of a run's cgroup are killed and waited for
/// before its folder is left behind (logged).
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);

/// How limits are enforced on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enforcement {
    /// Per-run cgroups (v1: memory, pids, cpuacct).
    CgroupV1,
    /// Per-process rlimits through `prlimit`.
    Rlimits,
}

impl Enforcement {
    /// cgroup v1 when its three hierarchies are mounted and a cgroup can be
    /// made in each (as the worker's user); else rlimits.
    pub(crate) fn detect() -> (Self, String) {
        match probe_cgroups() {
            Ok(()) => (
                Self::CgroupV1,
                format!("cgroup v1 (memory, pids, cpuacct under {CGROUP_ROOT}/*/{PARENT})"),
            ),
            Err(reason) => (
                Self::Rlimits,
                format!(
                    "rlimits per process (prlimit: address space, processes per user, CPU \
                     seconds); no cgroups: {reason}"
                ),
            ),
        }
    }
}

fn probe_cgroups() -> Result<(), String> {
    let probe = format!("probe-{}-{:08x}", std::process::id(), fastrand::u32(..));
    for (controller, file) in CONTROLLERS.iter().zip(LIMIT_FILES) {
        // Only an existing v1 hierarchy: under cgroup v2 a folder made here
        // would be a new cgroup, not the controller's.
        let hierarchy = Path::new(CGROUP_ROOT).join(controller);
        if !hierarchy.is_dir() {
            return Err(format!(
                "no cgroup v1 {controller} hierarchy at {}",
                hierarchy.display()
            ));
        }
        let parent = hierarchy.join(PARENT);
        match std::fs::create_dir(&parent) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(format!("cannot create {}: {error}", parent.display())),
        }
        let dir = parent.join(&probe);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let usable = dir.join(file).exists();
        let _ = std::fs::remove_dir(&dir);
        if !usable {
            return Err(format!("{} has no {file}", dir.display()));
        }
    }
    Ok(())
}

/// The wrapper around a command that puts it under `limits`: the program
/// and arguments to spawn instead, and the watcher of the run.
pub(crate) fn wrap(
    enforcement: Enforcement,
    name: &str,
    limits: Limits,
    checkout: &Path,
    program: OsString,
    args: Vec<OsString>,
) -> io::Result<(OsString, Vec<OsString>, Watch)> {
    let mut rlimits: Vec<OsString> = Vec::new();
    if let Some(disk) = limits.disk {
        rlimits.push(format!("--fsize={disk}").into());
    }
    let cgroup = match enforcement {
        Enforcement::CgroupV1 => Some(Cgroup::create(name, limits)?),
        Enforcement::Rlimits => {
            if let Some(memory) = limits.memory {
                rlimits.push(format!("--as={memory}").into());
            }
            if let Some(processes) = limits.processes {
                rlimits.push(format!("--nproc={processes}").into());
            }
            if let Some(cpu) = limits.cpu_time {
                rlimits.push(format!("--cpu={}", cpu.as_secs().max(1)).into());
            }
            None
        }
    };
    let mut line: Vec<OsString> = Vec::new();
    if !rlimits.is_empty() {
        line.push("prlimit".into());
        line.extend(rlimits);
        line.push("--".into());
    }
    line.push(program);
    line.extend(args);
    let (program, args) = match &cgroup {
        // The shell joins the cgroups, then becomes the command (`exec`), so
        // the command and all it starts are in them from their first
        // instruction. The paths are the worker's own (hex names), quoted.
        Some(cgroup) => {
            let joins: Vec<String> = cgroup
                .dirs
                .iter()
                .map(|dir| format!("echo $$ > '{}/cgroup.procs'", dir.display()))
                .collect();
            let script = format!("{} && exec \"$@\"", joins.join(" && "));
            let mut args: Vec<OsString> = vec!["-c".into(), script.into(), "warren-limits".into()];
            args.extend(line);
            ("/bin/sh".into(), args)
        }
        None => {
            let program = line.remove(0);
            (program, line)
        }
    };
    let disk = limits.disk.map(|limit| DiskWatch::start(checkout, limit));
    Ok((
        program,
        args,
        Watch {
            cgroup,
            disk,
            limits,
        },
    ))
}

/// Watches one run's limits.
#[derive(Debug)]
pub(crate) struct Watch {
    cgroup: Option<Cgroup>,
    disk: Option<DiskWatch>,
    limits: Limits,
}

impl Watch {
    /// The disk limit alone (a container's other limits are the engine's):
    /// the growth of `checkout` from now on.
    pub(crate) fn disk(checkout: &Path, limits: Limits) -> Self {
        Self {
            cgroup: None,
            disk: limits.disk.map(|limit| DiskWatch::start(checkout, limit)),
            limits,
        }
    }

    /// Resolves at the first limit hit.
    pub(crate) async fn breached(&mut self) -> LimitHit {
        let mut cgroup_tick = tokio::time::interval(CGROUP_POLL);
        let mut disk_tick = tokio::time::interval(DISK_POLL);
        loop {
            tokio::select! {
                _ = cgroup_tick.tick(), if self.cgroup.is_some() => {
                    if let Some(hit) = self.cgroup.as_ref().and_then(|c| c.hit(self.limits)) {
                        return hit;
                    }
                }
                _ = disk_tick.tick(), if self.disk.is_some() => {
                    if let Some(disk) = &self.disk
                        && let Some(hit) = disk.hit().await
                    {
                        return hit;
                    }
                }
                () = std::future::pending::<()>(), if self.cgroup.is_none() && self.disk.is_none() => {}
            }
        }
    }

    /// Kills every process of the run's cgroup (they may have left the
    /// process group, or be in a namespace of their own).
    pub(crate) fn kill_all(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
        }
    }

    /// After the run: the limit it hit (looked at once more: a process the
    /// kernel killed, a file cut at the size limit), and the cgroup removed.
    pub(crate) async fn finish(self) -> Option<LimitHit> {
        let mut hit = self.cgroup.as_ref().and_then(|c| c.hit(self.limits));
        if hit.is_none()
            && let Some(disk) = &self.disk
        {
            hit = disk.hit().await;
        }
        if let Some(cgroup) = self.cgroup {
            tokio::task::spawn_blocking(move || cgroup.remove())
                .await
                .unwrap_or_else(|error| warn!(%error, "removing a run's cgroup"));
        }
        hit
    }
}

/// One run's cgroup in each hierarchy.
#[derive(Debug)]
struct Cgroup {
    /// memory, pids, cpuacct (the order of [`CONTROLLERS`]).
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    fn create(name: &str, limits: Limits) -> io::Result<Self> {
        let dirs: Vec<PathBuf> = CONTROLLERS
            .iter()
            .map(|c| Path::new(CGROUP_ROOT).join(c).join(PARENT).join(name))
            .collect();
        let cgroup = Self { dirs };
        for dir in &cgroup.dirs {
            std::fs::create_dir_all(dir)?;
        }
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), value)
                .map_err(|e| io::Error::other(format!("writing {}: {e}", dir.join(file).display())))
        };
        if let Some(memory) = limits.memory {
            write(&cgroup.dirs[0], "memory.limit_in_bytes", memory.to_string())?;
            // Without swap accounting the file is missing: memory alone is
            // the limit then.
            let _ = std::fs::write(
                cgroup.dirs[0].join("memory.memsw.limit_in_bytes"),
                memory.to_string(),
            );
        }
        if let Some(processes) = limits.processes {
            write(&cgroup.dirs[1], "pids.max", processes.to_string())?;
        }
        Ok(cgroup)
    }

    /// The limit the counters say was hit.
    fn hit(&self, limits: Limits) -> Option<LimitHit> {
        if let Some(memory) = limits.memory
            && counter(&self.dirs[0].join("memory.oom_control"), "oom_kill") > 0
        {
            return Some(LimitHit::Memory(memory));
        }
        if let Some(processes) = limits.processes
            && counter(&self.dirs[1].join("pids.events"), "max") > 0
        {
            return Some(LimitHit::Processes(processes));
        }
        if let Some(cpu) = limits.cpu_time {
            let used = std::fs::read_to_string(self.dirs[2].join("cpuacct.usage"))
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if u128::from(used) >= cpu.as_nanos() {
                return Some(LimitHit::CpuTime(cpu));
            }
        }
        None
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[1].join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    fn kill_all(&self) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Kills what is left and removes the folders (blocking: waits, up to
    /// [`CGROUP_EMPTY_WAIT`], for the processes to be gone).
    fn remove(self) {
        let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                warn!(left = pids.len(), cgroup = %self.dirs[1].display(), "processes of a run outlived SIGKILL");
                return;
            }
            self.kill_all();
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in &self.dirs {
            // The last process's exit can lag its removal from the list.
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                    Err(error) => {
                        debug!(%error, dir = %dir.display(), "cgroup not removable yet");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }
}

impl Drop for Cgroup {
    /// A backstop for a run whose future was dropped before
    /// [`Watch::finish`] (the worker forced to stop): kill what is left and
    /// try once to remove the folders (a folder whose processes are still
    /// exiting stays; it is empty and harmless).
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `name N` in a cgroup's key-value file (0 when missing).
pub(super) fn counter(path: &Path, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The checkout's growth against the disk limit.
#[derive(Debug)]
struct DiskWatch {
    checkout: PathBuf,
    /// Allocated bytes at the run's start.
    baseline: u64,
    limit: u64,
}

impl DiskWatch {
    fn start(checkout: &Path, limit: u64) -> Self {
        Self {
            checkout: checkout.to_path_buf(),
            baseline: allocated(checkout),
            limit,
        }
    }

    async fn hit(&self) -> Option<LimitHit> {
        let checkout = self.checkout.clone();
        let now = tokio::task::spawn_blocking(move || allocated(&checkout))
            .await
            .unwrap_or(0);
        (now.saturating_sub(self.baseline) >= self.limit).then_some(LimitHit::Disk(self.limit))
    }
}

/// Bytes allocated to the files under `dir` (blocks, so a sparse file
/// counts for what it holds), not following links.
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            total += metadata.blocks() * 512;
            if metadata.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), 3);
        assert_eq!(counter(&file, "under_oom"), 0);
        assert_eq!(counter(&dir.path().join("missing"), "max"), 0);
    }

    #[test]
    fn without_cgroups_the_limits_are_rlimits_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            memory: Some(1 << 30),
            processes: Some(64),
            cpu_time: Some(Duration::from_secs(90)),
            disk: Some(1 << 20),
        };
        let (program, args, watch) = wrap(
            Enforcement::Rlimits,
            "warren-test",
            limits,
            dir.path(),
            "sh".into(),
            vec!["-c".into(), "true".into()],
        )
        .unwrap();
        assert_eq!(program, "prlimit");
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--fsize=1048576",
                "--as=1073741824",
                "--nproc=64",
                "--cpu=90",
                "--",
                "sh",
                "-c",
                "true"
            ]
        );
        assert!(watch.cgroup.is_none() && watch.disk.is_some());
    }

    #[tokio::test]
    async fn the_checkout_growth_is_what_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), vec![1_u8; 200_000]).unwrap();
        let watch = DiskWatch::start(dir.path(), 100_000);
        assert_eq!(watch.hit().await, None);
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/new"), vec![1_u8; 120_000]).unwrap();
        assert_eq!(watch.hit().await, Some(LimitHit::Disk(100_000)));
    }
}
