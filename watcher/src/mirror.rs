//! The bare mirror of each repository, brought up to date by a git2 fetch.
//!
//! The mirror's branches are exactly the upstream's: the fetch refspec
//! `+refs/heads/*:refs/heads/*` is forced (a force-push moves the mirror's
//! branch too) and prunes (a branch deleted upstream is deleted here). Tags
//! are not fetched: only branches are watched. Objects are never garbage
//! collected, so a commit that was once fetched stays findable, which lets
//! a force-push be compared with what was published before it.
//!
//! Everything here blocks: call it from `tokio::task::spawn_blocking`.

use crate::config::BranchFilter;
use git2::Repository;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use warren_common::fetch::{FetchError, FetchRequest, OpenError, fetch, open_or_recreate_bare};
use warren_common::git::GitAuth;
use warren_common::ids::{BranchName, CommitId, RepoUrl};

/// The fetch refspec: every upstream branch onto the mirror branch of the
/// same name, forced.
pub const FETCH_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// Why a mirror could not be brought up to date. The repository is skipped
/// and retried at its next poll; other repositories go on.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The mirror folder could not be created, or was broken and could not
    /// be removed to be re-created (disk full, permissions).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The fetch failed: the upstream is unreachable, refused us or sent
    /// something libgit2 could not store.
    #[error("fetching {} into {path}: {}", .source.url(), .source.detail())]
    Fetch { path: PathBuf, source: FetchError },
    /// The URL is a local path and nothing is there.
    #[error("the local repository {path} does not exist")]
    Missing { path: PathBuf },
    /// The fetch was abandoned because the watcher is stopping.
    #[error("fetching {url}: cancelled because the watcher is stopping")]
    Cancelled { url: String },
}

