//! Which commits of a branch are new, oldest first, and the events that
//! announce them.
//!
//! [`new_commits`] is a function of the repository, the branch's tip, its
//! cursor (the last commit whose publish was confirmed) and the
//! repository's options; it reads the repository and changes nothing:
//!
//! | cursor | new commits |
//! | --- | --- |
//! | none (first sight) | the tip, and up to `backfill` commits before it |
//! | the tip | none |
//! | an ancestor of the tip | the commits after it, up to the tip |
//! | a commit the tip does not contain (force-push) | the commits of the tip not reachable from the cursor |
//! | a descendant of the tip (force-push back) | none; the cursor moves back to the tip |
//! | a commit missing from the mirror | the tip only (like a first sight), with a warning |
//!
//! Order is topological, parents before children, so a cursor set to any
//! prefix of the list hides every commit before it that the next poll would
//! otherwise find again. With `first_parent`, only first parents are
//! followed: a merge is new, the commits it merged are not.

use chrono::{DateTime, Utc};
use git2::{Commit, Oid, Repository, Sort};
use warren_common::ids::{BranchName, CommitId, InvalidId};
use warren_common::messages::CommitEvent;

use crate::config::RepoConfig;

/// Most commits of one branch published by one poll. A branch pushed with a
/// huge new history is published in slices of this many commits, oldest
/// first, one slice per poll (the cursor moves through them), so one poll
/// never holds thousands of events in memory or the broker for long.
pub const MAX_COMMITS_PER_POLL: usize = 1000;

/// Longest summary a commit event carries, in characters. A first line is
/// short by convention; a megabyte-long one must not bloat every message.
pub const MAX_SUMMARY_CHARS: usize = 500;

/// Why the history of a branch could not be read. The repository is
/// skipped and retried at its next poll.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// libgit2 failed to read the mirror (a missing or corrupt object).
    #[error("reading the history: {0}")]
    Git(#[from] git2::Error),
    /// A commit id libgit2 gave back was refused (cannot happen with a sane libgit2).
    #[error("reading the history: {0}")]
    Id(#[from] InvalidId),
}

/// How a branch moved since its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchChange {
    /// The cursor is the tip: nothing happened.
    Unchanged,
    /// The branch has no cursor yet.
    FirstSeen,
    /// The tip descends from the cursor (a normal push).
    Advanced,
    /// The branch was force-pushed to a history without the cursor.
    Rewritten,
    /// The branch was force-pushed back to an ancestor of the cursor.
    MovedBack,
    /// The cursor's commit is not in the mirror any more (a re-created
    /// mirror whose upstream rewrote the branch): treated as a first sight.
    CursorLost,
}

impl BranchChange {
    /// A word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::FirstSeen => "first seen",
            Self::Advanced => "advanced",
            Self::Rewritten => "rewritten",
            Self::MovedBack => "moved back",
            Self::CursorLost => "cursor lost",
        }
    }
}

impl std::fmt::Display for BranchChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to read a repository's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Commits before the tip to include on a first sight.
    pub backfill: u32,
    /// Follow first parents only.
    pub first_parent: bool,
    /// Most commits to return; the oldest ones are kept.
    pub limit: usize,
}

impl HistoryOptions {
    /// The options of `repo`, with the standard limit.
    pub fn of(repo: &RepoConfig) -> Self {
        Self {
            backfill: repo.backfill,
            first_parent: repo.first_parent,
            limit: MAX_COMMITS_PER_POLL,
        }
    }
}

/// The commits to publish for one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommits {
    /// How the branch moved.
    pub change: BranchChange,
    /// The new commits, oldest first, at most `limit` of them.
    pub commits: Vec<CommitId>,
    /// Whether more new commits follow the last one (the limit was reached).
    pub more: bool,
}

