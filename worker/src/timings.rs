//! How long each suite file of a job took, for the dispatcher's next split.
//!
//! A `{file}` job measures each file's run ([`measured`]). Any other job
//! with files ran them together, so their times are worked out
//! ([`shared_out`]): a file whose tests the JUnit report names (by their
//! `file` attribute) gets the sum of their times, measured; the files the
//! report does not cover share what is left of the run's time evenly, and
//! are marked `estimated`.

use std::collections::HashMap;
use std::time::Duration;
use warren_common::ids::SuitePath;
use warren_common::messages::{FileTiming, TestCase};

/// The measured time of one file's own run.
pub(crate) fn measured(path: &SuitePath, duration: Duration) -> FileTiming {
    FileTiming {
        path: path.clone(),
        duration_ms: millis(duration),
        estimated: false,
    }
}

/// The times of `files`, which ran together for `duration` and reported
/// `tests`.
pub(crate) fn shared_out(
    files: &[SuitePath],
    duration: Duration,
    tests: &[TestCase],
) -> Vec<FileTiming> {
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for test in tests {
        if let Some(file) = test.file.as_deref()
            && let Some(path) = files.iter().find(|path| path.as_str() == file)
        {
            let sum = sums.entry(path.as_str()).or_default();
            *sum = sum.saturating_add(test.duration_ms);
        }
    }
    let covered: u64 = sums.values().fold(0, |total, ms| total.saturating_add(*ms));
    let uncovered = files
        .iter()
        .filter(|path| !sums.contains_key(path.as_str()))
        .count();
    let share = match u64::try_from(uncovered) {
        Ok(n) if n > 0 => millis(duration).saturating_sub(covered) / n,
        _ => 0,
    };
    files
        .iter()
        .map(|path| match sums.get(path.as_str()) {
            Some(&ms) => FileTiming {
                path: path.clone(),
                duration_ms: ms,
                estimated: false,
            },
            None => FileTiming {
                path: path.clone(),
                duration_ms: share,
                estimated: true,
            },
        })
        .collect()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_common::messages::TestStatus;

    fn paths(list: &[&str]) -> Vec<SuitePath> {
        list.iter().map(|p| SuitePath::parse(p).unwrap()).collect()
    }

    fn test(file: Option<&str>, ms: u64) -> TestCase {
        TestCase {
            name: "t".into(),
            classname: String::new(),
            file: file.map(str::to_owned),
            duration_ms: ms,
            status: TestStatus::Passed,
            message: None,
            flaky: false,
        }
    }

    fn table(timings: &[FileTiming]) -> Vec<(&str, u64, bool)> {
        timings
            .iter()
            .map(|t| (t.path.as_str(), t.duration_ms, t.estimated))
            .collect()
    }

    #[test]
    fn without_a_report_the_time_is_shared_evenly() {
        let files = paths(&["a", "b", "c"]);
        let timings = shared_out(&files, Duration::from_millis(900), &[]);
        assert_eq!(
            table(&timings),
            [("a", 300, true), ("b", 300, true), ("c", 300, true)]
        );
        assert!(shared_out(&[], Duration::from_secs(1), &[]).is_empty());
    }

    #[test]
    fn files_the_report_covers_get_their_tests_sum_and_the_rest_share_the_remainder() {
        let files = paths(&["a", "b", "c"]);
        let tests = [
            test(Some("a"), 100),
            test(Some("a"), 150),
            test(None, 5000),
            test(Some("elsewhere"), 5000),
        ];
        let timings = shared_out(&files, Duration::from_millis(1050), &tests);
        assert_eq!(
            table(&timings),
            [("a", 250, false), ("b", 400, true), ("c", 400, true)]
        );
        // Tests longer than the run (parallel runners): nothing left to share.
        let timings = shared_out(&files, Duration::from_millis(100), &tests);
        assert_eq!(table(&timings)[1], ("b", 0, true));
    }

    #[test]
    fn a_measured_file_is_not_estimated() {
        let file = SuitePath::parse("t/a.py").unwrap();
        let timing = measured(&file, Duration::from_millis(1234));
        assert_eq!((timing.duration_ms, timing.estimated), (1234, false));
    }
}
