//! Duration and verdict history: the last commits of a branch (or the runs
//! of one test across commits), oldest on the left, as a strip of marks (a
//! shape per verdict) over a line of their durations. Each column links to
//! its commit.

use std::fmt::Write as _;

use super::svg::{Mark, axis_time, esc, legend, n, nice_step, open, value_axis};

/// Width of the picture, in its own units.
const WIDTH: f64 = 720.0;
/// Room for the duration axis's labels.
const LEFT: f64 = 60.0;
const RIGHT: f64 = 12.0;
/// The legend's baseline, the strip of marks' centre, the chart's top.
const LEGEND_Y: f64 = 16.0;
const STRIP_Y: f64 = 40.0;
const CHART_TOP: f64 = 64.0;
/// Height of the duration chart.
const CHART: f64 = 140.0;
/// Below the chart: "older" and "newer".
const BOTTOM: f64 = 24.0;
/// Largest radius of a mark; narrower columns get smaller marks.
const MARK_R: f64 = 6.0;

/// One commit (or one test in one commit).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    /// Where the column links: the commit's page.
    pub href: String,
    pub mark: Mark,
    pub duration_ms: Option<u64>,
    /// What a tooltip and a screen reader say: commit, verdict, time.
    pub title: String,
}

/// The picture of `points` (oldest first), or `None` without any. `id`
/// names the element (and the page's test hook); `what` is its title.
pub(crate) fn svg(id: &str, what: &str, points: &[Point]) -> Option<String> {
    if points.is_empty() {
        return None;
    }
    let longest = points
        .iter()
        .filter_map(|p| p.duration_ms)
        .max()
        .unwrap_or(0) as f64;
    let step = nice_step(longest.max(1.0), 4.0, true);
    let top = (longest / step).ceil().max(1.0) * step;
    let chart_bottom = CHART_TOP + CHART;
    let height = chart_bottom + BOTTOM;
    let column = (WIDTH - LEFT - RIGHT) / points.len() as f64;
    let layout = Layout {
        column,
        r: MARK_R.min(column * 0.4).max(1.5),
        y: &|ms: u64| chart_bottom - ms as f64 / top * CHART,
    };

    let (desc, marks) = describe(what, points);
    let mut out = String::new();
    open(&mut out, id, WIDTH, height, what, &desc);
    legend(&mut out, &marks, LEFT, LEGEND_Y);
    value_axis(
        &mut out,
        (LEFT, WIDTH - RIGHT),
        (chart_bottom, CHART),
        (top, step),
        axis_time,
    );
    // Below the chart: "older", the line's key, "newer".
    let _ = write!(
        out,
        "<text class=\"label\" x=\"{}\" y=\"{below}\">← older</text>\
         <path class=\"duration\" d=\"M{} {}h18\"/><text class=\"label\" x=\"{}\" y=\"{below}\">duration</text>\
         <text class=\"label\" x=\"{}\" y=\"{below}\" text-anchor=\"end\">newer →</text>",
        n(LEFT),
        n(WIDTH / 2.0 - 40.0),
        n(height - 10.0),
        n(WIDTH / 2.0 - 18.0),
        n(WIDTH - RIGHT),
        below = n(height - 6.0),
    );
    duration_line(&mut out, points, &layout);
    for (i, point) in points.iter().enumerate() {
        point_column(&mut out, point, layout.x(i), &layout);
    }
    out.push_str("</svg>");
    Some(out)
}

/// Where the columns, marks and durations go.
struct Layout<'a> {
    column: f64,
    /// The marks' radius.
    r: f64,
    y: &'a dyn Fn(u64) -> f64,
}

impl Layout<'_> {
    /// The centre of column `i`.
    fn x(&self, i: usize) -> f64 {
        LEFT + self.column * (i as f64 + 0.5)
    }
}

/// The description (counts per verdict, durations) and the marks used.
fn describe(what: &str, points: &[Point]) -> (String, Vec<Mark>) {
    let mut desc = format!("{} {}, oldest first:", points.len(), what);
    let mut marks: Vec<Mark> = Vec::new();
    for mark in Mark::ALL {
        let count = points.iter().filter(|p| p.mark == mark).count();
        if count > 0 {
            marks.push(mark);
            let _ = write!(desc, " {count} {},", mark.word());
        }
    }
    desc.pop();
    desc.push('.');
    let durations = points.iter().filter_map(|p| p.duration_ms);
    if let (Some(min), Some(max)) = (durations.clone().min(), durations.max()) {
        let _ = write!(
            desc,
            " Durations from {} to {}",
            axis_time(min as f64),
            axis_time(max as f64)
        );
        if let Some(last) = points.last().and_then(|p| p.duration_ms) {
            let _ = write!(desc, ", the newest {}", axis_time(last as f64));
        }
        desc.push('.');
    }
    (desc, marks)
}

