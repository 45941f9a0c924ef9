//! Hostile jobs against each executor, through the real binaries and real
//! bubblewrap: a job that (a) prints the worker's config and git token,
//! (b) publishes forged "passed" results, (c) forks without end, (d)
//! allocates 10 GiB, (e) writes 5 GiB into its checkout, (f) leaves a
//! daemon, (g) reads another slot's checkout. Under `sandbox` each is
//! contained, with a verdict that says which limit; under `process` the
//! test shows what is *not* contained (the reason for `sandbox`).

use std::path::Path;
use std::time::Duration;
use warren_harness::cluster::{Cluster, ClusterOptions};
use warren_harness::process::{Component, bin_dir, wait_until};

const DEADLINE: Duration = Duration::from_secs(120);

/// Small limits, so that every hostile job trips its limit in seconds.
const LIMITS: &str = "max_memory = \"256 MiB\"\nmax_processes = 64\nmax_disk = \"50 MiB\"\n";

/// Numbers no other test's `sleep` uses: the daemon (f) of each test,
/// looked for among the host's processes.
const SANDBOX_DAEMON: &str = "47113";
const PROCESS_DAEMON: &str = "47114";

/// A cluster of one worker with two slots (so that another slot's checkout
/// exists), `executor`, the small limits, a canary in its config file and a
/// git token file.
struct Setup {
    cluster: Cluster,
    canary: String,
    token: String,
    config: String,
    token_file: String,
}

async fn setup(name: &str, executor: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap().keep();
    let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
    let token = format!("token-{}", uuid::Uuid::new_v4().simple());
    let token_file = dir.join("secrets/git-token");
    std::fs::create_dir_all(token_file.parent().unwrap()).unwrap();
    std::fs::write(&token_file, &token).unwrap();
    let mut options = ClusterOptions::new(name);
    options.dir = Some(dir.clone());
    options.workers = 1;
    options.slots = 2;
    options.worker_extra = format!(
        "executor = \"{executor}\"\n{LIMITS}sandbox_read_only = [{:?}]\n# {canary}\n\n\
         [git]\nhttps_token_file = {:?}\n",
        bin_dir().display().to_string(),
        token_file.display().to_string(),
    );
    let cluster = Cluster::start_ready(options).await;
    Setup {
        config: dir.join("config/worker-0.toml").display().to_string(),
        token_file: token_file.display().to_string(),
        cluster,
        canary,
        token,
    }
}

fn spec(command: &str) -> String {
    format!("command = {command:?}\ntimeout = \"1m\"\n")
}

/// Commits `command` as the commit's test, with a file `marker` every
/// checkout of the commit holds.
fn commit(cluster: &Cluster, summary: &str, command: &str) -> String {
    cluster.upstream.commit(
        "main",
        summary,
        &[
            ("warren.toml", Some(&spec(command))),
            ("marker", Some(summary)),
        ],
    )
}

fn job_of<'a>(cluster: &Cluster, report: &'a serde_json::Value) -> &'a serde_json::Value {
    let job = &report["jobs"][0];
    assert!(job.is_object(), "{report}\n{}", cluster.all_logs());
    job
}

fn wait(cluster: &Cluster, shas: &[String]) -> Vec<serde_json::Value> {
    cluster
        .wait_for_results(shas, DEADLINE)
        .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", cluster.all_logs()))
}

