//! A whole Warren installation from the real binaries: one dispatcher, N
//! workers and a watcher, each with its own TOML file, watching one bare
//! repository, under a private broker prefix. The end-to-end tests, the demo
//! and the benchmark all start one of these.

use crate::broker::TestBroker;
use crate::git::Upstream;
use crate::process::{Component, wait_until, wait_until_every};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to lay out the installation.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Short name: part of the broker prefix and of folder names.
    pub name: String,
    /// Workers to start.
    pub workers: usize,
    /// Slots per worker.
    pub slots: usize,
    /// The watcher's poll interval (`"500ms"`).
    pub poll_interval: String,
    /// The name the repository is watched under.
    pub repo: String,
    /// The URL the watcher fetches it from (and every job carries); the
    /// upstream's own path when `None`.
    pub repo_url: Option<String>,
    /// Where to put everything; a temporary folder when `None`.
    pub dir: Option<PathBuf>,
    /// Extra lines for the dispatcher's `[dispatcher]` table.
    pub dispatcher_extra: String,
    /// Extra lines for each worker's `[worker]` table.
    pub worker_extra: String,
    /// The exact broker prefix; `t-<name>-<random>` when `None`.
    pub prefix: Option<String>,
    /// The broker (a cluster's nodes, comma-separated); the test broker
    /// ([`crate::broker::broker_url`]) when `None`.
    pub broker_url: Option<String>,
    /// The dispatcher's `http.listen`; port 0 (the default) takes a free one
    /// ([`Cluster::http_url`] finds it).
    pub http_listen: String,
    /// Environment for every component (`WARREN_BROKER__DELIVERY_LIMIT`…).
    pub env: Vec<(String, String)>,
    /// Environment for the dispatcher only (after `env`).
    pub dispatcher_env: Vec<(String, String)>,
    /// Environment for every worker (after `env`).
    pub worker_env: Vec<(String, String)>,
    /// Environment for the watcher only (after `env`).
    pub watcher_env: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Defaults: two single-slot workers, a 500 ms poll, repository `sample`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            workers: 2,
            slots: 1,
            poll_interval: "500ms".into(),
            repo: "sample".into(),
            repo_url: None,
            dir: None,
            dispatcher_extra: String::new(),
            worker_extra: String::new(),
            prefix: None,
            broker_url: None,
            http_listen: "127.0.0.1:0".into(),
            env: Vec::new(),
            dispatcher_env: Vec::new(),
            worker_env: Vec::new(),
            watcher_env: Vec::new(),
        }
    }
}

/// A running installation; every process is killed when it is dropped.
pub struct Cluster {
    /// The broker prefix and config.
    pub broker: TestBroker,
    /// The repository under watch.
    pub upstream: Upstream,
    /// The dispatcher process.
    pub dispatcher: Option<Component>,
    /// The worker processes.
    pub workers: Vec<Component>,
    /// The watcher process (absent while stopped).
    pub watcher: Option<Component>,
    options: ClusterOptions,
    next_worker: usize,
    keep_queues: bool,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Writes the config files and starts the dispatcher, the workers and
    /// the watcher.
    pub fn start(options: ClusterOptions) -> Self {
        let (root, temp) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("cluster dir");
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::tempdir().expect("tempdir");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let url = options
            .broker_url
            .clone()
            .unwrap_or_else(crate::broker::broker_url);
        let mut broker = match &options.prefix {
            Some(prefix) => TestBroker::with_prefix_on(prefix, &url),
            None => TestBroker::new_on(&options.name, &url),
        };
        let delivery_limit = options
            .env
            .iter()
            .find(|(key, _)| key == "WARREN_BROKER__DELIVERY_LIMIT")
            .and_then(|(_, value)| value.parse().ok());
        if let Some(limit) = delivery_limit {
            broker = broker.with_delivery_limit(limit);
        }
        let upstream = Upstream::create(&root.join(format!("{}.git", options.repo)));
        let mut cluster = Self {
            broker,
            upstream,
            dispatcher: None,
            workers: Vec::new(),
            watcher: None,
            next_worker: 0,
            options,
            keep_queues: std::env::var_os("WARREN_KEEP_QUEUES").is_some(),
            root,
            _temp: temp,
        };
        cluster.write_configs();
        cluster.start_dispatcher();
        for index in 0..cluster.options.workers {
            cluster.start_worker(index);
        }
        cluster.next_worker = cluster.options.workers;
        cluster.start_watcher();
        cluster
    }

    /// Leave the broker's queues in place when dropped (also with the
    /// `WARREN_KEEP_QUEUES` environment variable), to inspect them.
    pub fn keep_queues(&mut self, keep: bool) {
        self.keep_queues |= keep;
    }

    /// The folder that holds everything.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where result files go.
    pub fn results_dir(&self) -> PathBuf {
        self.root.join("results")
    }

