//! Real git repositories for tests: a bare "upstream" that commits are made
//! to directly (no work tree), as a forge would hold them.

use git2::{FileMode, Oid, Repository, Signature};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A bare repository in a temporary folder (or a given one).
pub struct Upstream {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
    repo: Repository,
}

/// A file change: `Some(contents)` writes, `None` deletes. Contents starting
/// with `#!` are committed executable.
pub type Change<'a> = (&'a str, Option<&'a str>);

impl Upstream {
    /// A new empty bare repository in a temporary folder.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("upstream.git");
        let mut upstream = Self::create(&path);
        upstream._dir = Some(dir);
        upstream
    }

    /// A new empty bare repository at `path` (kept after the process ends).
    pub fn create(path: &Path) -> Self {
        let repo = Repository::init_bare(path).expect("git init --bare");
        repo.set_head("refs/heads/main").expect("HEAD -> main");
        Self {
            _dir: None,
            path: path.to_path_buf(),
            repo,
        }
    }

    /// The URL components clone from (a plain path: libgit2's local transport).
    pub fn url(&self) -> String {
        self.path.display().to_string()
    }

    /// The tip of `branch`, if it exists.
    pub fn tip(&self, branch: &str) -> Option<String> {
        self.repo
            .find_reference(&format!("refs/heads/{branch}"))
            .ok()
            .and_then(|r| r.target())
            .map(|oid| oid.to_string())
    }

    /// Commits `changes` on top of `branch` (creating it from nothing if it
    /// does not exist) and moves the branch; returns the new sha.
    pub fn commit(&self, branch: &str, message: &str, changes: &[Change<'_>]) -> String {
        let parent = self.tip(branch);
        self.commit_on(branch, parent.as_deref(), message, changes)
    }

    /// Commits `changes` on top of `parent` (or as a root commit) and points
    /// `branch` at the result, whatever it pointed at before (a force-push
    /// when `parent` is not the old tip).
    pub fn commit_on(
        &self,
        branch: &str,
        parent: Option<&str>,
        message: &str,
        changes: &[Change<'_>],
    ) -> String {
        let parent = parent.map(|sha| {
            self.repo
                .find_commit(Oid::from_str(sha).expect("sha"))
                .expect("parent commit exists")
        });
        let mut files = BTreeMap::new();
        if let Some(parent) = &parent {
            collect_files(&self.repo, &parent.tree().expect("tree"), "", &mut files);
        }
        for (path, contents) in changes {
            match contents {
                Some(contents) => {
                    files.insert((*path).to_owned(), contents.as_bytes().to_vec());
                }
                None => {
                    files.remove(*path);
                }
            }
        }
        let tree = write_tree(&self.repo, &files, "");
        let tree = self.repo.find_tree(tree).expect("tree");
        let signature = Signature::now("Warren Test", "test@warren.invalid").expect("signature");
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = self
            .repo
            .commit(None, &signature, &signature, message, &tree, &parents)
            .expect("commit");
        self.repo
            .reference(&format!("refs/heads/{branch}"), oid, true, "test commit")
            .expect("update branch");
        oid.to_string()
    }

    /// Points `branch` at `sha` (a force-push to an older commit).
    pub fn reset(&self, branch: &str, sha: &str) {
        self.repo
            .reference(
                &format!("refs/heads/{branch}"),
                Oid::from_str(sha).expect("sha"),
                true,
                "test reset",
            )
            .expect("reset branch");
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

fn collect_files(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, Vec<u8>>,
) {
    for entry in tree.iter() {
        let name = format!("{prefix}{}", entry.name().expect("utf-8 name"));
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let subtree = repo.find_tree(entry.id()).expect("subtree");
                collect_files(repo, &subtree, &format!("{name}/"), out);
            }
            _ => {
                let blob = repo.find_blob(entry.id()).expect("blob");
                out.insert(name, blob.content().to_vec());
            }
        }
    }
}

fn write_tree(repo: &Repository, files: &BTreeMap<String, Vec<u8>>, prefix: &str) -> Oid {
    let mut builder = repo.treebuilder(None).expect("treebuilder");
    let mut subdirs: BTreeMap<&str, ()> = BTreeMap::new();
    for (path, contents) in files.range(prefix.to_owned()..) {
        let Some(rest) = path.strip_prefix(prefix) else {
            break;
        };
        match rest.split_once('/') {
            Some((dir, _)) => {
                subdirs.insert(dir, ());
            }
            None => {
                let blob = repo.blob(contents).expect("blob");
                let mode = if contents.starts_with(b"#!") {
                    FileMode::BlobExecutable
                } else {
                    FileMode::Blob
                };
                builder
                    .insert(rest, blob, mode.into())
                    .expect("insert blob");
            }
        }
    }
    for dir in subdirs.keys() {
        let oid = write_tree(repo, files, &format!("{prefix}{dir}/"));
        builder
            .insert(dir, oid, FileMode::Tree.into())
            .expect("insert tree");
    }
    builder.write().expect("write tree")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_keep_earlier_files_and_nest_folders() {
        let upstream = Upstream::new();
        upstream.commit(
            "main",
            "one",
            &[("a.txt", Some("a")), ("tests/t.sh", Some("#!/bin/sh\n"))],
        );
        let second = upstream.commit("main", "two", &[("a.txt", None), ("b/c/d.txt", Some("d"))]);
        let repo = Repository::open_bare(upstream.url()).unwrap();
        let tree = repo
            .find_commit(Oid::from_str(&second).unwrap())
            .unwrap()
            .tree()
            .unwrap();
        let mut files = BTreeMap::new();
        collect_files(&repo, &tree, "", &mut files);
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["b/c/d.txt", "tests/t.sh"]
        );
        let script = tree.get_path(Path::new("tests/t.sh")).unwrap();
        assert_eq!(script.filemode(), i32::from(FileMode::BlobExecutable));
    }
}
