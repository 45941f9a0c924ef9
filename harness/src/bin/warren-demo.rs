//! `warren-demo`: Warren end to end on the local broker, in one command.
//!
//! Creates a sample repository, starts a dispatcher, two workers and a
//! watcher (the real binaries, each with its own TOML file), pushes six
//! commits at once (inside one poll interval), waits for the six result
//! files, prints the verdicts as a table and stops everything it started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::sample;

/// Longest wait for all verdicts: the slowest sample commit takes ~3 s.
const DEADLINE: Duration = Duration::from_secs(120);

/// How long `--watch` keeps everything running after the verdicts.
const WATCH_LINGER: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut dir = PathBuf::from("demo-output");
    let mut keep = false;
    let mut watch = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => match args.next() {
                Some(value) => dir = PathBuf::from(value),
                None => return usage("--dir needs a folder"),
            },
            "--keep" => keep = true,
            "--watch" => watch = true,
            "-h" | "--help" => {
                println!(
                    "usage: warren-demo [--dir FOLDER (default demo-output)] [--keep] [--watch]"
                );
                println!("  --keep   leave the broker queues (prefix warren-demo) in place");
                println!(
                    "  --watch  slower tests, and everything keeps running for {WATCH_LINGER:?} after"
                );
                println!(
                    "           the verdicts: time to follow the status page, the queues and /metrics"
                );
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if dir.exists()
        && let Err(error) = std::fs::remove_dir_all(&dir)
    {
        eprintln!("cannot clear {}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    let dir = match std::fs::create_dir_all(&dir).and_then(|()| dir.canonicalize()) {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("cannot create {}: {error}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if std::net::TcpStream::connect("127.0.0.1:5672").is_err() {
        eprintln!(
            "RabbitMQ is not reachable on 127.0.0.1:5672. Start it with `rabbitmq-server -detached` \
             (or run ./scripts/demo.sh, which does)."
        );
        return ExitCode::FAILURE;
    }
    println!(
        "Starting a dispatcher, 2 workers and a watcher in {} ...",
        dir.display()
    );
    let mut options = ClusterOptions::new("demo");
    options.dir = Some(dir.clone());
    options.prefix = Some("warren-demo".into());
    options.poll_interval = "1s".into();
    // The status page on the usual port when it is free.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_ok() {
        options.http_listen = "127.0.0.1:8080".into();
    }
    if watch {
        // Every test script of the sample sleeps a little: long enough to
        // see commits queue, run and finish on the page.
        options.env.push(("DEMO_SLOW".into(), "1".into()));
    }
    let mut cluster = Cluster::start(options);
    cluster.keep_queues(keep);
    println!(
        "Status page: {}  ·  queues: http://localhost:15672 (guest/guest), prefix warren-demo  ·  metrics: {}/metrics",
        cluster.http_url(),
        cluster.http_url()
    );

    let story = sample::story();
    let started = Instant::now();
    // The first commit creates the branch; the watcher publishes a branch's
    // tip the first time it sees it. The rest are pushed together, inside
    // one poll interval: every one of them is tested, oldest first.
    let (first, rest) = story.split_first().expect("the story has commits");
    let mut shas = vec![
        cluster
            .upstream
            .commit("main", first.summary, &first.changes),
    ];
    println!("Pushed the first commit; waiting for the watcher to see the new branch ...");
    if let Err(missing) = cluster.wait_for_results(&shas, DEADLINE) {
        eprintln!(
            "no result for the first commit {}\n{}",
            missing.join(", "),
            cluster.all_logs()
        );
        return ExitCode::FAILURE;
    }
    shas.extend(
        rest.iter()
            .map(|step| cluster.upstream.commit("main", step.summary, &step.changes)),
    );
    println!(
        "Pushed {} more commits to main at once; waiting for their results ...\n",
        rest.len()
    );

    let results = cluster.wait_for_results(&shas, DEADLINE);
    let elapsed = started.elapsed();
    let mut ok = true;
    match &results {
        Ok(reports) => {
            println!(
                "{:<3} {:<12}  {:<48} {:<10} {:<9} {:>7}",
                "#", "commit", "summary", "verdict", "worker", "time"
            );
            for (index, (step, report)) in story.iter().zip(reports).enumerate() {
                let status = report["status"].as_str().unwrap_or("?");
                let worker = report["jobs"][0]["worker"].as_str().unwrap_or("-");
                let time = report["duration_ms"].as_u64().map_or("-".to_owned(), |ms| {
                    if ms < 1000 {
                        format!("{ms} ms")
                    } else {
                        format!("{:.1} s", ms as f64 / 1000.0)
                    }
                });
                let sha = report["sha"].as_str().unwrap_or("?");
                println!(
                    "{:<3} {:<12}  {:<48} {:<10} {:<9} {:>7}",
                    index + 1,
                    &sha[..12.min(sha.len())],
                    step.summary,
                    status,
                    worker,
                    time
                );
                if let Some(message) = report["message"].as_str() {
                    println!("{:<17} └ {}", "", first_line(message));
                }
                ok &= status == step.expected;
            }
            println!(
                "\nAll {} verdicts in {:.1}s. Result files: {}/sample/<sha>.json",
                reports.len(),
                elapsed.as_secs_f64(),
                cluster.results_dir().display()
            );
        }
        Err(missing) => {
            ok = false;
            eprintln!("no result after {DEADLINE:?} for: {}", missing.join(", "));
            eprintln!("{}", cluster.all_logs());
        }
    }
    if watch {
        println!(
            "Everything keeps running for {WATCH_LINGER:?}: look at the page, the queues, /metrics ..."
        );
        std::thread::sleep(WATCH_LINGER);
    }
    println!("Logs: {}/logs. Stopping everything ...", dir.display());
    for (name, code) in cluster.stop() {
        if code != Some(0) {
            eprintln!("{name} exited with {code:?}");
            ok = false;
        }
    }
    if ok {
        println!("Done: every commit got the verdict it deserved.");
        ExitCode::SUCCESS
    } else {
        eprintln!("Some verdicts were not the expected ones (see above).");
        ExitCode::FAILURE
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn usage(message: &str) -> ExitCode {
    eprintln!("warren-demo: {message} (try --help)");
    ExitCode::from(2)
}
