//! `warren.toml`: how a commit says it wants to be tested.
//!
//! The file sits at the repository root of the commit itself, so a change to
//! how tests run is tested with the change. Every key is optional; what is
//! missing comes from the dispatcher's `[defaults]`. Unknown keys are errors.
//!
//! ```toml
//! command = "python3 -m pytest {files}"   # or ["cargo", "test"]; {files} / {file}: see below
//! timeout = "5m"                          # per job (shard)
//!
//! files = ["tests/**/test_*.py"]          # the suite: files of the commit's tree, by glob
//! shards = 4                              # split into 4 jobs; or:
//! # shard_duration = "30s"                # as many shards as make about 30 s each (from timings)
//! # max_shards = 16                       # with shard_duration
//! junit = "report.xml"                    # a JUnit XML report the command writes
//! retry_failed = 1                        # rerun failures once: fail-then-pass = flaky
//! supersede = ["feature/*"]               # branches where a newer commit cancels older ones
//! image = "debian:bookworm-slim"          # the container the command runs in (container workers)
//!
//! [env]
//! PYTHONDONTWRITEBYTECODE = "1"
//!
//! network = false                         # the command gets no network (sandbox, container)
//!
//! [limits]                                # per job; the worker's maxima win when lower
//! memory = "2 GiB"                        # all the command's processes
//! processes = 256                         # processes and threads at once
//! cpu_time = "20m"                        # CPU time of all its processes
//! disk = "5 GiB"                          # bytes it may add to its checkout
//!
//! [select]                                # run only the tests a change affects
//! rules = [{ paths = ["src/calc/**"], tests = ["tests/test_calc*.py"] }]
//! full_branches = ["main"]                # always the whole suite there
//! ```
//!
//! In the command, `{files}` stands for the shard's files (one argument
//! each) and `{file}` for one file, the command then running once per file;
//! the files are also in `WARREN_FILES`, one per line.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use warren_common::bytes::ByteSize;
use warren_common::ids::{ImageRef, SuitePath};
use warren_common::messages::{
    JobLimits, MAX_RETRY_FAILED, MAX_SHARDS, TestCommand, validate_env_name,
};

/// The name of the file, at the root of the commit's tree.
pub const SPEC_FILE: &str = "warren.toml";

/// Largest `warren.toml` read, in bytes: it is a few lines; anything bigger
/// is a mistake or an attack on the dispatcher's memory.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// Shards made with `shard_duration` when `max_shards` is not given.
pub const DEFAULT_MAX_SHARDS: u32 = 16;

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
    files: Option<Vec<String>>,
    shards: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    shard_duration: Option<Duration>,
    max_shards: Option<u32>,
    junit: Option<String>,
    #[serde(default)]
    retry_failed: u32,
    #[serde(default)]
    supersede: Vec<String>,
    select: Option<SelectFile>,
    network: Option<bool>,
    limits: Option<LimitsFile>,
    image: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    memory: Option<ByteSize>,
    processes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    cpu_time: Option<Duration>,
    disk: Option<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    full_branches: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    paths: Vec<String>,
    tests: Vec<String>,
}

/// How to test one commit.
#[derive(Debug, Clone)]
pub struct Plan {
    pub command: TestCommand,
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// The suite to split, when `files` is given.
    pub suite: Option<Suite>,
    pub junit: Option<SuitePath>,
    pub retry_failed: u32,
    /// Branches on which a newer commit cancels the older ones' jobs.
    pub supersede: Globs,
    /// `network = false`: `Some(false)`; absent: `None` (the worker decides).
    pub network: Option<bool>,
    /// `[limits]`, when given.
    pub limits: Option<JobLimits>,
    /// The container image to run in; a container worker uses its
    /// `worker.default_image` when `None`.
    pub image: Option<ImageRef>,
}

/// The files of a suite and how to split them.
#[derive(Debug, Clone)]
pub struct Suite {
    pub files: Globs,
    pub shards: ShardCount,
    pub select: Option<Select>,
}

