//! Fixtures for the store's unit tests: a fresh database, a commit event,
//! a plan, a result, a run's start.

use super::*;
use std::collections::BTreeMap;
use warren_common::ids::{BranchName, RepoUrl, SuitePath, WorkerId};

/// The retry budget of the tests: two lost runs.
pub(super) const BUDGET: RetryBudget = RetryBudget { max_lost_runs: 2 };

pub(super) fn event(sha: &str) -> CommitEvent {
    CommitEvent {
        repo: RepoName::parse("api").unwrap(),
        url: RepoUrl::parse("/srv/api.git").unwrap(),
        branch: BranchName::parse("main").unwrap(),
        sha: CommitId::parse(&sha.repeat(40)).unwrap(),
        parents: vec![],
        author: "A <a@x>".into(),
        summary: "change".into(),
        committed_at: Utc::now(),
        detected_at: Utc::now(),
    }
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

pub(super) fn result(job: &Job, worker: &str, status: JobStatus) -> JobResult {
    JobResult {
        job_id: job.job_id,
        attempt: job.attempt,
        run_id: uuid::Uuid::new_v4(),
        worker: WorkerId::parse(worker).unwrap(),
        host: "h".into(),
        repo: job.repo.clone(),
        sha: job.sha.clone(),
        status,
        exit_code: Some(if status == JobStatus::Passed { 0 } else { 1 }),
        signal: None,
        message: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        checkout_ms: 3,
        duration_ms: 10,
        output: format!("output of {worker}"),
        output_truncated: false,
        output_bytes: 12,
        tests: Vec::new(),
        file_timings: Vec::new(),
        report_problem: None,
    }
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
