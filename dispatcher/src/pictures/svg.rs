//! What every picture shares: escaping, the verdict marks (a shape per
//! verdict, so colour is never the only cue), time and duration axes, and
//! the SVG element that scales to the page's width.

use std::fmt::Write as _;

use warren_common::messages::{JobStatus, TestStatus};

/// Escapes text for SVG (XML) content and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML at all.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `max` characters (with an ellipsis), for labels that must
/// fit a column; the full text stays in the element's `<title>`.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A coordinate with one decimal, as SVG reads it.
pub(crate) fn n(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded == rounded.trunc() {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// How one run, commit or test came out, as the pictures draw it: a shape
/// and a word for each, and a colour class on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Passed,
    Failed,
    TimedOut,
    Error,
    /// Superseded or cancelled: not run to the end.
    Stopped,
    Running,
    /// A test that failed, then passed on a rerun.
    Flaky,
    Skipped,
}

impl Mark {
    /// Every mark, in the legend's order.
    pub(crate) const ALL: [Mark; 8] = [
        Mark::Passed,
        Mark::Failed,
        Mark::Flaky,
        Mark::TimedOut,
        Mark::Error,
        Mark::Skipped,
        Mark::Stopped,
        Mark::Running,
    ];

    pub(crate) fn of_job(status: Option<JobStatus>) -> Self {
        match status {
            None => Self::Running,
            Some(JobStatus::Passed) => Self::Passed,
            Some(JobStatus::Failed) => Self::Failed,
            Some(JobStatus::TimedOut) => Self::TimedOut,
            Some(JobStatus::Error) => Self::Error,
            Some(JobStatus::Superseded | JobStatus::Cancelled) => Self::Stopped,
        }
    }

    pub(crate) fn of_test(status: TestStatus, flaky: bool) -> Self {
        match status {
            TestStatus::Passed if flaky => Self::Flaky,
            TestStatus::Passed => Self::Passed,
            TestStatus::Failed => Self::Failed,
            TestStatus::Error => Self::Error,
            TestStatus::Skipped => Self::Skipped,
        }
    }

    /// The word the legend and the text alternative use.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::TimedOut => "timed out",
            Self::Error => "error",
            Self::Stopped => "stopped",
            Self::Running => "running",
            Self::Flaky => "flaky",
            Self::Skipped => "skipped",
        }
    }

    /// The CSS class that colours it (base.html).
    pub(crate) fn class(self) -> &'static str {
        match self {
            Self::Passed => "m-passed",
            Self::Failed | Self::Error | Self::TimedOut => "m-failed",
            Self::Flaky | Self::Running => "m-warn",
            Self::Stopped | Self::Skipped => "m-muted",
        }
    }

    /// The shape centred on (`x`, `y`), `r` units from centre to edge:
    /// passed a filled circle, failed a cross, flaky a half-filled circle,
    /// timed out a triangle, error a diamond, skipped and stopped hollow
    /// squares (stopped with a bar), running a hollow circle.
    pub(crate) fn shape(self, x: f64, y: f64, r: f64) -> String {
        let class = self.class();
        let (x0, x1, y0, y1) = (x - r, x + r, y - r, y + r);
        let (xs, ys, xe, ye) = (n(x0), n(y0), n(x1), n(y1));
        match self {
            Self::Passed => format!(
                "<circle class=\"{class} fill\" cx=\"{}\" cy=\"{}\" r=\"{}\"/>",
                n(x),
                n(y),
                n(r)
            ),
            Self::Running => format!(
                "<circle class=\"{class} hollow\" cx=\"{}\" cy=\"{}\" r=\"{}\"/>",
                n(x),
                n(y),
                n(r * 0.85)
            ),
            Self::Failed => format!(
                "<path class=\"{class} cross\" d=\"M{xs} {ys}L{xe} {ye}M{xs} {ye}L{xe} {ys}\"/>"
            ),
            Self::Flaky => format!(
                "<g class=\"{class}\"><circle class=\"hollow\" cx=\"{cx}\" cy=\"{cy}\" r=\"{rr}\"/>\
                 <path class=\"fill\" d=\"M{cx} {ys}A{rr} {rr} 0 0 0 {cx} {ye}Z\"/></g>",
                cx = n(x),
                cy = n(y),
                rr = n(r * 0.9),
                ys = n(y - r * 0.9),
                ye = n(y + r * 0.9),
            ),
            Self::TimedOut => format!(
                "<path class=\"{class} fill\" d=\"M{} {ys}L{xe} {ye}L{xs} {ye}Z\"/>",
                n(x)
            ),
            Self::Error => format!(
                "<path class=\"{class} fill\" d=\"M{} {ys}L{xe} {}L{} {ye}L{xs} {}Z\"/>",
                n(x),
                n(y),
                n(x),
                n(y)
            ),
            Self::Skipped => format!(
                "<rect class=\"{class} hollow\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
                n(x0 + r * 0.15),
                n(y0 + r * 0.15),
                n(r * 1.7),
                n(r * 1.7)
            ),
            Self::Stopped => format!(
                "<g class=\"{class}\"><rect class=\"hollow\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>\
                 <path class=\"line\" d=\"M{} {}L{} {}\"/></g>",
                n(x0 + r * 0.15),
                n(y0 + r * 0.15),
                n(r * 1.7),
                n(r * 1.7),
                n(x0 + r * 0.15),
                n(y1 - r * 0.15),
                n(x1 - r * 0.15),
                n(y0 + r * 0.15)
            ),
        }
    }
}

