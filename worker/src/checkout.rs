//! Preparing a clean work tree at one commit, reusing the slot's clone.
//!
//! Each slot keeps one clone per repository (`<slot>/<repo>`). A job fetches
//! only when its commit is missing, checks the commit out detached and
//! forced, and removes everything the previous job left behind: untracked
//! and ignored files (libgit2 has no `git clean`, so the paths come from
//! `statuses`), empty folders, and changes to tracked files. A clone that
//! cannot be opened or fails in any other way is deleted and made again,
//! once. A clone a container job's user still owns (its worker was killed
//! mid-job) is first given back to the worker's user. Everything here
//! blocks: call it from `spawn_blocking`.

use git2::build::CheckoutBuilder;
use git2::{Oid, Repository, RepositoryOpenFlags, ResetType, Status, StatusOptions};
use nix::unistd::{getegid, geteuid};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{debug, info, warn};
use warren_common::fetch::{FetchError, FetchRequest};
use warren_common::git::GitAuth;
use warren_common::ids::{CommitId, RepoName, RepoUrl};

/// What is fetched when a commit is missing: every branch and tag. A commit
/// that none of them reaches (force-pushed away) is not found.
const FETCH_REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// Why a work tree could not be prepared. Every variant fails the job with
/// status `error` and this text as its message; none is retried by the
/// worker (the clone was already made afresh once).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    /// The repository could not be fetched: wrong URL, host down, no access.
    #[error("could not fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The fetch worked but the commit is not on any branch or tag.
    #[error("commit {sha} not found in {url}: force-pushed away?")]
    CommitNotFound { sha: CommitId, url: String },
    /// The local clone or the commit's tree could not be written.
    #[error("preparing the work tree {path}: {message}")]
    Local { path: PathBuf, message: String },
    /// The fetch was interrupted because the worker is stopping.
    #[error("checkout interrupted: the worker is stopping")]
    Interrupted,
}

/// A request to prepare `<slot_dir>/<repo>` at `sha`.
#[derive(Debug, Clone)]
pub(crate) struct CheckoutRequest<'a> {
    /// The slot's folder.
    pub slot_dir: &'a Path,
    /// The repository (one safe path component).
    pub repo: &'a RepoName,
    /// Where to fetch from.
    pub url: &'a RepoUrl,
    /// The commit to check out.
    pub sha: &'a CommitId,
    /// Credentials for the fetch.
    pub git: &'a GitAuth,
}

/// A clean work tree at the requested commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreparedTree {
    /// The folder to run the command in.
    pub path: PathBuf,
    /// Whether the commit had to be fetched (false: it was already there).
    pub fetched: bool,
}

/// Prepares the work tree; `interrupt` set to true aborts a running fetch.
pub(crate) fn prepare(
    request: &CheckoutRequest<'_>,
    interrupt: &Arc<AtomicBool>,
) -> Result<PreparedTree, CheckoutError> {
    let path = request.slot_dir.join(request.repo.as_str());
    let reused = path.exists();
    if reused {
        take_back(&path);
    }
    match attempt(request, &path, interrupt) {
        Ok(fetched) => Ok(PreparedTree { path, fetched }),
        Err(Failure::Interrupted) => Err(CheckoutError::Interrupted),
        Err(failure) if reused => {
            // Any failure on a reused clone may come from the clone itself (a
            // deleted .git, a broken object store, a stale lock): start afresh,
            // once. A fresh clone that fails has nothing left to blame.
            warn!(path = %path.display(), error = %failure.describe(request),
                "the existing clone failed; deleting it and cloning again");
            remove_all(&path).map_err(|e| local(&path, &e))?;
            attempt(request, &path, interrupt)
                .map(|fetched| PreparedTree {
                    path: path.clone(),
                    fetched,
                })
                .map_err(|failure| failure.into_error(request, &path))
        }
        Err(failure) => Err(failure.into_error(request, &path)),
    }
}

/// Gives a clone back to the worker's own user when the container
/// executor's job user (`nobody`) still owns it: a worker killed mid-job
/// never took it back, and git refuses to open a clone its user does not
/// own (it would be deleted and cloned again). Only a worker running as
/// root hands a clone over, and only root can take it back; only what is
/// under the clone, never through a symbolic link.
fn take_back(path: &Path) {
    let (uid, gid) = (geteuid(), getegid());
    if !uid.is_root() {
        return;
    }
    let foreign =
        |path: &Path| fs::symlink_metadata(path).is_ok_and(|meta| meta.uid() != uid.as_raw());
    if !foreign(path) && !foreign(&path.join(".git")) {
        return;
    }
    warn!(path = %path.display(),
        "the clone is owned by another user (a container job's, its worker killed mid-job?); taking it back");
    if let Err(error) = crate::executor::chown_tree(path, uid.as_raw(), gid.as_raw()) {
        warn!(path = %path.display(), %error, "could not take the clone back");
    }
}

