//! `warren-dispatcher --config FILE`

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use warren_common::shutdown::Shutdown;
use warren_dispatcher::DispatcherConfig;

/// Warren's dispatcher: plans jobs for each commit and records the results.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; every setting can also be given as a
    /// WARREN_* environment variable (see the README).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match DispatcherConfig::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("warren-dispatcher: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    warren_common::telemetry::init(&config.log);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: DispatcherConfig) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    tracing::info!(broker = %config.broker.safe_url(), database = %config.database.display(),
                   results = %config.results_dir.display(), "dispatcher starting");
    warren_dispatcher::run(config, shutdown).await
}
