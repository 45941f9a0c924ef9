//! The container set-up in `docker/`, checked without a container engine
//! (scripts/containers-test.sh builds the image and runs the containers; this
//! file checks what that run cannot reach, or reaches only in part):
//!
//! - `docker/compose.yml` parses; every file it mounts or builds from, and
//!   every file `docker/Dockerfile` copies, exists; every workspace member's
//!   manifest reaches the image's dependency stage.
//! - Each Warren service's configuration file (found through its mounts from
//!   its `--config` argument) loads and validates with exactly the
//!   environment the service gets, the way the component loads it; every
//!   `docker/config/*.toml` loads with no environment at all.
//! - The job time limits are ordered below RabbitMQ's `consumer_timeout`
//!   (`docker/rabbitmq.conf` says why), workers can scale and have time to
//!   finish their jobs when stopped, and the health checks need nothing the
//!   components do not have yet.
//! - The Dockerfile's `runtime-prebuilt` stage (what CI builds, from binaries
//!   built on the host) makes the same image as the `runtime` stage (what
//!   users build, with the Rust stage CI cannot pull), and building it pulls
//!   nothing; `docker/compose.host.yml` keeps every service on the host
//!   network, off the broker container, and each config still loads.
//!
//! README, "Containers", says what CI proves and what it cannot.

use serde_norway::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use warren_common::config::{BrokerConfig, ConfigError, load_with_env};
use warren_dispatcher::DispatcherConfig;
use warren_watcher::WatcherConfig;
use warren_worker::WorkerConfig;

/// Time a job may spend before its command starts and after it ends (the
/// checkout, publishing the result), allowed between a job killed at
/// `defaults.max_timeout` + `worker.kill_grace` and `worker.ack_deadline`.
const CHECKOUT_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// Least distance between `worker.ack_deadline` and RabbitMQ's
/// `consumer_timeout`: the broker's clock starts when it sends a delivery,
/// the worker's when it starts the job.
const BROKER_MARGIN: Duration = Duration::from_secs(60);

/// Time a stopping worker needs after killing its jobs: to publish their
/// results (or return them) and close its connection.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// The Dockerfile's stage that CI builds, from binaries built outside Docker
/// (scripts/containers-test.sh).
const PREBUILT_STAGE: &str = "runtime-prebuilt";

/// The Dockerfile's stage that users build: the default, being the last.
const RUNTIME_STAGE: &str = "runtime";

/// Instructions that set what a container of an image starts with.
const IMAGE_SETTINGS: &[&str] = &[
    "USER",
    "WORKDIR",
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "VOLUME",
    "STOPSIGNAL",
    "HEALTHCHECK",
];

/// Variables a compose file may give a Warren container besides `WARREN_*`
/// settings: `RUST_LOG` wins over `log.level` (common/src/telemetry.rs).
const OTHER_VARIABLES_READ: &[&str] = &["RUST_LOG"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness lives in the workspace")
        .to_path_buf()
}

fn docker_dir() -> PathBuf {
    repo_root().join("docker")
}

// ---------------------------------------------------------------------------
// The components

/// A Warren component, as a compose service runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Dispatcher,
    Worker,
    Watcher,
}

/// A configuration that loaded and validated.
enum Loaded {
    Dispatcher(Box<DispatcherConfig>),
    Worker(Box<WorkerConfig>),
    Watcher(Box<WatcherConfig>),
}

impl Component {
    const ALL: [Component; 3] = [Self::Dispatcher, Self::Worker, Self::Watcher];