/// The duration line, broken where a point has no duration (running).
fn duration_line(out: &mut String, points: &[Point], layout: &Layout<'_>) {
    let mut path = String::new();
    let mut pen_down = false;
    for (i, point) in points.iter().enumerate() {
        match point.duration_ms {
            Some(ms) => {
                let pen = if pen_down { "L" } else { "M" };
                let _ = write!(path, "{pen}{} {}", n(layout.x(i)), n((layout.y)(ms)));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = write!(out, "<path class=\"duration\" d=\"{path}\"/>");
    }
}

/// One point's column at `x`: a link over its whole height, its mark in
/// the strip, a dot on the line.
fn point_column(out: &mut String, point: &Point, x: f64, layout: &Layout<'_>) {
    let _ = write!(
        out,
        "<a href=\"{}\" aria-label=\"{title}\"><title>{title}</title>\
         <rect class=\"hit\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>{}",
        esc(&point.href),
        n(x - layout.column / 2.0),
        n(STRIP_Y - MARK_R - 4.0),
        n(layout.column),
        n(CHART_TOP + CHART - STRIP_Y + MARK_R + 4.0),
        point.mark.shape(x, STRIP_Y, layout.r),
        title = esc(&point.title),
    );
    if let Some(ms) = point.duration_ms {
        let _ = write!(
            out,
            "<circle class=\"dot\" cx=\"{}\" cy=\"{}\" r=\"{}\"/>",
            n(x),
            n((layout.y)(ms)),
            n((layout.r * 0.5).max(1.5))
        );
    }
    out.push_str("</a>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: usize, mark: Mark, ms: Option<u64>) -> Point {
        Point {
            href: format!("/commits/api/{i:040}"),
            mark,
            duration_ms: ms,
            title: format!("commit {i}"),
        }
    }

    #[test]
    fn marks_and_the_duration_line_follow_the_data() {
        let points = [
            point(0, Mark::Passed, Some(2_000)),
            point(1, Mark::Failed, Some(4_000)),
            point(2, Mark::Passed, Some(1_000)),
            point(3, Mark::Running, None),
        ];
        let svg = svg("history", "commits of api/main", &points).unwrap();
        // Four columns of 162 units (720 - 60 - 12 = 648); 4 s is the top
        // of the chart, in steps of 1 s.
        let xs = [141.0, 303.0, 465.0, 627.0];
        assert!(
            svg.contains(&format!(
                "<path class=\"duration\" d=\"M{} {}L{} {}L{} {}\"/>",
                n(xs[0]),
                n(CHART_TOP + CHART / 2.0),
                n(xs[1]),
                n(CHART_TOP),
                n(xs[2]),
                n(CHART_TOP + CHART * 0.75)
            )),
            "{svg}"
        );
        for label in ["0", "1 s", "2 s", "3 s", "4 s"] {
            assert!(
                svg.contains(&format!("text-anchor=\"end\">{label}</text>")),
                "{label}"
            );
        }
        // Marks in the strip, each a link to its commit.
        assert!(svg.contains(&format!(
            "<circle class=\"m-passed fill\" cx=\"{}\" cy=\"{}\" r=\"6\"/>",
            n(xs[0]),
            n(STRIP_Y)
        )));
        assert!(svg.contains("<a href=\"/commits/api/0000000000000000000000000000000000000001\" aria-label=\"commit 1\">"));
        assert!(svg.contains("class=\"m-failed cross\""));
        assert!(svg.contains("class=\"m-warn hollow\""), "running");
        assert_eq!(svg.matches("<circle class=\"dot\"").count(), 3);
        assert!(svg.contains(
            "<desc id=\"history-desc\">4 commits of api/main, oldest first: 2 passed, 1 failed, \
             1 running. Durations from 1 s to 4 s.</desc>"
        ), "{svg}");
        // The legend names each shape used, and only those.
        assert!(svg.contains(">passed</text>") && svg.contains(">running</text>"));
        assert!(!svg.contains(">timed out</text>"));
    }

    #[test]
    fn many_points_get_smaller_marks_and_hostile_text_is_escaped() {
        let mut points: Vec<Point> = (0..200).map(|i| point(i, Mark::Passed, Some(10))).collect();
        points[0].title = "<img src=x onerror=alert(1)>\"".into();
        points[0].href = "/x?a=1&b=\"2\"".into();
        let svg = svg("history", "runs", &points).unwrap();
        assert!(!svg.contains("<img"), "{svg}");
        assert!(svg.contains("aria-label=\"&lt;img src=x onerror=alert(1)&gt;&quot;\""));
        assert!(svg.contains("<a href=\"/x?a=1&amp;b=&quot;2&quot;\""));
        // 648 / 200 = 3.24 units a column: marks of radius 1.5 at least.
        assert!(svg.contains("r=\"1.5\""), "{svg}");
        assert_eq!(super::svg("history", "runs", &[]), None);
    }
}
