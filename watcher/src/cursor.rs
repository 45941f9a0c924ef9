//! The persisted cursors: for each (repository, branch), the last commit
//! whose publish the broker confirmed.
//!
//! `<state_dir>/cursors.json`:
//!
//! ```json
//! { "version": 1, "repos": { "api": { "main": "<sha>", "release/1.2": "<sha>" } } }
//! ```
//!
//! The file is replaced atomically ([`warren_common::atomic_file::write`]),
//! so a reader sees the old file or the new one. A file that cannot be
//! understood is an error, never an empty start: forgetting cursors would
//! silently skip commits (a branch seen "for the first time" publishes only
//! its tip).

use crate::state::{StateDir, lock_blocking};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use warren_common::ids::{BranchName, CommitId, RepoName};

/// Version of the cursor file this build reads and writes.
pub const CURSOR_FILE_VERSION: u32 = 1;

/// Why the cursors could not be read or written. Either way nothing is
/// published for the repository until it is fixed: publishing without
/// knowing what was published could skip commits or repeat all of them.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// The file exists but cannot be read (permissions, I/O). Retried at the next poll.
    #[error("reading the cursor file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// The file is not a cursor file this build understands. Needs a person.
    #[error(
        "the cursor file {path} is not valid ({reason}); it records what was already published \
         for every branch, so the watcher will not guess: restore it or fix it by hand (deleting \
         it makes every branch new again, and then only the tips are published)"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The file was written by another version of Warren. Needs a person.
    #[error(
        "the cursor file {path} has version {found}; this build reads version {CURSOR_FILE_VERSION}"
    )]
    Version { path: PathBuf, found: u64 },
    /// The file could not be written. The cursor did not move: the commits
    /// are published again at the next poll (harmless duplicates).
    #[error("writing the cursor file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The cursors of every repository, as read from the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursors {
    repos: BTreeMap<RepoName, BTreeMap<BranchName, CommitId>>,
}

impl Cursors {
    /// The cursor of `branch` of `repo`, if the branch was seen.
    pub fn get(&self, repo: &RepoName, branch: &BranchName) -> Option<&CommitId> {
        self.repos
            .get(repo)
            .and_then(|branches| branches.get(branch))
    }

    /// Every cursor of `repo`.
    pub fn of(&self, repo: &RepoName) -> BTreeMap<BranchName, CommitId> {
        self.repos.get(repo).cloned().unwrap_or_default()
    }

    /// Sets the cursor of `branch` of `repo`.
    pub fn set(&mut self, repo: &RepoName, branch: &BranchName, sha: &CommitId) {
        self.repos
            .entry(repo.clone())
            .or_default()
            .insert(branch.clone(), sha.clone());
    }
}

/// The file's layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorFile {
    version: u32,
    repos: Cursors,
}

/// Only the version, read first so that a newer layout is reported as such.
#[derive(Deserialize)]
struct VersionOnly {
    version: serde_json::Value,
}

/// The cursor file of one state directory.
#[derive(Debug, Clone)]
pub struct CursorStore {
    path: PathBuf,
    lock: PathBuf,
}