    fn binary(self) -> &'static str {
        match self {
            Self::Dispatcher => "warren-dispatcher",
            Self::Worker => "warren-worker",
            Self::Watcher => "warren-watcher",
        }
    }

    fn from_binary(binary: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.binary() == binary)
    }

    /// Loads `path` with `env` as the whole environment, the way the
    /// component's `load` does with the process environment: the same
    /// settings types, list keys and validation.
    fn load(self, path: &Path, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
        let env = || Some(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        match self {
            // As DispatcherConfig::load: no list keys.
            Self::Dispatcher => {
                let (settings, source) = load_with_env(Some(path), &[], env())?;
                let config = DispatcherConfig::from_settings(settings, &source)?;
                Ok(Loaded::Dispatcher(Box::new(config)))
            }
            // As warren_worker::config::load (its LIST_KEYS).
            Self::Worker => {
                let (settings, source) = load_with_env::<warren_worker::config::Settings>(
                    Some(path),
                    &["worker.allowed_repos"],
                    env(),
                )?;
                let broker = BrokerConfig::from_settings(&settings.broker, &source)?;
                let config = WorkerConfig::from_settings(broker, &settings.worker, &source)?;
                Ok(Loaded::Worker(Box::new(config)))
            }
            // As WatcherConfig::load: a first pass learns the repository
            // names, whose `branches` are the list keys.
            Self::Watcher => {
                let (names, _) = load_with_env::<serde_json::Value>(Some(path), &[], env())?;
                let list_keys: Vec<String> = names
                    .get("repos")
                    .and_then(serde_json::Value::as_object)
                    .map(|repos| {
                        repos
                            .keys()
                            .map(|name| format!("repos.{name}.branches"))
                            .collect()
                    })
                    .unwrap_or_default();
                let list_keys: Vec<&str> = list_keys.iter().map(String::as_str).collect();
                let (settings, source) = load_with_env::<warren_watcher::config::Settings>(
                    Some(path),
                    &list_keys,
                    env(),
                )?;
                let config = WatcherConfig::from_settings(&settings, &source)?;
                Ok(Loaded::Watcher(Box::new(config)))
            }
        }
    }
}

/// Problems with a container's environment that loading cannot see: a
/// `WARREN_*` variable without `__` is no setting and is silently ignored,
/// and other variables are read by nothing unless listed.
fn unread_variables(env: &BTreeMap<String, String>) -> Vec<String> {
    env.keys()
        .filter(|name| match name.strip_prefix("WARREN_") {
            Some(rest) => !rest.contains("__"),
            None => !OTHER_VARIABLES_READ.contains(&name.as_str()),
        })
        .map(|name| format!("{name} is read by no Warren component"))
        .collect()
}

// ---------------------------------------------------------------------------
// compose.yml

/// `docker/compose.yml`, merge keys applied and variables interpolated as
/// `docker compose` does when none of them is set.
struct Compose {
    dir: PathBuf,
    doc: Value,
}

impl Compose {
    fn load() -> Self {
        Self::load_file("compose.yml")
    }

    /// A compose file of `docker/` on its own (an override is not merged).
    fn load_file(name: &str) -> Self {
        let dir = docker_dir();
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut doc: Value = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        doc.apply_merge()
            .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
        interpolate_all(&mut doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { dir, doc }
    }

    fn services(&self) -> Vec<(String, &Mapping)> {
        let services = self
            .doc
            .get("services")
            .and_then(Value::as_mapping)
            .expect("compose.yml has services");
        services
            .iter()
            .map(|(name, spec)| {
                let name = name.as_str().expect("service names are strings").to_owned();
                let spec = spec
                    .as_mapping()
                    .unwrap_or_else(|| panic!("service {name} is a mapping"));
                (name, spec)
            })
            .collect()
    }

    fn service(&self, name: &str) -> &Mapping {
        self.services()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("compose.yml has no service {name}"))
            .1
    }

    /// The Warren services, by the binary their command runs.
    fn warren_services(&self) -> Vec<(String, Component, &Mapping)> {
        self.services()
            .into_iter()
            .filter_map(|(name, spec)| {
                let command = strings(spec.get("command"));
                let component = Component::from_binary(command.first()?)?;
                Some((name, component, spec))
            })
            .collect()
    }

    fn warren_service(&self, component: Component) -> (String, &Mapping) {
        let mut found = self
            .warren_services()
            .into_iter()
            .filter(|(_, c, _)| *c == component);
        let (name, _, spec) = found
            .next()
            .unwrap_or_else(|| panic!("no service runs {}", component.binary()));
        assert!(
            found.next().is_none(),
            "more than one service runs {}",
            component.binary()
        );
        (name, spec)
    }