    /// The result file of `sha`.
    pub fn result_path(&self, sha: &str) -> PathBuf {
        self.results_dir()
            .join(&self.options.repo)
            .join(format!("{sha}.json"))
    }

    /// The parsed result file of `sha`, if it exists.
    pub fn result(&self, sha: &str) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.result_path(sha)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until every sha has a result file; returns them in order, or
    /// the shas still missing at the deadline.
    pub fn wait_for_results(
        &self,
        shas: &[String],
        timeout: Duration,
    ) -> Result<Vec<serde_json::Value>, Vec<String>> {
        // Only the missing ones are looked at again, and not too often: a
        // benchmark waiting for a thousand files must not eat the CPU the
        // system under test needs.
        let mut pending: Vec<&String> = shas.iter().collect();
        wait_until_every(timeout, Duration::from_millis(50), || {
            pending.retain(|sha| !self.result_path(sha).exists());
            pending.is_empty()
        });
        let missing: Vec<String> = shas
            .iter()
            .filter(|sha| self.result(sha).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(shas.iter().filter_map(|sha| self.result(sha)).collect())
        } else {
            Err(missing)
        }
    }

    /// Commits `warren_toml` on `main` as the commit `summary` and waits
    /// for its result file; panics with every component's log if none
    /// comes within `timeout`.
    pub fn commit_and_wait(
        &self,
        summary: &str,
        warren_toml: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let sha = self
            .upstream
            .commit("main", summary, &[("warren.toml", Some(warren_toml))]);
        self.wait_for_results(&[sha], timeout)
            .unwrap_or_else(|missing| panic!("no result for {missing:?}\n{}", self.all_logs()))
            .remove(0)
    }

    /// [`Cluster::start`], then waits until every worker consumes (so that
    /// work spreads over all of them); panics with the logs if they do not
    /// within 90 s.
    pub async fn start_ready(options: ClusterOptions) -> Self {
        let workers = u32::try_from(options.workers).expect("a worker count");
        let cluster = Self::start(options);
        assert!(
            cluster
                .wait_for_workers(workers, Duration::from_secs(90))
                .await,
            "the workers did not start consuming:\n{}",
            cluster.all_logs()
        );
        cluster
    }

    /// Waits until `n` consumers are attached to the jobs queue (every
    /// worker is ready), so that work spreads over all of them.
    pub async fn wait_for_workers(&self, n: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, consumers) = self
                .broker
                .queue_depth(warren_common::topology::Queue::Jobs)
                .await;
            if consumers >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn config_path(&self, component: &str) -> PathBuf {
        self.root.join("config").join(format!("{component}.toml"))
    }

    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    fn write_configs(&self) {
        let root = self.root.display();
        let broker = self.broker.toml();
        let options = &self.options;
        std::fs::create_dir_all(self.root.join("config")).expect("config dir");
        let dispatcher = format!(
            "{broker}\n[http]\nlisten = \"{}\"\n\n[dispatcher]\ndatabase = \"{root}/dispatcher/warren.db\"\n\
             results_dir = \"{root}/results\"\nmirror_dir = \"{root}/dispatcher/mirrors\"\n{}\n",
            options.http_listen, options.dispatcher_extra
        );
        std::fs::write(self.config_path("dispatcher"), dispatcher).expect("write config");
        for index in 0..options.workers {
            self.write_worker_config(index);
        }
        let watcher = format!(
            "{broker}\n[watcher]\nstate_dir = \"{root}/watcher\"\n\n[repos.{}]\nurl = \"{}\"\n\
             branches = [\"main\"]\npoll_interval = \"{}\"\n",
            options.repo,
            options
                .repo_url
                .clone()
                .unwrap_or_else(|| self.upstream.url()),
            options.poll_interval
        );
        std::fs::write(self.config_path("watcher"), watcher).expect("write config");
    }

    fn write_worker_config(&self, index: usize) {
        let root = self.root.display();
        let worker = format!(
            "{}\n[worker]\nid = \"worker-{index}\"\nslots = {}\n\
             work_dir = \"{root}/worker-{index}\"\nheartbeat_interval = \"1s\"\n{}\n",
            self.broker.toml(),
            self.options.slots,
            self.options.worker_extra
        );
        std::fs::write(self.config_path(&format!("worker-{index}")), worker).expect("write config");
    }

    fn start_component(&self, binary: &str, name: &str) -> Component {
        self.start_component_with(binary, name, name, &[], &[])
    }

