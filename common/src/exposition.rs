//! The two text formats of `/metrics`. `prometheus_client` writes
//! OpenMetrics, which Prometheus asks for by its `Accept` header; every
//! other consumer (an older Prometheus, `promtool check metrics`, most
//! agents, `curl`) reads the Prometheus text format 0.0.4, where the same
//! text is wrong: a counter's `# TYPE` names its family (`x`) but its
//! sample is `x_total`, so they read an untyped series without help. So the
//! dispatcher and the worker answer OpenMetrics to those who ask for it and
//! the text format to everyone else ([`negotiate`]).

use std::collections::HashSet;

/// OpenMetrics, as `prometheus_client` writes it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type and body for a scrape whose `Accept` header is
/// `accept`, from the OpenMetrics text `openmetrics`.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
        (OPENMETRICS, openmetrics)
    } else {
        (PROMETHEUS_TEXT, to_prometheus_text(&openmetrics))
    }
}

/// OpenMetrics text in the Prometheus text format: a counter's `# HELP`
/// and `# TYPE` name its `_total` series (and its `_created` series, which
/// that format does not have, is left out); an info family is a gauge named
/// `_info`; `unknown` is `untyped`; `# UNIT` and `# EOF` lines are left out
/// (the unit is already the name's suffix).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut renamed: Vec<(&str, &str, &str)> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            match kind {
                "counter" => renamed.push((name, "_total", "counter")),
                "info" => renamed.push((name, "_info", "gauge")),
                _ => {}
            }
        }
    }
    let created: HashSet<String> = renamed
        .iter()
        .filter(|(_, suffix, _)| *suffix == "_total")
        .map(|(name, _, _)| format!("{name}_created"))
        .collect();
    let family = |name: &str| {
        renamed
            .iter()
            .find(|(family, _, _)| *family == name)
            .copied()
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            match family(name) {
                Some((_, suffix, _)) => out.push_str(&format!("# HELP {name}{suffix} {help}")),
                None => out.push_str(line),
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            match (family(name), kind) {
                (Some((_, suffix, kind)), _) => {
                    out.push_str(&format!("# TYPE {name}{suffix} {kind}"));
                }
                (None, "unknown") => out.push_str(&format!("# TYPE {name} untyped")),
                _ => out.push_str(line),
            }
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            if created.contains(name) {
                continue;
            }
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS_TEXT: &str = "\
# HELP warren_commits Commits that got their verdict, by status.
# TYPE warren_commits counter
warren_commits_total{status=\"passed\"} 2
warren_commits_created{status=\"passed\"} 1700000000.0
# HELP warren_job_duration_seconds Duration.
# TYPE warren_job_duration_seconds histogram
# UNIT warren_job_duration_seconds seconds
warren_job_duration_seconds_sum 1.5
warren_job_duration_seconds_count 1
warren_job_duration_seconds_bucket{le=\"+Inf\"} 1
# HELP warren_build Build.
# TYPE warren_build info
warren_build_info{version=\"1\"} 1
# HELP warren_odd Odd.
# TYPE warren_odd unknown
warren_odd 3
# HELP warren_busy Busy.
# TYPE warren_busy gauge
warren_busy 1
# EOF
";

    #[test]
    fn counters_info_and_units_become_the_text_format() {
        assert_eq!(
            to_prometheus_text(OPENMETRICS_TEXT),
            "\
# HELP warren_commits_total Commits that got their verdict, by status.
# TYPE warren_commits_total counter
warren_commits_total{status=\"passed\"} 2
# HELP warren_job_duration_seconds Duration.
# TYPE warren_job_duration_seconds histogram
warren_job_duration_seconds_sum 1.5
warren_job_duration_seconds_count 1
warren_job_duration_seconds_bucket{le=\"+Inf\"} 1
# HELP warren_build_info Build.
# TYPE warren_build_info gauge
warren_build_info{version=\"1\"} 1
# HELP warren_odd Odd.
# TYPE warren_odd untyped
warren_odd 3
# HELP warren_busy Busy.
# TYPE warren_busy gauge
warren_busy 1
"
        );
    }

    #[test]
    fn openmetrics_only_for_those_who_ask() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (kind, body) = negotiate(OPENMETRICS_TEXT.into(), Some(prometheus));
        assert_eq!((kind, body.as_str()), (OPENMETRICS, OPENMETRICS_TEXT));
        for accept in [None, Some("text/plain"), Some("*/*")] {
            let (kind, body) = negotiate(OPENMETRICS_TEXT.into(), accept);
            assert_eq!(kind, PROMETHEUS_TEXT);
            assert!(!body.contains("# EOF"), "{body}");
        }
    }
}
