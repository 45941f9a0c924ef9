//! A typed, blocking client for the dispatcher's HTTP API (docs/API.md).
//!
//! Every call returns the decoded value together with the server's own
//! text, which `--json` prints unchanged. Transport failures become
//! [`Error::Unreachable`], error statuses [`Error::Server`] with the
//! server's `{"error"}` text.

use crate::error::Error;
use crate::model::{Cancelled, Commit, CommitList, Retried, WorkerList};
use crate::sse::Events;
use serde::de::DeserializeOwned;
use std::io::BufReader;
use std::time::Duration;
use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig};
use ureq::{Agent, Body};

/// Time to open a connection: the dispatcher is on the same network, so a
/// few seconds without an answer means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time for a whole ordinary request, answer included: a large result file
/// (many shards with a lot of output) still arrives well within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Time for a log stream's headers; the body then has no time limit,
/// because a test may print nothing for many minutes.
const STREAM_HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest JSON answer read, in bytes: a result file keeps up to
/// `worker.output_limit` (at most 16 MiB) of output per shard, and
/// `max_shards` is 16 by default.
const MAX_ANSWER_BYTES: u64 = 512 * 1024 * 1024;

/// A decoded answer and the text it was decoded from.
#[derive(Debug)]
pub(crate) struct Answer<T> {
    pub value: T,
    pub raw: String,
}

/// Filters of `GET /api/commits`; `None` leaves one out.
#[derive(Debug, Default, Clone)]
pub(crate) struct CommitQuery {
    pub repo: Option<String>,
    pub branch: Option<String>,
    pub status: Option<String>,
    pub sha: Option<String>,
    pub limit: Option<u32>,
}

/// A job's live output: server-sent events over an open response.
pub(crate) type LogStream = Events<BufReader<ureq::BodyReader<'static>>>;

pub(crate) struct Client {
    base: String,
    agent: Agent,
    /// Sent with retry and cancel (`Authorization: Bearer …`).
    token: Option<String>,
}

