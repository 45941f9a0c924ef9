//! A container's own cgroup, where the kernel counts what its limits
//! refused or killed: found from its init process's `/proc/<pid>/cgroup`
//! (cgroup v1, v2, or a hybrid of both).

use super::cli::docker;
use crate::executor::limits::counter;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The cgroup files of a running container that say a limit was hit.
#[derive(Debug, Clone)]
pub(super) struct Cgroups {
    /// `pids.events` (`max N`: forks refused at the process limit).
    pub(super) pids_events: Option<PathBuf>,
    /// `memory.events` (v2) or `memory.oom_control` (v1): `oom_kill N`.
    pub(super) memory_events: Option<PathBuf>,
    /// CPU time of all the container's processes.
    pub(super) cpu_usage: Option<CpuUsage>,
}

/// Where a cgroup counts its CPU time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CpuUsage {
    /// v1 `cpuacct.usage`: nanoseconds.
    Nanos(PathBuf),
    /// v2 `cpu.stat`: `usage_usec N`.
    Stat(PathBuf),
}

impl CpuUsage {
    pub(super) fn read(&self) -> Duration {
        match self {
            Self::Nanos(file) => Duration::from_nanos(
                std::fs::read_to_string(file)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(0),
            ),
            Self::Stat(file) => Duration::from_micros(counter(file, "usage_usec")),
        }
    }
}

/// Where the container's limits show in its cgroup: from its init process's
/// `/proc/<pid>/cgroup` (cgroup v1 or v2). `None` until it runs, and when
/// the table does not name the container (a process that has exited shows
/// the root cgroup, whose counters are the whole host's).
pub(super) async fn find_cgroups(name: &str) -> Option<Cgroups> {
    let state = docker(&["inspect", "--format", "{{.State.Pid}} {{.Id}}", name])
        .await
        .ok()?;
    let (pid, id) = state.trim().split_once(' ')?;
    let pid: u32 = pid.parse().ok().filter(|pid| *pid > 0)?;
    let table = tokio::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .await
        .ok()?;
    cgroups_of(&table, id, Path::new("/sys/fs/cgroup"))
}

/// The limit files of the cgroups in a `/proc/<pid>/cgroup` table: the v1
/// hierarchies' when there are any (a hybrid system lists an empty v2 line
/// too), else the one v2 hierarchy's; only cgroups whose path names the
/// container `id`.
fn cgroups_of(table: &str, id: &str, root: &Path) -> Option<Cgroups> {
    let mut found = Cgroups {
        pids_events: None,
        memory_events: None,
        cpu_usage: None,
    };
    let mut unified = None;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id.is_empty() || !path.contains(id) {
            continue;
        }
        let relative = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(relative));
            continue;
        }
        for controller in controllers.split(',') {
            let dir = || root.join(controller).join(relative);
            match controller {
                "pids" => found.pids_events = Some(dir().join("pids.events")),
                "memory" => found.memory_events = Some(dir().join("memory.oom_control")),
                // Where systems that mount it with `cpu` link it, too.
                "cpuacct" => found.cpu_usage = Some(CpuUsage::Nanos(dir().join("cpuacct.usage"))),
                _ => {}
            }
        }
    }
    let v1 = found.pids_events.is_some() || found.memory_events.is_some();
    if let (false, Some(dir)) = (v1, unified) {
        found.pids_events = Some(dir.join("pids.events"));
        found.memory_events = Some(dir.join("memory.events"));
        found.cpu_usage = Some(CpuUsage::Stat(dir.join("cpu.stat")));
    }
    let any = found.pids_events.is_some() || found.memory_events.is_some();
    any.then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_files_are_found_for_both_cgroup_versions() {
        // A hybrid system: v1 hierarchies and an empty v2 one.
        let v1 = "8:pids:/docker/abc\n4:memory:/docker/abc\n1:cpu,cpuacct:/docker/abc\n0::/\n";
        let found = cgroups_of(v1, "abc", Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(
            found.pids_events.unwrap(),
            Path::new("/sys/fs/cgroup/pids/docker/abc/pids.events")
        );
        assert_eq!(
            found.memory_events.unwrap(),
            Path::new("/sys/fs/cgroup/memory/docker/abc/memory.oom_control")
        );
        assert_eq!(
            found.cpu_usage.unwrap(),
            CpuUsage::Nanos("/sys/fs/cgroup/cpuacct/docker/abc/cpuacct.usage".into())
        );
        let v2 = "0::/system.slice/docker-abc.scope\n";
        let found = cgroups_of(v2, "abc", Path::new("/sys/fs/cgroup")).unwrap();
        assert_eq!(
            found.pids_events.unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/docker-abc.scope/pids.events")
        );
        // An exited process shows the root cgroup: the host's counters.
        let exited = "8:pids:/\n4:memory:/\n2:cpuacct:/\n0::/\n";
        assert!(cgroups_of(exited, "abc", Path::new("/sys/fs/cgroup")).is_none());
    }
}
