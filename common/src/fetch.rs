//! The one git fetch of every component: the watcher's and the dispatcher's
//! bare mirrors and the workers' clones all open their repository with
//! [`open_or_recreate_bare`] (or their own opener) and fetch with [`fetch`],
//! so a refused token, an unreachable host and a missing local path are told
//! apart the same way everywhere ([`FetchError`]).
//!
//! Everything here blocks: call it from `tokio::task::spawn_blocking`.

use crate::git::GitAuth;
use crate::ids::RepoUrl;
use git2::{AutotagOption, ErrorCode, FetchOptions, FetchPrune, Repository};
use std::io;
use std::path::{Path, PathBuf};

/// One fetch: where from, which refs, how to stop it.
pub struct FetchRequest<'a> {
    /// The upstream; an anonymous remote is made from it at every fetch, so
    /// nothing is stored in the repository's config that a changed URL (or a
    /// later job) could trip over.
    pub url: &'a RepoUrl,
    /// What to fetch, as git refspecs.
    pub refspecs: &'a [&'a str],
    /// Delete local refs whose upstream branch is gone (mirrors do, clones
    /// keep them).
    pub prune: bool,
    /// Credentials, each way offered once.
    pub git: &'a GitAuth,
    /// Asked during the transfer: `true` abandons it (a component stopping).
    /// Returning false from a progress callback is how libgit2 aborts.
    pub stop: &'a dyn Fn() -> bool,
    /// The message of the reflog entries the fetch writes.
    pub reflog: Option<&'a str>,
}

/// Why a fetch failed. Each component turns it into its own consequence
/// (skip the poll, an `error` verdict, fail the job), but the kinds are the
/// same everywhere.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is a local path and no repository is there. Permanent until
    /// someone creates it or fixes the URL.
    #[error("could not fetch {url}: {detail}")]
    Missing {
        url: String,
        path: PathBuf,
        detail: String,
    },
    /// The host refused every credential Warren has (or asked for some and
    /// there were none): trying again would be refused again.
    #[error("could not fetch {url}: {detail}")]
    Refused { url: String, detail: String },
    /// The host is unreachable, the folder is no repository, or the transfer
    /// broke: may be temporary, worth retrying.
    #[error("could not fetch {url}: {detail}")]
    Failed { url: String, detail: String },
    /// Abandoned because the component is stopping.
    #[error("fetching {url}: cancelled because the process is stopping")]
    Cancelled { url: String },
}

impl FetchError {
    /// Whether the same fetch may work later without anyone changing
    /// anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }

    /// The URL as shown (password masked).
    pub fn url(&self) -> &str {
        match self {
            Self::Missing { url, .. }
            | Self::Refused { url, .. }
            | Self::Failed { url, .. }
            | Self::Cancelled { url } => url,
        }
    }

    /// What went wrong, without the URL.
    pub fn detail(&self) -> &str {
        match self {
            Self::Missing { detail, .. }
            | Self::Refused { detail, .. }
            | Self::Failed { detail, .. } => detail,
            Self::Cancelled { .. } => "cancelled because the process is stopping",
        }
    }
}

/// Fetches `request.refspecs` of `request.url` into `repo`.
pub fn fetch(repo: &Repository, request: &FetchRequest<'_>) -> Result<(), FetchError> {
    let url = request.url;
    let stop = request.stop;
    let mut callbacks = request.git.callbacks();
    callbacks.transfer_progress(move |_| !stop());
    callbacks.sideband_progress(move |_| !stop());
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .prune(if request.prune {
            FetchPrune::On
        } else {
            FetchPrune::Unspecified
        })
        .download_tags(AutotagOption::None);
    let result = repo
        .remote_anonymous(url.as_str())
        .and_then(|mut remote| remote.fetch(request.refspecs, Some(&mut options), request.reflog));
    match result {
        Ok(()) => Ok(()),
        Err(_) if stop() => Err(FetchError::Cancelled {
            url: display_url(url),
        }),
        Err(error) => Err(classify(url, &error)),
    }
}

/// Sorts libgit2's error into a [`FetchError`], with a hint where its own
/// message is cryptic: it says "unsupported URL protocol" both for a local
/// path that does not exist and for a scheme this build has no transport
/// for.
fn classify(url: &RepoUrl, error: &git2::Error) -> FetchError {
    let shown = display_url(url);
    let message = error.message();
    if error.code() == ErrorCode::Auth {
        return FetchError::Refused {
            url: shown,
            detail: message.to_owned(),
        };
    }
    if let Some(path) = local_path(url)
        && !path.exists()
    {
        return FetchError::Missing {
            url: shown,
            path: path.to_path_buf(),
            detail: if message.contains("unsupported URL protocol") {
                format!("{message} (no repository at this path)")
            } else {
                message.to_owned()
            },
        };
    }
    let detail = match url.as_str().split_once("://") {
        Some((scheme, _)) if scheme != "file" && message.contains("unsupported URL protocol") => {
            format!("{message} (this build's git library has no transport for `{scheme}://`)")
        }
        _ if message.contains("unsupported URL protocol") => {
            format!("{message} (no repository at this path)")
        }
        _ => message.to_owned(),
    };
    FetchError::Failed { url: shown, detail }
}

