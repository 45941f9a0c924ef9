//! The command line, as clap derives it.

use clap::{Args, Parser, Subcommand};

/// Where the dispatcher's HTTP API listens by default (`http.listen`).
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Warren's command-line client: commits, verdicts, logs and workers, from
/// the dispatcher's HTTP API.
///
/// Exit codes: 0 passed or done, 1 not passed or refused, 2 usage or not
/// found, 3 still running, 4 the dispatcher cannot be reached.
#[derive(Debug, Parser)]
#[command(name = "warren", version)]
pub struct Cli {
    /// The dispatcher's address.
    #[arg(long, global = true, env = "WARREN_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// A file holding the dispatcher's token (its `http.token_file`), which
    /// `retry` and `cancel` need when the dispatcher has one. Or put the
    /// token itself in `WARREN_TOKEN`.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Print the server's JSON instead of tables (for `logs`, one JSON
    /// object per chunk); exit codes stay the same. JSON keeps the API's
    /// shard index, counted from 0.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Recent commits, newest first.
    Status(StatusArgs),
    /// One commit: verdict, shards, failed and flaky tests. Exit 0 passed,
    /// 1 not passed, 3 still running.
    Show(CommitArgs),
    /// The output of a commit's jobs; `--follow` streams a running job.
    Logs(LogsArgs),
    /// Run a finished commit's jobs again.
    Retry(CommitArgs),
    /// Stop a running commit's undecided jobs.
    Cancel(CommitArgs),
    /// The workers heard from in the last 10 minutes.
    Workers,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this repository.
    #[arg(long)]
    pub repo: Option<String>,
    /// Only this branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// Only this verdict (passed, failed, timed_out, error, superseded,
    /// cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// How many commits (1 to 500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The commit: its sha or a prefix of at least 4 hex digits.
    pub sha: String,
    /// The repository, when the prefix matches commits of several.
    #[arg(long)]
    pub repo: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub commit: CommitArgs,
    /// Only the job of shard N, counted from 1 as `show` and the status
    /// page count shards ("shard 1 of 4"). Human output and `--job` count
    /// from 1; `--json` keeps the API's 0-based shard index.
    #[arg(long, value_name = "N", value_parser = shard_number)]
    pub job: Option<u32>,
    /// Stream the output of running jobs until they finish, then exit with
    /// their verdict (0 passed, 1 not passed).
    #[arg(long, short)]
    pub follow: bool,
}

/// `--job N`: a shard number, counted from 1; 0 is a usage error (exit 2).
fn shard_number(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err(
            "shards are counted from 1 (shard 1 is the first, as `warren show` \
                       and the status page number them)"
                .to_owned(),
        ),
        Ok(number) => Ok(number),
        Err(error) => Err(format!("not a shard number: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_counts_from_1() {
        assert_eq!(shard_number("1"), Ok(1));
        assert_eq!(shard_number("12"), Ok(12));
        assert!(shard_number("0").unwrap_err().contains("counted from 1"));
        assert!(shard_number("-1").is_err());
        assert!(shard_number("one").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
