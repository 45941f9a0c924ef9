//! The tests of one job across its runs: what failed, and what turned out
//! flaky on a rerun.
//!
//! A [`TestBook`] holds one [`TestCase`] per test, keyed by (file,
//! classname, name), in the order they were first seen. The first runs
//! [`add`](TestBook::add) them; reruns [`apply_rerun`](TestBook::apply_rerun):
//! a test that had failed and now passes becomes `passed` with `flaky:
//! true` (its first failure's message is kept, to say what was flaky); a
//! test that fails again stays failed. A rerun never turns a passed test
//! into a failed one: its first verdict stands.
//!
//! Without a JUnit report, a `{file}` job records each file as a test case
//! of its own ([`file_case`]), so that flaky files show the same way.

use std::collections::HashMap;
use std::time::Duration;
use warren_common::ids::SuitePath;
use warren_common::messages::{TestCase, TestStatus};

/// How many names a message lists before it says "and N more".
const NAMES_IN_MESSAGE: usize = 10;

type Key = (Option<String>, String, String);

fn key(case: &TestCase) -> Key {
    (case.file.clone(), case.classname.clone(), case.name.clone())
}

/// The tests of one job.
#[derive(Debug, Default)]
pub(crate) struct TestBook {
    cases: Vec<TestCase>,
    index: HashMap<Key, usize>,
    /// Most test cases kept.
    capacity: usize,
    /// Whether cases beyond the capacity were left out.
    overflowed: bool,
}

impl TestBook {
    /// An empty book for at most `capacity` test cases.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Records the test cases of a first run (a test seen twice keeps its
    /// first result).
    pub(crate) fn add(&mut self, cases: impl IntoIterator<Item = TestCase>) {
        for case in cases {
            self.insert(case);
        }
    }

    fn insert(&mut self, case: TestCase) {
        if self.cases.len() >= self.capacity {
            self.overflowed = true;
            return;
        }
        let key = key(&case);
        if self.index.contains_key(&key) {
            return;
        }
        self.index.insert(key, self.cases.len());
        self.cases.push(case);
    }

    /// Records the test cases of a rerun: failed tests that passed are now
    /// flaky; tests not seen before (the first report was missing) are
    /// added as they are.
    pub(crate) fn apply_rerun(&mut self, cases: impl IntoIterator<Item = TestCase>) {
        for case in cases {
            match self.index.get(&key(&case)) {
                Some(&at) => {
                    let known = &mut self.cases[at];
                    if is_failing(known) && case.status == TestStatus::Passed {
                        known.status = TestStatus::Passed;
                        known.flaky = true;
                    }
                }
                None => self.insert(case),
            }
        }
    }

    /// Whether test cases were left out (more than the capacity).
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The tests that failed or errored (and have not passed since).
    pub(crate) fn failing(&self) -> impl Iterator<Item = &TestCase> {
        self.cases.iter().filter(|case| is_failing(case))
    }

    /// The tests that failed, then passed on a rerun.
    pub(crate) fn flaky(&self) -> impl Iterator<Item = &TestCase> {
        self.cases.iter().filter(|case| case.flaky)
    }

    /// The files of `among` that hold the failing tests, in `among`'s order.
    /// `None` when that is not known: no failing test, or one whose file
    /// the report does not name (or names a file not in `among`).
    pub(crate) fn failing_files(&self, among: &[SuitePath]) -> Option<Vec<SuitePath>> {
        let mut wanted = Vec::new();
        for case in self.failing() {
            let file = case.file.as_deref()?;
            if !among.iter().any(|path| path.as_str() == file) {
                return None;
            }
            wanted.push(file);
        }
        if wanted.is_empty() {
            return None;
        }
        Some(
            among
                .iter()
                .filter(|path| wanted.contains(&path.as_str()))
                .cloned()
                .collect(),
        )
    }

    /// The test cases, in the order first seen.
    #[cfg(test)]
    pub(crate) fn cases(&self) -> &[TestCase] {
        &self.cases
    }

    /// The test cases, for the result.
    pub(crate) fn into_cases(self) -> Vec<TestCase> {
        self.cases
    }
}

fn is_failing(case: &TestCase) -> bool {
    matches!(case.status, TestStatus::Failed | TestStatus::Error)
}