/// A legend row: each mark's shape and word, from `x` along `y`. Returns
/// the x where it ended.
pub(crate) fn legend(out: &mut String, marks: &[Mark], mut x: f64, y: f64) -> f64 {
    for mark in marks {
        out.push_str(&mark.shape(x + 5.0, y - 4.0, 5.0));
        let word = mark.word();
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{}\" y=\"{}\">{word}</text>",
            n(x + 14.0),
            n(y)
        );
        x += 24.0 + 7.0 * word.chars().count() as f64;
    }
    x
}

/// The `<svg>` start tag: a `viewBox` of `width` × `height` that scales to
/// the page's width, and a title and description screen readers announce.
pub(crate) fn open(out: &mut String, id: &str, width: f64, height: f64, title: &str, desc: &str) {
    let _ = write!(
        out,
        "<svg class=\"picture\" id=\"{id}\" data-testid=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {} {}\" role=\"img\" aria-labelledby=\"{id}-title {id}-desc\">\
         <title id=\"{id}-title\">{}</title><desc id=\"{id}-desc\">{}</desc>",
        n(width),
        n(height),
        esc(title),
        esc(desc)
    );
}

/// A value axis: gridlines from `left` to `right` every `step` from 0 to
/// `top`, which is drawn `chart` units above `bottom`, each labelled on the
/// left by `label`.
pub(crate) fn value_axis(
    out: &mut String,
    (left, right): (f64, f64),
    (bottom, chart): (f64, f64),
    (top, step): (f64, f64),
    label: impl Fn(f64) -> String,
) {
    let mut tick = 0.0;
    while tick <= top + step / 1000.0 {
        let y = n(bottom - tick / top * chart);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
             <text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            n(left),
            n(right),
            n(left - 6.0),
            n(bottom - tick / top * chart + 4.0),
            label(tick),
        );
        tick += step;
    }
}

/// A step for an axis over `span` (ms or any unit) with about `ticks`
/// ticks: 1, 2 or 5 times a power of ten, or a whole number of seconds,
/// minutes or hours when the span is in milliseconds and `time` is set.
pub(crate) fn nice_step(span: f64, ticks: f64, time: bool) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    if time && raw >= 1000.0 {
        const STEPS_MS: [f64; 14] = [
            1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5, 72e5,
        ];
        if let Some(step) = STEPS_MS.iter().find(|step| **step >= raw) {
            return *step;
        }
    }
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

/// A span of milliseconds as an axis label: `0`, `500 ms`, `15 s`,
/// `2 min`, `1m 30s`.
pub(crate) fn axis_time(ms: f64) -> String {
    let ms = ms.round();
    if ms == 0.0 {
        "0".into()
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        let s = ms / 1000.0;
        if s == s.trunc() {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else if (ms / 60_000.0).fract() == 0.0 {
        format!("{:.0} min", ms / 60_000.0)
    } else {
        let s = (ms / 1000.0) as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;\u{FFFD}"
        );
        assert_eq!(clip("worker-with-a-long-name", 8), "worker-…");
        assert_eq!(clip("short", 8), "short");
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(10.0, 5.0, false), 2.0);
        assert_eq!(nice_step(730.0, 5.0, false), 200.0);
        assert_eq!(nice_step(0.7, 5.0, false), 0.2);
        // 47 s in about 6 ticks: 10 s.
        assert_eq!(nice_step(47_000.0, 6.0, true), 10_000.0);
        // An hour in 6: 10 minutes.
        assert_eq!(nice_step(3_600_000.0, 6.0, true), 600_000.0);
        assert_eq!(axis_time(0.0), "0");
        assert_eq!(axis_time(500.0), "500 ms");
        assert_eq!(axis_time(2500.0), "2.5 s");
        assert_eq!(axis_time(120_000.0), "2 min");
        assert_eq!(axis_time(90_000.0), "1m 30s");
        assert_eq!(n(1.25), "1.3");
        assert_eq!(n(3.0), "3");
    }

    #[test]
    fn every_mark_has_its_own_shape_and_word() {
        let shapes: Vec<String> = Mark::ALL.iter().map(|m| m.shape(10.0, 10.0, 5.0)).collect();
        for (i, a) in shapes.iter().enumerate() {
            for b in &shapes[i + 1..] {
                assert_ne!(a, b, "two marks look the same");
            }
        }
        let words: std::collections::HashSet<_> = Mark::ALL.iter().map(|m| m.word()).collect();
        assert_eq!(words.len(), Mark::ALL.len());
        assert_eq!(
            Mark::Passed.shape(10.0, 20.0, 5.0),
            "<circle class=\"m-passed fill\" cx=\"10\" cy=\"20\" r=\"5\"/>"
        );
    }
}