/// Opens the mirror at `path` (creating it, or re-creating it once if it
/// cannot be opened) and fetches every branch of `url` into it. A running
/// transfer is abandoned when `cancel` fires.
pub fn sync(
    path: &Path,
    url: &RepoUrl,
    git: &GitAuth,
    cancel: &CancellationToken,
) -> Result<Repository, MirrorError> {
    let repo = open_or_recreate_bare(path)?;
    let stop = || cancel.is_cancelled();
    let request = FetchRequest {
        url,
        refspecs: &[FETCH_REFSPEC],
        prune: true,
        git,
        stop: &stop,
        reflog: Some("warren-watcher: fetch"),
    };
    match fetch(&repo, &request) {
        Ok(()) => Ok(repo),
        Err(FetchError::Missing { path, .. }) => Err(MirrorError::Missing { path }),
        Err(FetchError::Cancelled { url }) => Err(MirrorError::Cancelled { url }),
        Err(source) => Err(MirrorError::Fetch {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The tips of the mirror's branches that `filter` watches, by name.
///
/// A branch whose name Warren refuses (see [`BranchName`]) or that does not
/// point at a commit is skipped with a warning: it cannot be published, and
/// it must not stop the other branches.
pub fn branch_tips(
    repo: &Repository,
    filter: &BranchFilter,
) -> Result<BTreeMap<BranchName, CommitId>, git2::Error> {
    let mut tips = BTreeMap::new();
    for reference in repo.references_glob("refs/heads/*")? {
        let reference = reference?;
        let full_name = String::from_utf8_lossy(reference.name_bytes()).into_owned();
        let name = full_name.strip_prefix("refs/heads/").unwrap_or(&full_name);
        let branch = match BranchName::parse(name) {
            Ok(branch) => branch,
            Err(error) => {
                warn!(branch = name, %error, "skipping a branch whose name Warren refuses");
                continue;
            }
        };
        if !filter.matches(&branch) {
            continue;
        }
        let tip = reference
            .peel_to_commit()
            .map_err(|error| error.to_string())
            .and_then(|commit| {
                CommitId::parse(&commit.id().to_string()).map_err(|error| error.to_string())
            });
        match tip {
            Ok(tip) => {
                tips.insert(branch, tip);
            }
            Err(error) => {
                warn!(%branch, %error, "skipping a branch that does not point at a commit")
            }
        }
    }
    Ok(tips)
}

/// The URL for logs and errors: a password in it is masked.
pub use warren_common::fetch::display_url;

#[cfg(test)]
mod tests {
    use super::*;
    use warren_harness::git::Upstream;

    fn branches(repo: &Repository) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = repo
            .references_glob("refs/heads/*")
            .unwrap()
            .map(|reference| {
                let reference = reference.unwrap();
                (
                    reference.name().unwrap().to_owned(),
                    reference.target().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_mirror_follows_new_moved_and_deleted_branches() {
        let upstream = Upstream::new();
        let first = upstream.commit("main", "one", &[("a", Some("1"))]);
        let feature = upstream.commit("feature/x", "x", &[("x", Some("x"))]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrors/api.git");
        let url = RepoUrl::parse(&upstream.url()).unwrap();
        let cancel = CancellationToken::new();

        let repo = sync(&path, &url, &GitAuth::default(), &cancel).unwrap();
        assert!(repo.is_bare());
        assert_eq!(
            branches(&repo),
            [
                ("refs/heads/feature/x".to_owned(), feature),
                ("refs/heads/main".to_owned(), first.clone()),
            ]
        );

        // A force-push to a new root, and a deleted branch.
        let rewritten = upstream.commit_on("main", None, "rewritten", &[("b", Some("2"))]);
        Repository::open_bare(upstream.url())
            .unwrap()
            .find_reference("refs/heads/feature/x")
            .unwrap()
            .delete()
            .unwrap();
        let repo = sync(&path, &url, &GitAuth::default(), &cancel).unwrap();
        assert_eq!(branches(&repo), [("refs/heads/main".to_owned(), rewritten)]);
        // The commit published before the force-push is still there.
        assert!(
            repo.find_commit(git2::Oid::from_str(&first).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn branch_tips_are_the_watched_branches() {
        let upstream = Upstream::new();
        let main = upstream.commit("main", "one", &[("a", Some("1"))]);
        let release = upstream.commit("release/1.2", "r", &[("r", Some("r"))]);
        upstream.commit("release/a/b", "deep", &[("d", Some("d"))]);
        upstream.commit("feature", "f", &[("f", Some("f"))]);
        let repo = Repository::open_bare(upstream.url()).unwrap();
        let filter = BranchFilter::new(&["main", "release/*"]).unwrap();
        let tips = branch_tips(&repo, &filter).unwrap();
        let tips: Vec<(String, String)> = tips
            .into_iter()
            .map(|(branch, sha)| (branch.to_string(), sha.to_string()))
            .collect();
        assert_eq!(
            tips,
            [
                ("main".to_owned(), main),
                ("release/1.2".to_owned(), release)
            ]
        );
    }

    #[test]
    fn a_mirror_that_cannot_be_opened_is_cloned_again() {
        let upstream = Upstream::new();
        let tip = upstream.commit("main", "one", &[("a", Some("1"))]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.git");
        let url = RepoUrl::parse(&upstream.url()).unwrap();
        let cancel = CancellationToken::new();
        sync(&path, &url, &GitAuth::default(), &cancel).unwrap();

        std::fs::remove_dir_all(path.join("objects")).unwrap();
        assert!(Repository::open_bare(&path).is_err());
        let repo = sync(&path, &url, &GitAuth::default(), &cancel).unwrap();
        assert_eq!(
            branches(&repo),
            [("refs/heads/main".to_owned(), tip.clone())]
        );

        // Even a plain file in its place.
        drop(repo);
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::write(&path, "not a repository").unwrap();
        let repo = sync(&path, &url, &GitAuth::default(), &cancel).unwrap();
        assert_eq!(branches(&repo), [("refs/heads/main".to_owned(), tip)]);
    }

    #[test]
    fn an_unreachable_upstream_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.git");
        let url = RepoUrl::parse(&dir.path().join("nowhere.git").display().to_string()).unwrap();
        let Err(err) = sync(&path, &url, &GitAuth::default(), &CancellationToken::new()) else {
            panic!("fetching from a missing repository succeeded");
        };
        assert!(matches!(err, MirrorError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("nowhere.git"), "{err}");
        // A path that exists but is no repository: libgit2's own error.
        let url = RepoUrl::parse(&dir.path().display().to_string()).unwrap();
        let Err(err) = sync(&path, &url, &GitAuth::default(), &CancellationToken::new()) else {
            panic!("fetching from a folder that is no repository succeeded");
        };
        assert!(matches!(err, MirrorError::Fetch { .. }), "{err:?}");
    }
}
