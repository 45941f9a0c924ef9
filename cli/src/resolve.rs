//! From what the user typed (a sha prefix, maybe a repository) to one
//! commit, with `GET /api/commits?sha=`.

use crate::api::{Client, CommitQuery};
use crate::error::Error;
use crate::format::{clean, short_sha, truncate};
use crate::model::CommitSummary;

/// The fewest hex digits accepted, as the API requires.
const MIN_PREFIX: usize = 4;

/// Candidates listed for an ambiguous prefix; more are summarised.
const MAX_CANDIDATES: u32 = 10;

/// One commit, named completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitRef {
    pub repo: String,
    pub sha: String,
}

/// The prefix in lower case, or why it is not one.
pub(crate) fn parse_prefix(text: &str) -> Result<String, Error> {
    let valid =
        (MIN_PREFIX..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(Error::Usage(format!(
            "{text:?} is not a commit: give its sha or a prefix of at least {MIN_PREFIX} hex digits"
        )));
    }
    Ok(text.to_ascii_lowercase())
}

/// The one commit the prefix names (within `repo` if given): not found and
/// ambiguous are errors (exit 2), the ambiguous one listing the candidates.
pub(crate) fn resolve(client: &Client, text: &str, repo: Option<&str>) -> Result<CommitRef, Error> {
    let prefix = parse_prefix(text)?;
    let query = CommitQuery {
        repo: repo.map(str::to_owned),
        sha: Some(prefix.clone()),
        limit: Some(MAX_CANDIDATES + 1),
        ..CommitQuery::default()
    };
    let answer = client.commits(&query)?.value;
    // The server filters; checking again costs nothing and guards against
    // one that ignores the parameter.
    let matches: Vec<CommitSummary> = answer
        .commits
        .into_iter()
        .filter(|commit| commit.sha.starts_with(&prefix) && repo.is_none_or(|r| commit.repo == r))
        .collect();
    match matches.as_slice() {
        [] => Err(Error::NotFound(match repo {
            Some(repo) => format!("no commit of {repo} starts with {prefix}"),
            None => format!("no commit starts with {prefix}"),
        })),
        [one] => Ok(CommitRef {
            repo: one.repo.clone(),
            sha: one.sha.clone(),
        }),
        many => Err(Error::Ambiguous {
            prefix,
            candidates: candidates(many),
        }),
    }
}

fn candidates(commits: &[CommitSummary]) -> String {
    let mut lines: Vec<String> = commits
        .iter()
        .take(MAX_CANDIDATES as usize)
        .map(|commit| {
            format!(
                "  {}  {}  {}  {}",
                clean(&commit.repo),
                short_sha(&commit.sha),
                clean(commit.branch.as_deref().unwrap_or("-")),
                truncate(&clean(commit.summary.as_deref().unwrap_or("")), 60),
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    if commits.len() > MAX_CANDIDATES as usize {
        lines.push("  and more".to_owned());
    }
    lines.push("type more digits, or name the repository with --repo".to_owned());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_hex_of_4_to_40_digits() {
        assert_eq!(parse_prefix("ABCD").unwrap(), "abcd");
        assert!(parse_prefix("abc").is_err());
        assert!(parse_prefix("abcg").is_err());
        assert!(parse_prefix(&"a".repeat(41)).is_err());
        assert!(parse_prefix(&"a".repeat(40)).is_ok());
    }
}