/// How many shards to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    /// Exactly this many (fewer if there are fewer files).
    Fixed(u32),
    /// About this much work per shard, at most `max` shards.
    Duration { target: Duration, max: u32 },
}

/// Change-based selection rules.
#[derive(Debug, Clone)]
pub struct Select {
    pub rules: Vec<Rule>,
    pub full_branches: Globs,
}

/// Changes to `paths` affect the suite files matching `tests`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub paths: Globs,
    pub tests: Globs,
}

/// Glob patterns (`*` stays within one path segment, `**` crosses them),
/// with their text for messages.
#[derive(Debug, Clone)]
pub struct Globs {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Globs {
    /// Compiles `patterns`; the error names the bad one.
    pub fn new(patterns: &[String], key: &str) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob: Glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|error| format!("{SPEC_FILE}: `{key}`: pattern {pattern:?}: {error}"))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|error| format!("{SPEC_FILE}: `{key}`: {error}"))?;
        Ok(Self {
            set,
            patterns: patterns.to_vec(),
        })
    }

    /// No pattern: matches nothing.
    pub fn none() -> Self {
        Self {
            set: GlobSet::empty(),
            patterns: Vec::new(),
        }
    }

    /// Whether `path` matches one of the patterns.
    pub fn matches(&self, path: &str) -> bool {
        self.set.is_match(path)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
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
    let had_file = file.is_some();
    let file = file.unwrap_or(SpecFile {
        command: None,
        timeout: None,
        env: BTreeMap::new(),
        files: None,
        shards: None,
        shard_duration: None,
        max_shards: None,
        junit: None,
        retry_failed: 0,
        supersede: Vec::new(),
        select: None,
        network: None,
        limits: None,
        image: None,
    });
    let command = file
        .command
        .or_else(|| defaults.command.clone())
        .ok_or_else(|| {
            if had_file {
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
    let timeout = file.timeout.unwrap_or(defaults.timeout);
    if timeout.is_zero() || timeout > max_timeout {
        return Err(format!(
            "{SPEC_FILE}: `timeout` is {}, but it must be more than 0 and at most {}",
            humantime::format_duration(timeout),
            humantime::format_duration(max_timeout)
        ));
    }
    let mut env = defaults.env.clone();
    for (name, value) in file.env {
        validate_env_name(&name).map_err(|message| format!("{SPEC_FILE}: `env`: {message}"))?;
        env.insert(name, value);
    }
    if file.retry_failed > MAX_RETRY_FAILED {
        return Err(format!(
            "{SPEC_FILE}: `retry_failed` is {}, at most {MAX_RETRY_FAILED}",
            file.retry_failed
        ));
    }
    let junit = file
        .junit
        .map(|path| {
            SuitePath::parse(&path).map_err(|error| format!("{SPEC_FILE}: `junit`: {error}"))
        })
        .transpose()?;
    let image = file
        .image
        .map(|image| {
            ImageRef::parse(&image).map_err(|error| format!("{SPEC_FILE}: `image`: {error}"))
        })
        .transpose()?;
    let suite = suite(
        file.files,
        file.shards,
        file.shard_duration,
        file.max_shards,
        file.select,
    )?;
    let limits = file.limits.map(job_limits).transpose()?;
    Ok(Plan {
        command,
        timeout,
        env,
        suite,
        junit,
        retry_failed: file.retry_failed,
        supersede: Globs::new(&file.supersede, "supersede")?,
        network: file.network,
        limits,
        image,
    })
}

/// `[limits]`, each value more than 0.
fn job_limits(file: LimitsFile) -> Result<JobLimits, String> {
    let size = |value: Option<ByteSize>, key: &str| {
        value
            .map(|value| match value.bytes() {
                Ok(0) => Err(format!("{SPEC_FILE}: `limits.{key}` must be more than 0")),
                Ok(bytes) => Ok(bytes),
                Err(message) => Err(format!("{SPEC_FILE}: `limits.{key}`: {message}")),
            })
            .transpose()
    };
    if file.processes == Some(0) {
        return Err(format!(
            "{SPEC_FILE}: `limits.processes` must be more than 0"
        ));
    }
    let cpu_time_ms = match file.cpu_time {
        Some(time) if time.as_millis() == 0 => {
            return Err(format!(
                "{SPEC_FILE}: `limits.cpu_time` must be more than 0"
            ));
        }
        Some(time) => Some(u64::try_from(time.as_millis()).unwrap_or(u64::MAX)),
        None => None,
    };
    Ok(JobLimits {
        memory_bytes: size(file.memory, "memory")?,
        processes: file.processes,
        cpu_time_ms,
        disk_bytes: size(file.disk, "disk")?,
    })
}

/// The `files`, sharding and `[select]` keys.
fn suite(
    files: Option<Vec<String>>,
    shards: Option<u32>,
    shard_duration: Option<Duration>,
    max_shards: Option<u32>,
    select: Option<SelectFile>,
) -> Result<Option<Suite>, String> {
    let Some(files) = files else {
        for (given, key) in [
            (shards.is_some(), "shards"),
            (shard_duration.is_some(), "shard_duration"),
            (max_shards.is_some(), "max_shards"),
            (select.is_some(), "select"),
        ] {
            if given {
                return Err(format!(
                    "{SPEC_FILE}: `{key}` needs `files` (the globs of the suite's files)"
                ));
            }
        }
        return Ok(None);
    };
    if files.is_empty() {
        return Err(format!("{SPEC_FILE}: `files` is empty"));
    }
    let in_range = |n: u32| (1..=MAX_SHARDS).contains(&n);
    let shards = match (shards, shard_duration) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{SPEC_FILE}: give `shards` or `shard_duration`, not both"
            ));
        }
        (Some(n), None) if in_range(n) => ShardCount::Fixed(n),
        (Some(n), None) => {
            return Err(format!(
                "{SPEC_FILE}: `shards` is {n}, but it must be between 1 and {MAX_SHARDS}"
            ));
        }
        (None, Some(target)) if !target.is_zero() => {
            let max = max_shards.unwrap_or(DEFAULT_MAX_SHARDS);
            if !in_range(max) {
                return Err(format!(
                    "{SPEC_FILE}: `max_shards` is {max}, but it must be between 1 and {MAX_SHARDS}"
                ));
            }
            ShardCount::Duration { target, max }
        }
        (None, Some(_)) => {
            return Err(format!("{SPEC_FILE}: `shard_duration` must be more than 0"));
        }
        (None, None) => ShardCount::Fixed(1),
    };
    let select = select
        .map(|select| -> Result<Select, String> {
            let rules = select
                .rules
                .iter()
                .map(|rule| {
                    Ok(Rule {
                        paths: Globs::new(&rule.paths, "select.rules.paths")?,
                        tests: Globs::new(&rule.tests, "select.rules.tests")?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(Select {
                rules,
                full_branches: Globs::new(&select.full_branches, "select.full_branches")?,
            })
        })
        .transpose()?;
    Ok(Some(Suite {
        files: Globs::new(&files, "files")?,
        shards,
        select,
    }))
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
        assert!(plan.suite.is_none());
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let plan = plan(None, &defaults(Some("true")), MAX).unwrap();
        assert_eq!(plan.command, TestCommand::Shell("true".into()));
        assert_eq!(plan.timeout, Duration::from_secs(600));
    }

    #[test]
    fn a_suite_with_shards_selection_and_junit_is_read() {
        let text = br#"
command = "pytest {files}"
files = ["tests/**/test_*.py"]
shards = 3
junit = "out/report.xml"
retry_failed = 2
supersede = ["feature/*"]
[select]
rules = [{ paths = ["src/a/**"], tests = ["tests/test_a*.py"] }]
full_branches = ["main"]
"#;
        let plan = plan(Some(text), &defaults(None), MAX).unwrap();
        let suite = plan.suite.unwrap();
        assert_eq!(suite.shards, ShardCount::Fixed(3));
        assert!(suite.files.matches("tests/unit/test_x.py"));
        assert!(!suite.files.matches("src/test_x.py"));
        let select = suite.select.unwrap();
        assert!(select.rules[0].paths.matches("src/a/b/c.py"));
        assert!(select.full_branches.matches("main"));
        assert_eq!(plan.junit.unwrap().as_str(), "out/report.xml");
        assert_eq!(plan.retry_failed, 2);
        assert!(plan.supersede.matches("feature/x") && !plan.supersede.matches("feature/x/y"));
        assert_eq!(plan.image, None);
        let in_container = plan_of("command = \"x\"\nimage = \"debian:bookworm-slim\"\n");
        assert_eq!(
            in_container.image.map(|image| image.to_string()).as_deref(),
            Some("debian:bookworm-slim")
        );
        let by_time =
            plan_of("command = \"x {file}\"\nfiles = [\"t/*\"]\nshard_duration = \"30s\"\n")
                .suite
                .unwrap();
        assert_eq!(
            by_time.shards,
            ShardCount::Duration {
                target: Duration::from_secs(30),
                max: DEFAULT_MAX_SHARDS
            }
        );
    }

    fn plan_of(text: &str) -> Plan {
        plan(Some(text.as_bytes()), &defaults(None), MAX).unwrap()
    }

    #[test]
    fn network_and_limits_are_read() {
        let plain = plan_of("command = \"x\"\n");
        assert_eq!((plain.network, plain.limits), (None, None));
        let limited = plan_of(
            "command = \"x\"\nnetwork = false\n[limits]\nmemory = \"256 MiB\"\nprocesses = 64\n\
             cpu_time = \"10s\"\ndisk = 1024\n",
        );
        assert_eq!(limited.network, Some(false));
        assert_eq!(
            limited.limits,
            Some(JobLimits {
                memory_bytes: Some(256 << 20),
                processes: Some(64),
                cpu_time_ms: Some(10_000),
                disk_bytes: Some(1024),
            })
        );
        for (text, expected) in [
            ("[limits]\nmemory = \"2 GB\"", "`limits.memory`"),
            ("[limits]\ndisk = 0", "`limits.disk` must be more than 0"),
            ("[limits]\nprocesses = 0", "`limits.processes`"),
            ("[limits]\ncpu_time = \"0s\"", "`limits.cpu_time`"),
            ("[limits]\nswap = 1", "unknown field `swap`"),
            ("network = \"off\"", "network"),
        ] {
            let err = plan(
                Some(format!("command = \"x\"\n{text}\n").as_bytes()),
                &defaults(None),
                MAX,
            )
            .unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        let cases: [(&[u8], &str); 18] = [
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
            (b"command = \"x\"\nshards = 2", "`shards` needs `files`"),
            (b"command = \"x\"\nfiles = []", "`files` is empty"),
            (
                b"command = \"x\"\nfiles = [\"t/*\"]\nshards = 0",
                "between 1 and",
            ),
            (
                b"command = \"x\"\nfiles = [\"t/*\"]\nshards = 2\nshard_duration = \"1s\"",
                "not both",
            ),
            (b"command = \"x\"\nfiles = [\"t/[\"]", "pattern \"t/[\""),
            (b"command = \"x\"\njunit = \"../r.xml\"", "`junit`"),
            (b"command = \"x\"\nretry_failed = 9", "`retry_failed`"),
            (b"command = \"x\"\nimage = \"--privileged\"", "`image`"),
            (b"command = \"x\"\nimage = 3", "invalid type"),
            (
                b"command = \"x\"\nfiles = [\"t/*\"]\n[select]\nrules = [{ paths = [\"a\"] }]",
                "missing field `tests`",
            ),
            (
                b"command = \"x\"\n[select]\nfull_branches = [\"main\"]",
                "`select` needs `files`",
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
