//! Builders for the messages tests publish by hand: a [`CommitEvent`], a
//! [`Job`] and a [`JobResult`] with sensible defaults, changed field by
//! field, in place of the struct literals each test repeated.

use chrono::Utc;
use warren_common::ids::{BranchName, CommitId, JobId, RepoName, RepoUrl, WorkerId};
use warren_common::messages::{CommitEvent, Job, JobResult, JobStatus, Shard, TestCommand};

/// A commit event of `sha` on `main` of repository `sample` at `url`.
pub struct CommitEventBuilder(CommitEvent);

/// Starts a [`CommitEventBuilder`]; panics on an invalid url or sha.
pub fn commit_event(url: &str, sha: &str) -> CommitEventBuilder {
    CommitEventBuilder(CommitEvent {
        repo: RepoName::parse("sample").unwrap(),
        url: RepoUrl::parse(url).unwrap(),
        branch: BranchName::parse("main").unwrap(),
        sha: CommitId::parse(sha).unwrap(),
        parents: Vec::new(),
        author: "Test <t@x>".into(),
        summary: "a commit".into(),
        committed_at: Utc::now(),
        detected_at: Utc::now(),
    })
}

impl CommitEventBuilder {
    pub fn repo(mut self, repo: &str) -> Self {
        self.0.repo = RepoName::parse(repo).unwrap();
        self
    }
    pub fn branch(mut self, branch: &str) -> Self {
        self.0.branch = BranchName::parse(branch).unwrap();
        self
    }
    pub fn author(mut self, author: &str) -> Self {
        self.0.author = author.into();
        self
    }
    pub fn summary(mut self, summary: &str) -> Self {
        self.0.summary = summary.into();
        self
    }
    pub fn parents(mut self, parents: Vec<CommitId>) -> Self {
        self.0.parents = parents;
        self
    }
    pub fn build(self) -> CommitEvent {
        self.0
    }
}

/// A first attempt of the whole suite of `sha` on `main` of repository
/// `api` at `url`: `true` in a shell, a one-minute timeout.
pub struct JobBuilder(Job);

/// Starts a [`JobBuilder`]; panics on an invalid url or sha.
pub fn job(url: &str, sha: &str) -> JobBuilder {
    JobBuilder(Job {
        job_id: JobId::new(),
        attempt: 1,
        repo: RepoName::parse("api").unwrap(),
        url: RepoUrl::parse(url).unwrap(),
        branch: BranchName::parse("main").unwrap(),
        sha: CommitId::parse(sha).unwrap(),
        shard: Shard::WHOLE,
        command: TestCommand::Shell("true".into()),
        timeout_ms: 60_000,
        env: Default::default(),
        files: Vec::new(),
        junit: None,
        retry_failed: 0,
        image: None,
        published_at: Utc::now(),
        network: None,
        limits: None,
        result_key: None,
    })
}

/// A job for the commit `event` names (its repository, url, branch, sha).
pub fn job_for(event: &CommitEvent) -> JobBuilder {
    let mut builder = job(event.url.as_str(), event.sha.as_str());
    builder.0.repo = event.repo.clone();
    builder.0.branch = event.branch.clone();
    builder
}

impl JobBuilder {
    pub fn repo(mut self, repo: &str) -> Self {
        self.0.repo = RepoName::parse(repo).unwrap();
        self
    }
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.0.attempt = attempt;
        self
    }
    pub fn command(mut self, command: TestCommand) -> Self {
        self.0.command = command;
        self
    }
    /// The command as a script for `sh -c`.
    pub fn shell(self, script: &str) -> Self {
        self.command(TestCommand::Shell(script.into()))
    }
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.0.timeout_ms = timeout_ms;
        self
    }
    pub fn build(self) -> Job {
        self.0
    }
}

/// A passed result (exit code 0, no output) of a run by worker
/// `test-worker` on host `test-host`; proven with the job's key when it
/// has one (as its worker would).
pub struct JobResultBuilder(JobResult, Option<String>);

/// Starts a [`JobResultBuilder`] for `job` (its id, attempt, repo and sha,
/// and its result key) with a new run id.
pub fn result_for(job: &Job) -> JobResultBuilder {
    let mut builder = result(job.repo.as_str(), job.sha.as_str());
    builder.0.job_id = job.job_id;
    builder.0.attempt = job.attempt;
    builder.1 = job.result_key.clone();
    builder
}

/// Starts a [`JobResultBuilder`] of a job no one published (a new job id,
/// attempt 1) for `sha` of `repo`.
pub fn result(repo: &str, sha: &str) -> JobResultBuilder {
    JobResultBuilder(
        JobResult {
            job_id: JobId::new(),
            attempt: 1,
            run_id: uuid::Uuid::new_v4(),
            worker: WorkerId::parse("test-worker").unwrap(),
            host: "test-host".into(),
            repo: RepoName::parse(repo).unwrap(),
            sha: CommitId::parse(sha).unwrap(),
            status: JobStatus::Passed,
            exit_code: Some(0),
            signal: None,
            message: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            checkout_ms: 0,
            duration_ms: 0,
            output: String::new(),
            output_truncated: false,
            output_bytes: 0,
            tests: Vec::new(),
            file_timings: Vec::new(),
            report_problem: None,
            proof: None,
        },
        None,
    )
}

impl JobResultBuilder {
    pub fn run_id(mut self, run_id: uuid::Uuid) -> Self {
        self.0.run_id = run_id;
        self
    }
    pub fn worker(mut self, worker: &str) -> Self {
        self.0.worker = WorkerId::parse(worker).unwrap();
        self
    }
    pub fn host(mut self, host: &str) -> Self {
        self.0.host = host.into();
        self
    }
    pub fn status(mut self, status: JobStatus) -> Self {
        self.0.status = status;
        self
    }
    pub fn exit_code(mut self, exit_code: Option<i32>) -> Self {
        self.0.exit_code = exit_code;
        self
    }
    /// The output, and its length as the bytes written.
    pub fn output(mut self, output: &str) -> Self {
        self.0.output = output.into();
        self.0.output_bytes = output.len() as u64;
        self
    }
    pub fn times_ms(mut self, checkout_ms: u64, duration_ms: u64) -> Self {
        self.0.checkout_ms = checkout_ms;
        self.0.duration_ms = duration_ms;
        self
    }
    /// Without a proof, whatever the job's key (a forger's result).
    pub fn unproven(mut self) -> Self {
        self.1 = None;
        self
    }
    pub fn build(self) -> JobResult {
        let mut result = self.0;
        if let Some(key) = &self.1 {
            warren_common::proof::sign(&mut result, key);
        }
        result
    }
}
