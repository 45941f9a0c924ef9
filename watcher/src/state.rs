//! The state directory and its locks.
//!
//! ```text
//! <state_dir>/mirrors/<repo>.git   bare mirror of each repository
//! <state_dir>/cursors.json         last published commit per (repo, branch)
//! <state_dir>/cursors.lock         held while cursors.json is read-modified-written
//! <state_dir>/locks/<repo>.lock    held while one repository is polled
//! ```
//!
//! A poll of a repository (fetch, plan, publish, persist) holds that
//! repository's lock, so `--once` from a git hook and the long-running
//! watcher never poll the same repository at the same time, and different
//! repositories are still polled in parallel. Both write the one cursor file,
//! so every write reloads it and changes only its own entries under the
//! short `cursors.lock`. The locks are `flock(2)` locks: the kernel releases
//! them when their holder exits, even by a crash, so a stale lock cannot
//! block anyone. Lock files are never deleted (deleting one while someone
//! waits on it would let two holders in).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use warren_common::ids::RepoName;

/// How often a waiting `--once` tries a busy repository lock again, in
/// milliseconds: short against a poll that takes a second, long enough not
/// to spin.
const LOCK_RETRY_MS: u64 = 50;

/// The watcher's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The bare mirror of `repo`.
    pub fn mirror(&self, repo: &RepoName) -> PathBuf {
        // A RepoName is a single path component (validated), so this stays
        // inside `mirrors/`.
        self.root.join("mirrors").join(format!("{repo}.git"))
    }

    /// The cursor file.
    pub fn cursors(&self) -> PathBuf {
        self.root.join("cursors.json")
    }

    /// The lock guarding read-modify-writes of the cursor file.
    pub(crate) fn cursors_lock(&self) -> PathBuf {
        self.root.join("cursors.lock")
    }

    fn repo_lock(&self, repo: &RepoName) -> PathBuf {
        self.root.join("locks").join(format!("{repo}.lock"))
    }

    /// Creates the folders.
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.root.join("mirrors"))?;
        std::fs::create_dir_all(self.root.join("locks"))
    }
}

/// Exclusive right to poll one repository; released on drop.
#[derive(Debug)]
pub struct RepoLock {
    _lock: Flock<File>,
    repo: RepoName,
}

impl RepoLock {
    /// Takes the lock if it is free; `Ok(None)` if another poll holds it.
    pub fn try_acquire(state: &StateDir, repo: &RepoName) -> io::Result<Option<Self>> {
        let lock = try_lock_file(&state.repo_lock(repo))?;
        Ok(lock.map(|lock| Self {
            _lock: lock,
            repo: repo.clone(),
        }))
    }

    /// Takes the lock, waiting up to `wait` for its holder to finish;
    /// `Ok(None)` if it is still held then.
    pub async fn acquire_within(
        state: &StateDir,
        repo: &RepoName,
        wait: Duration,
    ) -> io::Result<Option<Self>> {
        let deadline = Instant::now() + wait;
        loop {
            // Opening and trying a lock file is a couple of system calls;
            // not worth a blocking-pool thread.
            if let Some(lock) = Self::try_acquire(state, repo)? {
                return Ok(Some(lock));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let retry = Instant::now() + Duration::from_millis(LOCK_RETRY_MS);
            tokio::time::sleep_until(retry.min(deadline)).await;
        }
    }

    /// The repository this lock is for.
    pub fn repo(&self) -> &RepoName {
        &self.repo
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn try_lock_file(path: &Path) -> io::Result<Option<Flock<File>>> {
    match Flock::lock(open_lock_file(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(io::Error::from(errno)),
    }
}

/// Takes the lock at `path`, blocking until it is free. Only for locks that
/// are held for a few milliseconds (the cursor file's); call it off the
/// async threads.
pub(crate) fn lock_blocking(path: &Path) -> io::Result<Flock<File>> {
    Flock::lock(open_lock_file(path)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io::Error::from(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_repository_lock_excludes_a_second_poll_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let api = RepoName::parse("api").unwrap();
        let web = RepoName::parse("web").unwrap();

        let held = RepoLock::try_acquire(&state, &api).unwrap().expect("free");
        assert!(RepoLock::try_acquire(&state, &api).unwrap().is_none());
        // Other repositories are independent.
        assert!(RepoLock::try_acquire(&state, &web).unwrap().is_some());
        let waited = RepoLock::acquire_within(&state, &api, Duration::from_millis(120))
            .await
            .unwrap();
        assert!(waited.is_none());

        // A waiter gets the lock as soon as the holder lets go.
        let waiter = {
            let state = state.clone();
            let api = api.clone();
            tokio::spawn(async move {
                RepoLock::acquire_within(&state, &api, Duration::from_secs(10)).await
            })
        };
        drop(held);
        let lock = waiter
            .await
            .unwrap()
            .unwrap()
            .expect("acquired after release");
        assert_eq!(lock.repo(), &api);
    }

    #[test]
    fn mirrors_stay_inside_the_state_directory() {
        let state = StateDir::new("/var/w");
        let repo = RepoName::parse("api").unwrap();
        assert_eq!(state.mirror(&repo), Path::new("/var/w/mirrors/api.git"));
        assert_eq!(state.cursors(), Path::new("/var/w/cursors.json"));
    }
}
