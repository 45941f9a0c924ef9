//! The shard timeline of one commit: a row per worker slot, a bar per run
//! of a job from its start to its end, its checkout hatched and its command
//! solid, lost runs cross-hatched and labelled, a time axis from the first
//! start. It shows at a glance whether the split was even.
//!
//! Worker slots are not recorded per run, so the rows are packed: each of a
//! worker's runs goes to the first of its rows free at the run's start,
//! which is as many rows as the worker ran jobs at once.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::svg::{Mark, axis_time, clip, esc, legend, n, nice_step, open};
use crate::report::CommitReport;

/// Width of the picture, in its own units.
const WIDTH: f64 = 720.0;
/// Room for the row labels (worker and slot), left of the bars.
const LABELS: f64 = 132.0;
/// Room right of the last bar.
const RIGHT: f64 = 16.0;
/// Height of a row, and of a bar in it.
const ROW: f64 = 24.0;
const BAR: f64 = 16.0;
/// The legend above the rows, the axis below them.
const TOP: f64 = 34.0;
const AXIS: f64 = 28.0;
/// Narrowest bar, in units.
const MIN_BAR: f64 = 4.0;
/// Longest worker name shown whole in a row label.
const LABEL_CHARS: usize = 16;

/// How a run ended, as the picture draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Decided (or a late result): the job's verdict shape.
    Ended(Mark),
    /// The worker went away or stopped sending heartbeats.
    Lost,
    /// Still running; its bar ends at "now".
    Running,
}

/// One run of one job on one worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    /// "2/4": the shard.
    pub shard: String,
    pub worker: String,
    pub start: DateTime<Utc>,
    /// When the checkout ended and the command began, if known.
    pub command_start: Option<DateTime<Utc>>,
    pub end: DateTime<Utc>,
    pub ending: Ending,
}

/// The runs of a commit's jobs; a running one ends at `now`.
pub(crate) fn runs(report: &CommitReport, now: DateTime<Utc>) -> Vec<Run> {
    let mut runs = Vec::new();
    for job in &report.jobs {
        let shard = format!("{}/{}", job.shard.index + 1, job.shard.count);
        for attempt in &job.attempts {
            let start = attempt.started_at.unwrap_or(attempt.last_seen);
            let ending = match attempt.state.as_str() {
                "lost" => Ending::Lost,
                "running" => Ending::Running,
                _ => Ending::Ended(Mark::of_job(attempt.status.or(job.status))),
            };
            let end = match ending {
                Ending::Running => now,
                Ending::Lost => attempt.finished_at.unwrap_or(attempt.last_seen),
                Ending::Ended(_) => attempt.finished_at.unwrap_or(attempt.last_seen),
            }
            .max(start);
            let command_start = attempt
                .checkout_ms
                .and_then(|ms| i64::try_from(ms).ok())
                .map(|ms| (start + chrono::TimeDelta::milliseconds(ms)).min(end));
            runs.push(Run {
                shard: shard.clone(),
                worker: attempt.worker.clone(),
                start,
                command_start,
                end,
                ending,
            });
        }
    }
    runs
}

/// The rows: (worker, slot number from 1, the indices of its runs).
fn rows(runs: &[Run]) -> Vec<(String, usize, Vec<usize>)> {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| (&runs[a].worker, runs[a].start).cmp(&(&runs[b].worker, runs[b].start)));
    // (worker, slot, runs, free from)
    let mut rows: Vec<(String, usize, Vec<usize>, DateTime<Utc>)> = Vec::new();
    for index in order {
        let run = &runs[index];
        let free = rows
            .iter_mut()
            .find(|(worker, _, _, free)| *worker == run.worker && *free <= run.start);
        match free {
            Some(row) => {
                row.2.push(index);
                row.3 = run.end;
            }
            None => {
                let slot = rows.iter().filter(|row| row.0 == run.worker).count() + 1;
                rows.push((run.worker.clone(), slot, vec![index], run.end));
            }
        }
    }
    rows.into_iter()
        .map(|(worker, slot, runs, _)| (worker, slot, runs))
        .collect()
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64
}

