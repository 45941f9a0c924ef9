//! Splitting a suite into shards by recorded timings.
//!
//! Longest processing time first: files sorted by their expected duration,
//! longest first, each onto the shard with the least work so far. With the
//! durations of the previous runs this comes close to the ideal
//! `max(total / shards, longest file)`. A file never seen takes the median
//! of the known files' durations; with no timings at all (the very first
//! commit), every file counts the same and the shards get equal numbers of
//! files.

use crate::spec::ShardCount;
use std::collections::HashMap;
use warren_common::ids::SuitePath;

/// What a file is assumed to take when no file of the repository has a
/// timing yet, in milliseconds. Only the ratios matter then.
const UNKNOWN_FILE_MS: u64 = 1_000;

/// One shard: its files (sorted by path) and the time they should take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlan {
    pub files: Vec<SuitePath>,
    pub estimated_ms: u64,
}

/// Splits `files` into shards, using `timings` (milliseconds per file path,
/// from earlier runs). Never makes an empty shard.
pub fn split(
    files: &[SuitePath],
    timings: &HashMap<String, u64>,
    count: ShardCount,
) -> Vec<ShardPlan> {
    if files.is_empty() {
        return Vec::new();
    }
    let fallback = median(
        files
            .iter()
            .filter_map(|file| timings.get(file.as_str()).copied()),
    )
    .unwrap_or(UNKNOWN_FILE_MS);
    let mut weighted: Vec<(u64, &SuitePath)> = files
        .iter()
        .map(|file| {
            (
                timings.get(file.as_str()).copied().unwrap_or(fallback),
                file,
            )
        })
        .collect();
    let total: u64 = weighted.iter().map(|(ms, _)| ms).sum();
    let wanted = match count {
        ShardCount::Fixed(n) => n,
        ShardCount::Duration { target, max } => {
            let target_ms = u64::try_from(target.as_millis()).unwrap_or(u64::MAX).max(1);
            u32::try_from(total.div_ceil(target_ms))
                .unwrap_or(u32::MAX)
                .clamp(1, max)
        }
    };
    let shards = usize::try_from(wanted)
        .unwrap_or(usize::MAX)
        .clamp(1, files.len());
    // Longest first; equal durations in path order, so a split is
    // reproducible.
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut plans = vec![
        ShardPlan {
            files: Vec::new(),
            estimated_ms: 0,
        };
        shards
    ];
    for (ms, file) in weighted {
        let lightest = plans
            .iter_mut()
            .min_by_key(|plan| (plan.estimated_ms, plan.files.len()))
            .expect("at least one shard");
        lightest.estimated_ms += ms;
        lightest.files.push(file.clone());
    }
    for plan in &mut plans {
        plan.files.sort();
    }
    plans
}

fn median(values: impl Iterator<Item = u64>) -> Option<u64> {
    let mut values: Vec<u64> = values.collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn files(n: usize) -> Vec<SuitePath> {
        (0..n)
            .map(|i| SuitePath::parse(&format!("t/{i:02}.py")).unwrap())
            .collect()
    }

    #[test]
    fn without_timings_shards_get_equal_numbers_of_files() {
        let plans = split(&files(10), &HashMap::new(), ShardCount::Fixed(3));
        let sizes: Vec<usize> = plans.iter().map(|p| p.files.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().all(|&n| n == 3 || n == 4), "{sizes:?}");
    }

    #[test]
    fn timings_balance_the_shards_longest_first() {
        let all = files(6);
        let timings: HashMap<String, u64> = [
            (0, 9000),
            (1, 5000),
            (2, 4000),
            (3, 3000),
            (4, 2000),
            (5, 1000),
        ]
        .into_iter()
        .map(|(i, ms)| (all[i].to_string(), ms))
        .collect();
        let plans = split(&all, &timings, ShardCount::Fixed(2));
        let mut loads: Vec<u64> = plans.iter().map(|p| p.estimated_ms).collect();
        loads.sort_unstable();
        assert_eq!(loads, [12_000, 12_000]);
    }

    #[test]
    fn unknown_files_count_as_the_median_of_known_ones() {
        let all = files(4);
        let timings: HashMap<String, u64> = [
            (all[0].to_string(), 100),
            (all[1].to_string(), 300),
            (all[2].to_string(), 500),
        ]
        .into();
        let plans = split(&all, &timings, ShardCount::Fixed(1));
        assert_eq!(plans[0].estimated_ms, 100 + 300 + 500 + 300);
    }

    #[test]
    fn a_target_duration_decides_the_number_of_shards() {
        let all = files(8);
        let timings: HashMap<String, u64> = all.iter().map(|f| (f.to_string(), 10_000)).collect();
        let count = |secs, max| ShardCount::Duration {
            target: Duration::from_secs(secs),
            max,
        };
        assert_eq!(split(&all, &timings, count(20, 16)).len(), 4);
        assert_eq!(split(&all, &timings, count(20, 3)).len(), 3);
        assert_eq!(split(&all, &timings, count(1000, 16)).len(), 1);
    }

    #[test]
    fn never_more_shards_than_files_and_the_split_is_reproducible() {
        let all = files(2);
        assert_eq!(split(&all, &HashMap::new(), ShardCount::Fixed(8)).len(), 2);
        assert!(split(&[], &HashMap::new(), ShardCount::Fixed(8)).is_empty());
        let a = split(&files(9), &HashMap::new(), ShardCount::Fixed(4));
        let b = split(&files(9), &HashMap::new(), ShardCount::Fixed(4));
        assert_eq!(a, b);
    }
}