    fn declared_volumes(&self) -> Vec<String> {
        self.doc
            .get("volumes")
            .and_then(Value::as_mapping)
            .map(|volumes| {
                volumes
                    .keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mounts(&self, service: &Mapping) -> Vec<Mount> {
        service
            .get("volumes")
            .and_then(Value::as_sequence)
            .map(|volumes| volumes.iter().map(|v| Mount::parse(v, &self.dir)).collect())
            .unwrap_or_default()
    }

    /// The host file mounted at `target` in `service`.
    fn host_file(&self, service: &Mapping, target: &str) -> Option<PathBuf> {
        self.mounts(service)
            .into_iter()
            .find_map(|mount| match mount {
                Mount::Bind { source, target: t } if t == target => Some(source),
                _ => None,
            })
    }

    /// (context, Dockerfile) of a service's `build`, if any.
    fn build(&self, service: &Mapping) -> Option<(PathBuf, PathBuf)> {
        let build = service.get("build")?;
        let (context, dockerfile) = match build {
            Value::String(context) => (context.as_str(), "Dockerfile"),
            Value::Mapping(build) => (
                build.get("context").and_then(Value::as_str).unwrap_or("."),
                build
                    .get("dockerfile")
                    .and_then(Value::as_str)
                    .unwrap_or("Dockerfile"),
            ),
            other => panic!("unexpected build: {other:?}"),
        };
        let context = self.dir.join(context);
        let dockerfile = context.join(dockerfile);
        Some((context, dockerfile))
    }
}

/// One entry of a service's `volumes`.
#[derive(Debug)]
enum Mount {
    /// A host path (resolved against the compose file's folder).
    Bind { source: PathBuf, target: String },
    /// A named volume.
    Volume { name: String },
}

impl Mount {
    fn parse(value: &Value, dir: &Path) -> Self {
        let (source, target, bind) = match value {
            // SOURCE:TARGET[:MODE]; a source that is a path is a bind mount.
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume {short:?} has no target (anonymous)"))
                    .to_owned();
                let bind = source.starts_with(['.', '/', '~']);
                (source, target, bind)
            }
            Value::Mapping(long) => {
                let field = |key: &str| {
                    long.get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                (field("source"), field("target"), field("type") == "bind")
            }
            other => panic!("unexpected volume entry: {other:?}"),
        };
        if bind {
            Mount::Bind {
                source: dir.join(source.trim_start_matches("./")),
                target,
            }
        } else {
            Mount::Volume { name: source }
        }
    }
}

/// A string or a list of strings (`command`, a health check's `test`).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| scalar(item).expect("a list of strings"))
            .collect(),
        _ => Vec::new(),
    }
}

/// A scalar as compose passes it to a container: numbers and booleans as
/// written, `null` as absent.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A service's `environment`, as a map or a `NAME=value` list. An entry
/// without a value passes the variable through from the shell running
/// compose: with none set, it is absent.
fn environment(service: &Mapping) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(name, value)| Some((name.as_str()?.to_owned(), scalar(value)?)))
            .collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .filter_map(|entry| {
                let (name, value) = entry.as_str()?.split_once('=')?;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect(),
        Some(other) => panic!("unexpected environment: {other:?}"),
    }
}