/// The picture, or `None` when no job has run yet.
pub(crate) fn svg(runs: &[Run]) -> Option<String> {
    let t0 = runs.iter().map(|run| run.start).min()?;
    let t1 = runs.iter().map(|run| run.end).max()?;
    let span = seconds(t0, t1).max(1.0);
    let rows = rows(runs);
    let plot = WIDTH - LABELS - RIGHT;
    let x = |at: DateTime<Utc>| LABELS + seconds(t0, at) / span * plot;
    let bottom = TOP + ROW * rows.len() as f64;

    let mut out = String::new();
    let desc = describe(runs, rows.len(), span);
    open(
        &mut out,
        "timeline",
        WIDTH,
        bottom + AXIS,
        "Shard timeline",
        &desc,
    );
    out.push_str(
        "<defs><pattern id=\"timeline-checkout\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><rect class=\"checkout-bg\" width=\"6\" height=\"6\"/>\
         <line class=\"hatch\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\"/></pattern>\
         <pattern id=\"timeline-lost\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\">\
         <path class=\"hatch lost\" d=\"M0 0L6 6M6 0L0 6\"/></pattern></defs>",
    );
    key(&mut out, runs);
    time_axis(&mut out, span, bottom);
    for (row_index, (worker, slot, members)) in rows.iter().enumerate() {
        let y = TOP + ROW * row_index as f64;
        let slots = rows.iter().filter(|row| &row.0 == worker).count();
        let label = if slots > 1 {
            format!("{} · {slot}", clip(worker, LABEL_CHARS - 4))
        } else {
            clip(worker, LABEL_CHARS)
        };
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"end\"><title>{}</title>{}</text>",
            n(LABELS - 8.0),
            n(y + ROW / 2.0 + 4.0),
            esc(&format!("{worker}, slot {slot}")),
            esc(&label)
        );
        for &index in members {
            bar(&mut out, &runs[index], y + (ROW - BAR) / 2.0, &x);
        }
    }
    out.push_str("</svg>");
    Some(out)
}

/// The description: shards, runs, rows, the longest and shortest runs,
/// the lost ones.
fn describe(runs: &[Run], rows: usize, span: f64) -> String {
    let shards: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.shard.as_str()).collect();
    let mut desc = format!(
        "{} shards, {} runs on {} worker slots over {}.",
        shards.len(),
        runs.len(),
        rows,
        axis_time(span)
    );
    let longest = runs
        .iter()
        .filter(|r| !matches!(r.ending, Ending::Lost))
        .max_by_key(|r| r.end - r.start);
    let shortest = runs
        .iter()
        .filter(|r| matches!(r.ending, Ending::Ended(_)))
        .min_by_key(|r| r.end - r.start);
    if let (Some(long), Some(short)) = (longest, shortest) {
        let _ = write!(
            desc,
            " Longest run: shard {} on {}, {}; shortest: shard {}, {}.",
            long.shard,
            long.worker,
            axis_time(seconds(long.start, long.end)),
            short.shard,
            axis_time(seconds(short.start, short.end))
        );
    }
    let lost = runs.iter().filter(|r| r.ending == Ending::Lost).count();
    if lost > 0 {
        let _ = write!(desc, " {lost} lost runs.");
    }
    desc
}

/// The legend: checkout, command, lost, then the verdict marks used.
fn key(out: &mut String, runs: &[Run]) {
    out.push_str(
        "<rect x=\"0\" y=\"8\" width=\"16\" height=\"10\" fill=\"url(#timeline-checkout)\" class=\"edge\"/>\
         <text class=\"label\" x=\"20\" y=\"17\">checkout</text>\
         <rect class=\"run key\" x=\"84\" y=\"8\" width=\"16\" height=\"10\"/>\
         <text class=\"label\" x=\"104\" y=\"17\">command</text>\
         <rect x=\"170\" y=\"8\" width=\"16\" height=\"10\" fill=\"url(#timeline-lost)\" class=\"edge lost\"/>\
         <text class=\"label\" x=\"190\" y=\"17\">lost</text>",
    );
    // Running and lost runs say so in words on their bars.
    let marks: Vec<Mark> = Mark::ALL
        .into_iter()
        .filter(|mark| runs.iter().any(|run| run.ending == Ending::Ended(*mark)))
        .collect();
    legend(out, &marks, 226.0, 17.0);
}

