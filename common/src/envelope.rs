//! How each message goes on the wire besides its body: routing key, message
//! id, persistence and the headers people see in the management UI. Built
//! here and nowhere else, so a message id (which the dedup of a reader may
//! rely on, and which shows in logs) has one form per message type.
//!
//! Routing keys are repository names wherever the message belongs to one,
//! so an operator can bind an extra queue for one repository's traffic.

use crate::ids::RepoName;
use crate::messages::{
    CancelJobs, CommitEvent, Job, JobEvent, JobEventKind, JobResult, LogLines, WorkerStatus,
};

/// Header: the repository (every message about one).
pub const REPO_HEADER: &str = "x-warren-repo";
/// Header: the branch a commit was seen on.
pub const BRANCH_HEADER: &str = "x-warren-branch";
/// Header: the commit id.
pub const SHA_HEADER: &str = "x-warren-sha";
/// Header: the job id.
pub const JOB_HEADER: &str = "x-warren-job";
/// Header: the attempt number of a job.
pub const ATTEMPT_HEADER: &str = "x-warren-attempt";

/// The routing key of [`WorkerStatus`] on the events exchange.
pub const WORKER_STATUS_ROUTING_KEY: &str = "worker";

/// Options of one publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Routing key (Warren uses the repository name).
    pub routing_key: &'a str,
    /// The AMQP message id; shows in the management UI and in logs.
    pub message_id: String,
    /// Survive a broker restart (delivery mode 2). Transient events say no.
    pub persistent: bool,
    /// Extra headers for people reading the queue.
    pub headers: Vec<(&'static str, String)>,
}

impl CommitEvent {
    /// `<repo>@<sha>`, persistent.
    pub fn envelope(&self) -> Outgoing<'_> {
        Outgoing {
            routing_key: self.repo.as_str(),
            message_id: format!("{}@{}", self.repo, self.sha),
            persistent: true,
            headers: vec![
                (REPO_HEADER, self.repo.to_string()),
                (BRANCH_HEADER, self.branch.to_string()),
                (SHA_HEADER, self.sha.to_string()),
            ],
        }
    }
}

impl Job {
    /// `<job>.<attempt>`, persistent.
    pub fn envelope(&self) -> Outgoing<'_> {
        Outgoing {
            routing_key: self.repo.as_str(),
            message_id: format!("{}.{}", self.job_id, self.attempt),
            persistent: true,
            headers: vec![
                (REPO_HEADER, self.repo.to_string()),
                (SHA_HEADER, self.sha.to_string()),
                (ATTEMPT_HEADER, self.attempt.to_string()),
            ],
        }
    }
}

impl JobResult {
    /// `<job>.<attempt>.result`, persistent.
    pub fn envelope(&self) -> Outgoing<'_> {
        Outgoing {
            routing_key: self.repo.as_str(),
            message_id: format!("{}.{}.result", self.job_id, self.attempt),
            persistent: true,
            headers: vec![
                (REPO_HEADER, self.repo.to_string()),
                (SHA_HEADER, self.sha.to_string()),
                (JOB_HEADER, self.job_id.to_string()),
            ],
        }
    }
}

impl JobEvent {
    /// `<job>.<attempt>.<started|heartbeat>`, transient. The event's body
    /// has no repository (adding one would break older readers, which
    /// refuse unknown fields), so the sender passes the job's.
    pub fn envelope<'a>(&self, repo: &'a RepoName) -> Outgoing<'a> {
        let kind = match self.event {
            JobEventKind::Started => "started",
            JobEventKind::Heartbeat => "heartbeat",
        };
        Outgoing {
            routing_key: repo.as_str(),
            message_id: format!("{}.{}.{kind}", self.job_id, self.attempt),
            persistent: false,
            headers: vec![
                (REPO_HEADER, repo.to_string()),
                (JOB_HEADER, self.job_id.to_string()),
            ],
        }
    }
}

impl WorkerStatus {
    /// `<worker>.status`, transient, routing key `worker`.
    pub fn envelope(&self) -> Outgoing<'static> {
        Outgoing {
            routing_key: WORKER_STATUS_ROUTING_KEY,
            message_id: format!("{}.status", self.worker),
            persistent: false,
            headers: Vec::new(),
        }
    }
}

impl LogLines {
    /// `<job>.<run>.<seq>`, transient; the routing key is the job id (the
    /// logs exchange is followed per job), so the caller keeps it alive.
    pub fn envelope<'a>(&self, routing_key: &'a str) -> Outgoing<'a> {
        Outgoing {
            routing_key,
            message_id: format!("{}.{}.{}", self.job_id, self.run_id, self.seq),
            persistent: false,
            headers: Vec::new(),
        }
    }
}

impl CancelJobs {
    /// `message_id` as the sender names the occasion (`cancel.<sha>`,
    /// `cancel.lost.<ms>`), transient, to every worker (no routing key: the
    /// control exchange is a fanout).
    pub fn envelope(&self, message_id: String) -> Outgoing<'static> {
        Outgoing {
            routing_key: "",
            message_id,
            persistent: false,
            headers: Vec::new(),
        }
    }
}