/// A file of a `{file}` job without a JUnit report, as a test case: its
/// name is the file, so a flaky file shows like a flaky test.
pub(crate) fn file_case(
    file: &SuitePath,
    status: TestStatus,
    duration: Duration,
    message: Option<String>,
) -> TestCase {
    TestCase {
        name: file.to_string(),
        classname: String::new(),
        file: Some(file.to_string()),
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        status,
        message,
        flaky: false,
    }
}

/// How a test is named in messages: `classname.name`, or the name alone.
pub(crate) fn display_name(case: &TestCase) -> String {
    if case.classname.is_empty() {
        case.name.clone()
    } else {
        format!("{}.{}", case.classname, case.name)
    }
}

/// `names` joined with commas, the first [`NAMES_IN_MESSAGE`] only.
pub(crate) fn name_list(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(NAMES_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().checked_sub(NAMES_IN_MESSAGE) {
        Some(more) if more > 0 => format!("{shown} and {more} more"),
        _ => shown,
    }
}

/// "1 test", "2 tests".
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, file: Option<&str>, status: TestStatus) -> TestCase {
        TestCase {
            name: name.into(),
            classname: "C".into(),
            file: file.map(str::to_owned),
            duration_ms: 1,
            status,
            message: (status != TestStatus::Passed).then(|| format!("{name} broke")),
            flaky: false,
        }
    }

    fn paths(list: &[&str]) -> Vec<SuitePath> {
        list.iter().map(|p| SuitePath::parse(p).unwrap()).collect()
    }

    #[test]
    fn a_test_that_fails_then_passes_is_flaky_and_keeps_its_message() {
        let mut book = TestBook::new(100);
        book.add([
            case("a", Some("t/a.py"), TestStatus::Failed),
            case("b", Some("t/b.py"), TestStatus::Error),
            case("c", Some("t/a.py"), TestStatus::Passed),
        ]);
        book.apply_rerun([
            case("a", Some("t/a.py"), TestStatus::Passed),
            case("b", Some("t/b.py"), TestStatus::Failed),
            case("c", Some("t/a.py"), TestStatus::Failed),
        ]);
        let a = &book.cases()[0];
        assert_eq!((a.status, a.flaky), (TestStatus::Passed, true));
        assert_eq!(a.message.as_deref(), Some("a broke"));
        let b = &book.cases()[1];
        assert_eq!((b.status, b.flaky), (TestStatus::Error, false));
        let c = &book.cases()[2];
        assert_eq!(
            (c.status, c.flaky),
            (TestStatus::Passed, false),
            "first verdict stands"
        );
        assert_eq!(book.failing().count(), 1);
        assert_eq!(book.flaky().map(display_name).collect::<Vec<_>>(), ["C.a"]);
    }

    #[test]
    fn failing_files_are_known_only_when_every_failure_names_one() {
        let shard = paths(&["t/a.py", "t/b.py", "t/c.py"]);
        let mut book = TestBook::new(100);
        book.add([
            case("x", Some("t/c.py"), TestStatus::Failed),
            case("y", Some("t/a.py"), TestStatus::Failed),
            case("z", Some("t/b.py"), TestStatus::Passed),
        ]);
        assert_eq!(
            book.failing_files(&shard),
            Some(paths(&["t/a.py", "t/c.py"]))
        );

        book.add([case("w", None, TestStatus::Failed)]);
        assert_eq!(book.failing_files(&shard), None);

        let mut elsewhere = TestBook::new(100);
        elsewhere.add([case("v", Some("t/other.py"), TestStatus::Failed)]);
        assert_eq!(elsewhere.failing_files(&shard), None);
        assert_eq!(TestBook::new(100).failing_files(&shard), None);
    }

    #[test]
    fn the_book_keeps_no_more_than_its_capacity() {
        let mut book = TestBook::new(2);
        book.add((0..5).map(|i| case(&format!("t{i}"), None, TestStatus::Passed)));
        assert_eq!(book.cases().len(), 2);
        assert!(book.overflowed());
    }

    #[test]
    fn messages_list_a_few_names() {
        let names: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
        assert_eq!(name_list(&names[..2]), "t0, t1");
        assert!(name_list(&names).ends_with("t9 and 2 more"));
        assert_eq!(count(1, "test"), "1 test");
        assert_eq!(count(3, "file"), "3 files");
    }
}