/// Gridlines and labels every round step from the first start.
fn time_axis(out: &mut String, span: f64, bottom: f64) {
    let plot = WIDTH - LABELS - RIGHT;
    let step = nice_step(span, 6.0, true);
    let mut tick = 0.0;
    while tick <= span + 0.5 {
        let tx = n(LABELS + tick / span * plot);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{tx}\" y1=\"{}\" x2=\"{tx}\" y2=\"{}\"/>\
             <text class=\"label axis\" x=\"{tx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            n(TOP - 4.0),
            n(bottom),
            n(bottom + 16.0),
            axis_time(tick),
        );
        tick += step;
    }
}

/// One run's bar at `y`: hatched checkout, solid command, its mark and
/// shard at the end, a title with the figures.
fn bar(out: &mut String, run: &Run, y: f64, x: &impl Fn(DateTime<Utc>) -> f64) {
    // At least a few units wide, so that a run lost at once still shows.
    let (x0, x2) = (x(run.start), x(run.end).max(x(run.start) + MIN_BAR));
    let x1 = run.command_start.map_or(x0, |at| x(at).clamp(x0, x2));
    let what = match run.ending {
        Ending::Ended(mark) => mark.word(),
        Ending::Lost => "lost",
        Ending::Running => "running",
    };
    let mut title = format!("shard {} on {}: {}", run.shard, run.worker, what);
    if let Some(at) = run.command_start {
        let _ = write!(
            title,
            ", checkout {}, command {}",
            axis_time(seconds(run.start, at)),
            axis_time(seconds(at, run.end))
        );
    } else {
        let _ = write!(title, ", {}", axis_time(seconds(run.start, run.end)));
    }
    let _ = write!(
        out,
        "<g class=\"bar\" data-shard=\"{}\"><title>{}</title>",
        esc(&run.shard),
        esc(&title)
    );
    if run.ending == Ending::Lost {
        let _ = write!(
            out,
            "<rect class=\"edge lost\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"url(#timeline-lost)\"/>",
            n(x0),
            n(y),
            n(x2 - x0),
            n(BAR)
        );
    } else {
        if x1 > x0 {
            let _ = write!(
                out,
                "<rect class=\"edge\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"url(#timeline-checkout)\"/>",
                n(x0),
                n(y),
                n(x1 - x0),
                n(BAR)
            );
        }
        let class = if run.ending == Ending::Running {
            "run running"
        } else {
            "run"
        };
        let _ = write!(
            out,
            "<rect class=\"{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
            n(x1),
            n(y),
            n((x2 - x1).max(1.0)),
            n(BAR)
        );
    }
    // The shard (and "lost") inside the bar when it fits, else after it.
    let text = match run.ending {
        Ending::Lost => format!("{} lost", run.shard),
        Ending::Running => format!("{} running", run.shard),
        Ending::Ended(_) => run.shard.clone(),
    };
    let width = 7.0 * text.chars().count() as f64 + 8.0;
    let mark_x = x2 - BAR / 2.0;
    // The verdict's shape at the end; a running bar says so in words (and
    // has a dashed edge) instead.
    if let Ending::Ended(mark) = run.ending {
        out.push_str(&mark.shape(mark_x, y + BAR / 2.0, 5.0));
    }
    let room = x2 - x1 - BAR;
    let (tx, class) = if room >= width {
        (x1.max(x0) + 4.0, "label on-bar")
    } else {
        (x2 + 4.0, "label")
    };
    let _ = write!(
        out,
        "<text class=\"{class}\" x=\"{}\" y=\"{}\">{}</text></g>",
        n(tx),
        n(y + BAR - 4.0),
        esc(&text)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn run(shard: &str, worker: &str, start: i64, checkout: i64, end: i64, ending: Ending) -> Run {
        Run {
            shard: shard.into(),
            worker: worker.into(),
            start: at(start),
            command_start: Some(at(start + checkout)),
            end: at(end),
            ending,
        }
    }

    /// The `attr="..."` values of every element whose tag starts `start`.
    fn attrs(svg: &str, start: &str, attr: &str) -> Vec<String> {
        svg.split(start)
            .skip(1)
            .filter_map(|rest| {
                let tag = &rest[..rest.find('>')?];
                let from = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
                Some(tag[from..from + tag[from..].find('"')?].to_owned())
            })
            .collect()
    }

    #[test]
    fn bars_sit_on_the_time_axis_with_checkout_and_command_apart() {
        let passed = Ending::Ended(Mark::Passed);
        let runs = [
            // worker-a runs two shards at once (two slots), then a third.
            run("1/4", "worker-a", 0, 1000, 10_000, passed),
            run(
                "2/4",
                "worker-a",
                0,
                1000,
                5_000,
                Ending::Ended(Mark::Failed),
            ),
            run("3/4", "worker-a", 5_000, 1000, 8_000, passed),
            // worker-b lost its run, which ran again on worker-a's slot 2.
            run("4/4", "worker-b", 0, 0, 2_000, Ending::Lost),
        ];
        let svg = svg(&runs).unwrap();
        // Three rows: worker-a · 1, worker-a · 2, worker-b.
        assert!(svg.contains(">worker-a · 1</text>"), "{svg}");
        assert!(
            svg.contains("text-anchor=\"end\"><title>worker-a, slot 2</title>worker-a · 2</text>"),
            "{svg}"
        );
        assert!(svg.contains(">worker-b</text>"), "{svg}");
        assert!(!svg.contains("worker-a · 3"), "{svg}");
        // 10 s over 572 units (720 - 132 - 16): 57.2 units a second.
        let plot = WIDTH - LABELS - RIGHT;
        let runs_x = attrs(&svg, "<rect class=\"run\"", "x");
        let runs_w = attrs(&svg, "<rect class=\"run\"", "width");
        // Row order: worker-a slot 1 (1/4), slot 2 (2/4, then 3/4, which
        // started when 2/4 had ended there).
        assert_eq!(runs_x[0], n(LABELS + plot * 0.1), "1/4's command after 1 s");
        assert_eq!(runs_w[0], n(plot * 0.9));
        assert_eq!(runs_w[1], n(plot * 0.4), "2/4 ran 4 s");
        assert_eq!(runs_x[2], n(LABELS + plot * 0.6), "3/4 follows on slot 2");
        let checkout_w = attrs(&svg, "<rect class=\"edge\"", "width");
        assert_eq!(checkout_w, [n(plot * 0.1), n(plot * 0.1), n(plot * 0.1)]);
        let y = attrs(&svg, "<rect class=\"run\"", "y");
        assert_eq!(y, [n(TOP + 4.0), n(TOP + ROW + 4.0), n(TOP + ROW + 4.0)]);
        // The lost run: cross-hatched, labelled, no command bar.
        assert!(
            svg.contains(&format!(
                "<rect class=\"edge lost\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"16\" fill=\"url(#timeline-lost)\"/>",
                n(LABELS),
                n(TOP + 2.0 * ROW + 4.0),
                n(plot * 0.2)
            )),
            "{svg}"
        );
        assert!(svg.contains(">4/4 lost</text>"), "{svg}");
        // Axis: 0 to 10 s in steps of 2 s.
        for label in ["0", "2 s", "4 s", "6 s", "8 s", "10 s"] {
            assert!(
                svg.contains(&format!("text-anchor=\"middle\">{label}</text>")),
                "{label}: {svg}"
            );
        }
        // Text alternative.
        assert!(svg.contains("role=\"img\""));
        assert!(
            svg.contains("<desc id=\"timeline-desc\">4 shards, 4 runs on 3 worker slots over 10 s. \
                          Longest run: shard 1/4 on worker-a, 10 s; shortest: shard 3/4, 3 s. 1 lost runs.</desc>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>shard 2/4 on worker-a: failed, checkout 1 s, command 4 s</title>")
        );
        // Marks: the legend and the bars use shapes, not only colour.
        assert!(svg.contains(">passed</text>") && svg.contains(">failed</text>"));
        assert!(svg.contains("class=\"m-failed cross\""));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let runs = [run(
            "1/1",
            "<script>alert(1)</script>\"&'",
            0,
            10,
            100,
            Ending::Running,
        )];
        let svg = svg(&runs).unwrap();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;&#39;"),
            "{svg}"
        );
        assert!(svg.contains(">&lt;script&gt;alert(1…</text>"), "{svg}");
        assert!(svg.contains("class=\"run running\""));
        assert!(svg.contains(">1/1 running</text>"), "{svg}");
    }

    #[test]
    fn no_runs_no_picture() {
        assert_eq!(svg(&[]), None);
    }
}
