//! The dispatcher's API, as the run reads it: readiness, workers, each
//! commit's status and detail.

use crate::REPO;
use crate::commits::Pushed;
use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use warren_harness::http;

/// The dispatcher's API at `http://127.0.0.1:<port>`.
pub(crate) struct Api(String);

impl Api {
    pub(crate) fn on_port(port: u16) -> Self {
        Self(format!("http://127.0.0.1:{port}"))
    }
}

impl Api {
    fn get(&self, path: &str) -> Option<Value> {
        let (status, body) = http::try_request("GET", &format!("{}{path}", self.0)).ok()?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    pub(crate) fn ready(&self) -> bool {
        matches!(
            http::try_request("GET", &format!("{}/readyz", self.0)),
            Ok((200, _))
        )
    }

    /// Workers the dispatcher heard from.
    pub(crate) fn workers(&self) -> usize {
        self.get("/api/workers")
            .and_then(|v| v["workers"].as_array().map(Vec::len))
            .unwrap_or(0)
    }

    /// The worker running `sha`'s job now.
    pub(crate) fn running_worker(&self, sha: &str) -> Option<String> {
        let detail = self.get(&format!("/api/commits/{REPO}/{sha}"))?;
        detail["jobs"][0]["attempts"]
            .as_array()?
            .iter()
            .find(|a| a["state"] == "running")
            .and_then(|a| a["worker"].as_str())
            .map(str::to_owned)
    }

    pub(crate) fn commit(&self, sha: &str) -> Result<Value> {
        self.get(&format!("/api/commits/{REPO}/{sha}"))
            .with_context(|| format!("GET /api/commits/{REPO}/{sha}"))
    }

    /// The repository's commits: sha → status (`running` while undecided).
    /// Refuses a sha listed twice.
    pub(crate) fn statuses(&self) -> Option<Result<BTreeMap<String, String>>> {
        let list = self.get(&format!("/api/commits?repo={REPO}&limit=500"))?;
        let mut statuses = BTreeMap::new();
        for commit in list["commits"].as_array()? {
            let sha = commit["sha"].as_str()?.to_owned();
            let status = commit["status"].as_str().unwrap_or("running").to_owned();
            if statuses.insert(sha.clone(), status).is_some() {
                return Some(Err(anyhow::anyhow!("commit {sha} is listed twice")));
            }
        }
        Some(Ok(statuses))
    }

    /// The statuses once every pushed commit has a verdict, or the error
    /// as soon as a sha is listed twice.
    pub(crate) fn all_decided(
        &self,
        pushed: &[Pushed],
    ) -> Option<Result<BTreeMap<String, String>>> {
        match self.statuses()? {
            Err(error) => Some(Err(error)),
            Ok(statuses) => pushed
                .iter()
                .all(|p| statuses.get(&p.sha).is_some_and(|s| s != "running"))
                .then_some(Ok(statuses)),
        }
    }
}
