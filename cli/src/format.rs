//! How times, durations and server text read in a terminal.
//!
//! Functions take `now` as a parameter, so tests fix the clock.

use chrono::{DateTime, Utc};

/// Digits of a sha shown in tables: enough to be unique in practice and to
/// paste back into `warren show`.
pub(crate) const SHORT_SHA: usize = 12;

pub(crate) fn short_sha(sha: &str) -> &str {
    sha.get(..SHORT_SHA).unwrap_or(sha)
}

/// "just now", "42s ago", "3 min ago", "5 h ago", "2 days ago"; a time in
/// the future (clocks out of step) reads "just now".
pub(crate) fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds();
    match seconds {
        ..5 => "just now".to_owned(),
        5..60 => format!("{seconds}s ago"),
        60..3_600 => format!("{} min ago", seconds / 60),
        3_600..86_400 => format!("{} h ago", seconds / 3_600),
        86_400..172_800 => "1 day ago".to_owned(),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// An optional time as its age, or "-".
pub(crate) fn age_or_dash(then: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    then.map_or_else(|| "-".to_owned(), |then| age(then, now))
}

/// "850ms", "12s", "1m 12s", "2h 5m".
pub(crate) fn duration(ms: u64) -> String {
    let seconds = ms / 1_000;
    match seconds {
        0 => format!("{ms}ms"),
        1..60 => format!("{seconds}s"),
        60..3_600 => format!("{}m {}s", seconds / 60, seconds % 60),
        _ => format!("{}h {}m", seconds / 3_600, seconds % 3_600 / 60),
    }
}

/// An optional duration, or "-".
pub(crate) fn duration_or_dash(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), duration)
}

/// A shard for a table cell, counted from 1 as the status page counts
/// them: "2/4", or "2" when the count is unknown. `number` is already
/// 1-based ([`crate::model::Job::number`]).
pub(crate) fn shard_fraction(number: u32, count: Option<u32>) -> String {
    count.map_or_else(|| number.to_string(), |count| format!("{number}/{count}"))
}

/// A shard in a sentence, counted from 1: "shard 2 of 4", or "shard 2"
/// when the count is unknown.
pub(crate) fn shard_words(number: u32, count: Option<u32>) -> String {
    count.map_or_else(
        || format!("shard {number}"),
        |count| format!("shard {number} of {count}"),
    )
}

/// Server text made safe for one table cell: control characters (an ESC
/// that would drive the terminal, a newline that would break the row)
/// become spaces.
pub(crate) fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// At most `max` characters, the last of them "..." when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        let now = at(1_000_000);
        assert_eq!(age(at(1_000_000), now), "just now");
        assert_eq!(age(at(1_000_010), now), "just now");
        assert_eq!(age(at(1_000_000 - 42), now), "42s ago");
        assert_eq!(age(at(1_000_000 - 200), now), "3 min ago");
        assert_eq!(age(at(1_000_000 - 5 * 3_600 - 10), now), "5 h ago");
        assert_eq!(age(at(1_000_000 - 90_000), now), "1 day ago");
        assert_eq!(age(at(1_000_000 - 3 * 86_400), now), "3 days ago");
    }

    #[test]
    fn durations_read_like_a_stopwatch() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_400), "12s");
        assert_eq!(duration(72_000), "1m 12s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(duration_or_dash(None), "-");
    }

    #[test]
    fn shards_read_from_1() {
        assert_eq!(shard_fraction(1, Some(4)), "1/4");
        assert_eq!(shard_fraction(3, None), "3");
        assert_eq!(shard_words(1, Some(4)), "shard 1 of 4");
        assert_eq!(shard_words(3, None), "shard 3");
    }

    #[test]
    fn text_is_cleaned_and_cut() {
        assert_eq!(clean("a\x1b[31mb\nc"), "a [31mb c");
        assert_eq!(truncate("abcdefgh", 6), "abc...");
        assert_eq!(truncate("abc", 6), "abc");
        assert_eq!(short_sha("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_sha("abc"), "abc");
    }
}