/// The path of a local repository URL (`/srv/git/x.git`, `file:///…`);
/// `None` for a network URL, scp-like `user@host:path` included.
pub fn local_path(url: &RepoUrl) -> Option<&Path> {
    let url = url.as_str();
    match url.split_once("://") {
        Some(("file", path)) => Some(Path::new(path)),
        Some(_) => None,
        None if is_scp_like(url) => None,
        None => Some(Path::new(url)),
    }
}

/// Whether `url` is git's scp-like form `[user@]host:path` (a colon before
/// any slash).
pub fn is_scp_like(url: &str) -> bool {
    url.find(':')
        .is_some_and(|colon| url.find('/').is_none_or(|slash| colon < slash))
}

/// The URL for logs and errors: a password in it is masked.
pub fn display_url(url: &RepoUrl) -> String {
    if url.as_str().contains("://") {
        crate::config::safe_url(url.as_str())
    } else {
        // A local path or `user@host:path`: no password to hide, and
        // `safe_url` would hide the whole value.
        url.as_str().to_owned()
    }
}

/// Why a bare repository could not be opened or made.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The folder could not be created (disk full, permissions).
    #[error("creating the mirror {path}: {source}")]
    Create { path: PathBuf, source: git2::Error },
    /// It was broken and could not be removed to be made again.
    #[error("removing the broken mirror {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Opens the bare repository at `path`, or creates it; one that cannot be
/// opened (deleted files, corruption) is removed and created again, once:
/// a mirror is only a cache of its upstream.
pub fn open_or_recreate_bare(path: &Path) -> Result<Repository, OpenError> {
    let create = |path: &Path| {
        Repository::init_bare(path).map_err(|source| OpenError::Create {
            path: path.to_path_buf(),
            source,
        })
    };
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        tracing::info!(mirror = %path.display(), "creating the mirror");
        return create(path);
    };
    match Repository::open_bare(path) {
        Ok(repo) => Ok(repo),
        Err(error) => {
            tracing::warn!(
                mirror = %path.display(), %error,
                "the mirror cannot be opened; deleting it and cloning again"
            );
            let removed = if metadata.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            removed.map_err(|source| OpenError::Remove {
                path: path.to_path_buf(),
                source,
            })?;
            create(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> bool {
        false
    }

    fn request<'a>(url: &'a RepoUrl, git: &'a GitAuth) -> FetchRequest<'a> {
        FetchRequest {
            url,
            refspecs: &["+refs/heads/*:refs/heads/*"],
            prune: true,
            git,
            stop: &never,
            reflog: None,
        }
    }

    #[test]
    fn a_missing_path_a_folder_that_is_no_repository_and_a_refusal_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open_or_recreate_bare(&dir.path().join("m.git")).unwrap();
        let git = GitAuth::default();

        let nowhere = RepoUrl::parse("/nonexistent/warren/upstream.git").unwrap();
        let error = fetch(&repo, &request(&nowhere, &git)).unwrap_err();
        assert!(matches!(error, FetchError::Missing { .. }), "{error:?}");
        assert!(!error.is_retryable());
        assert_eq!(
            error.to_string(),
            "could not fetch /nonexistent/warren/upstream.git: \
             unsupported URL protocol (no repository at this path)"
        );

        let folder = RepoUrl::parse(&dir.path().display().to_string()).unwrap();
        let error = fetch(&repo, &request(&folder, &git)).unwrap_err();
        assert!(matches!(error, FetchError::Failed { .. }), "{error:?}");
        assert!(error.is_retryable());

        let refused = classify(
            &RepoUrl::parse("https://bot:s3cret@git.example/api.git").unwrap(),
            &git2::Error::new(ErrorCode::Auth, git2::ErrorClass::Callback, "refused"),
        );
        assert!(matches!(refused, FetchError::Refused { .. }), "{refused:?}");
        assert!(!refused.is_retryable());
        assert!(!refused.to_string().contains("s3cret"), "{refused}");
    }

    #[test]
    fn a_stop_abandons_the_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open_or_recreate_bare(&dir.path().join("m.git")).unwrap();
        let git = GitAuth::default();
        let url = RepoUrl::parse(&dir.path().display().to_string()).unwrap();
        let always = || true;
        let error = fetch(
            &repo,
            &FetchRequest {
                stop: &always,
                ..request(&url, &git)
            },
        )
        .unwrap_err();
        assert!(matches!(error, FetchError::Cancelled { .. }), "{error:?}");
    }

    #[test]
    fn a_broken_mirror_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.git");
        std::fs::write(&path, "not a repository").unwrap();
        let repo = open_or_recreate_bare(&path).unwrap();
        assert!(repo.is_bare());
    }

    #[test]
    fn passwords_in_urls_are_masked_and_paths_are_shown() {
        let url = RepoUrl::parse("https://bot:s3cret@git.example/api.git").unwrap();
        assert_eq!(display_url(&url), "https://bot:***@git.example/api.git");
        let path = RepoUrl::parse("/srv/git/api.git").unwrap();
        assert_eq!(display_url(&path), "/srv/git/api.git");
        assert!(local_path(&RepoUrl::parse("git@host:team/api.git").unwrap()).is_none());
    }
}
