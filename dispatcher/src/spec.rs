//! `warren.toml`: how a commit says it wants to be tested.
//!
//! The file sits at the repository root of the commit itself, so a change to
//! how tests run is tested with the change. Every key is optional; what is
//! missing comes from the dispatcher's `[defaults]`.
//!
//! ```toml
//! command = "python3 -m unittest discover -s tests"   # or ["cargo", "test"]
//! timeout = "5m"
//!
//! [env]
//! PYTHONDONTWRITEBYTECODE = "1"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_common::messages::{TestCommand, validate_env_name};

/// The name of the file, at the root of the commit's tree.
pub const SPEC_FILE: &str = "warren.toml";

/// Largest `warren.toml` read, in bytes: it is a few lines; anything bigger
/// is a mistake or an attack on the dispatcher's memory.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// How to test a commit, after defaults were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSpec {
    /// `None` only in the defaults: a commit needs a command from somewhere.
    pub command: Option<TestCommand>,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    command: Option<TestCommand>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A plan for a commit: one job per shard (one shard for now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub command: TestCommand,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
}

/// Turns the contents of `warren.toml` (or `None` when the commit has none)
/// into a plan, or a message saying what is wrong for the commit's result.
pub fn plan(
    contents: Option<&[u8]>,
    defaults: &TestSpec,
    max_timeout: Duration,
) -> Result<Plan, String> {
    let file =
        match contents {
            None => None,
            Some(bytes) if bytes.len() > MAX_SPEC_BYTES => {
                return Err(format!(
                    "{SPEC_FILE} is {} bytes, more than the limit of {MAX_SPEC_BYTES}",
                    bytes.len()
                ));
            }
            Some(bytes) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|_| format!("{SPEC_FILE} is not valid UTF-8"))?;
                Some(toml::from_str::<SpecFile>(text).map_err(|error| {
                    format!("{SPEC_FILE} is invalid: {}", error.to_string().trim())
                })?)
            }
        };
    let (command, timeout, env) = match file {
        Some(file) => (file.command, file.timeout, file.env),
        None => (None, None, BTreeMap::new()),
    };
    let command = command
        .or_else(|| defaults.command.clone())
        .ok_or_else(|| {
            if contents.is_some() {
                format!(
                    "{SPEC_FILE} has no `command` and the dispatcher has no default \
                 (defaults.command)"
                )
            } else {
                format!(
                    "the commit has no {SPEC_FILE} at its root and the dispatcher has no \
                 default command (defaults.command)"
                )
            }
        })?;
    command
        .validate()
        .map_err(|message| format!("{SPEC_FILE}: `command`: {message}"))?;
    let timeout = timeout.unwrap_or(defaults.timeout);
    if timeout.is_zero() || timeout > max_timeout {
        return Err(format!(
            "{SPEC_FILE}: `timeout` is {}, but it must be more than 0 and at most {}",
            humantime::format_duration(timeout),
            humantime::format_duration(max_timeout)
        ));
    }
    let mut merged = defaults.env.clone();
    for (name, value) in env {
        validate_env_name(&name).map_err(|message| format!("{SPEC_FILE}: `env`: {message}"))?;
        merged.insert(name, value);
    }
    Ok(Plan {
        command,
        timeout,
        env: merged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(command: Option<&str>) -> TestSpec {
        TestSpec {
            command: command.map(|c| TestCommand::Shell(c.into())),
            timeout: Duration::from_secs(600),
            env: BTreeMap::new(),
        }
    }

    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn the_file_wins_over_the_defaults() {
        let plan = plan(
            Some(b"command = \"make test\"\ntimeout = \"5s\"\n[env]\nA = \"1\"\n"),
            &defaults(Some("true")),
            MAX,
        )
        .unwrap();
        assert_eq!(plan.command, TestCommand::Shell("make test".into()));
        assert_eq!(plan.timeout, Duration::from_secs(5));
        assert_eq!(plan.env["A"], "1");
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let plan = plan(None, &defaults(Some("true")), MAX).unwrap();
        assert_eq!(plan.command, TestCommand::Shell("true".into()));
        assert_eq!(plan.timeout, Duration::from_secs(600));
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
            (b"command = ", "warren.toml is invalid"),
            (b"comand = \"x\"", "unknown field `comand`"),
            (b"timeout = \"1m\"", "has no `command`"),
            (b"command = \"x\"\ntimeout = \"2h\"", "at most 1h"),
            (b"command = \"x\"\ntimeout = \"soon\"", "invalid"),
            (b"command = []", "command is empty"),
            (
                b"command = \"x\"\n[env]\nWARREN_BROKER__URL = \"x\"",
                "reserved",
            ),
        ];
        for (contents, expected) in cases {
            let err = plan(Some(contents), &defaults(None), MAX).unwrap_err();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
        }
        let err = plan(None, &defaults(None), MAX).unwrap_err();
        assert!(err.contains("no warren.toml"), "{err}");
        let err = plan(Some(&[0xff, 0xfe]), &defaults(None), MAX).unwrap_err();
        assert!(err.contains("UTF-8"), "{err}");
        let big = vec![b'#'; MAX_SPEC_BYTES + 1];
        assert!(
            plan(Some(&big), &defaults(None), MAX)
                .unwrap_err()
                .contains("limit")
        );
    }
}
