//! What every job of a worker shares: the [`JobRunner`] (identity, limits,
//! credentials, metrics) and the command's environment. Used by `job` (one
//! delivery) and `suite` (the runs of one job), so neither imports the other
//! for it.

use crate::config::{AllowList, WorkerConfig};
use crate::executor::{Executor, Limits};
use crate::metrics::Metrics;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;
use warren_common::git::GitAuth;
use warren_common::ids::WorkerId;
use warren_common::messages::Job;

/// Prefix of the variables the worker keeps from the command (its own
/// configuration, which may hold the broker password) and sets itself.
const RESERVED_ENV_PREFIX: &[u8] = b"WARREN_";

/// What every job of a worker needs: its identity and limits.
#[derive(Debug, Clone)]
pub(crate) struct JobRunner {
    /// Reported in results.
    pub worker: WorkerId,
    /// Reported in results.
    pub host: String,
    /// Repositories this worker runs jobs for.
    pub allowed_repos: AllowList,
    /// Bytes of output kept per job.
    pub output_limit: usize,
    /// SIGTERM → SIGKILL delay.
    pub kill_grace: Duration,
    /// Interval of heartbeat events.
    pub heartbeat_interval: Duration,
    /// The environment the commands start from (without `WARREN_*`).
    pub base_env: Vec<(OsString, OsString)>,
    /// Where checkout and run times (and dropped live output) are counted.
    pub metrics: Metrics,
    /// Credentials for fetches (`[git]`).
    pub git: GitAuth,
    /// What starts the commands (`worker.executor`), checked at start.
    pub executor: Executor,
    /// Whether jobs may use the network (a job may also turn it off).
    pub network: bool,
    /// The most a job may use (a job may ask for less).
    pub limits: Limits,
}

impl JobRunner {
    /// A runner with `config`'s settings, `executor` and this process's
    /// environment, counting in `metrics`.
    pub(crate) fn new(config: &WorkerConfig, executor: Executor, metrics: Metrics) -> Self {
        Self {
            worker: config.id.clone(),
            host: config.host.clone(),
            allowed_repos: config.allowed_repos.clone(),
            output_limit: config.output_limit,
            kill_grace: config.kill_grace,
            heartbeat_interval: config.heartbeat_interval,
            // A container starts from its image's environment, not the
            // worker host's (whose PATH and HOME mean nothing in it).
            base_env: if executor.isolates_environment() {
                Vec::new()
            } else {
                std::env::vars_os().collect()
            },
            metrics,
            git: config.git.clone(),
            executor,
            network: config.allow_network,
            limits: config.limits,
        }
    }
}

/// The command's environment: `base` without any `WARREN_*` variable (the
/// worker's own settings, which can hold the broker password), the job's
/// `env`, then `CI=true` and the `WARREN_*` description of the job. Each
/// run adds `WARREN_FILES`, its files (see [`crate::substitute`]).
pub(crate) fn job_environment(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    job: &Job,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = base
        .into_iter()
        .filter(|(name, _)| !name.as_bytes().starts_with(RESERVED_ENV_PREFIX))
        .collect();
    for (name, value) in &job.env {
        env.insert(name.into(), value.into());
    }
    let own = [
        ("CI", "true".to_owned()),
        ("WARREN_JOB_ID", job.job_id.to_string()),
        ("WARREN_ATTEMPT", job.attempt.to_string()),
        ("WARREN_REPO", job.repo.to_string()),
        ("WARREN_BRANCH", job.branch.to_string()),
        ("WARREN_SHA", job.sha.to_string()),
        ("WARREN_SHARD_INDEX", job.shard.index.to_string()),
        ("WARREN_SHARD_COUNT", job.shard.count.to_string()),
    ];
    for (name, value) in own {
        env.insert(name.into(), value.into());
    }
    env.into_iter().collect()
}
