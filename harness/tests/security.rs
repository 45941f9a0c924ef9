//! Who may do what on the broker, and where secrets may appear: the whole
//! system running with one least-privilege user per component (created by
//! `docker/rabbitmq-users.sh`), and no password in any log or result file.

use std::process::Command;
use std::time::Duration;
use warren_common::topology::Queue;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::process::wait_until;
use warren_harness::rabbit::Users;

const DEADLINE: Duration = Duration::from_secs(90);

fn secret() -> String {
    format!("pw-{}", uuid::Uuid::new_v4().simple())
}

fn url(user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@127.0.0.1:5672/%2f")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_users_run_the_system_and_no_password_is_logged() {
    let prefix = format!("t-sec-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let users = format!("{prefix}-");
    let (dispatcher_pw, watcher_pw, worker_pw, wrong_pw) = (secret(), secret(), secret(), secret());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker/rabbitmq-users.sh");
    let output = Command::new("sh")
        .args([script, &prefix, "/", &users])
        .env("DISPATCHER_PASSWORD", &dispatcher_pw)
        .env("WATCHER_PASSWORD", &watcher_pw)
        .env("WORKER_PASSWORD", &worker_pw)
        .output()
        .expect("running docker/rabbitmq-users.sh");
    let _users = Users::adopt(
        ["dispatcher", "watcher", "worker"]
            .iter()
            .map(|component| format!("{users}{component}"))
            .collect(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut options = ClusterOptions::new("sec-users");
    options.prefix = Some(prefix.clone());
    let owner = |component: &str, password: &str| {
        (
            "WARREN_BROKER__URL".to_owned(),
            url(&format!("{users}{component}"), password),
        )
    };
    let no_declare = ("WARREN_BROKER__DECLARE".to_owned(), "false".to_owned());
    options.dispatcher_env = vec![owner("dispatcher", &dispatcher_pw)];
    options.worker_env = vec![owner("worker", &worker_pw), no_declare.clone()];
    options.watcher_env = vec![owner("watcher", &watcher_pw), no_declare];
    let mut cluster = Cluster::start(options);
    assert!(
        cluster.wait_for_workers(2, DEADLINE).await,
        "{}",
        cluster.all_logs()
    );

    let spec = "command = \"sh test.sh\"\ntimeout = \"1m\"\n";
    let pass = cluster.upstream.commit(
        "main",
        "passes",
        &[("warren.toml", Some(spec)), ("test.sh", Some("exit 0\n"))],
    );
    let reports = cluster
        .wait_for_results(std::slice::from_ref(&pass), DEADLINE)
        .unwrap_or_else(|missing| panic!("{missing:?}\n{}", cluster.all_logs()));
    assert_eq!(reports[0]["status"], "passed");
    let fail = cluster.upstream.commit(
        "main",
        "fails",
        &[("test.sh", Some("echo broken; exit 3\n"))],
    );
    let reports = cluster
        .wait_for_results(std::slice::from_ref(&fail), DEADLINE)
        .unwrap_or_else(|missing| panic!("{missing:?}\n{}", cluster.all_logs()));
    assert_eq!(reports[0]["status"], "failed");

    // What the users may not do: a worker publishing commit events, a
    // watcher reading jobs.
    let as_user = |user: &str, password: &str| {
        let uri = url(user, password)
            .parse::<lapin::uri::AMQPUri>()
            .expect("uri");
        async move {
            lapin::Connection::connect_uri(uri, Default::default())
                .await
                .expect("connect")
        }
    };
    let worker = as_user(&format!("{users}worker"), &worker_pw).await;
    let channel = worker.create_channel().await.unwrap();
    let published = async {
        channel
            .basic_publish(
                cluster
                    .broker
                    .config
                    .topology
                    .exchange(Queue::Commits)
                    .into(),
                "sample".into(),
                Default::default(),
                b"{}",
                Default::default(),
            )
            .await?
            .await
    }
    .await;
    // The broker closes the channel: the publish, or the next operation, fails.
    let refused = published.is_err() || channel.basic_qos(1, Default::default()).await.is_err();
    assert!(refused, "a worker must not publish commit events");
    let watcher = as_user(&format!("{users}watcher"), &watcher_pw).await;
    let channel = watcher.create_channel().await.unwrap();
    let consumed = channel
        .basic_consume(
            cluster.broker.config.topology.queue(Queue::Jobs).into(),
            "thief".into(),
            Default::default(),
            Default::default(),
        )
        .await;
    let Err(error) = consumed else {
        panic!("a watcher must not read jobs");
    };
    let error = error.to_string();
    assert!(error.contains("ACCESS_REFUSED"), "{error}");
    let _ = worker.close(200, "bye".into()).await;
    let _ = watcher.close(200, "bye".into()).await;

    // A worker with a wrong password: refused, and says so without the
    // password.
    let wrong = cluster.add_worker(&[(
        "WARREN_BROKER__URL",
        &url(&format!("{users}worker"), &wrong_pw),
    )]);
    assert!(
        wait_until(Duration::from_secs(20), || cluster.workers[wrong]
            .log()
            .contains("cannot connect")),
        "{}",
        cluster.workers[wrong].log()
    );
    let stopped = cluster.stop();
    assert!(
        stopped.iter().all(|(_, code)| code.is_some()),
        "{stopped:?}"
    );

    let mut everything = String::new();
    for entry in walk(cluster.root()) {
        if let Ok(text) = std::fs::read_to_string(&entry) {
            everything.push_str(&text);
        }
    }
    assert!(
        everything.contains("***@127.0.0.1"),
        "URLs are logged, masked"
    );
    for password in [&dispatcher_pw, &watcher_pw, &worker_pw, &wrong_pw] {
        assert!(
            !everything.contains(password.as_str()),
            "a password leaked into a log or result file"
        );
    }
}

/// Every file under `dir` (logs, results, configs), except git objects.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with(".git") && !path.ends_with("objects") {
                    pending.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files
}
