//! Validated identifiers.
//!
//! Everything that arrives from the network, a repository or a config file and
//! may later become part of a path, a git ref or a command is parsed into one
//! of these types first. Once a value has one of these types it is safe to use:
//! a `RepoName` is a single path component, a `CommitId` is lowercase hex, a
//! `BranchName` follows git's ref rules. Deserialising runs the same checks, so
//! a message with a bad id fails to decode instead of reaching the code.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a value was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    /// Which kind of identifier was expected ("commit id", "repository name", …).
    pub kind: &'static str,
    /// The refused value, shortened so that a huge value cannot flood a log line.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Longest prefix of a refused value that an error message quotes, in characters.
const QUOTED_VALUE_MAX: usize = 80;

fn invalid(kind: &'static str, value: &str, reason: &'static str) -> InvalidId {
    let value = if value.chars().count() > QUOTED_VALUE_MAX {
        let head: String = value.chars().take(QUOTED_VALUE_MAX).collect();
        format!("{head}…")
    } else {
        value.to_owned()
    };
    InvalidId {
        kind,
        value,
        reason,
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $validate:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                $validate(value).map(Self)
            }

            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(value: &str) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                Self::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A git object id: 40 (SHA-1) or 64 (SHA-256) hex digits, stored lowercase.
    CommitId,
    validate_commit_id
);

string_id!(
    /// A repository's short name, as configured in the watcher (`api`, `web-app`).
    ///
    /// It is one path component: ASCII letters, digits, `.`, `_` and `-`, at most
    /// 100 characters, not starting with `.` or `-`. It names the result folder
    /// and the clone folders, so nothing else is allowed.
    RepoName,
    validate_repo_name
);

string_id!(
    /// A branch name (`main`, `release/1.2`), checked against git's rules for
    /// ref names, plus: no whitespace and no control characters.
    BranchName,
    validate_branch_name
);

string_id!(
    /// A worker's identity (`host-1a2b3c4d`): letters, digits, `.`, `_`, `-`.
    WorkerId,
    validate_worker_id
);

string_id!(
    /// The address of a git repository: a URL (`https://…`, `ssh://…`,
    /// `file://…`) or a local path. It is handed to libgit2 only, never to a
    /// shell; it must not start with `-`, contain whitespace or control
    /// characters, or be longer than 2048 bytes.
    RepoUrl,
    validate_repo_url
);

string_id!(
    /// A file of a repository, relative to its root (`tests/test_api.py`):
    /// what a suite is split into. It comes from the commit's tree, so it is
    /// checked before it reaches a command line or a path: relative, no
    /// `..` or empty parts, no control characters, not starting with `-`
    /// (a test runner would read it as an option), at most 4096 bytes.
    SuitePath,
    validate_suite_path
);

string_id!(
    /// A container image (`debian:bookworm-slim`, `registry:5000/team/ci@sha256:…`),
    /// as `image = "…"` in `warren.toml` names it. It reaches the `docker`
    /// command line as one argument, so it must not start with `-` (an
    /// option) and may hold only what a reference can: ASCII letters,
    /// digits and `._-/:@`, at most 255 bytes. Whether the name exists is
    /// the engine's business.
    ImageRef,
    validate_image_ref
);

