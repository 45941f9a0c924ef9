//! Change-based selection: run only the suite files a commit's change
//! affects, and say why.
//!
//! The whole suite runs when there are no rules, on branches configured to
//! always run everything, for a commit without a parent, when the parent
//! commit has no result to build on, or when a changed path is neither a
//! suite file nor covered by a rule. Otherwise the selection is every
//! changed suite file plus every suite file a matching rule names.

use crate::spec::Select;
use serde::Serialize;
use std::collections::BTreeSet;
use warren_common::ids::SuitePath;

/// What was selected, and why: goes into the commit's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    /// `full` or `subset`.
    pub mode: &'static str,
    pub reason: String,
    /// Suite files selected (all of them for `full`).
    pub selected: usize,
    /// Suite files in the commit.
    pub of: usize,
}

/// What is known about the commit's change.
pub struct Change<'a> {
    pub branch: &'a str,
    /// Paths changed against the first parent; `None` for a root commit.
    pub changed: Option<&'a [String]>,
    /// Whether the first parent has a finished result.
    pub parent_has_result: bool,
}

/// Picks the suite files to run.
pub fn select(
    suite: &[SuitePath],
    rules: Option<&Select>,
    change: &Change<'_>,
) -> (Vec<SuitePath>, Selection) {
    let full = |reason: String| {
        (
            suite.to_vec(),
            Selection {
                mode: "full",
                reason,
                selected: suite.len(),
                of: suite.len(),
            },
        )
    };
    let Some(rules) = rules else {
        return full("no [select] rules in warren.toml".into());
    };
    if rules.full_branches.matches(change.branch) {
        return full(format!(
            "branch {} always runs the whole suite (select.full_branches)",
            change.branch
        ));
    }
    let Some(changed) = change.changed else {
        return full("the commit has no parent to compare with".into());
    };
    if !change.parent_has_result {
        return full("the parent commit has no result to build on".into());
    }
    let mut selected: BTreeSet<&SuitePath> = BTreeSet::new();
    let mut matched_rules = 0;
    for path in changed {
        if let Some(file) = suite.iter().find(|file| file.as_str() == path) {
            selected.insert(file);
            continue;
        }
        let covering: Vec<_> = rules
            .rules
            .iter()
            .filter(|rule| rule.paths.matches(path))
            .collect();
        if covering.is_empty() {
            return full(format!("changed path {path} matches no select rule"));
        }
        matched_rules += covering.len();
        for rule in covering {
            selected.extend(
                suite
                    .iter()
                    .filter(|file| rule.tests.matches(file.as_str())),
            );
        }
    }
    let files: Vec<SuitePath> = selected.into_iter().cloned().collect();
    let reason = format!(
        "{} changed paths: changed suite files plus {matched_rules} rule matches",
        changed.len()
    );
    let selection = Selection {
        mode: "subset",
        reason,
        selected: files.len(),
        of: suite.len(),
    };
    (files, selection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Globs, Rule};

    fn suite() -> Vec<SuitePath> {
        ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]
            .iter()
            .map(|p| SuitePath::parse(p).unwrap())
            .collect()
    }

    fn rules() -> Select {
        let globs = |p: &[&str]| {
            Globs::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "t").unwrap()
        };
        Select {
            rules: vec![Rule {
                paths: globs(&["src/a/**"]),
                tests: globs(&["tests/test_a.py"]),
            }],
            full_branches: globs(&["main"]),
        }
    }

    fn change<'a>(branch: &'a str, changed: Option<&'a [String]>, parent: bool) -> Change<'a> {
        Change {
            branch,
            changed,
            parent_has_result: parent,
        }
    }

    #[test]
    fn a_mapped_change_selects_its_tests_and_changed_tests() {
        let changed = vec!["src/a/x.py".to_string(), "tests/test_c.py".to_string()];
        let (files, selection) = select(
            &suite(),
            Some(&rules()),
            &change("feature", Some(&changed), true),
        );
        let names: Vec<&str> = files.iter().map(|f| f.as_str()).collect();
        assert_eq!(names, ["tests/test_a.py", "tests/test_c.py"]);
        assert_eq!(
            (selection.mode, selection.selected, selection.of),
            ("subset", 2, 3)
        );
    }

    #[test]
    fn the_whole_suite_runs_when_in_doubt() {
        let unmapped = vec!["README.md".to_string()];
        let mapped = vec!["src/a/x.py".to_string()];
        let cases = [
            (
                change("feature", Some(&unmapped), true),
                "matches no select rule",
            ),
            (
                change("main", Some(&mapped), true),
                "always runs the whole suite",
            ),
            (change("feature", None, true), "no parent"),
            (change("feature", Some(&mapped), false), "no result"),
        ];
        for (change, why) in cases {
            let (files, selection) = select(&suite(), Some(&rules()), &change);
            assert_eq!(files.len(), 3);
            assert_eq!(selection.mode, "full");
            assert!(selection.reason.contains(why), "{}", selection.reason);
        }
        let (_, selection) = select(&suite(), None, &change("x", Some(&mapped), true));
        assert!(selection.reason.contains("no [select]"));
    }
}
