//! `warren-worker [--config FILE]`: load and check the configuration, start
//! logging, run until SIGTERM/Ctrl-C (twice to force).

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use warren_common::shutdown::Shutdown;

/// After `run` returns, how long tasks still running (a fetch that cannot be
/// interrupted, a killed job's clean-up) may hold the process open.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit status for a configuration that cannot be used (nothing was started).
const EXIT_BAD_CONFIG: u8 = 2;

/// Runs Warren test jobs from the broker.
#[derive(Debug, Parser)]
#[command(name = "warren-worker", version, about)]
struct Args {
    /// TOML configuration file; without it, defaults and `WARREN_*`
    /// environment variables only.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, log) = match warren_worker::config::load(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("warren-worker: invalid configuration: {error}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // An executor that cannot work here stops the worker before it takes a
    // job: never a silent fallback to a weaker one.
    if let Err(error) = warren_worker::executor::Executor::start(&config.executor) {
        eprintln!("warren-worker: {error}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    warren_common::telemetry::init(&log);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("warren-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: warren_worker::WorkerConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = Shutdown::on_signals().context("installing the signal handlers")?;
        warren_worker::run(config, shutdown).await
    });
    // Do not wait for ever on blocking work that cannot be interrupted.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    result
}
