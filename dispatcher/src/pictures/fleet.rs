//! Queue and fleet: jobs waiting in the jobs queue and busy slots over the
//! last hour (from the dispatcher's samples, `fleet.rs`), with the slots in
//! all as a dashed ceiling. Jobs waiting while every slot is busy is the
//! sign to add workers.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::svg::{axis_time, n, nice_step, open, value_axis};
use crate::fleet::Sample;

const WIDTH: f64 = 720.0;
/// Room for the count axis's labels.
const LEFT: f64 = 44.0;
const RIGHT: f64 = 16.0;
/// The legend's baseline, then the chart.
const LEGEND_Y: f64 = 16.0;
const TOP: f64 = 30.0;
const CHART: f64 = 160.0;
/// The time axis's labels.
const BOTTOM: f64 = 24.0;
/// Rows of the table beside the picture: one per this many minutes.
const TABLE_MINUTES: i64 = 5;

/// The picture of `samples` (oldest first) up to `now`, or `None` without
/// any. The time axis runs from the first sample (at most an hour ago).
pub(crate) fn svg(samples: &[Sample], now: DateTime<Utc>) -> Option<String> {
    let first = samples.first()?.at;
    let span = ((now - first).num_milliseconds() as f64).max(1000.0);
    let highest = samples
        .iter()
        .map(|s| s.jobs_waiting.unwrap_or(0).max(s.slots).max(s.busy_slots))
        .max()
        .unwrap_or(0);
    let step = nice_step(f64::from(highest.max(1)), 4.0, false).max(1.0);
    let top = (f64::from(highest) / step).ceil().max(1.0) * step;
    let bottom = TOP + CHART;

    let mut out = String::new();
    let desc = describe(samples, span)?;
    open(
        &mut out,
        "fleet",
        WIDTH,
        bottom + BOTTOM,
        "Queue and fleet",
        &desc,
    );
    out.push_str(
        "<defs><pattern id=\"fleet-busy\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
         patternTransform=\"rotate(45)\"><line class=\"hatch\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\"/></pattern></defs>",
    );
    legend(&mut out);
    value_axis(
        &mut out,
        (LEFT, WIDTH - RIGHT),
        (bottom, CHART),
        (top, step),
        |tick| format!("{tick}"),
    );
    time_axis(&mut out, span, bottom);
    let plot = WIDTH - LEFT - RIGHT;
    let chart = Chart {
        x: &|at: DateTime<Utc>| LEFT + (at - first).num_milliseconds() as f64 / span * plot,
        y: &|count: u32| bottom - f64::from(count) / top * CHART,
        bottom,
    };
    series(&mut out, samples, now, &chart);
    out.push_str("</svg>");
    Some(out)
}

/// Where a time and a count are drawn.
struct Chart<'a> {
    x: &'a dyn Fn(DateTime<Utc>) -> f64,
    y: &'a dyn Fn(u32) -> f64,
    bottom: f64,
}

/// The description: now, and the peaks of the window.
fn describe(samples: &[Sample], span: f64) -> Option<String> {
    let last = samples.last()?;
    let mut desc = format!(
        "{} samples over the last {}. Now: {} jobs waiting, {} of {} slots busy on {} workers.",
        samples.len(),
        axis_time(span),
        last.jobs_waiting
            .map_or_else(|| "unknown".to_owned(), |w| w.to_string()),
        last.busy_slots,
        last.slots,
        last.workers
    );
    if let Some(peak) = samples.iter().filter_map(|s| s.jobs_waiting).max() {
        let peak_busy = samples.iter().map(|s| s.busy_slots).max().unwrap_or(0);
        let _ = write!(
            desc,
            " At most {peak} jobs waiting and {peak_busy} slots busy."
        );
    }
    Some(desc)
}