fn duration_field(service: &Mapping, key: &str) -> Option<Duration> {
    let text = service.get(key).and_then(scalar)?;
    Some(humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{key} {text:?}: {e}")))
}

/// Interpolates every string in `value` (compose interpolates values, not
/// keys).
fn interpolate_all(value: &mut Value) -> Result<(), String> {
    match value {
        Value::String(text) => *text = interpolate(text)?,
        Value::Sequence(items) => items.iter_mut().try_for_each(interpolate_all)?,
        Value::Mapping(map) => map.values_mut().try_for_each(interpolate_all)?,
        Value::Tagged(tagged) => interpolate_all(&mut tagged.value)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Compose's interpolation with no variable set: `${NAME:-default}` and
/// `${NAME-default}` give their default (itself interpolated: defaults
/// nest), `${NAME:+alt}` nothing, `$$` a `$`. A variable without a default
/// (`$NAME`, `${NAME}`, `${NAME:?message}`) is refused: `docker compose up`
/// must work as documented with nothing set.
fn interpolate(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            return Err(format!("in {text:?}: use ${{NAME:-default}}, not a bare $"));
        };
        let end = closing_brace(inner).ok_or_else(|| format!("in {text:?}: unclosed ${{"))?;
        let expression = &inner[..end];
        let name_len = expression
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expression.len());
        let (name, operation) = expression.split_at(name_len);
        if let Some(default) = operation
            .strip_prefix(":-")
            .or_else(|| operation.strip_prefix('-'))
        {
            out.push_str(&interpolate(default)?);
        } else if !(operation.starts_with(":+") || operation.starts_with('+')) {
            return Err(format!(
                "in {text:?}: ${{{expression}}} has no default; with {name} unset, compose \
                 would pass an empty value or stop"
            ));
        }
        rest = &inner[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` that closes a `${` whose content starts `text`.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 1;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

// ---------------------------------------------------------------------------
// The Dockerfile

/// One instruction: its upper-case keyword and its arguments.
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut result = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                result.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.trim().to_owned(),
                });
                current.clear();
            }
        }
    }
    result
}

/// One `FROM` and the instructions after it.
struct Stage<'a> {
    /// The image or earlier stage it starts from.
    from: String,
    /// Its `AS` name ("" without one).
    name: String,
    instructions: &'a [Instruction],
}

fn stages(instructions: &[Instruction]) -> Vec<Stage<'_>> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(at, _)| at)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(instructions.len());
            let words: Vec<&str> = instructions[start]
                .args
                .split_whitespace()
                .filter(|word| !word.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, keyword, name] if keyword.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => String::new(),
            };
            Stage {
                from: words.first().copied().unwrap_or_default().to_owned(),
                name,
                instructions: &instructions[start + 1..end],
            }
        })
        .collect()
}

/// The sources of a `COPY` or `ADD` from the build context (not `--from` a
/// stage), relative to the context.
fn context_sources(instruction: &Instruction) -> Vec<String> {
    if !matches!(instruction.keyword.as_str(), "COPY" | "ADD") {
        return Vec::new();
    }
    let words: Vec<String> = if instruction.args.starts_with('[') {
        serde_json::from_str(&instruction.args).expect("a JSON array")
    } else {
        instruction
            .args
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    if words.iter().any(|word| word.starts_with("--from")) {
        return Vec::new();
    }
    let paths: Vec<String> = words
        .into_iter()
        .filter(|word| !word.starts_with("--"))
        .collect();
    paths[..paths.len().saturating_sub(1)].to_vec()
}

/// `ENV` of the last stage: part of every container's environment.
fn image_environment(instructions: &[Instruction]) -> BTreeMap<String, String> {
    let last_stage = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .unwrap_or(0);
    let mut env = BTreeMap::new();
    for instruction in &instructions[last_stage..] {
        if instruction.keyword != "ENV" {
            continue;
        }
        if instruction.args.contains('=') {
            for pair in instruction.args.split_whitespace() {
                if let Some((name, value)) = pair.split_once('=') {
                    env.insert(name.to_owned(), value.trim_matches('"').to_owned());
                }
            }
        } else if let Some((name, value)) = instruction.args.split_once(char::is_whitespace) {
            env.insert(name.to_owned(), value.trim().to_owned());
        }
    }
    env
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The Warren services' common Dockerfile.
fn warren_dockerfile(compose: &Compose) -> (PathBuf, PathBuf) {
    let (_, spec) = compose.warren_service(Component::Dispatcher);
    compose
        .build(spec)
        .expect("the Warren services build the image")
}

/// Everything a container of `service` gets: the image's `ENV`, then the
/// service's `environment`.
fn container_environment(compose: &Compose, service: &Mapping) -> BTreeMap<String, String> {
    let (_, dockerfile) = warren_dockerfile(compose);
    let mut env = image_environment(&instructions(&read(&dockerfile)));
    env.extend(environment(service));
    env
}

/// The config file a Warren service runs with: its `--config` argument,
/// found through its bind mounts.
fn config_file(compose: &Compose, name: &str, service: &Mapping) -> PathBuf {
    let command = strings(service.get("command"));
    let target = command
        .iter()
        .position(|arg| arg == "--config")
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("service {name}: no --config FILE in {command:?}"));
    compose.host_file(service, target).unwrap_or_else(|| {
        panic!("service {name}: --config {target} is not a file mounted from the host")
    })
}

/// Loads `path` as `component` would in a container whose whole
/// environment is `env`, of which the compose file set `set`; then refuses
/// what the compose file set and nothing reads.
fn check(
    component: Component,
    path: &Path,
    env: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
) -> Result<Loaded, String> {
    let loaded = component.load(path, env).map_err(|e| e.to_string())?;
    let unread = unread_variables(set);
    if unread.is_empty() {
        Ok(loaded)
    } else {
        Err(unread.join("; "))
    }
}

/// Loads every Warren service's config as its container would.
fn load_services(compose: &Compose) -> Vec<(String, Result<Loaded, String>)> {
    compose
        .warren_services()
        .into_iter()
        .map(|(name, component, spec)| {
            let env = container_environment(compose, spec);
            let path = config_file(compose, &name, spec);
            let loaded = check(component, &path, &env, &environment(spec));
            (name, loaded)
        })
        .collect()
}

/// The validated configs of the Warren services, picked by `pick`.
fn configs<T>(compose: &Compose, pick: impl Fn(Loaded) -> Option<T>) -> Vec<T> {
    load_services(compose)
        .into_iter()
        .map(|(name, loaded)| loaded.unwrap_or_else(|e| panic!("service {name}: {e}")))
        .filter_map(pick)
        .collect()
}

/// `consumer_timeout` of the rabbitmq.conf file mounted into the broker.
fn consumer_timeout(compose: &Compose) -> Duration {
    let broker = compose.service("rabbitmq");
    let confs: Vec<PathBuf> = compose
        .mounts(broker)
        .into_iter()
        .filter_map(|mount| match mount {
            Mount::Bind { source, target }
                if target.starts_with("/etc/rabbitmq/") && target.ends_with(".conf") =>
            {
                Some(source)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        confs.len(),
        1,
        "the broker mounts one rabbitmq.conf: {confs:?}"
    );
    let text = read(&confs[0]);
    let value = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "consumer_timeout")
        .map(|(_, value)| value.trim())
        .unwrap_or_else(|| panic!("{} sets no consumer_timeout", confs[0].display()));
    let ms: u64 = value
        .parse()
        .unwrap_or_else(|e| panic!("consumer_timeout = {value}: {e} (milliseconds expected)"));
    Duration::from_millis(ms)
}

fn show(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(duration)
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn every_file_the_compose_file_and_the_dockerfile_name_exists() {
    let compose = Compose::load();
    let mut problems = Vec::new();
    // (what names it, the path): checked at the end.
    let mut named: Vec<(String, PathBuf)> = Vec::new();

    let declared = compose.declared_volumes();
    let services = compose.services();
    let service_names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for (name, spec) in &services {
        if let Some((context, dockerfile)) = compose.build(spec) {
            named.push((format!("service {name}: build context"), context));
            named.push((format!("service {name}: dockerfile"), dockerfile));
        }
        for mount in compose.mounts(spec) {
            match mount {
                Mount::Bind { source, target } => {
                    named.push((format!("service {name}: mount on {target}"), source));
                }
                Mount::Volume { name: volume } => {
                    if !declared.contains(&volume) {
                        problems.push(format!(
                            "service {name}: volume {volume} is not declared under `volumes`"
                        ));
                    }
                }
            }
        }
        let depends_on: Vec<String> = match spec.get("depends_on") {
            Some(Value::Mapping(map)) => map.keys().filter_map(scalar).collect(),
            other => strings(other),
        };
        for dependency in depends_on {
            if !service_names.contains(&dependency.as_str()) {
                problems.push(format!(
                    "service {name}: depends on {dependency}, no such service"
                ));
            }
        }
    }

    let (context, dockerfile) = warren_dockerfile(&compose);
    let text = read(&dockerfile);
    let instructions = instructions(&text);
    // runtime-prebuilt's context is a folder of binaries, not the repository
    // (its own test is below).
    let copied: Vec<String> = stages(&instructions)
        .iter()
        .filter(|stage| stage.name != PREBUILT_STAGE)
        .flat_map(|stage| stage.instructions.iter().flat_map(context_sources))
        .collect();
    for source in &copied {
        named.push((format!("Dockerfile: COPY {source}"), context.join(source)));
    }
    // The dependency stage loads the whole workspace: every member's manifest.
    let manifest: toml::Table = toml::from_str(&read(&repo_root().join("Cargo.toml"))).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    for member in members.iter().filter_map(toml::Value::as_str) {
        let member_manifest = format!("{member}/Cargo.toml");
        if !copied.contains(&member_manifest) {
            problems.push(format!(
                "Dockerfile: workspace member {member}: COPY {member_manifest} is missing"
            ));
        }
    }
    // The image holds the binary of every Warren service, and they share it.
    let images: Vec<Option<String>> = compose
        .warren_services()
        .iter()
        .map(|(_, _, spec)| spec.get("image").and_then(scalar))
        .collect();
    if images.windows(2).any(|pair| pair[0] != pair[1]) {
        problems.push(format!(
            "the Warren services use different images: {images:?}"
        ));
    }
    for component in Component::ALL {
        let built = format!("target/release/{}", component.binary());
        if !text.contains(&built) {
            problems.push(format!("Dockerfile: {built} is not installed"));
        }
    }
    // Without it the build context includes target/ (gigabytes).
    let ignore = dockerfile.with_file_name("Dockerfile.dockerignore");
    if ignore.exists() && !read(&ignore).lines().any(|line| line.trim() == "target") {
        problems.push(format!("{} does not exclude target", ignore.display()));
    }
    named.push(("the Dockerfile's ignore file".into(), ignore));

    for (what, path) in named {
        if !path.exists() {
            problems.push(format!("{what}: {} does not exist", path.display()));
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn each_warren_service_loads_its_config_with_exactly_its_environment() {
    let compose = Compose::load();
    let services = load_services(&compose);
    let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "one service per component, found {names:?}");
    for component in Component::ALL {
        compose.warren_service(component);
    }
    let failures: Vec<String> = services
        .into_iter()
        .filter_map(|(name, loaded)| loaded.err().map(|e| format!("service {name}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_container_config_file_loads_with_no_environment() {
    let dir = docker_dir().join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut seen = Vec::new();
    for path in files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let component = Component::ALL
            .into_iter()
            .find(|c| c.binary() == format!("warren-{stem}"))
            .unwrap_or_else(|| panic!("{}: which component reads it?", path.display()));
        if let Err(error) = component.load(&path, &BTreeMap::new()) {
            panic!("{error}");
        }
        seen.push(component);
    }
    assert_eq!(seen.len(), 3, "one file per component in {}", dir.display());
}

#[test]
fn job_time_limits_are_ordered_below_the_brokers_consumer_timeout() {
    let compose = Compose::load();
    let consumer_timeout = consumer_timeout(&compose);
    let dispatchers = configs(&compose, |l| match l {
        Loaded::Dispatcher(config) => Some(config),
        _ => None,
    });
    let workers = configs(&compose, |l| match l {
        Loaded::Worker(config) => Some(config),
        _ => None,
    });
    let max_timeout = dispatchers[0].max_timeout;
    assert!(
        max_timeout < consumer_timeout,
        "defaults.max_timeout {} must be under consumer_timeout {}",
        show(max_timeout),
        show(consumer_timeout)
    );
    for worker in workers {
        // The broker must never take a job back from a live worker.
        assert!(
            worker.ack_deadline + BROKER_MARGIN <= consumer_timeout,
            "worker.ack_deadline {} must be at least {} under consumer_timeout {}",
            show(worker.ack_deadline),
            show(BROKER_MARGIN),
            show(consumer_timeout)
        );
        // A job ends (killed at its timeout at the latest) before the early ack.
        let job_end = max_timeout + worker.kill_grace + CHECKOUT_ALLOWANCE;
        assert!(
            job_end <= worker.ack_deadline,
            "defaults.max_timeout {} + worker.kill_grace {} + {} for the checkout must not \
             exceed worker.ack_deadline {}",
            show(max_timeout),
            show(worker.kill_grace),
            show(CHECKOUT_ALLOWANCE),
            show(worker.ack_deadline)
        );
    }
}

#[test]
fn workers_scale_and_stop_gracefully() {
    let compose = Compose::load();
    let (name, spec) = compose.warren_service(Component::Worker);
    // A fixed container name or host port can be had by one container only.
    for key in ["container_name", "ports"] {
        assert!(
            spec.get(key).is_none(),
            "service {name}: `{key}` would stop `--scale {name}=4`"
        );
    }
    let workers = configs(&compose, |l| match l {
        Loaded::Worker(config) => Some(config),
        _ => None,
    });
    let stop_grace = duration_field(spec, "stop_grace_period").unwrap_or(Duration::from_secs(10));
    let needed = workers[0].shutdown_grace + workers[0].kill_grace + STOP_SLACK;
    assert!(
        stop_grace >= needed,
        "service {name}: stop_grace_period {} must cover worker.shutdown_grace {} + \
         worker.kill_grace {} + {}",
        show(stop_grace),
        show(workers[0].shutdown_grace),
        show(workers[0].kill_grace),
        show(STOP_SLACK)
    );
}

#[test]
fn every_service_has_a_health_check_that_needs_no_http_endpoint() {
    let compose = Compose::load();
    for (name, spec) in compose.services() {
        let test = strings(spec.get("healthcheck").and_then(|h| h.get("test")));
        assert!(test.len() > 1, "service {name} has no health check");
    }
    // No HTTP API yet: nothing listens on a Warren container's port.
    for (name, _, spec) in compose.warren_services() {
        let test = strings(spec.get("healthcheck").and_then(|h| h.get("test"))).join(" ");
        assert!(
            !["http", "8080", "curl", "wget"]
                .iter()
                .any(|word| test.contains(word)),
            "service {name}: health check {test:?} relies on an endpoint that does not exist"
        );
    }
}

#[test]
fn every_container_can_reach_the_watched_local_repositories() {
    // Commit events carry the watcher's URL; the dispatcher and the workers
    // fetch from it, so a local path must be mounted in all three.
    let compose = Compose::load();
    let watchers = configs(&compose, |l| match l {
        Loaded::Watcher(config) => Some(config),
        _ => None,
    });
    for repo in &watchers[0].repos {
        let url = repo.url.as_str();
        if !url.starts_with('/') {
            continue;
        }
        for (name, _, spec) in compose.warren_services() {
            let mounted = compose.mounts(spec).iter().any(|mount| match mount {
                Mount::Bind { target, .. } => Path::new(url).starts_with(target),
                Mount::Volume { .. } => false,
            });
            assert!(
                mounted,
                "service {name}: repository {} ({url}) is not mounted",
                repo.name
            );
        }
    }
}

#[test]
fn the_environment_check_refuses_variables_the_components_do_not_read() {
    // The check above is only as good as its refusals: try it on the
    // worker's real file and environment with one variable added.
    let compose = Compose::load();
    let (name, spec) = compose.warren_service(Component::Worker);
    let path = config_file(&compose, &name, spec);
    let with = |variable: &str| {
        let mut env = container_environment(&compose, spec);
        let mut set = environment(spec);
        env.insert(variable.to_owned(), "1".to_owned());
        set.insert(variable.to_owned(), "1".to_owned());
        check(Component::Worker, &path, &env, &set).map(|_| ())
    };
    assert!(with("RUST_LOG").is_ok());
    assert!(with("WARREN_WORKER__SLOTS").is_ok());
    for (variable, expected) in [
        ("WARREN_WORKER__SLOTZ", "slotz"),                // a typo of a key
        ("WARREN_DISPATCHER__RESULTS_DIR", "dispatcher"), // another component's key
        ("WARREN_WORKER_SLOTS", "WARREN_WORKER__SLOTS"),  // one underscore
        ("WARREN_SLOTS", "read by no Warren component"),  // not a setting at all
        ("SLOTS", "read by no Warren component"),         // not Warren's
    ] {
        let error = with(variable).expect_err(variable);
        assert!(
            error.contains(expected),
            "{variable}: expected {expected:?} in {error:?}"
        );
    }
}

#[test]
fn interpolation_takes_defaults_and_refuses_variables_without_one() {
    assert_eq!(interpolate("a${X:-b}c").unwrap(), "abc");
    assert_eq!(interpolate("${X-b}").unwrap(), "b");
    assert_eq!(interpolate("${X:-${Y:-nested}}/%2f").unwrap(), "nested/%2f");
    assert_eq!(interpolate("$$HOME ${X:+alt}").unwrap(), "$HOME ");
    for bad in ["${X}", "$X", "${X:?required}", "${X:-unclosed"] {
        assert!(interpolate(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_prebuilt_stage_makes_the_runtime_image_from_binaries_built_elsewhere() {
    let compose = Compose::load();
    let (context, dockerfile) = warren_dockerfile(&compose);
    let instructions = instructions(&read(&dockerfile));
    let stages = stages(&instructions);
    let position = |name: &str| {
        stages
            .iter()
            .position(|stage| stage.name == name)
            .unwrap_or_else(|| panic!("{}: no stage {name}", dockerfile.display()))
    };
    let (prebuilt, runtime) = (position(PREBUILT_STAGE), position(RUNTIME_STAGE));
    assert_eq!(
        runtime,
        stages.len() - 1,
        "{RUNTIME_STAGE} (the full build) must stay the last stage, the default target"
    );

    // The legacy builder builds every stage up to its target: up to
    // runtime-prebuilt, nothing may need an image but the base CI makes.
    let base = base_image_tag();
    for (at, stage) in stages[..=prebuilt].iter().enumerate() {
        let earlier_stage = stages[..at].iter().any(|e| e.name == stage.from);
        assert!(
            stage.from == base || earlier_stage,
            "stage {:?} starts FROM {}: building {PREBUILT_STAGE} would pull it (only {base} \
             is made locally, by scripts/docker-base-image.sh)",
            stage.name,
            stage.from
        );
    }

    // The same image but for where the binaries come from: the same parent,
    // the same container settings, the binaries in the same folder, each
    // started once at build time.
    let (prebuilt, runtime) = (&stages[prebuilt], &stages[runtime]);
    assert_eq!(
        prebuilt.from, runtime.from,
        "both stages start from one base"
    );
    let settings = |stage: &Stage<'_>| -> Vec<String> {
        stage
            .instructions
            .iter()
            .filter(|i| IMAGE_SETTINGS.contains(&i.keyword.as_str()))
            .map(|i| format!("{} {}", i.keyword, i.args))
            .collect()
    };
    assert_eq!(settings(prebuilt), settings(runtime));
    let destinations = |stage: &Stage<'_>| -> Vec<String> {
        stage
            .instructions
            .iter()
            .filter(|i| i.keyword == "COPY")
            .filter_map(|i| i.args.split_whitespace().last().map(str::to_owned))
            .collect()
    };
    assert_eq!(destinations(prebuilt), ["/usr/local/bin/"]);
    assert_eq!(destinations(prebuilt), destinations(runtime));
    for stage in [prebuilt, runtime] {
        let runs: Vec<&str> = stage
            .instructions
            .iter()
            .filter(|i| i.keyword == "RUN")
            .map(|i| i.args.as_str())
            .collect();
        for component in Component::ALL {
            let check = format!("{} --version", component.binary());
            assert!(
                runs.iter().any(|run| run.contains(&check)),
                "stage {}: no `{check}` (a missing library fails the build, not the start)",
                stage.name
            );
        }
    }

    // Its context holds the binaries (a wildcard: none with the repository
    // as the context, where the legacy builder passes through this stage on
    // its way to the full image) and files the repository has too, so that
    // the COPY never matches nothing there.
    let sources: Vec<String> = prebuilt
        .instructions
        .iter()
        .flat_map(context_sources)
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| s.starts_with("warren") && s.contains('*')),
        "{PREBUILT_STAGE} copies no warren* binaries: {sources:?}"
    );
    let fixed: Vec<&String> = sources.iter().filter(|s| !s.contains('*')).collect();
    assert!(
        !fixed.is_empty(),
        "{PREBUILT_STAGE}: a COPY of wildcards alone fails in the repository's context"
    );
    for source in fixed {
        assert!(
            context.join(source).exists(),
            "{PREBUILT_STAGE}: COPY {source}: not in the repository"
        );
    }
}

/// The tag scripts/docker-base-image.sh gives the base image it makes.
fn base_image_tag() -> String {
    let script = read(&repo_root().join("scripts/docker-base-image.sh"));
    script
        .lines()
        .find_map(|line| line.strip_prefix("TAG=${WARREN_BASE_IMAGE:-"))
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("scripts/docker-base-image.sh sets TAG=${WARREN_BASE_IMAGE:-...}")
        .to_owned()
}

#[test]
fn the_host_network_override_keeps_every_service_off_a_bridge_and_loads() {
    let compose = Compose::load();
    let host = Compose::load_file("compose.host.yml");
    let broker = host.service("rabbitmq");
    assert!(
        !strings(broker.get("profiles")).is_empty(),
        "compose.host.yml: the broker service needs a profile, or `up` starts it"
    );
    let is_reset = |value: Option<&Value>| matches!(value, Some(Value::Tagged(tagged)) if tagged.tag == "reset");
    let mut images = BTreeSet::new();
    for (name, component, spec) in compose.warren_services() {
        let over = host.service(&name);
        assert_eq!(
            over.get("network_mode").and_then(Value::as_str),
            Some("host"),
            "compose.host.yml: service {name} is not on the host network"
        );
        assert!(
            is_reset(over.get("depends_on")),
            "compose.host.yml: service {name} must drop its dependency on the broker \
             (depends_on: !reset {{}})"
        );
        if spec.get("ports").is_some() {
            assert!(
                is_reset(over.get("ports")),
                "compose.host.yml: service {name}: the host network publishes no ports \
                 (ports: !reset [])"
            );
        }
        images.insert(over.get("image").and_then(scalar));
        // Its config loads with the variables of both files.
        let mut env = container_environment(&compose, spec);
        env.extend(environment(over));
        let mut set = environment(spec);
        set.extend(environment(over));
        let path = config_file(&compose, &name, spec);
        if let Err(error) = check(component, &path, &env, &set) {
            panic!("service {name} with compose.host.yml: {error}");
        }
    }
    assert_eq!(images.len(), 1, "one image for every service: {images:?}");
}
