//! Reading `warren.toml` from a commit's tree through a bare mirror, without
//! a checkout. The mirror is fetched only when it lacks the commit, so a burst
//! of commits costs one fetch.

use crate::spec::SPEC_FILE;
use git2::{ErrorCode, Oid, Repository};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use warren_common::fetch::{FetchError, FetchRequest, open_or_recreate_bare};
use warren_common::git::GitAuth;
use warren_common::ids::{CommitId, RepoName, RepoUrl};

/// Why the commit's `warren.toml` could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MirrorError {
    /// The repository could not be fetched (unreachable, refused, not a
    /// repository). May be temporary: retry a few times, then give the
    /// commit an `error` result with this message.
    #[error("could not fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The host refused the credentials (or asked for some and there were
    /// none): trying again would be refused again.
    #[error("could not fetch {url}: {message}")]
    Refused { url: String, message: String },
    /// The fetch worked but the commit is not in the repository (force-pushed
    /// away?). Permanent: the commit gets an `error` result.
    #[error("commit {sha} is not in {url} (was it force-pushed away?)")]
    CommitNotFound { sha: String, url: String },
    /// `warren.toml` is a folder (or a submodule), not a file. Permanent.
    #[error("{SPEC_FILE} at the repository root is not a file")]
    SpecNotAFile,
    /// The mirror on disk could not be opened or created. Permanent for this
    /// commit, and worth an operator's look.
    #[error("mirror {path}: {message}")]
    Local { path: PathBuf, message: String },
}

impl MirrorError {
    /// Whether trying again later may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Self::Fetch { .. })
    }
}

/// The bare mirrors under one folder, kept open between commits (opening a
/// repository costs more than reading a file from it).
pub(crate) struct Mirrors {
    dir: PathBuf,
    git: GitAuth,
    open: Mutex<HashMap<RepoName, Repository>>,
}

impl Mirrors {
    /// Mirrors in `dir` (`<dir>/<repo>.git`), created on first use,
    /// fetched with the credentials of `git`.
    pub(crate) fn new(dir: &Path, git: GitAuth) -> Self {
        Self {
            dir: dir.to_path_buf(),
            git,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Reads what planning needs from commit `sha` (see [`CommitTree`]),
    /// fetching `url` into the repository's mirror first if the commit is not
    /// there yet. Blocking: call it from a blocking thread.
    pub(crate) fn read_commit(
        &self,
        repo: &RepoName,
        url: &RepoUrl,
        sha: &CommitId,
    ) -> Result<CommitTree, MirrorError> {
        // One commit at a time per dispatcher; the lock is never held across
        // an await (this runs on a blocking thread).
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.dir.join(format!("{repo}.git"));
        let mirror = match open.entry(repo.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(open_or_init(&path)?),
        };
        let result = read_from(mirror, &path, url, &self.git, sha);
        if matches!(result, Err(MirrorError::Local { .. })) {
            // Opened again (and recreated if broken) next time.
            open.remove(repo);
        }
        result
    }
}

/// What planning needs from one commit.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitTree {
    /// `warren.toml` at the root, if any.
    pub spec: Option<Vec<u8>>,
    /// Every file (blob) of the tree, by path.
    pub files: Vec<String>,
    /// The first parent, if any.
    pub parent: Option<CommitId>,
    /// Paths changed against the first parent (both sides of renames and
    /// deletions); `None` for a root commit.
    pub changed: Option<Vec<String>>,
}

/// Most files listed from one tree: beyond this the repository is not one
/// Warren can split (and the dispatcher's memory is protected).
const MAX_TREE_FILES: usize = 1_000_000;

/// Reads `sha` from `mirror`, fetching first if needed.
fn read_from(
    mirror: &Repository,
    path: &Path,
    url: &RepoUrl,
    git: &GitAuth,
    sha: &CommitId,
) -> Result<CommitTree, MirrorError> {
    let local = |error: git2::Error| MirrorError::Local {
        path: path.to_path_buf(),
        message: error.message().to_owned(),
    };
    let oid = Oid::from_str(sha.as_str()).map_err(local)?;
    if mirror.find_commit(oid).is_err() {
        fetch(mirror, url, git)?;
    }
    let commit = mirror
        .find_commit(oid)
        .map_err(|_| MirrorError::CommitNotFound {
            sha: sha.to_string(),
            url: url.to_string(),
        })?;
    let tree = commit.tree().map_err(local)?;
    let spec = match tree.get_path(Path::new(SPEC_FILE)) {
        Ok(entry) => {
            let object = entry.to_object(mirror).map_err(local)?;
            match object.as_blob() {
                Some(blob) => Some(blob.content().to_vec()),
                None => return Err(MirrorError::SpecNotAFile),
            }
        }
        Err(error) if error.code() == ErrorCode::NotFound => None,
        Err(error) => return Err(local(error)),
    };
    let mut files = Vec::new();
    let mut too_many = false;
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if entry.kind() == Some(git2::ObjectType::Blob) {
            if files.len() >= MAX_TREE_FILES {
                too_many = true;
                return git2::TreeWalkResult::Abort;
            }
            if let Ok(name) = entry.name() {
                files.push(format!("{root}{name}"));
            }
        }
        git2::TreeWalkResult::Ok
    })
    .or_else(|error| if too_many { Ok(()) } else { Err(error) })
    .map_err(local)?;
    if too_many {
        return Err(MirrorError::Local {
            path: path.to_path_buf(),
            message: format!("the commit has more than {MAX_TREE_FILES} files"),
        });
    }
    let (parent, changed) = match commit.parents().next() {
        None => (None, None),
        Some(parent) => {
            let parent_tree = parent.tree().map_err(local)?;
            let diff = mirror
                .diff_tree_to_tree(Some(&parent_tree), Some(&tree), None)
                .map_err(local)?;
            let mut changed = std::collections::BTreeSet::new();
            for delta in diff.deltas() {
                for file in [delta.old_file(), delta.new_file()] {
                    if let Some(path) = file.path().and_then(Path::to_str) {
                        changed.insert(path.to_owned());
                    }
                }
            }
            let parent =
                CommitId::parse(&parent.id().to_string()).map_err(|error| MirrorError::Local {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                })?;
            (Some(parent), Some(changed.into_iter().collect()))
        }
    };
    Ok(CommitTree {
        spec,
        files,
        parent,
        changed,
    })
}