/// A line, a hatched area, a dashed line, each with its words.
fn legend(out: &mut String) {
    let _ = write!(
        out,
        "<path class=\"waiting\" d=\"M{l} 12h18\"/><text class=\"label\" x=\"{}\" y=\"{LEGEND_Y}\">jobs waiting</text>\
         <rect class=\"busy\" x=\"{}\" y=\"7\" width=\"18\" height=\"10\" fill=\"url(#fleet-busy)\"/>\
         <text class=\"label\" x=\"{}\" y=\"{LEGEND_Y}\">busy slots</text>\
         <path class=\"slots\" d=\"M{} 12h18\"/><text class=\"label\" x=\"{}\" y=\"{LEGEND_Y}\">slots in all</text>",
        n(LEFT + 22.0),
        n(LEFT + 120.0),
        n(LEFT + 142.0),
        n(LEFT + 230.0),
        n(LEFT + 252.0),
        l = n(LEFT),
    );
}

/// The time axis over `span` ms: how long ago, "now" at the right.
fn time_axis(out: &mut String, span: f64, bottom: f64) {
    let plot = WIDTH - LEFT - RIGHT;
    let step = nice_step(span, 6.0, true);
    let mut ago = 0.0;
    while ago <= span + 0.5 {
        let tx = n(LEFT + (span - ago) / span * plot);
        let (label, anchor) = if ago == 0.0 {
            ("now".to_owned(), "end")
        } else {
            (format!("−{}", axis_time(ago)), "middle")
        };
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{tx}\" y1=\"{}\" x2=\"{tx}\" y2=\"{}\"/>\
             <text class=\"label axis\" x=\"{tx}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>",
            n(TOP),
            n(bottom),
            n(bottom + 16.0),
        );
        ago += step;
    }
}

/// The three series as step lines (each sample holds until the next one,
/// or now): busy slots a hatched area, slots a dashed line, jobs waiting a
/// solid line broken where the broker could not be asked.
fn series(out: &mut String, samples: &[Sample], now: DateTime<Utc>, chart: &Chart<'_>) {
    let (x, y) = (chart.x, chart.y);
    let end_of = |i: usize| samples.get(i + 1).map_or(now, |next| next.at);
    let start = samples.first().map_or(now, |s| s.at);
    let mut busy = format!("M{} {}", n(x(start)), n(chart.bottom));
    let mut slots = String::new();
    let mut waiting = String::new();
    let mut waiting_pen = false;
    for (i, sample) in samples.iter().enumerate() {
        let (x0, x1) = (n(x(sample.at)), n(x(end_of(i))));
        let _ = write!(busy, "L{x0} {y}L{x1} {y}", y = n(y(sample.busy_slots)));
        let _ = write!(
            slots,
            "{}{x0} {y}L{x1} {y}",
            if i == 0 { "M" } else { "L" },
            y = n(y(sample.slots))
        );
        match sample.jobs_waiting {
            Some(count) => {
                let _ = write!(
                    waiting,
                    "{}{x0} {y}L{x1} {y}",
                    if waiting_pen { "L" } else { "M" },
                    y = n(y(count))
                );
                waiting_pen = true;
            }
            None => waiting_pen = false,
        }
    }
    let _ = write!(busy, "L{} {}Z", n(x(now)), n(chart.bottom));
    let _ = write!(
        out,
        "<path class=\"busy\" d=\"{busy}\" fill=\"url(#fleet-busy)\"/>\
         <path class=\"slots\" d=\"{slots}\"/>"
    );
    if !waiting.is_empty() {
        let _ = write!(out, "<path class=\"waiting\" d=\"{waiting}\"/>");
    }
}

/// A row of the table that goes with the picture (its text alternative):
/// the highest figures of a few minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Row {
    /// "12:05–12:10 UTC".
    pub during: String,
    pub jobs_waiting: Option<u32>,
    pub busy_slots: u32,
    pub slots: u32,
}

