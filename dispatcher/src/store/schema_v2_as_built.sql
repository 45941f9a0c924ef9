CREATE TABLE IF NOT EXISTS commits (
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
    selection        TEXT,
    UNIQUE (repo, sha)
);
CREATE INDEX IF NOT EXISTS commits_branch ON commits (repo, branch, status);
CREATE INDEX IF NOT EXISTS commits_unwritten ON commits (result_written) WHERE result_written = 0;
CREATE TABLE IF NOT EXISTS jobs (
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
    late_results      INTEGER NOT NULL DEFAULT 0,
    files             TEXT NOT NULL DEFAULT '[]',
    junit             TEXT,
    retry_failed      INTEGER NOT NULL DEFAULT 0,
    estimated_ms      INTEGER,
    report_problem    TEXT
);
CREATE INDEX IF NOT EXISTS jobs_commit ON jobs (commit_id);
CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs (published) WHERE published = 0;
CREATE TABLE IF NOT EXISTS attempts (
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
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);
CREATE TABLE IF NOT EXISTS tests (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    name        TEXT NOT NULL,
    classname   TEXT NOT NULL,
    file        TEXT,
    duration_ms INTEGER NOT NULL,
    status      TEXT NOT NULL,
    message     TEXT,
    flaky       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tests_job ON tests (job_id);
CREATE TABLE IF NOT EXISTS file_timings (
    repo        TEXT NOT NULL,
    path        TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    measured    INTEGER NOT NULL,
    samples     INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (repo, path)
);
CREATE TABLE IF NOT EXISTS flaky (
    repo      TEXT NOT NULL,
    test      TEXT NOT NULL,
    sha       TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flaky_test ON flaky (repo, test);
CREATE TABLE IF NOT EXISTS workers (
    id        TEXT PRIMARY KEY,
    host      TEXT NOT NULL,
    slots     INTEGER NOT NULL,
    busy      INTEGER NOT NULL,
    jobs_done INTEGER NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_running ON attempts (state) WHERE state = 'running';