impl Client {
    /// `base_url` is the dispatcher's address, `http://host:port` (a path
    /// prefix is kept, for a dispatcher behind a proxy).
    pub(crate) fn new(base_url: &str) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_owned();
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "--url {base_url:?}: expected http://HOST:PORT or https://HOST:PORT"
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(Error::Usage(format!("--url {base_url:?}: no host")));
        }
        let agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // The system's trust store, like the broker connection: a
            // dispatcher behind a proxy with a private CA is verified too.
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::PlatformVerifier)
                    .build(),
            )
            .user_agent(concat!("warren-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self {
            base,
            agent,
            token: None,
        })
    }

    /// Sends `token` with the writes (retry, cancel).
    pub(crate) fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// A POST, with the token when there is one.
    fn post(&self, url: String) -> Result<Response<Body>, ureq::Error> {
        let request = self.agent.post(url);
        match &self.token {
            Some(token) => request
                .header("authorization", format!("Bearer {token}"))
                .send_empty(),
            None => request.send_empty(),
        }
    }

    /// `GET /api/commits`: recent commits, newest first.
    pub(crate) fn commits(&self, query: &CommitQuery) -> Result<Answer<CommitList>, Error> {
        let mut request = self.agent.get(format!("{}/api/commits", self.base));
        let limit = query.limit.map(|limit| limit.to_string());
        let pairs = [
            ("repo", query.repo.as_deref()),
            ("branch", query.branch.as_deref()),
            ("status", query.status.as_deref()),
            ("sha", query.sha.as_deref()),
            ("limit", limit.as_deref()),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                request = request.query(key, value);
            }
        }
        self.json("the commit list", request.call())
    }

    /// `GET /api/commits/{repo}/{sha}`: the result file, also while it runs.
    pub(crate) fn commit(&self, repo: &str, sha: &str) -> Result<Answer<Commit>, Error> {
        let url = format!(
            "{}/api/commits/{}/{}",
            self.base,
            segment(repo),
            segment(sha)
        );
        self.json("the commit", self.agent.get(url).call())
    }

    /// `POST /api/commits/{repo}/{sha}/retry`.
    pub(crate) fn retry(&self, repo: &str, sha: &str) -> Result<Answer<Retried>, Error> {
        let url = format!(
            "{}/api/commits/{}/{}/retry",
            self.base,
            segment(repo),
            segment(sha)
        );
        self.json("retry", self.post(url))
    }

    /// `POST /api/commits/{repo}/{sha}/cancel`.
    pub(crate) fn cancel(&self, repo: &str, sha: &str) -> Result<Answer<Cancelled>, Error> {
        let url = format!(
            "{}/api/commits/{}/{}/cancel",
            self.base,
            segment(repo),
            segment(sha)
        );
        self.json("cancel", self.post(url))
    }

    /// `GET /api/workers`.
    pub(crate) fn workers(&self) -> Result<Answer<WorkerList>, Error> {
        let url = format!("{}/api/workers", self.base);
        self.json("the worker list", self.agent.get(url).call())
    }

    /// `GET /api/jobs/{job_id}/log`: the job's output as server-sent
    /// events, open until the server sends `end` (or the connection drops).
    pub(crate) fn job_log(&self, job_id: &str) -> Result<LogStream, Error> {
        let url = format!("{}/api/jobs/{}/log", self.base, segment(job_id));
        let response = self
            .agent
            .get(url)
            .header("accept", "text/event-stream")
            .config()
            .timeout_global(None)
            .timeout_recv_response(Some(STREAM_HEADERS_TIMEOUT))
            .build()
            .call();
        let response = self.checked(response)?;
        Ok(Events::new(BufReader::new(
            response.into_body().into_reader(),
        )))
    }

    /// An error status becomes [`Error::Server`]; a transport failure
    /// [`Error::Unreachable`] (or a usage error for a URL ureq refuses).
    fn checked(
        &self,
        response: Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, Error> {
        let mut response = response.map_err(|error| self.transport(error))?;
        let status = response.status().as_u16();
        if status < 400 {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .lossy_utf8(true)
            .read_to_string()
            .unwrap_or_default();
        Err(Error::Server {
            status,
            message: error_text(status, &text),
        })
    }

    fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        response: Result<Response<Body>, ureq::Error>,
    ) -> Result<Answer<T>, Error> {
        let mut response = self.checked(response)?;
        let raw = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|error| self.transport(error))?;
        let value = serde_json::from_str(&raw).map_err(|error| Error::Protocol {
            what: what.to_owned(),
            reason: error.to_string(),
        })?;
        Ok(Answer { value, raw })
    }

    fn transport(&self, error: ureq::Error) -> Error {
        match error {
            ureq::Error::BadUri(reason) => Error::Usage(format!("--url {}: {reason}", self.base)),
            ureq::Error::BodyExceedsLimit(limit) => Error::Protocol {
                what: self.base.clone(),
                reason: format!("an answer larger than {limit} bytes"),
            },
            other => Error::Unreachable {
                url: self.base.clone(),
                reason: reason(&other),
            },
        }
    }
}

/// ureq's message, with the io error's own words for a refused
/// connection ("Connection refused (os error 111)").
fn reason(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        other => other.to_string(),
    }
}

/// The `{"error": "..."}` text of an error answer, or what there is.
fn error_text(status: u16, body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    if let Ok(ErrorBody { error }) = serde_json::from_str(body) {
        return error;
    }
    let body = body.trim();
    if body.is_empty() {
        format!("the dispatcher answered HTTP {status}")
    } else {
        body.chars().take(500).collect()
    }
}

/// A path segment, percent-encoded but for RFC 3986's unreserved
/// characters (all a repository name, sha or job id should contain).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_names_and_encode_the_rest() {
        assert_eq!(segment("api-v2.x_y"), "api-v2.x_y");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_error_text_is_the_servers_when_there_is_one() {
        assert_eq!(
            error_text(404, r#"{"error": "no such commit"}"#),
            "no such commit"
        );
        assert_eq!(error_text(502, "Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_text(500, ""), "the dispatcher answered HTTP 500");
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(Client::new("http://127.0.0.1:8080/").is_ok());
        assert!(Client::new("https://ci.example/warren").is_ok());
        assert!(matches!(
            Client::new("127.0.0.1:8080"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(Client::new("http://"), Err(Error::Usage(_))));
    }
}
