//! The schema as a numbered list of migrations, applied in order when the
//! store opens (see [`Store::open`](super::Store::open)).
//!
//! The database carries the number of the last migration applied in
//! `PRAGMA user_version`. Opening applies every later migration in one
//! transaction (all or none); a database of a newer version than this build
//! knows is refused rather than misread, and so is one with tables but no
//! version (not a Warren database). A new migration is appended, never
//! edited: a database out there has run the old text.

use super::{Result, corrupt};
use rusqlite::Connection;

/// One step of the schema.
pub(super) struct Migration {
    /// The `user_version` after this step.
    pub(super) version: i64,
    /// What the step adds, for the log.
    pub(super) what: &'static str,
    pub(super) sql: &'static str,
}

/// Every schema step since the first release, oldest first.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "commits, jobs and attempts",
        sql: "
CREATE TABLE commits (
    id               INTEGER PRIMARY KEY,
    repo             TEXT NOT NULL,
    sha              TEXT NOT NULL,
    branch           TEXT NOT NULL,
    url              TEXT NOT NULL,
    author           TEXT NOT NULL,
    summary          TEXT NOT NULL,
    committed_at     TEXT NOT NULL,
    detected_at      TEXT NOT NULL,
    received_at      TEXT NOT NULL,
    status           TEXT NOT NULL,
    message          TEXT,
    finished_at      TEXT,
    result_written   INTEGER NOT NULL DEFAULT 0,
    duplicate_events INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repo, sha)
);
CREATE INDEX commits_unwritten ON commits (result_written) WHERE result_written = 0;
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    commit_id         INTEGER NOT NULL REFERENCES commits (id),
    shard_index       INTEGER NOT NULL,
    shard_count       INTEGER NOT NULL,
    command           TEXT NOT NULL,
    timeout_ms        INTEGER NOT NULL,
    env               TEXT NOT NULL,
    status            TEXT NOT NULL,
    message           TEXT,
    attempt           INTEGER NOT NULL,
    published         INTEGER NOT NULL DEFAULT 0,
    published_at      TEXT,
    decided_run       TEXT,
    finished_at       TEXT,
    lost_runs         INTEGER NOT NULL DEFAULT 0,
    late_results      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_commit ON jobs (commit_id);
CREATE INDEX jobs_unpublished ON jobs (published) WHERE published = 0;
CREATE TABLE attempts (
    run_id           TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    attempt          INTEGER NOT NULL,
    worker           TEXT NOT NULL,
    host             TEXT NOT NULL,
    state            TEXT NOT NULL,
    started_at       TEXT,
    last_seen        TEXT NOT NULL,
    finished_at      TEXT,
    status           TEXT,
    exit_code        INTEGER,
    signal           INTEGER,
    message          TEXT,
    checkout_ms      INTEGER,
    duration_ms      INTEGER,
    output           TEXT,
    output_truncated INTEGER,
    output_bytes     INTEGER
);
CREATE INDEX attempts_job ON attempts (job_id);
CREATE INDEX attempts_running ON attempts (state) WHERE state = 'running';
",
    },
    Migration {
        version: 2,
        what: "suites: selection, shard files, junit, reruns, tests, file timings, flaky history",
        sql: "
ALTER TABLE commits ADD COLUMN selection TEXT;
CREATE INDEX commits_branch ON commits (repo, branch, status);
ALTER TABLE jobs ADD COLUMN files TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN junit TEXT;
ALTER TABLE jobs ADD COLUMN retry_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN estimated_ms INTEGER;
ALTER TABLE jobs ADD COLUMN report_problem TEXT;
CREATE TABLE tests (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    name        TEXT NOT NULL,
    classname   TEXT NOT NULL,
    file        TEXT,
    duration_ms INTEGER NOT NULL,
    status      TEXT NOT NULL,
    message     TEXT,
    flaky       INTEGER NOT NULL
);
CREATE INDEX tests_job ON tests (job_id);
CREATE TABLE file_timings (
    repo        TEXT NOT NULL,
    path        TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    measured    INTEGER NOT NULL,
    samples     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (repo, path)
);
CREATE TABLE flaky (
    repo      TEXT NOT NULL,
    test      TEXT NOT NULL,
    sha       TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE INDEX flaky_test ON flaky (repo, test);
",
    },
    Migration {
        version: 3,
        what: "workers",
        // Builds of version 2 made this table on every start without
        // bumping the version, so a version-2 database may have it already.
        sql: "
CREATE TABLE IF NOT EXISTS workers (
    id        TEXT PRIMARY KEY,
    host      TEXT NOT NULL,
    slots     INTEGER NOT NULL,
    busy      INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL,
    last_seen TEXT NOT NULL
);
",
    },
    Migration {
        version: 4,
        what: "jobs' network, limits and result keys",
        // result_key NULL: a job published before this version, whose
        // results carry no proof (see docs/DESIGN.md).
        sql: "
ALTER TABLE jobs ADD COLUMN network INTEGER;
ALTER TABLE jobs ADD COLUMN limits TEXT;
ALTER TABLE jobs ADD COLUMN result_key TEXT;
",
    },
    Migration {
        version: 5,
        what: "isolation: the container image a job runs in",
        sql: "
ALTER TABLE jobs ADD COLUMN image TEXT;
",
    },
    Migration {
        version: 6,
        what: "a test's history across commits (the test history page)",
        sql: "
CREATE INDEX tests_name ON tests (classname, name);
",
    },
];