/// Processes of the host whose command line is `sleep <number>`.
fn daemons(number: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == number.as_bytes() {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// The hostile commands, by letter, for the worker of `setup`.
struct Hostile {
    secrets: String,
    fork_bomb: String,
    memory: String,
    disk: String,
    daemon: String,
    other_slot: String,
}

fn hostile(setup: &Setup, daemon: &str) -> Hostile {
    let work = setup.cluster.root().join("worker-0");
    Hostile {
        secrets: format!(
            "cat {} {}; ls {}; env | grep -i -e token -e warren_broker; exit 0",
            setup.config,
            setup.token_file,
            work.display()
        ),
        fork_bomb: "bomb() { bomb | bomb & }; bomb; wait; sleep 30".into(),
        memory: "head -c 10G /dev/zero | tail -c 10G > /dev/null; echo survived".into(),
        disk: "dd if=/dev/zero of=big bs=1M count=5120 2>&1; echo survived; exit 0".into(),
        daemon: format!(
            "(setsid sleep {daemon} > /dev/null 2>&1 &); nohup sleep {daemon} > /dev/null 2>&1 & echo left"
        ),
        other_slot: format!(
            "echo slots=$(ls -d {0}/slot-* | wc -l); \
             for d in {0}/slot-*/sample; do [ \"$d\" = \"$PWD\" ] || cat \"$d/marker\"; done; exit 0",
            work.display()
        ),
    }
}

/// `warren-forge` publishing a passed result for the job `job_id` of `sha`
/// (given as shell words; `$WARREN_JOB_ID $WARREN_SHA` for the job itself).
fn forge(cluster: &Cluster, job_id: &str, sha: &str) -> String {
    format!(
        "{}/warren-forge {} {} {job_id} 1 sample {sha}",
        bin_dir().display(),
        cluster.broker.url,
        cluster.broker.prefix
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_contains_hostile_jobs() {
    let setup = setup("iso-sandbox", "sandbox").await;
    let cluster = &setup.cluster;
    let first = commit(cluster, "first", "echo ready");
    wait(cluster, std::slice::from_ref(&first));
    let log = cluster.workers[0].log();
    assert!(
        log.contains("sandbox: bubblewrap") && log.contains("limits by cgroup v1"),
        "the worker says which executor and limits are in force: {log}"
    );

    let attacks = hostile(&setup, SANDBOX_DAEMON);
    // A victim that fails slowly: (b) forges a pass for it meanwhile.
    let victim = commit(cluster, "victim", "sleep 6; exit 1");
    assert!(
        wait_until(DEADLINE, || {
            cluster.count(&format!(
            "SELECT COUNT(*) FROM jobs j JOIN commits c ON c.id = j.commit_id WHERE c.sha = '{victim}'"
        )) == 1
        }),
        "{}",
        cluster.all_logs()
    );
    let victim_job: String = cluster
        .database()
        .query_row(
            "SELECT j.id FROM jobs j JOIN commits c ON c.id = j.commit_id WHERE c.sha = ?1",
            [&victim],
            |row| row.get(0),
        )
        .unwrap();
    let forged = format!(
        "{}; {}; exit 1",
        forge(cluster, &victim_job, &victim),
        forge(cluster, "$WARREN_JOB_ID", "$WARREN_SHA")
    );
    let shas: Vec<String> = [
        ("a secrets", attacks.secrets.as_str()),
        ("b forge", forged.as_str()),
        ("c fork bomb", attacks.fork_bomb.as_str()),
        ("d memory", attacks.memory.as_str()),
        ("e disk", attacks.disk.as_str()),
        ("f daemon", attacks.daemon.as_str()),
        ("g other slot", attacks.other_slot.as_str()),
        ("after", "echo fine; test ! -e big"),
    ]
    .iter()
    .map(|(summary, command)| commit(cluster, summary, command))
    .collect();
    let mut all = shas.clone();
    all.push(victim.clone());
    // (b) again, with `network = false`: the broker is not even reachable.
    let offline = cluster.upstream.commit(
        "main",
        "b offline",
        &[(
            "warren.toml",
            Some(&format!(
                "{}network = false\n",
                spec(&forge(cluster, "$WARREN_JOB_ID", "$WARREN_SHA"))
            )),
        )],
    );
    all.push(offline);
    let reports = wait(cluster, &all);
    let logs = cluster.all_logs();
    let job = |i: usize| job_of(cluster, &reports[i]);
    let output = |i: usize| job(i)["output"].as_str().unwrap_or_default().to_owned();

    // (a) Nothing of the worker's files: neither the canary in its config
    // nor the token, in the output or anywhere in the result file.
    let secrets = std::fs::read_to_string(cluster.result_path(&shas[0])).unwrap();
    assert!(
        !secrets.contains(&setup.canary) && !secrets.contains(&setup.token),
        "{secrets}"
    );
    assert!(
        output(0).contains("No such file or directory"),
        "{}",
        output(0)
    );
    assert_eq!(reports[0]["status"], "passed", "{}", reports[0]);

    // (b) Both forged results reached the broker and neither counted: the
    // victim failed, the forger failed; the dispatcher dead-lettered them.
    assert_eq!(
        output(1).matches("forge: published").count(),
        2,
        "the forger reached the broker (the point of the proof): {}",
        output(1)
    );
    assert_eq!(reports[1]["status"], "failed", "{}", reports[1]);
    assert_eq!(reports[8]["status"], "failed", "{}", reports[8]);
    let dead = cluster.broker.take_dead_letters().await;
    let refused = dead
        .iter()
        .filter(|(reason, _)| reason.contains("no valid proof"))
        .count();
    assert_eq!(refused, 2, "{dead:?}\n{logs}");
    assert!(
        cluster
            .dispatcher
            .as_ref()
            .unwrap()
            .log()
            .contains("no valid proof")
    );

    let offline = job_of(cluster, &reports[9])["output"]
        .as_str()
        .unwrap_or_default();
    assert!(
        offline.contains("forge: cannot reach the broker"),
        "{offline}"
    );

    // (c) (d) (e) Killed at their limits, with a verdict that says which.
    for (i, message) in [
        (2, "killed: process limit 64 reached"),
        (3, "killed: memory limit 256 MiB reached"),
        (4, "killed: disk limit 50 MiB reached"),
    ] {
        assert_eq!(reports[i]["status"], "failed", "{}", reports[i]);
        assert_eq!(job(i)["message"], message, "{}", reports[i]);
    }

    // (f) Nothing left running.
    assert_eq!(reports[5]["status"], "passed", "{}", reports[5]);
    assert!(
        wait_until(Duration::from_secs(10), || daemons(SANDBOX_DAEMON)
            .is_empty()),
        "{:?}",
        daemons(SANDBOX_DAEMON)
    );

    // (g) The other slot is not there: only the job's own slot folder.
    assert!(output(6).starts_with("slots=1\n"), "{}", output(6));

    // The next job runs clean: passed, the 5 GiB file gone.
    assert_eq!(reports[7]["status"], "passed", "{}", reports[7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_executor_contains_only_its_limits() {
    let setup = setup("iso-process", "process").await;
    let cluster = &setup.cluster;
    let first = commit(cluster, "first", "echo ready");
    wait(cluster, std::slice::from_ref(&first));
    let attacks = hostile(&setup, PROCESS_DAEMON);
    let shas: Vec<String> = [
        ("a secrets", attacks.secrets.as_str()),
        ("d memory", attacks.memory.as_str()),
        ("g other slot", attacks.other_slot.as_str()),
        ("f daemon", attacks.daemon.as_str()),
    ]
    .iter()
    .map(|(summary, command)| commit(cluster, summary, command))
    .collect();
    let reports = wait(cluster, &shas);
    let output = |i: usize| {
        reports[i]["jobs"][0]["output"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // NOT contained: the job reads the worker's config and its git token,
    // and sees (and reads) the other slot.
    assert!(output(0).contains(&setup.canary), "{}", output(0));
    assert!(output(0).contains(&setup.token), "{}", output(0));
    assert!(output(2).starts_with("slots=2\n"), "{}", output(2));
    // Contained all the same: the limits (cgroups), and the daemon that
    // stayed in the job's process group or cgroup.
    assert_eq!(
        reports[1]["jobs"][0]["message"], "killed: memory limit 256 MiB reached",
        "{}",
        reports[1]
    );
    assert!(
        wait_until(Duration::from_secs(10), || daemons(PROCESS_DAEMON)
            .is_empty()),
        "{:?}",
        daemons(PROCESS_DAEMON)
    );
}

#[test]
fn a_sandbox_that_cannot_work_stops_the_worker_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\nexecutor = \"sandbox\"\nsandbox_bwrap = \"{}/no-such-bwrap\"\nwork_dir = \"{}\"\n",
            dir.path().display(),
            dir.path().join("work").display()
        ),
    )
    .unwrap();
    let mut worker = Component::start(
        "warren-worker",
        "worker",
        &["--config", config.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(2));
    let log = worker.log();
    assert!(log.contains("worker.executor = \"sandbox\""), "{log}");
    assert!(log.contains("bubblewrap"), "{log}");
    assert!(
        !Path::new(&dir.path().join("work")).exists(),
        "nothing started"
    );
}
