//! Fixtures for the store's unit tests: a fresh database, a commit event,
//! a plan, a result, a run's start.

use super::*;
use std::collections::BTreeMap;
use warren_common::ids::{SuitePath, WorkerId};
pub(super) use warren_harness::builders;

/// The retry budget of the tests: two lost runs.
pub(super) const BUDGET: RetryBudget = RetryBudget { max_lost_runs: 2 };

/// A commit of repository `api`, its sha `sha` repeated to 40 digits.
pub(super) fn event(sha: &str) -> CommitEvent {
    builders::commit_event("/srv/api.git", &sha.repeat(40))
        .repo("api")
        .author("A <a@x>")
        .summary("change")
        .build()
}

pub(super) fn plan() -> Plan {
    Plan {
        command: TestCommand::Shell("make test".into()),
        timeout: Duration::from_secs(60),
        env: BTreeMap::new(),
        suite: None,
        junit: None,
        retry_failed: 0,
        supersede: crate::spec::Globs::none(),
        network: None,
        limits: None,
        image: None,
    }
}

pub(super) fn try_insert(store: &mut Store, event: &CommitEvent) -> Result<Inserted> {
    let whole = [ShardPlan {
        files: Vec::new(),
        estimated_ms: 0,
    }];
    let plan = plan();
    let planned = Planned {
        plan: &plan,
        shards: &whole,
        selection: None,
    };
    store.insert_planned(event, &planned, Utc::now())
}

pub(super) fn insert(store: &mut Store, event: &CommitEvent) -> Vec<Job> {
    try_insert(store, event).unwrap().jobs
}

/// A result of `job` by `worker`: exit code 0 when it passed, 1 otherwise.
pub(super) fn result(job: &Job, worker: &str, status: JobStatus) -> JobResult {
    builders::result_for(job)
        .worker(worker)
        .host("h")
        .status(status)
        .exit_code(Some(if status == JobStatus::Passed { 0 } else { 1 }))
        .times_ms(3, 10)
        .output(&format!("output of {worker}"))
        .build()
}

pub(super) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db/warren.db"), SyncMode::Normal).unwrap();
    (dir, store)
}

pub(super) fn started(job: &Job, worker: &str, at: DateTime<Utc>) -> JobEvent {
    JobEvent {
        job_id: job.job_id,
        attempt: job.attempt,
        run_id: uuid::Uuid::new_v4(),
        worker: WorkerId::parse(worker).unwrap(),
        host: "h".into(),
        event: JobEventKind::Started,
        at,
    }
}

pub(super) fn states(store: &Store, commit_id: i64) -> Vec<(String, String)> {
    store.commit_report(commit_id).unwrap().jobs[0]
        .attempts
        .iter()
        .map(|a| (a.worker.clone(), a.state.clone()))
        .collect()
}

pub(super) fn suite_file(path: &str) -> SuitePath {
    SuitePath::parse(path).unwrap()
}