/// The version this build reads and writes: the last migration's.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The database's `user_version`.
pub(super) fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Refuses a database this build cannot read as it is.
pub(super) fn check_version(version: i64) -> Result<()> {
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let what = if version > SCHEMA_VERSION {
        "newer than this build reads; run a newer dispatcher"
    } else {
        "older than this build reads; open it once read-write to migrate it"
    };
    Err(corrupt(
        "user_version",
        format!("database schema version {version} is {what} (this build: {SCHEMA_VERSION})"),
    ))
}

/// Brings the database to [`SCHEMA_VERSION`]: every missing migration in
/// one transaction. Returns the version it found (0 for a new database).
pub(super) fn migrate(conn: &mut Connection) -> Result<i64> {
    let found = version(conn)?;
    let has_tables: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table')",
        [],
        |row| row.get(0),
    )?;
    if has_tables && found == 0 {
        return Err(corrupt(
            "user_version",
            "the database has tables but no schema version: not a Warren database",
        ));
    }
    if found > SCHEMA_VERSION {
        check_version(found)?;
    }
    if found == SCHEMA_VERSION {
        return Ok(found);
    }
    let tx = conn.transaction()?;
    for step in MIGRATIONS.iter().filter(|step| step.version > found) {
        tx.execute_batch(step.sql)?;
        tracing::info!(
            version = step.version,
            what = step.what,
            "database schema migrated"
        );
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SyncMode;
    use crate::store::Store;
    use chrono::{Duration, Utc};
    use warren_common::messages::JobStatus;

    /// The whole schema as builds of version 2 created it (every column in
    /// its `CREATE TABLE`, not added by `ALTER TABLE`).
    const V2_AS_BUILT: &str = include_str!("schema_v2_as_built.sql");

    /// A database at `version`, made by the first migrations.
    fn database_at(path: &std::path::Path, version: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        for step in MIGRATIONS.iter().filter(|step| step.version <= version) {
            conn.execute_batch(step.sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version).unwrap();
        conn
    }

    /// A decided commit with one job and one run, in version 1's columns.
    fn insert_v1_rows(conn: &Connection) {
        let at = "2026-11-20T10:00:00.000Z";
        conn.execute(
            "INSERT INTO commits (id, repo, sha, branch, url, author, summary, committed_at,
                                  detected_at, received_at, status, finished_at, result_written)
             VALUES (1, 'api', ?1, 'main', '/srv/api.git', 'A <a@x>', 'old', ?2, ?2, ?2,
                     'passed', ?2, 1)",
            rusqlite::params!["a".repeat(40), at],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, commit_id, shard_index, shard_count, command, timeout_ms, env,
                               status, attempt, published, published_at, decided_run, finished_at)
             VALUES ('6f1d2f43-4b0e-4a53-9a8e-5d7e0d3f0c11', 1, 0, 1, '\"make test\"', 60000,
                     '{}', 'passed', 1, 1, ?1, 'run-1', ?1)",
            [at],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO attempts (run_id, job_id, attempt, worker, host, state, started_at,
                                   last_seen, finished_at, status, exit_code, duration_ms, output,
                                   output_truncated, output_bytes)
             VALUES ('run-1', '6f1d2f43-4b0e-4a53-9a8e-5d7e0d3f0c11', 1, 'w1', 'h', 'finished',
                     ?1, ?1, ?1, 'passed', 0, 10, 'ok', 0, 2)",
            [at],
        )
        .unwrap();
    }

    /// Every table's columns (name, type, not null, default) and every
    /// index, as SQLite reports them.
    fn shape(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut names = conn
            .prepare("SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name")
            .unwrap();
        let objects: Vec<(String, String, String)> = names
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let mut shape = Vec::new();
        for (kind, name, table) in objects {
            shape.push(format!("{kind} {name} on {table}"));
            if kind == "table" {
                let mut columns = conn
                    .prepare(&format!("SELECT name, type, \"notnull\", dflt_value FROM pragma_table_info('{name}') ORDER BY name"))
                    .unwrap();
                let rows = columns
                    .query_map([], |row| {
                        Ok(format!(
                            "  {name}.{}: {} notnull={} default={:?}",
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, Option<String>>(3)?
                        ))
                    })
                    .unwrap();
                shape.extend(rows.map(|row| row.unwrap()));
            }
        }
        shape
    }

    #[test]
    fn versions_are_numbered_one_after_another() {
        for (index, step) in MIGRATIONS.iter().enumerate() {
            assert_eq!(step.version, index as i64 + 1, "{}", step.what);
        }
    }

    #[test]
    fn every_earlier_version_migrates_to_the_shape_of_a_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        drop(Store::open(&fresh, SyncMode::Normal).unwrap());
        assert_eq!(
            version(&Connection::open(&fresh).unwrap()).unwrap(),
            SCHEMA_VERSION
        );
        let expected = shape(&fresh);

        let mut earlier = Vec::new();
        for step in &MIGRATIONS[..MIGRATIONS.len() - 1] {
            let path = dir.path().join(format!("v{}.db", step.version));
            drop(database_at(&path, step.version));
            earlier.push((format!("version {}", step.version), path));
        }
        // Version 2 as its builds wrote it: all columns inline, and the
        // workers table already there.
        let as_built = dir.path().join("v2-as-built.db");
        let conn = Connection::open(&as_built).unwrap();
        conn.execute_batch(V2_AS_BUILT).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        drop(conn);
        earlier.push(("version 2 as built".into(), as_built));

        for (name, path) in earlier {
            drop(Store::open(&path, SyncMode::Normal).unwrap());
            assert_eq!(
                version(&Connection::open(&path).unwrap()).unwrap(),
                SCHEMA_VERSION,
                "{name}"
            );
            assert_eq!(shape(&path), expected, "{name}");
        }
    }

    #[test]
    fn a_version_1_database_keeps_its_history_and_takes_new_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        insert_v1_rows(&database_at(&path, 1));

        let mut store = Store::open(&path, SyncMode::Normal).unwrap();
        let report = store.commit_report(1).unwrap();
        assert_eq!(report.status, Some(JobStatus::Passed));
        assert_eq!(report.summary, "old");
        let [job] = &report.jobs[..] else {
            panic!("one job, got {:?}", report.jobs);
        };
        assert_eq!(job.status, Some(JobStatus::Passed));
        assert_eq!(job.worker.as_deref(), Some("w1"));
        assert_eq!(job.output, "ok");
        assert!(job.files.is_empty(), "the new column's default");
        assert_eq!(job.report_problem, None);
        assert!(store.unwritten_results().unwrap().is_empty());
        // The migrated database takes new commits, and its new tables work.
        let event = warren_harness::builders::commit_event("/srv/api.git", &"b".repeat(40))
            .repo("api")
            .build();
        let id = store
            .insert_errored(&event, "warren.toml is invalid", Utc::now())
            .unwrap();
        assert_eq!(store.unwritten_results().unwrap(), [id]);
        assert!(
            store
                .workers(Utc::now() - Duration::hours(1))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_version_2_database_keeps_its_workers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(V2_AS_BUILT).unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        let seen = Utc::now().to_rfc3339();
        conn.execute(
            "INSERT INTO workers (id, host, slots, busy, jobs_done, last_seen)
             VALUES ('w1', 'h', 2, 1, 7, ?1)",
            [&seen],
        )
        .unwrap();
        drop(conn);

        let store = Store::open(&path, SyncMode::Normal).unwrap();
        let workers = store.workers(Utc::now() - Duration::hours(1)).unwrap();
        assert_eq!(workers.len(), 1, "{workers:?}");
        assert_eq!(workers[0].jobs_done, 7);
    }

    #[test]
    fn a_version_3_database_keeps_its_tests_and_answers_their_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let conn = database_at(&path, 3);
        insert_v1_rows(&conn);
        conn.execute(
            "INSERT INTO tests (job_id, name, classname, file, duration_ms, status, message, flaky)
             VALUES ('6f1d2f43-4b0e-4a53-9a8e-5d7e0d3f0c11', 't', 'suite', NULL, 7, 'passed', NULL, 1)",
            [],
        )
        .unwrap();
        drop(conn);

        let store = Store::open(&path, SyncMode::Normal).unwrap();
        let runs = store.test_history("api", "suite", "t", 10).unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!((runs[0].duration_ms, runs[0].flaky), (7, true));
        assert_eq!(runs[0].commit_status, Some(JobStatus::Passed));
        let indexed: bool = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'tests_name')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(indexed, "migration 6 made the index");
    }

    #[test]
    fn a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let conn = database_at(&path, 1);
        insert_v1_rows(&conn);
        // Migration 2 creates `tests`; a table of that name already there
        // makes it fail half-way.
        conn.execute_batch("CREATE TABLE tests (x INTEGER)")
            .unwrap();
        drop(conn);

        let err = Store::open(&path, SyncMode::Normal)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("tests"), "{err}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), 1);
        let has_selection: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('commits') WHERE name = 'selection')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(
            !has_selection,
            "the first statements of the step were rolled back"
        );
    }

    #[test]
    fn newer_unversioned_and_unmigrated_databases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let newer = dir.path().join("newer.db");
        drop(Store::open(&newer, SyncMode::Normal).unwrap());
        Connection::open(&newer)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        for err in [
            Store::open(&newer, SyncMode::Normal)
                .err()
                .unwrap()
                .to_string(),
            Store::open_read_only(&newer).err().unwrap().to_string(),
        ] {
            assert!(err.contains("schema version 99 is newer"), "{err}");
        }

        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Store::open(&foreign, SyncMode::Normal)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a Warren database"), "{err}");

        // The API's read-only connection never migrates.
        let old = dir.path().join("old.db");
        drop(database_at(&old, 1));
        let err = Store::open_read_only(&old).err().unwrap().to_string();
        assert!(err.contains("schema version 1 is older"), "{err}");
        assert_eq!(version(&Connection::open(&old).unwrap()).unwrap(), 1);
    }

    #[test]
    fn a_database_of_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        drop(Store::open(&path, SyncMode::Normal).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path, SyncMode::Normal)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("schema version 99"), "{err}");
    }
}