impl CommitId {
    /// The first 12 digits, for logs and tables.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

/// Longest repository name, in bytes.
const REPO_NAME_MAX: usize = 100;
/// Longest branch name, in bytes (git itself allows more; nobody needs it).
const BRANCH_NAME_MAX: usize = 255;
/// Longest worker id, in bytes.
const WORKER_ID_MAX: usize = 128;
/// Longest repository URL, in bytes.
const REPO_URL_MAX: usize = 2048;

fn validate_commit_id(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "commit id";
    if value.len() != 40 && value.len() != 64 {
        return Err(invalid(KIND, value, "expected 40 or 64 hex digits"));
    }
    if !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(KIND, value, "expected only hex digits"));
    }
    Ok(value.to_ascii_lowercase())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn validate_repo_name(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "repository name";
    if value.is_empty() || value.len() > REPO_NAME_MAX {
        return Err(invalid(KIND, value, "expected 1 to 100 characters"));
    }
    if !value.chars().all(is_name_char) {
        return Err(invalid(
            KIND,
            value,
            "expected only ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    if value.starts_with('.') || value.starts_with('-') {
        return Err(invalid(KIND, value, "must not start with '.' or '-'"));
    }
    Ok(value.to_owned())
}

fn validate_worker_id(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "worker id";
    if value.is_empty() || value.len() > WORKER_ID_MAX {
        return Err(invalid(KIND, value, "expected 1 to 128 characters"));
    }
    if !value.chars().all(is_name_char) {
        return Err(invalid(
            KIND,
            value,
            "expected only ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(value.to_owned())
}

/// git check-ref-format rules, applied to the part after `refs/heads/`.
fn validate_branch_name(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "branch name";
    if value.is_empty() || value.len() > BRANCH_NAME_MAX {
        return Err(invalid(KIND, value, "expected 1 to 255 bytes"));
    }
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err(invalid(
            KIND,
            value,
            "must not contain whitespace, control characters or any of ~^:?*[\\",
        ));
    }
    if value.contains("..") || value.contains("@{") || value == "@" {
        return Err(invalid(
            KIND,
            value,
            "must not contain '..' or '@{' or be '@'",
        ));
    }
    if value.starts_with('-') {
        return Err(invalid(KIND, value, "must not start with '-'"));
    }
    for component in value.split('/') {
        if component.is_empty() {
            return Err(invalid(
                KIND,
                value,
                "must not start or end with '/' or contain '//'",
            ));
        }
        if component.starts_with('.') || component.ends_with(".lock") {
            return Err(invalid(
                KIND,
                value,
                "no part may start with '.' or end with '.lock'",
            ));
        }
    }
    if value.ends_with('.') {
        return Err(invalid(KIND, value, "must not end with '.'"));
    }
    Ok(value.to_owned())
}

fn validate_repo_url(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "repository url";
    if value.is_empty() || value.len() > REPO_URL_MAX {
        return Err(invalid(KIND, value, "expected 1 to 2048 bytes"));
    }
    if value.starts_with('-') {
        return Err(invalid(KIND, value, "must not start with '-'"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            KIND,
            value,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Longest image reference, in bytes (the engine's own limit for a name).
const IMAGE_REF_MAX: usize = 255;

fn validate_image_ref(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "image";
    if value.is_empty() || value.len() > IMAGE_REF_MAX {
        return Err(invalid(KIND, value, "expected 1 to 255 bytes"));
    }
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid(KIND, value, "must start with a letter or a digit"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
    {
        return Err(invalid(
            KIND,
            value,
            "expected only ASCII letters, digits and '.', '_', '-', '/', ':', '@'",
        ));
    }
    Ok(value.to_owned())
}

/// Longest suite file path, in bytes (Linux's PATH_MAX).
const SUITE_PATH_MAX: usize = 4096;

fn validate_suite_path(value: &str) -> Result<String, InvalidId> {
    const KIND: &str = "suite file path";
    if value.is_empty() || value.len() > SUITE_PATH_MAX {
        return Err(invalid(KIND, value, "expected 1 to 4096 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(KIND, value, "must not contain control characters"));
    }
    if value.starts_with('/') || value.starts_with('-') {
        return Err(invalid(
            KIND,
            value,
            "must be relative and not start with '-'",
        ));
    }
    if value
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid(
            KIND,
            value,
            "must not contain empty, '.' or '..' parts",
        ));
    }
    Ok(value.to_owned())
}

/// A job's identity: a UUID chosen by the dispatcher when it plans the job.
/// Every attempt of the job carries the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for JobId {
    type Err = InvalidId;
    fn from_str(value: &str) -> Result<Self, InvalidId> {
        uuid::Uuid::parse_str(value)
            .map(Self)
            .map_err(|_| invalid("job id", value, "expected a UUID"))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_are_hex_of_the_right_length_and_lowercased() {
        let sha1 = "A".repeat(40);
        assert_eq!(CommitId::parse(&sha1).unwrap().as_str(), "a".repeat(40));
        assert!(CommitId::parse(&"0".repeat(64)).is_ok());
        for bad in ["", "abc", &"g".repeat(40), &"0".repeat(41), "../../x"] {
            assert!(CommitId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn repo_names_are_single_safe_path_components() {
        for good in ["api", "web-app", "a.b_c", "X1"] {
            assert!(RepoName::parse(good).is_ok(), "{good:?} should pass");
        }
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "-rf", "a b", "é"] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(RepoName::parse(&"a".repeat(101)).is_err());
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for good in ["main", "release/1.2", "feature/x-y_z", "v1.0"] {
            assert!(BranchName::parse(good).is_ok(), "{good:?} should pass");
        }
        for bad in [
            "", "a..b", "/a", "a/", "a//b", ".a", "a/.b", "a.lock", "a b", "a~1", "a^", "a:b",
            "a?", "a*", "a[", "a\\b", "@", "a@{1}", "-x", "a.", "a\nb",
        ] {
            assert!(BranchName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn urls_refuse_option_injection_and_whitespace() {
        assert!(RepoUrl::parse("file:///tmp/repo").is_ok());
        assert!(RepoUrl::parse("/tmp/repo").is_ok());
        for bad in ["", "-uhack", "a b", "x\ny"] {
            assert!(RepoUrl::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn suite_paths_are_relative_and_harmless() {
        for good in ["tests/test_a.py", "a b/c-d.rb", "x", "src/-odd/name"] {
            assert!(SuitePath::parse(good).is_ok(), "{good:?} should pass");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "-rf",
            "a\nb",
            "a/",
        ] {
            assert!(SuitePath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn images_are_references_not_options() {
        for good in [
            "debian:bookworm-slim",
            "registry.example:5000/team/ci-image:1.2",
            "ubuntu@sha256:0123abcd",
            "busybox",
        ] {
            assert!(ImageRef::parse(good).is_ok(), "{good:?} should pass");
        }
        for bad in ["", "--privileged", "-v/:/host", "a b", "a\nb", ":tag", "é"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ImageRef::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn deserialising_validates() {
        let err = serde_json::from_str::<RepoName>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("repository name"), "{err}");
        assert!(serde_json::from_str::<JobId>("\"nope\"").is_err());
    }

    #[test]
    fn error_messages_quote_long_values_shortened() {
        let err = RepoName::parse(&"/".repeat(10_000)).unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}