    /// Starts `binary` as `name` (its log file) with the config file of
    /// `config`, extra arguments and extra environment.
    fn start_component_with(
        &self,
        binary: &str,
        name: &str,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Component {
        let config = self.config_path(config);
        let config = config.to_str().expect("utf-8 path");
        let mut all_args = vec!["--config", config];
        all_args.extend_from_slice(args);
        let own = match binary {
            "warren-dispatcher" => &self.options.dispatcher_env,
            "warren-worker" => &self.options.worker_env,
            _ => &self.options.watcher_env,
        };
        let mut all_env: Vec<(&str, &str)> = self
            .options
            .env
            .iter()
            .chain(own)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all_env.extend_from_slice(env);
        Component::start_with_env(binary, name, &all_args, &self.logs(), &all_env)
    }

    /// Starts (or restarts) the dispatcher.
    pub fn start_dispatcher(&mut self) {
        self.dispatcher = Some(self.start_component("warren-dispatcher", "dispatcher"));
    }

    /// Starts (or restarts) the dispatcher logging to `<name>.log`, with
    /// extra environment (`WARREN_BROKER__CONFIRM_TIMEOUT`, say).
    pub fn start_dispatcher_with(&mut self, name: &str, env: &[(&str, &str)]) {
        self.dispatcher =
            Some(self.start_component_with("warren-dispatcher", name, "dispatcher", &[], env));
    }

    /// Starts worker number `index` (its config was written at start).
    pub fn start_worker(&mut self, index: usize) {
        let worker = self.start_component("warren-worker", &format!("worker-{index}"));
        self.workers.push(worker);
    }

    /// Starts one more worker (`worker-<n>`, its own config and folder),
    /// with extra environment (`WARREN_BROKER__HEARTBEAT`, say). Returns its
    /// index in `workers`.
    pub fn add_worker(&mut self, env: &[(&str, &str)]) -> usize {
        let index = self.next_worker;
        self.next_worker += 1;
        self.write_worker_config(index);
        let worker = {
            let name = format!("worker-{index}");
            self.start_component_with("warren-worker", &name, &name, &[], env)
        };
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// The position in `workers` of the worker with process id `pid`.
    pub fn worker_by_pid(&self, pid: u32) -> Option<usize> {
        self.workers.iter().position(|worker| worker.pid() == pid)
    }

    /// The base URL of the dispatcher's API and page (`http://127.0.0.1:PORT`),
    /// read from its log once it listens (waits up to 30 s).
    pub fn http_url(&self) -> String {
        let mut url = None;
        wait_until(Duration::from_secs(30), || {
            url = self.dispatcher.as_ref().and_then(|dispatcher| {
                let log = dispatcher.log();
                let line = log
                    .lines()
                    .rev()
                    .find(|line| line.contains("HTTP API and status page listening"))?;
                let address = line.split("address=").nth(1)?.split_whitespace().next()?;
                Some(format!("http://{address}"))
            });
            url.is_some()
        });
        url.unwrap_or_else(|| {
            panic!(
                "the dispatcher never said where it listens\n{}",
                self.all_logs()
            )
        })
    }

    /// Opens the dispatcher's database read-only (to check the books).
    pub fn database(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.root.join("dispatcher/warren.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the dispatcher's database")
    }

    /// One number from the dispatcher's database (`SELECT count(*) …`).
    pub fn count(&self, sql: &str) -> i64 {
        self.database()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// Starts (or restarts) the watcher.
    pub fn start_watcher(&mut self) {
        self.watcher = Some(self.start_component("warren-watcher", "watcher"));
    }

    /// Runs `warren-watcher --once` to completion; returns its exit code.
    pub fn poll_once(&self) -> Option<i32> {
        let mut once = self.start_component_with(
            "warren-watcher",
            "watcher-once",
            "watcher",
            &["--once"],
            &[],
        );
        once.wait_exit(Duration::from_secs(60))
    }

    /// Stops every component with SIGTERM (they drain and exit); returns
    /// (name, exit code) for each.
    pub fn stop(&mut self) -> Vec<(String, Option<i32>)> {
        let timeout = Duration::from_secs(30);
        let mut codes = Vec::new();
        if let Some(mut watcher) = self.watcher.take() {
            codes.push(("watcher".to_owned(), watcher.stop(timeout)));
        }
        for (index, mut worker) in self.workers.drain(..).enumerate() {
            codes.push((format!("worker-{index}"), worker.stop(timeout)));
        }
        if let Some(mut dispatcher) = self.dispatcher.take() {
            codes.push(("dispatcher".to_owned(), dispatcher.stop(timeout)));
        }
        codes
    }

    /// Every component's log, for a failing test's message.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.logs()) {
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            for path in paths {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("==== {} (last 40 lines)\n", path.display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Components are killed by their own Drop; the broker prefix is
        // deleted here so that a failed test leaves no queues behind. Drop
        // cannot be async: a short-lived runtime on its own thread does it.
        let broker = TestBroker {
            url: self.broker.url.clone(),
            prefix: self.broker.prefix.clone(),
            config: self.broker.config.clone(),
        };
        let keep = self.keep_queues;
        self.workers.clear();
        self.watcher = None;
        self.dispatcher = None;
        if !keep {
            let _ = std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(broker.cleanup());
                }
            })
            .join();
        }
    }
}
