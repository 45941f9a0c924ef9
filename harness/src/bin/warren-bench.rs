//! `warren-bench`: commits with a trivial test (`true`) through the whole
//! system (watcher, dispatcher, W workers: the real binaries), against the
//! raw speed of the same broker.
//!
//! Three measurements, in one run:
//! 1. raw broker: confirmed publish → consume → ack, pipelined (messages/s)
//!    and one at a time (round-trip latency);
//! 2. throughput: N commits pushed at once, from the first detection to the
//!    last result (commits/s);
//! 3. latency: commits pushed one at a time, each after the previous result,
//!    from detection (the watcher's `detected_at`) to the recorded result
//!    (the dispatcher's `finished_at`), with where the time goes.
//!
//! `cargo run --release -p warren-harness --bin warren-bench -- --commits 500 --workers 4`
//!
//! `--executor sandbox|container` runs the workers' commands that way
//! (`--image`, default `debian:bookworm-slim`, for `container`): the
//! latency then shows the executor's cost per job against `process`.

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use warren_harness::broker::TestBroker;
use warren_harness::cluster::{Cluster, ClusterOptions};

struct Args {
    commits: usize,
    latency_commits: usize,
    workers: usize,
    slots: usize,
    sync: String,
    executor: String,
    image: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        commits: 500,
        latency_commits: 50,
        workers: 4,
        slots: 1,
        sync: "full".into(),
        executor: "process".into(),
        image: "debian:bookworm-slim".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--commits" => {
                args.commits = value()?.parse().map_err(|e| format!("--commits: {e}"))?
            }
            "--latency-commits" => {
                args.latency_commits = value()?
                    .parse()
                    .map_err(|e| format!("--latency-commits: {e}"))?
            }
            "--workers" => {
                args.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?
            }
            "--slots" => args.slots = value()?.parse().map_err(|e| format!("--slots: {e}"))?,
            "--sync" => args.sync = value()?,
            "--executor" => args.executor = value()?,
            "--image" => args.image = value()?,
            "-h" | "--help" => {
                return Err(
                    "usage: warren-bench [--commits 500] [--latency-commits 50] [--workers 4] \
                            [--slots 1] [--sync full|normal] [--executor process|sandbox|container] \
                            [--image debian:bookworm-slim]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!(
        "warren-bench: {} workers x {} slots, dispatcher sync={}, executor {}",
        args.workers, args.slots, args.sync, args.executor
    );

    let raw = runtime.block_on(raw_broker(5_000, 200));
    println!(
        "raw broker: {:.0} confirmed publish+consume+ack/s pipelined; one at a time p50 {:.2} ms p99 {:.2} ms",
        raw.rate, raw.p50_ms, raw.p99_ms
    );

    let mut options = ClusterOptions::new("bench");
    options.workers = args.workers;
    options.slots = args.slots;
    options.poll_interval = "100ms".into();
    options.dispatcher_extra = format!("sync = \"{}\"", args.sync);
    options.worker_extra = format!(
        "executor = \"{}\"\ndefault_image = \"{}\"\n",
        args.executor, args.image
    );
    let mut cluster = Cluster::start(options);
    if !runtime.block_on(cluster.wait_for_workers(args.workers as u32, Duration::from_secs(60))) {
        eprintln!("workers did not start\n{}", cluster.all_logs());
        return ExitCode::FAILURE;
    }
    let spec: &[(&str, Option<&str>)] = &[(
        "warren.toml",
        Some("command = \"true\"\ntimeout = \"1m\"\n"),
    )];
    // The branch's first sight publishes only its tip: make it, and wait.
    let base = cluster.upstream.commit("main", "base", spec);
    if cluster
        .wait_for_results(&[base], Duration::from_secs(60))
        .is_err()
    {
        eprintln!("the first commit got no result\n{}", cluster.all_logs());
        return ExitCode::FAILURE;
    }

    // Throughput: a push of N commits at once. They are made on a branch
    // nobody watches, then `main` moves to the last one, as a `git push` of
    // N commits would (making them on `main` one by one would measure how
    // fast this program makes commits).
    let base_tip = cluster.upstream.tip("main");
    let mut parent = base_tip.clone();
    let shas: Vec<String> = (0..args.commits)
        .map(|i| {
            let sha = cluster.upstream.commit_on(
                "bench-staging",
                parent.as_deref(),
                &format!("bench {i}"),
                &[("n.txt", Some(&i.to_string()))],
            );
            parent = Some(sha.clone());
            sha
        })
        .collect();
    cluster
        .upstream
        .reset("main", shas.last().expect("at least one commit"));
    let reports = match cluster.wait_for_results(&shas, Duration::from_secs(600)) {
        Ok(reports) => reports,
        Err(missing) => {
            eprintln!(
                "{} commits got no result\n{}",
                missing.len(),
                cluster.all_logs()
            );
            return ExitCode::FAILURE;
        }
    };
    let first_detected = reports.iter().filter_map(|r| time(r, "detected_at")).min();
    let last_finished = reports.iter().filter_map(|r| time(r, "finished_at")).max();
    let span = match (first_detected, last_finished) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(1) as f64 / 1000.0,
        _ => f64::NAN,
    };
    let throughput = args.commits as f64 / span;
    // Where the backlog waited: when the dispatcher had received (and
    // planned) the last commit, and when the last job started on a worker.
    if let Some(first) = first_detected {
        let last = |key: &str| {
            reports
                .iter()
                .filter_map(|r| time(r, key))
                .max()
                .map_or(f64::NAN, |t| (t - first).num_milliseconds() as f64 / 1000.0)
        };
        println!(
            "  backlog: last commit received by the dispatcher after {:.2} s, last job started after {:.2} s, last result after {:.2} s",
            last("received_at"),
            last("started_at"),
            last("finished_at")
        );
    }
    let failed = reports.iter().filter(|r| r["status"] != "passed").count();
    println!(
        "throughput: {} commits in {span:.2} s = {throughput:.1} commits/s ({failed} not passed)",
        args.commits
    );

    // Latency: one commit at a time.
    let mut total = Vec::new();
    let mut parts: [Vec<f64>; 4] = Default::default();
    for i in 0..args.latency_commits {
        let sha = cluster.upstream.commit(
            "main",
            &format!("latency {i}"),
            &[("l.txt", Some(&i.to_string()))],
        );
        let Ok(reports) = cluster.wait_for_results(&[sha], Duration::from_secs(60)) else {
            eprintln!("no result for latency commit {i}\n{}", cluster.all_logs());
            return ExitCode::FAILURE;
        };
        let r = &reports[0];
        let (Some(detected), Some(received), Some(started), Some(finished)) = (
            time(r, "detected_at"),
            time(r, "received_at"),
            time(r, "started_at"),
            time(r, "finished_at"),
        ) else {
            continue;
        };
        let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        total.push(ms(detected, finished));
        parts[0].push(ms(detected, received));
        parts[1].push(ms(received, started));
        parts[2].push(r["jobs"][0]["checkout_ms"].as_f64().unwrap_or(f64::NAN));
        parts[3].push(ms(started, finished));
    }
    println!(
        "latency (detection → result recorded), {} commits one at a time: p50 {:.1} ms p99 {:.1} ms",
        total.len(),
        percentile(&mut total, 0.50),
        percentile(&mut total, 0.99)
    );
    let names = [
        "watcher publish → dispatcher received",
        "received → worker started (plan, job publish, queue)",
        "  of which checkout on the worker (started → run)",
        "worker started → result recorded (checkout, run, result)",
    ];
    for (name, values) in names.iter().zip(parts.iter_mut()) {
        println!("  p50 {:>7.1} ms  {name}", percentile(values, 0.5));
    }
    let rate_per_commit = 4.0; // commit event, job, started event, result
    println!(
        "summary: commits={} workers={} throughput={throughput:.1}/s latency_p50_ms={:.1} latency_p99_ms={:.1} \
         raw_roundtrips_per_s={:.0} overhead_ratio={:.1} (raw/{rate_per_commit} messages per commit ÷ throughput)",
        args.commits,
        args.workers,
        percentile(&mut total, 0.50),
        percentile(&mut total, 0.99),
        raw.rate,
        raw.rate / rate_per_commit / throughput
    );
    cluster.stop();
    ExitCode::SUCCESS
}