/// Opens the mirror, or creates it; a mirror that cannot be opened (deleted
/// files, corruption) is removed and created again: it is only a cache.
fn open_or_init(path: &Path) -> Result<Repository, MirrorError> {
    open_or_recreate_bare(path).map_err(|error| MirrorError::Local {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// Every branch of `url` into the mirror, pruned (the dispatcher never
/// abandons a fetch: planning runs beside its loop).
fn fetch(mirror: &Repository, url: &RepoUrl, git: &GitAuth) -> Result<(), MirrorError> {
    let request = FetchRequest {
        url,
        refspecs: &["+refs/heads/*:refs/heads/*"],
        prune: true,
        git,
        stop: &|| false,
        reflog: None,
    };
    warren_common::fetch::fetch(mirror, &request).map_err(|error| {
        let (url, message) = (error.url().to_owned(), error.detail().to_owned());
        match error {
            FetchError::Refused { .. } => MirrorError::Refused { url, message },
            // A missing local path is retried like an unreachable host: the
            // dispatcher may start before the repository is created.
            _ => MirrorError::Fetch { url, message },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_harness::git::Upstream;

    fn ids(upstream: &Upstream, sha: &str) -> (RepoName, RepoUrl, CommitId) {
        (
            RepoName::parse("sample").unwrap(),
            RepoUrl::parse(&upstream.url()).unwrap(),
            CommitId::parse(sha).unwrap(),
        )
    }

    #[test]
    fn reads_the_spec_of_each_commit_fetching_only_when_needed() {
        let upstream = Upstream::new();
        let first = upstream.commit("main", "one", &[("warren.toml", Some("command = \"a\""))]);
        let second = upstream.commit("main", "two", &[("warren.toml", None)]);
        let dir = tempfile::tempdir().unwrap();
        let (repo, url, sha) = ids(&upstream, &first);
        assert_eq!(
            Mirrors::new(dir.path(), GitAuth::default())
                .read_commit(&repo, &url, &sha)
                .unwrap()
                .spec
                .unwrap(),
            b"command = \"a\""
        );
        let (_, _, sha) = ids(&upstream, &second);
        assert_eq!(
            Mirrors::new(dir.path(), GitAuth::default())
                .read_commit(&repo, &url, &sha)
                .unwrap()
                .spec,
            None
        );
    }

    #[test]
    fn lists_the_files_and_the_change_against_the_parent() {
        let upstream = Upstream::new();
        let first = upstream.commit(
            "main",
            "one",
            &[("src/a.py", Some("a")), ("tests/t.py", Some("t"))],
        );
        let second = upstream.commit(
            "main",
            "two",
            &[("src/a.py", Some("b")), ("README", Some("r"))],
        );
        let dir = tempfile::tempdir().unwrap();
        let (repo, url, sha) = ids(&upstream, &second);
        let tree = Mirrors::new(dir.path(), GitAuth::default())
            .read_commit(&repo, &url, &sha)
            .unwrap();
        assert_eq!(tree.files, ["README", "src/a.py", "tests/t.py"]);
        assert_eq!(tree.changed.unwrap(), ["README", "src/a.py"]);
        assert_eq!(tree.parent.unwrap().as_str(), first);
        let (_, _, root) = ids(&upstream, &first);
        let tree = Mirrors::new(dir.path(), GitAuth::default())
            .read_commit(&repo, &url, &root)
            .unwrap();
        assert!(tree.parent.is_none() && tree.changed.is_none());
    }

    #[test]
    fn missing_commits_and_unreachable_urls_are_distinct_errors() {
        let upstream = Upstream::new();
        upstream.commit("main", "one", &[("a", Some("a"))]);
        let dir = tempfile::tempdir().unwrap();
        let (repo, url, _) = ids(&upstream, &"0".repeat(40));
        let missing = CommitId::parse(&"1".repeat(40)).unwrap();
        let err = Mirrors::new(dir.path(), GitAuth::default())
            .read_commit(&repo, &url, &missing)
            .unwrap_err();
        assert!(matches!(err, MirrorError::CommitNotFound { .. }), "{err}");
        assert!(!err.is_retryable());

        let nowhere = RepoUrl::parse("/nonexistent/repo.git").unwrap();
        let err = Mirrors::new(dir.path(), GitAuth::default())
            .read_commit(&repo, &nowhere, &missing)
            .unwrap_err();
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn a_corrupt_mirror_is_recreated() {
        let upstream = Upstream::new();
        let sha = upstream.commit("main", "one", &[("warren.toml", Some("x"))]);
        let dir = tempfile::tempdir().unwrap();
        let (repo, url, sha) = ids(&upstream, &sha);
        Mirrors::new(dir.path(), GitAuth::default())
            .read_commit(&repo, &url, &sha)
            .unwrap();
        let mirror = dir.path().join("sample.git");
        std::fs::remove_dir_all(mirror.join("objects")).unwrap();
        std::fs::remove_file(mirror.join("HEAD")).unwrap();
        assert!(
            Mirrors::new(dir.path(), GitAuth::default())
                .read_commit(&repo, &url, &sha)
                .unwrap()
                .spec
                .is_some()
        );
    }
}