/// The commits of the branch at `tip` that are new since `cursor`, oldest
/// first (see the module documentation for every case).
pub fn new_commits(
    repo: &Repository,
    tip: &CommitId,
    cursor: Option<&CommitId>,
    options: HistoryOptions,
) -> Result<NewCommits, HistoryError> {
    let tip_oid = Oid::from_str(tip.as_str())?;
    let Some(cursor) = cursor else {
        return first_sight(repo, tip_oid, options, BranchChange::FirstSeen);
    };
    if cursor == tip {
        return Ok(NewCommits {
            change: BranchChange::Unchanged,
            commits: Vec::new(),
            more: false,
        });
    }
    let cursor_oid = Oid::from_str(cursor.as_str())?;
    if repo.find_commit(cursor_oid).is_err() {
        // Nothing to compare with: publishing everything reachable would
        // flood the dispatcher with history, so only the tip is new.
        let tip_only = HistoryOptions {
            backfill: 0,
            ..options
        };
        return first_sight(repo, tip_oid, tip_only, BranchChange::CursorLost);
    }

    let mut walk = repo.revwalk()?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
    if options.first_parent {
        walk.simplify_first_parent()?;
    }
    walk.push(tip_oid)?;
    walk.hide(cursor_oid)?;
    let all = walk.collect::<Result<Vec<Oid>, _>>()?;
    let change = if all.is_empty() {
        // Everything the tip reaches is reachable from the cursor.
        BranchChange::MovedBack
    } else if repo.graph_descendant_of(tip_oid, cursor_oid)? {
        BranchChange::Advanced
    } else {
        BranchChange::Rewritten
    };
    let more = all.len() > options.limit;
    let commits = all
        .into_iter()
        .take(options.limit)
        .map(commit_id)
        .collect::<Result<_, _>>()?;
    Ok(NewCommits {
        change,
        commits,
        more,
    })
}

/// The tip and up to `backfill` commits before it, oldest first.
fn first_sight(
    repo: &Repository,
    tip: Oid,
    options: HistoryOptions,
    change: BranchChange,
) -> Result<NewCommits, HistoryError> {
    if options.backfill == 0 {
        // No walk: a topological walk reads the whole history first.
        return Ok(NewCommits {
            change,
            commits: vec![commit_id(tip)?],
            more: false,
        });
    }
    let mut walk = repo.revwalk()?;
    // Newest first; the first `backfill + 1` are the ones nearest the tip.
    walk.set_sorting(Sort::TOPOLOGICAL)?;
    if options.first_parent {
        walk.simplify_first_parent()?;
    }
    walk.push(tip)?;
    let wanted = usize::try_from(options.backfill)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut newest_first = walk.take(wanted).collect::<Result<Vec<Oid>, _>>()?;
    newest_first.reverse();
    let oldest_first = newest_first;
    let more = oldest_first.len() > options.limit;
    let commits = oldest_first
        .into_iter()
        .take(options.limit)
        .map(commit_id)
        .collect::<Result<_, _>>()?;
    Ok(NewCommits {
        change,
        commits,
        more,
    })
}

fn commit_id(oid: Oid) -> Result<CommitId, InvalidId> {
    CommitId::parse(&oid.to_string())
}

/// The event announcing commit `sha` of `branch`, detected at `detected_at`.
pub fn commit_event(
    repo: &Repository,
    config: &RepoConfig,
    branch: &BranchName,
    sha: &CommitId,
    detected_at: DateTime<Utc>,
) -> Result<CommitEvent, HistoryError> {
    let commit = repo.find_commit(Oid::from_str(sha.as_str())?)?;
    let parents = commit
        .parent_ids()
        .map(commit_id)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CommitEvent {
        repo: config.name.clone(),
        url: config.url.clone(),
        branch: branch.clone(),
        sha: sha.clone(),
        parents,
        author: author(&commit),
        summary: summary(&commit),
        committed_at: committed_at(&commit),
        detected_at,
    })
}

/// `Name <email>`; bytes that are not UTF-8 are replaced.
fn author(commit: &Commit<'_>) -> String {
    let author = commit.author();
    format!(
        "{} <{}>",
        String::from_utf8_lossy(author.name_bytes()),
        String::from_utf8_lossy(author.email_bytes())
    )
}

/// The first line of the message, capped at [`MAX_SUMMARY_CHARS`].
fn summary(commit: &Commit<'_>) -> String {
    let message = String::from_utf8_lossy(commit.message_bytes());
    let line = message.lines().next().unwrap_or_default().trim_end();
    if line.chars().count() > MAX_SUMMARY_CHARS {
        let mut short: String = line.chars().take(MAX_SUMMARY_CHARS).collect();
        short.push('…');
        short
    } else {
        line.to_owned()
    }
}