fn time(report: &serde_json::Value, key: &str) -> Option<DateTime<Utc>> {
    report[key]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

struct Raw {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Confirmed publishes to a durable quorum queue, consumed and acked by a
/// second connection: `pipelined` messages with a window of 100 in flight,
/// then `single` one at a time.
async fn raw_broker(pipelined: usize, single: usize) -> Raw {
    let broker = TestBroker::new("bench-raw");
    let connect =
        || lapin::Connection::connect_uri(broker.config.uri().clone(), Default::default());
    let (publisher, consumer) = (
        connect().await.expect("connect"),
        connect().await.expect("connect"),
    );
    let pub_channel = publisher.create_channel().await.expect("channel");
    pub_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let queue = format!("{}.raw", broker.prefix);
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    pub_channel
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .expect("declare");
    let con_channel = consumer.create_channel().await.expect("channel");
    con_channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = con_channel
        .basic_consume(
            queue.clone().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let body = vec![b'x'; 300];
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    // Pipelined.
    let started = Instant::now();
    let consumer_task = {
        let mut received = 0;
        async move {
            while received < pipelined {
                let delivery = deliveries
                    .next()
                    .await
                    .expect("delivery")
                    .expect("delivery");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                received += 1;
            }
            deliveries
        }
    };
    let publisher_task = async {
        let mut window = std::collections::VecDeque::new();
        for _ in 0..pipelined {
            window.push_back(publish(&pub_channel, &body, &props, &queue).await);
            if window.len() >= 100 {
                window
                    .pop_front()
                    .expect("confirm")
                    .await
                    .expect("confirmed");
            }
        }
        for confirm in window {
            confirm.await.expect("confirmed");
        }
    };
    let (mut deliveries, ()) = tokio::join!(consumer_task, publisher_task);
    let rate = pipelined as f64 / started.elapsed().as_secs_f64();

    // One at a time.
    let mut latencies = Vec::with_capacity(single);
    for _ in 0..single {
        let t = Instant::now();
        publish(&pub_channel, &body, &props, &queue)
            .await
            .await
            .expect("confirmed");
        let delivery = deliveries
            .next()
            .await
            .expect("delivery")
            .expect("delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = pub_channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = publisher.close(200, "bye".into()).await;
    let _ = consumer.close(200, "bye".into()).await;
    broker.cleanup().await;
    Raw {
        rate,
        p50_ms: percentile(&mut latencies, 0.5),
        p99_ms: percentile(&mut latencies, 0.99),
    }
}

/// Publishes one message and returns its confirm, not awaited yet.
async fn publish(
    channel: &lapin::Channel,
    body: &[u8],
    properties: &lapin::BasicProperties,
    queue: &str,
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            "".into(),
            queue.to_owned().into(),
            BasicPublishOptions::default(),
            body,
            properties.clone(),
        )
        .await
        .expect("publish")
}
