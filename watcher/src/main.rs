//! `warren-watcher`: parses arguments, loads the configuration, starts
//! logging and runs the library's [`run`](warren_watcher::run) or
//! [`poll_once`](warren_watcher::poll_once).

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use warren_common::shutdown::Shutdown;
use warren_watcher::WatcherConfig;

/// Longest wait at exit for blocking work still running (a fetch that does
/// not notice cancellation, such as one stuck connecting), in seconds. Its
/// results are not needed: nothing is recorded before a confirmed publish.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Exit status for an unusable configuration or command line.
const EXIT_USAGE: u8 = 2;

/// Watches git repositories and publishes every new commit to RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "warren-watcher", version)]
struct Args {
    /// TOML configuration file; WARREN_* environment variables override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Poll every repository once, publish what is new, and exit
    /// (for a git post-receive hook).
    #[arg(long)]
    once: bool,
    /// With --once: poll only this repository (repeatable).
    #[arg(long = "repo", value_name = "NAME", requires = "once")]
    repos: Vec<String>,
    /// Check the configuration, print it, and exit.
    #[arg(long, conflicts_with = "once")]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match WatcherConfig::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("warren-watcher: invalid configuration: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(unknown) = args.repos.iter().find(|name| config.repo(name).is_none()) {
        eprintln!("warren-watcher: --repo {unknown}: no such repository in the configuration");
        return ExitCode::from(EXIT_USAGE);
    }
    if !args.repos.is_empty() {
        config
            .repos
            .retain(|repo| args.repos.iter().any(|name| name == repo.name.as_str()));
    }
    if args.check {
        print_config(&config);
        return ExitCode::SUCCESS;
    }
    warren_common::telemetry::init(&config.log);

    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| {
            let result = runtime.block_on(async {
                if args.once {
                    let outcomes = warren_watcher::poll_once(&config)
                        .await
                        .context("polling once")?;
                    for outcome in outcomes {
                        println!(
                            "{}: {} new commit(s) published",
                            outcome.repo,
                            outcome.published()
                        );
                    }
                    Ok(())
                } else {
                    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
                    warren_watcher::run(config, shutdown)
                        .await
                        .context("watching repositories")
                }
            });
            runtime.shutdown_timeout(EXIT_GRACE);
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("warren-watcher: {}", warren_watcher::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// What `--check` prints: the validated values, the broker password masked.
fn print_config(config: &WatcherConfig) {
    println!("broker: {}", config.broker.safe_url());
    println!("prefix: {}", config.broker.topology.prefix());
    println!("state_dir: {}", config.state_dir.display());
    for repo in &config.repos {
        println!(
            "repo {}: url={} branches={} poll_interval={} backfill={} first_parent={}",
            repo.name,
            warren_watcher::mirror::display_url(&repo.url),
            repo.branches.patterns().join(","),
            humantime::format_duration(repo.poll_interval),
            repo.backfill,
            repo.first_parent
        );
    }
}