/// The committer's time. A time outside chrono's range (a forged commit)
/// becomes the epoch rather than stopping the branch.
fn committed_at(commit: &Commit<'_>) -> DateTime<Utc> {
    DateTime::from_timestamp(commit.time().seconds(), 0).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BranchFilter;
    use std::time::Duration;
    use warren_common::ids::{RepoName, RepoUrl};
    use warren_harness::git::Upstream;

    const OPTIONS: HistoryOptions = HistoryOptions {
        backfill: 0,
        first_parent: false,
        limit: MAX_COMMITS_PER_POLL,
    };

    fn id(sha: &str) -> CommitId {
        CommitId::parse(sha).unwrap()
    }

    fn open(upstream: &Upstream) -> Repository {
        Repository::open_bare(upstream.url()).unwrap()
    }

    /// Commits `n` files on `branch`; returns their shas, oldest first.
    fn commits(upstream: &Upstream, branch: &str, n: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| {
                let name = format!("{tag}{i}");
                upstream.commit(branch, &name, &[(name.as_str(), Some("x"))])
            })
            .collect()
    }

    fn new(
        upstream: &Upstream,
        tip: &str,
        cursor: Option<&str>,
        options: HistoryOptions,
    ) -> NewCommits {
        let cursor = cursor.map(id);
        new_commits(&open(upstream), &id(tip), cursor.as_ref(), options).unwrap()
    }

    fn shas(new: &NewCommits) -> Vec<String> {
        new.commits.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn first_sight_publishes_only_the_tip() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 3, "c");
        let new = new(&upstream, &made[2], None, OPTIONS);
        assert_eq!(new.change, BranchChange::FirstSeen);
        assert_eq!(shas(&new), [made[2].clone()]);
        assert!(!new.more);
    }

    #[test]
    fn backfill_adds_earlier_commits_oldest_first() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 5, "c");
        let two = HistoryOptions {
            backfill: 2,
            ..OPTIONS
        };
        assert_eq!(shas(&new(&upstream, &made[4], None, two)), made[2..]);
        let ten = HistoryOptions {
            backfill: 10,
            ..OPTIONS
        };
        assert_eq!(shas(&new(&upstream, &made[4], None, ten)), made);
    }

    #[test]
    fn several_new_commits_on_a_line_are_all_new_oldest_first() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 6, "c");
        let new = new(&upstream, &made[5], Some(&made[1]), OPTIONS);
        assert_eq!(new.change, BranchChange::Advanced);
        assert_eq!(shas(&new), made[2..]);
    }

    #[test]
    fn nothing_new_is_nothing() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 2, "c");
        let new = new(&upstream, &made[1], Some(&made[1]), OPTIONS);
        assert_eq!(new.change, BranchChange::Unchanged);
        assert!(new.commits.is_empty());
    }

    #[test]
    fn a_force_push_to_a_rewritten_history_gives_only_the_new_commits() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 3, "c");
        // Rewrite the last two commits: A - B' - C'.
        let b2 = upstream.commit_on("main", Some(&made[0]), "b'", &[("b", Some("2"))]);
        let c2 = upstream.commit("main", "c'", &[("c", Some("2"))]);
        let new = new(&upstream, &c2, Some(&made[2]), OPTIONS);
        assert_eq!(new.change, BranchChange::Rewritten);
        assert_eq!(shas(&new), [b2, c2]);
    }

    #[test]
    fn a_force_push_back_to_an_ancestor_is_nothing_new() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 3, "c");
        upstream.reset("main", &made[0]);
        let new = new(&upstream, &made[0], Some(&made[2]), OPTIONS);
        assert_eq!(new.change, BranchChange::MovedBack);
        assert!(new.commits.is_empty());
    }

    #[test]
    fn a_cursor_missing_from_the_repository_is_a_first_sight() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 3, "c");
        let options = HistoryOptions {
            backfill: 5,
            ..OPTIONS
        };
        let missing = "1".repeat(40);
        let new = new(&upstream, &made[2], Some(&missing), options);
        assert_eq!(new.change, BranchChange::CursorLost);
        assert_eq!(shas(&new), [made[2].clone()]);
    }

    /// main: A - M1 - M (merge of F2); feature: A - F1 - F2.
    fn merged(upstream: &Upstream) -> (String, String, String, String, String) {
        let a = upstream.commit("main", "a", &[("a", Some("a"))]);
        let f1 = upstream.commit_on("feature", Some(&a), "f1", &[("f1", Some("1"))]);
        let f2 = upstream.commit("feature", "f2", &[("f2", Some("2"))]);
        let m1 = upstream.commit("main", "m1", &[("m1", Some("1"))]);
        let repo = open(upstream);
        let main = repo.find_commit(Oid::from_str(&m1).unwrap()).unwrap();
        let feature = repo.find_commit(Oid::from_str(&f2).unwrap()).unwrap();
        let tree = feature.tree().unwrap();
        let signature = git2::Signature::now("Merger", "m@warren.invalid").unwrap();
        let m = repo
            .commit(
                Some("refs/heads/main"),
                &signature,
                &signature,
                "Merge feature\n\nlong text",
                &tree,
                &[&main, &feature],
            )
            .unwrap()
            .to_string();
        (a, f1, f2, m1, m)
    }

    #[test]
    fn merges_publish_every_merged_commit_unless_first_parent() {
        let upstream = Upstream::new();
        let (a, f1, f2, m1, m) = merged(&upstream);

        let every = new(&upstream, &m, Some(&a), OPTIONS);
        let every = shas(&every);
        assert_eq!(every.len(), 4);
        assert_eq!(every.last(), Some(&m));
        let position = |sha: &String| every.iter().position(|s| s == sha).unwrap();
        assert!(position(&f1) < position(&f2));
        assert!(position(&f2) < position(&m) && position(&m1) < position(&m));

        let first_parent = HistoryOptions {
            first_parent: true,
            ..OPTIONS
        };
        let followed = new(&upstream, &m, Some(&a), first_parent);
        assert_eq!(shas(&followed), [m1.clone(), m.clone()]);
        // Merged after the cursor was already at M1: only the merge.
        assert_eq!(
            shas(&new(&upstream, &m, Some(&m1), first_parent)),
            std::slice::from_ref(&m)
        );
        // First sight with backfill follows first parents too.
        let backfill = HistoryOptions {
            backfill: 5,
            ..first_parent
        };
        assert_eq!(shas(&new(&upstream, &m, None, backfill)), [a, m1, m]);
    }

    #[test]
    fn a_long_history_comes_in_slices_oldest_first() {
        let upstream = Upstream::new();
        let made = commits(&upstream, "main", 8, "c");
        let three = HistoryOptions {
            limit: 3,
            ..OPTIONS
        };
        let first = new(&upstream, &made[7], Some(&made[0]), three);
        assert_eq!(shas(&first), made[1..4]);
        assert!(first.more);
        // The next poll starts from the last one published.
        let second = new(&upstream, &made[7], Some(&made[3]), three);
        assert_eq!(shas(&second), made[4..7]);
        let third = new(&upstream, &made[7], Some(&made[6]), three);
        assert_eq!(shas(&third), made[7..]);
        assert!(!third.more);
    }

    #[test]
    fn events_carry_the_whole_commit() {
        let upstream = Upstream::new();
        let (_, _, f2, m1, m) = merged(&upstream);
        let config = RepoConfig {
            name: RepoName::parse("api").unwrap(),
            url: RepoUrl::parse(&upstream.url()).unwrap(),
            branches: BranchFilter::new(&["main"]).unwrap(),
            poll_interval: Duration::from_secs(1),
            backfill: 0,
            first_parent: false,
            git: Default::default(),
        };
        let branch = BranchName::parse("main").unwrap();
        let now = Utc::now();
        let event = commit_event(&open(&upstream), &config, &branch, &id(&m), now).unwrap();
        assert_eq!(event.repo.as_str(), "api");
        assert_eq!(event.url.as_str(), upstream.url());
        assert_eq!(event.branch, branch);
        assert_eq!(event.sha, id(&m));
        assert_eq!(event.parents, [id(&m1), id(&f2)]);
        assert_eq!(event.author, "Merger <m@warren.invalid>");
        assert_eq!(event.summary, "Merge feature");
        assert!((now - event.committed_at).num_seconds().abs() < 60);
        assert_eq!(event.detected_at, now);

        let long = "x".repeat(MAX_SUMMARY_CHARS + 10);
        let sha = upstream.commit("main", &long, &[("l", Some("l"))]);
        let event = commit_event(&open(&upstream), &config, &branch, &id(&sha), now).unwrap();
        assert_eq!(event.summary.chars().count(), MAX_SUMMARY_CHARS + 1);
    }
}