/// The failure of one attempt, before it becomes a [`CheckoutError`].
enum Failure {
    Fetch(FetchError),
    NotFound,
    Local(String),
    Interrupted,
}

impl Failure {
    fn describe(&self, request: &CheckoutRequest<'_>) -> String {
        match self {
            Self::Fetch(e) => format!("fetching: {}", e.detail()),
            Self::NotFound => format!("commit {} not found", request.sha),
            Self::Local(message) => message.clone(),
            Self::Interrupted => "interrupted".into(),
        }
    }

    fn into_error(self, request: &CheckoutRequest<'_>, path: &Path) -> CheckoutError {
        match self {
            Self::Fetch(e) => CheckoutError::Fetch {
                url: e.url().to_owned(),
                message: e.detail().to_owned(),
            },
            Self::NotFound => CheckoutError::CommitNotFound {
                sha: request.sha.clone(),
                url: request.url.to_string(),
            },
            Self::Local(message) => CheckoutError::Local {
                path: path.to_path_buf(),
                message,
            },
            Self::Interrupted => CheckoutError::Interrupted,
        }
    }
}

impl From<git2::Error> for Failure {
    fn from(error: git2::Error) -> Self {
        Self::Local(error.message().to_owned())
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Self::Local(error.to_string())
    }
}

fn local(path: &Path, error: &dyn std::fmt::Display) -> CheckoutError {
    CheckoutError::Local {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// One try: open or create the clone, fetch if needed, check out, clean.
/// Returns whether a fetch happened.
fn attempt(
    request: &CheckoutRequest<'_>,
    path: &Path,
    interrupt: &Arc<AtomicBool>,
) -> Result<bool, Failure> {
    let repo = open_or_init(path)?;
    let oid = Oid::from_str(request.sha.as_str())?;
    let mut fetched = false;
    if repo.find_commit(oid).is_err() {
        fetch(&repo, request.url, request.git, interrupt)?;
        fetched = true;
    }
    let commit = repo.find_commit(oid).map_err(|_| Failure::NotFound)?;
    repo.set_head_detached(oid)?;
    let mut options = CheckoutBuilder::new();
    options.force().remove_untracked(true).remove_ignored(true);
    repo.reset(commit.as_object(), ResetType::Hard, Some(&mut options))?;
    clean(&repo, path)?;
    Ok(fetched)
}

/// Opens the clone at exactly `path` (never a repository in a parent
/// folder), or creates an empty one there when the folder does not exist.
fn open_or_init(path: &Path) -> Result<Repository, Failure> {
    if path.exists() {
        Ok(Repository::open_ext(
            path,
            RepositoryOpenFlags::NO_SEARCH,
            std::iter::empty::<&std::ffi::OsStr>(),
        )?)
    } else {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        debug!(path = %path.display(), "creating a clone");
        Ok(Repository::init(path)?)
    }
}

fn fetch(
    repo: &Repository,
    url: &RepoUrl,
    git: &GitAuth,
    interrupt: &Arc<AtomicBool>,
) -> Result<(), Failure> {
    info!(%url, "fetching");
    // A forced stop sets the flag; the fetch's progress callbacks then
    // abort the transfer.
    let stop = || interrupt.load(Ordering::Relaxed);
    let request = FetchRequest {
        url,
        refspecs: &FETCH_REFSPECS,
        prune: false,
        git,
        stop: &stop,
        reflog: None,
    };
    match warren_common::fetch::fetch(repo, &request) {
        Ok(()) => Ok(()),
        Err(FetchError::Cancelled { .. }) => Err(Failure::Interrupted),
        Err(error) => Err(Failure::Fetch(error)),
    }
}

/// Removes every untracked and ignored path, then every empty folder (git
/// does not track folders, so an empty one was left by a job), and checks
/// that the tree is clean.
fn clean(repo: &Repository, root: &Path) -> Result<(), Failure> {
    for relative in dirty_paths(repo)? {
        let path = root.join(&relative);
        debug!(path = %relative.display(), "removing a leftover");
        remove_all(&path)?;
    }
    remove_empty_dirs(root, true)?;
    let left = dirty_paths(repo)?;
    if let Some(first) = left.first() {
        return Err(Failure::Local(format!(
            "{} paths still differ from the commit after cleaning, such as {}",
            left.len(),
            first.display()
        )));
    }
    Ok(())
}

/// Paths that are untracked, ignored or changed, relative to the work tree.
fn dirty_paths(repo: &Repository) -> Result<Vec<PathBuf>, Failure> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(true)
        .recurse_untracked_dirs(true)
        .recurse_ignored_dirs(false)
        .include_unmodified(false)
        .exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut options))?;
    let mut paths = Vec::new();
    for entry in statuses.iter() {
        let status = entry.status();
        if status.is_empty() || status == Status::CURRENT {
            continue;
        }
        // Paths from libgit2 are relative and use `/`; a non-UTF-8 name
        // comes as raw bytes.
        let bytes = entry.path_bytes();
        paths.push(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)));
    }
    Ok(paths)
}