/// The samples in rows of five minutes, newest first.
pub(crate) fn table(samples: &[Sample]) -> Vec<Row> {
    let mut rows: Vec<(i64, Row)> = Vec::new();
    for sample in samples {
        let bucket = sample.at.timestamp().div_euclid(TABLE_MINUTES * 60);
        if rows.last().is_none_or(|(b, _)| *b != bucket) {
            let from =
                DateTime::from_timestamp(bucket * TABLE_MINUTES * 60, 0).unwrap_or(sample.at);
            let to = from + chrono::TimeDelta::minutes(TABLE_MINUTES);
            rows.push((
                bucket,
                Row {
                    during: format!("{}–{} UTC", from.format("%H:%M"), to.format("%H:%M")),
                    jobs_waiting: None,
                    busy_slots: 0,
                    slots: 0,
                },
            ));
        }
        if let Some((_, row)) = rows.last_mut() {
            row.jobs_waiting = row.jobs_waiting.max(sample.jobs_waiting);
            row.busy_slots = row.busy_slots.max(sample.busy_slots);
            row.slots = row.slots.max(sample.slots);
        }
    }
    rows.into_iter().rev().map(|(_, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        // 1_800_000_000 is 08:00:00 UTC.
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn sample(seconds: i64, waiting: Option<u32>, busy: u32, slots: u32) -> Sample {
        Sample {
            at: at(seconds),
            jobs_waiting: waiting,
            busy_slots: busy,
            slots,
            workers: slots / 2,
        }
    }

    #[test]
    fn steps_follow_the_samples() {
        // 40 s of samples every 10 s, drawn up to "now" at 50 s.
        let samples = [
            sample(0, Some(0), 0, 4),
            sample(10, Some(6), 4, 4),
            sample(20, None, 4, 4),
            sample(30, Some(2), 2, 8),
            sample(40, Some(0), 1, 8),
        ];
        let svg = svg(&samples, at(50)).unwrap();
        // 8 is the top (steps of 2, y = 30); 50 s over 660 units: 13.2 a second.
        let (y6, y4, y0) = (70.0, 110.0, 190.0);
        let x = |s: f64| n(LEFT + s * 13.2);
        assert!(
            svg.contains(&format!(
                "<path class=\"waiting\" d=\"M{} {y0}L{} {y0}L{} {y6}L{} {y6}M{} 150L{} 150L{} {y0}L{} {y0}\"/>",
                x(0.0), x(10.0), x(10.0), x(20.0), x(30.0), x(40.0), x(40.0), x(50.0)
            )),
            "the line breaks where the broker could not be asked: {svg}"
        );
        assert!(svg.contains(&format!(
            "<path class=\"slots\" d=\"M{} {y4}L{} {y4}L",
            x(0.0),
            x(10.0)
        )));
        // Busy slots: a hatched area closed along the bottom at "now".
        assert!(
            svg.contains(&format!(
                "L{x50} 170L{x50} {y0}Z\" fill=\"url(#fleet-busy)\"",
                x50 = x(50.0)
            )),
            "{svg}"
        );
        for label in [
            ">0</text>",
            ">2</text>",
            ">8</text>",
            ">now</text>",
            ">−10 s</text>",
            ">−50 s</text>",
        ] {
            assert!(svg.contains(label), "{label}: {svg}");
        }
        assert!(svg.contains(
            "<desc id=\"fleet-desc\">5 samples over the last 50 s. Now: 0 jobs waiting, 1 of 8 slots busy \
             on 4 workers. At most 6 jobs waiting and 4 slots busy.</desc>"
        ), "{svg}");
        assert!(svg.contains(">jobs waiting</text>") && svg.contains(">busy slots</text>"));
        assert_eq!(super::svg(&[], at(0)), None);
    }

    #[test]
    fn the_table_has_five_minute_rows_newest_first() {
        let samples = [
            sample(0, Some(3), 1, 2),
            sample(200, Some(5), 2, 2),
            sample(400, None, 0, 4),
        ];
        let rows = table(&samples);
        assert_eq!(
            rows,
            [
                Row {
                    during: "08:05–08:10 UTC".into(),
                    jobs_waiting: None,
                    busy_slots: 0,
                    slots: 4
                },
                Row {
                    during: "08:00–08:05 UTC".into(),
                    jobs_waiting: Some(5),
                    busy_slots: 2,
                    slots: 2
                },
            ]
        );
    }
}