impl CursorStore {
    /// The cursor file of `state`.
    pub fn new(state: &StateDir) -> Self {
        Self {
            path: state.cursors(),
            lock: state.cursors_lock(),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every cursor. A missing file means nothing was published yet.
    /// Blocking (file I/O).
    pub fn load(&self) -> Result<Cursors, CursorError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Cursors::default()),
            Err(source) => {
                return Err(CursorError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let corrupt = |reason: String| CursorError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let version: VersionOnly =
            serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
        if version.version != CURSOR_FILE_VERSION {
            return match version.version.as_u64() {
                Some(found) => Err(CursorError::Version {
                    path: self.path.clone(),
                    found,
                }),
                None => Err(corrupt(format!(
                    "version {} is not a number",
                    version.version
                ))),
            };
        }
        let file: CursorFile =
            serde_json::from_slice(&bytes).map_err(|error| corrupt(error.to_string()))?;
        Ok(file.repos)
    }

    /// Records the cursors of some branches of `repo`, atomically and
    /// durably. The file is re-read under the cursor lock and only these
    /// entries change, so a `--once` run and the long-running watcher,
    /// each writing its own repositories, never undo each other's writes.
    /// Blocking (file I/O and a lock held for the duration of one write).
    pub fn save(
        &self,
        repo: &RepoName,
        moves: &[(BranchName, CommitId)],
    ) -> Result<(), CursorError> {
        if moves.is_empty() {
            return Ok(());
        }
        let write_error = |source| CursorError::Write {
            path: self.path.clone(),
            source,
        };
        let _lock = lock_blocking(&self.lock).map_err(write_error)?;
        let mut cursors = self.load()?;
        for (branch, sha) in moves {
            cursors.set(repo, branch, sha);
        }
        let file = CursorFile {
            version: CURSOR_FILE_VERSION,
            repos: cursors,
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|error| write_error(io::Error::other(error)))?;
        json.push(b'\n');
        warren_common::atomic_file::write(&self.path, &json).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (RepoName, BranchName, BranchName, CommitId, CommitId) {
        (
            RepoName::parse("api").unwrap(),
            BranchName::parse("main").unwrap(),
            BranchName::parse("release/1.2").unwrap(),
            CommitId::parse(&"a".repeat(40)).unwrap(),
            CommitId::parse(&"b".repeat(40)).unwrap(),
        )
    }

    #[test]
    fn cursors_round_trip_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = CursorStore::new(&StateDir::new(dir.path()));
        assert_eq!(store.load().unwrap(), Cursors::default());

        let (api, main, release, a, b) = names();
        store.save(&api, &[(main.clone(), a.clone())]).unwrap();
        store.save(&api, &[(release.clone(), b.clone())]).unwrap();
        let cursors = store.load().unwrap();
        assert_eq!(cursors.get(&api, &main), Some(&a));
        assert_eq!(cursors.get(&api, &release), Some(&b));

        let text = std::fs::read_to_string(store.path()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["repos"]["api"]["release/1.2"], "b".repeat(40));
    }

    #[test]
    fn saving_replaces_the_file_atomically_and_keeps_other_repositories() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let store = CursorStore::new(&state);
        let (api, main, _, a, b) = names();
        let web = RepoName::parse("web").unwrap();
        store.save(&web, &[(main.clone(), a.clone())]).unwrap();
        store.save(&api, &[(main.clone(), a.clone())]).unwrap();
        store.save(&api, &[(main.clone(), b.clone())]).unwrap();

        let cursors = store.load().unwrap();
        assert_eq!(cursors.get(&api, &main), Some(&b));
        assert_eq!(cursors.get(&web, &main), Some(&a));
        // Only the file and its lock: no temporary file left behind.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["cursors.json", "cursors.lock"]);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = CursorStore::new(&StateDir::new(dir.path()));
        let (api, main, _, a, _) = names();
        let bad_files: [(&str, &str); 6] = [
            ("", "is not valid"),
            (
                "{\"version\": 1, \"repos\": {\"api\": {\"main\": \"nope\"}}}",
                "commit id",
            ),
            (
                "{\"version\": 1, \"repos\": {\"../x\": {}}}",
                "repository name",
            ),
            (
                "{\"version\": 1, \"repos\": {}, \"extra\": 1}",
                "unknown field",
            ),
            ("{\"version\": \"one\", \"repos\": {}}", "not a number"),
            ("{\"version\": 2, \"repos\": {}}", "has version 2"),
        ];
        for (contents, expected) in bad_files {
            std::fs::write(store.path(), contents).unwrap();
            let err = store.load().unwrap_err().to_string();
            assert!(err.contains(expected), "expected {expected:?} in {err:?}");
            assert!(err.contains(&store.path().display().to_string()), "{err}");
            // Saving refuses too: it must not replace cursors it could not read.
            assert!(store.save(&api, &[(main.clone(), a.clone())]).is_err());
            assert_eq!(std::fs::read_to_string(store.path()).unwrap(), contents);
        }
    }
}