/// Removes a file, a symbolic link (never what it points to) or a folder
/// with everything in it. A path that is already gone is fine.
fn remove_all(path: &Path) -> io::Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if metadata.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// Removes the empty folders under `dir` (not `.git`), deepest first;
/// returns whether `dir` itself ended up empty.
fn remove_empty_dirs(dir: &Path, is_root: bool) -> io::Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if is_root && entry.file_name() == ".git" {
            empty = false;
            continue;
        }
        if file_type.is_dir() && remove_empty_dirs(&entry.path(), false)? {
            fs::remove_dir(entry.path())?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_harness::git::Upstream;

    struct Fixture {
        upstream: Upstream,
        slot: tempfile::TempDir,
        repo: RepoName,
        url: RepoUrl,
    }

    impl Fixture {
        fn new() -> Self {
            let upstream = Upstream::new();
            let url = RepoUrl::parse(&upstream.url()).unwrap();
            Self {
                upstream,
                slot: tempfile::tempdir().unwrap(),
                repo: RepoName::parse("api").unwrap(),
                url,
            }
        }

        fn prepare(&self, sha: &str) -> Result<PreparedTree, CheckoutError> {
            let sha = CommitId::parse(sha).unwrap();
            let request = CheckoutRequest {
                slot_dir: self.slot.path(),
                repo: &self.repo,
                url: &self.url,
                sha: &sha,
                git: &GitAuth::default(),
            };
            prepare(&request, &Arc::new(AtomicBool::new(false)))
        }
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_commit_is_checked_out_and_the_clone_reused() {
        let fixture = Fixture::new();
        let first = fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let tree = fixture.prepare(&first).unwrap();
        assert!(tree.fetched);
        assert_eq!(tree.path, fixture.slot.path().join("api"));
        assert_eq!(read(&tree.path.join("a.txt")), "one");

        // Same commit again: no fetch.
        assert!(!fixture.prepare(&first).unwrap().fetched);

        let second = fixture
            .upstream
            .commit("main", "two", &[("a.txt", Some("two"))]);
        let tree = fixture.prepare(&second).unwrap();
        assert!(tree.fetched);
        assert_eq!(read(&tree.path.join("a.txt")), "two");

        // Back to the first commit, which the clone already has.
        let tree = fixture.prepare(&first).unwrap();
        assert!(!tree.fetched);
        assert_eq!(read(&tree.path.join("a.txt")), "one");
        let repo = Repository::open(&tree.path).unwrap();
        assert!(repo.head_detached().unwrap());
    }

    #[test]
    fn leftovers_of_the_previous_job_are_removed() {
        let fixture = Fixture::new();
        let sha = fixture.upstream.commit(
            "main",
            "one",
            &[
                (".gitignore", Some("target/\n*.log\n")),
                ("src/lib.rs", Some("fn a() {}\n")),
            ],
        );
        let tree = fixture.prepare(&sha).unwrap();
        let root = &tree.path;
        // What a job might leave: untracked files deep down, ignored files
        // and folders, an edited and a deleted tracked file, an empty folder,
        // a symbolic link to a folder outside (which must survive).
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep.txt"), "keep").unwrap();
        fs::create_dir_all(root.join("new/deep")).unwrap();
        fs::write(root.join("new/deep/file.txt"), "x").unwrap();
        fs::create_dir_all(root.join("target/debug")).unwrap();
        fs::write(root.join("target/debug/app"), "bin").unwrap();
        fs::write(root.join("run.log"), "log").unwrap();
        fs::write(root.join("src/lib.rs"), "changed").unwrap();
        fs::remove_file(root.join(".gitignore")).unwrap();
        fs::create_dir_all(root.join("empty/inner")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();

        let tree = fixture.prepare(&sha).unwrap();
        assert!(!tree.fetched);
        let mut names: Vec<String> = fs::read_dir(&tree.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".git", ".gitignore", "src"]);
        assert_eq!(read(&tree.path.join("src/lib.rs")), "fn a() {}\n");
        assert_eq!(read(&outside.path().join("keep.txt")), "keep");
    }

    #[test]
    fn a_clone_left_to_a_container_user_is_taken_back_not_cloned_again() {
        // What a container job's worker killed mid-job leaves: the clone
        // owned by `nobody`. Only root can hand it over (and take it back).
        if !geteuid().is_root() {
            eprintln!("skipped: only a worker running as root hands a clone over");
            return;
        }
        let nobody = Some(65534);
        let fixture = Fixture::new();
        let sha = fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let tree = fixture.prepare(&sha).unwrap();
        // A file of the clone's own (lost if it were cloned again), and a
        // link out of the clone whose target must stay the job user's.
        fs::write(tree.path.join(".git/kept"), "same clone").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("target.txt");
        fs::write(&target, "outside").unwrap();
        std::os::unix::fs::lchown(&target, nobody, nobody).unwrap();
        std::os::unix::fs::symlink(&target, tree.path.join(".git/link")).unwrap();
        crate::executor::chown_tree(&tree.path, 65534, 65534).unwrap();

        let again = fixture.prepare(&sha).unwrap();
        assert!(!again.fetched);
        assert_eq!(read(&again.path.join(".git/kept")), "same clone");
        assert_eq!(read(&again.path.join("a.txt")), "one");
        for path in [
            &again.path,
            &again.path.join(".git/HEAD"),
            &again.path.join("a.txt"),
        ] {
            assert_eq!(
                fs::symlink_metadata(path).unwrap().uid(),
                0,
                "{}",
                path.display()
            );
        }
        assert_eq!(
            fs::metadata(&target).unwrap().uid(),
            65534,
            "the link was not followed"
        );
    }

    #[test]
    fn a_deleted_git_folder_is_recovered() {
        let fixture = Fixture::new();
        let sha = fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let tree = fixture.prepare(&sha).unwrap();
        fs::remove_dir_all(tree.path.join(".git")).unwrap();
        fs::write(tree.path.join("stray.txt"), "x").unwrap();
        let tree = fixture.prepare(&sha).unwrap();
        assert!(tree.fetched);
        assert_eq!(read(&tree.path.join("a.txt")), "one");
        assert!(!tree.path.join("stray.txt").exists());
    }

    #[test]
    fn a_corrupt_object_store_is_recovered() {
        let fixture = Fixture::new();
        let sha = fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let tree = fixture.prepare(&sha).unwrap();
        // Break the clone: HEAD is garbage, so opening it fails.
        fs::write(tree.path.join(".git/HEAD"), "garbage").unwrap();
        let tree = fixture.prepare(&sha).unwrap();
        assert_eq!(read(&tree.path.join("a.txt")), "one");
    }

    #[test]
    fn a_missing_commit_is_a_clear_error() {
        let fixture = Fixture::new();
        fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let missing = "1234567890".repeat(4);
        let err = fixture.prepare(&missing).unwrap_err();
        assert!(
            matches!(err, CheckoutError::CommitNotFound { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&missing) && text.contains("force-pushed away?"),
            "{text}"
        );
        assert!(text.contains(&fixture.upstream.url()), "{text}");
    }

    #[test]
    fn an_unreachable_url_is_a_clear_error() {
        let slot = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("api").unwrap();
        let url = RepoUrl::parse("/nonexistent/warren/upstream.git").unwrap();
        let sha = CommitId::parse(&"ab".repeat(20)).unwrap();
        let request = CheckoutRequest {
            slot_dir: slot.path(),
            repo: &repo,
            url: &url,
            sha: &sha,
            git: &GitAuth::default(),
        };
        let err = prepare(&request, &Arc::new(AtomicBool::new(false))).unwrap_err();
        assert!(matches!(err, CheckoutError::Fetch { .. }), "{err:?}");
        let text = err.to_string();
        assert_eq!(
            text,
            "could not fetch /nonexistent/warren/upstream.git: \
             unsupported URL protocol (no repository at this path)"
        );
    }

    #[test]
    fn a_work_dir_inside_another_repository_is_not_confused_with_it() {
        // The slot folder lives in a git work tree; a missing clone must be
        // created, not mistaken for the enclosing repository.
        let fixture = Fixture::new();
        Repository::init(fixture.slot.path()).unwrap();
        let sha = fixture
            .upstream
            .commit("main", "one", &[("a.txt", Some("one"))]);
        let tree = fixture.prepare(&sha).unwrap();
        assert!(tree.path.join(".git").is_dir());
    }
}
