//! Usage-over-time charts drawn on the server as inline SVG: pure functions from samples
//! to markup, so they are tested without a browser.

use std::collections::BTreeMap;
use std::fmt::Write;

/// One reading of a feature: seats available (`count`) and in use at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: i64,
    pub count: i64,
    pub in_use: i64,
}

pub const WIDTH: f64 = 640.0;
pub const HEIGHT: f64 = 280.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
/// Room for the time labels (time and date on two lines), the axis' name and the legend.
const BOTTOM: f64 = 76.0;

/// Maps `v` from the domain `[d0, d1]` onto the range `[r0, r1]`; a zero-width domain maps
/// to the middle of the range.
pub fn scale(v: f64, d0: f64, d1: f64, r0: f64, r1: f64) -> f64 {
    if (d1 - d0).abs() < f64::EPSILON {
        return (r0 + r1) / 2.0;
    }
    r0 + (v - d0) / (d1 - d0) * (r1 - r0)
}

/// A round axis maximum at or above `max` and its tick step (1, 2 or 5 times a power of
/// ten), with at most five steps.
pub fn nice_axis(max: i64) -> (i64, i64) {
    let max = max.max(1);
    let mut magnitude = 1i64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if max <= step * 5 {
                let top = (max + step - 1) / step * step;
                return (top, step);
            }
        }
        magnitude = magnitude.saturating_mul(10);
    }
}

/// Merges samples taken at the same time (both members of a pair report) by taking the
/// larger figures, and sorts them by time.
pub fn merge(samples: impl IntoIterator<Item = Sample>) -> Vec<Sample> {
    let mut by_time: BTreeMap<i64, Sample> = BTreeMap::new();
    for s in samples {
        by_time
            .entry(s.at)
            .and_modify(|e| {
                e.count = e.count.max(s.count);
                e.in_use = e.in_use.max(s.in_use);
            })
            .or_insert(s);
    }
    by_time.into_values().collect()
}

/// The latest reading of each feature and version (both members of a pair reporting at
/// once: the larger figures), by feature.
pub fn merge_latest(
    readings: &[crate::store::usage::UsagePoint],
) -> Vec<crate::store::usage::UsagePoint> {
    let mut by_key: BTreeMap<(&str, &str), crate::store::usage::UsagePoint> = BTreeMap::new();
    for r in readings {
        by_key
            .entry((&r.feature, &r.version))
            .and_modify(|e| {
                if r.at > e.at {
                    *e = r.clone();
                } else if r.at == e.at {
                    e.count = e.count.max(r.count);
                    e.in_use = e.in_use.max(r.in_use);
                }
            })
            .or_insert_with(|| r.clone());
    }
    by_key.into_values().collect()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A step line through the samples (a reading holds until the next one).
fn step_path(
    samples: &[Sample],
    value: impl Fn(&Sample) -> i64,
    x: impl Fn(i64) -> f64,
    y: impl Fn(i64) -> f64,
) -> String {
    let mut d = String::new();
    for (i, s) in samples.iter().enumerate() {
        let (px, py) = (x(s.at), y(value(s)));
        if i == 0 {
            let _ = write!(d, "M{px:.1},{py:.1}");
        } else {
            let _ = write!(d, " H{px:.1} V{py:.1}");
        }
    }
    d
}

/// A time axis label: `18:05` over `Nov 27` for windows of up to two days (every label
/// with its date, so a window across midnight reads right), `Nov 27` for longer ones.
fn time_label(t: i64, span: i64) -> (String, Option<String>) {
    let at = time::OffsetDateTime::from_unix_timestamp(t).ok();
    let fmt = |f: &[time::format_description::BorrowedFormatItem<'_>]| {
        at.and_then(|d| d.format(f).ok()).unwrap_or_default()
    };
    let date = fmt(time::macros::format_description!(
        "[month repr:short] [day padding:none]"
    ));
    if span <= 2 * 86_400 {
        (
            fmt(time::macros::format_description!("[hour]:[minute]")),
            Some(date),
        )
    } else {
        (date, None)
    }
}

/// `Nov 27, 18:05 UTC`, for the sentence of a chart with one reading.
fn moment(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[month repr:short] [day padding:none], [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// The chart of one feature over `[from, to]`: axes with labels, a dashed line for the
/// seats available and a solid one for those in use, a `<title>` and a `<desc>` that
/// sums it up in words. `id` must be unique on the page.
pub fn render(
    id: &str,
    feature: &str,
    window_label: &str,
    samples: &[Sample],
    from: i64,
    to: i64,
) -> String {
    let peak_count = samples.iter().map(|s| s.count).max().unwrap_or(0);
    let peak_use = samples.iter().map(|s| s.in_use).max().unwrap_or(0);
    let (top, step) = nice_axis(peak_count.max(peak_use));
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let x = |t: i64| scale(t as f64, from as f64, to as f64, x0, x1).clamp(x0, x1);
    let y = |v: i64| scale(v as f64, 0.0, top as f64, y0, y1);
    let id = escape(id);
    let feature = escape(feature);
    let window_label = escape(window_label);

    let desc = match samples.last() {
        Some(last) => format!(
            "{n} readings. Latest: {} of {} seats in use. Peak in use: {peak_use}; most seats available: {peak_count}.",
            last.in_use,
            last.count,
            n = samples.len()
        ),
        None => "No readings in this period.".to_owned(),
    };

    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-title {id}-desc"><title id="{id}-title">Usage of {feature} over the last {window_label}</title><desc id="{id}-desc">{desc}</desc>"#
    );
    // Horizontal grid and y labels.
    let mut v = 0;
    while v <= top {
        let py = y(v);
        let _ = write!(
            svg,
            r##"<line class="grid" x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#d8dde3" stroke-width="1"/><text class="tick" x="{tx}" y="{ty:.1}" text-anchor="end" font-size="12" fill="#444">{v}</text>"##,
            tx = x0 - 6.0,
            ty = py + 4.0
        );
        v += step;
    }
    // X labels: five evenly spaced times.
    let span = to - from;
    for i in 0..=4 {
        let t = from + span * i / 4;
        let px = x(t);
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let (label, date) = time_label(t, span);
        let date = date.map_or_else(String::new, |d| {
            format!(r#"<tspan x="{px:.1}" dy="14">{d}</tspan>"#)
        });
        let _ = write!(
            svg,
            r##"<line class="tick-mark" x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{ty}" stroke="#444" stroke-width="1"/><text class="tick time-label" x="{px:.1}" y="{ly}" text-anchor="{anchor}" font-size="12" fill="#444">{label}{date}</text>"##,
            ty = y0 + 5.0,
            ly = y0 + 18.0,
        );
    }
    // Axes.
    let _ = write!(
        svg,
        r##"<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444" stroke-width="1.5"/><line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444" stroke-width="1.5"/><text class="axis-label" x="{cx}" y="{ay}" text-anchor="middle" font-size="12" fill="#444">Time (UTC)</text><text class="axis-label" x="12" y="{cy}" text-anchor="middle" font-size="12" fill="#444" transform="rotate(-90 12 {cy})">Seats</text>"##,
        cx = (x0 + x1) / 2.0,
        ay = y0 + 50.0,
        cy = (y0 + y1) / 2.0,
    );
    if let [one] = samples {
        // One reading draws no line: it is said in words, in the chart's middle.
        let _ = write!(
            svg,
            r##"<text class="one-reading" x="{cx}" y="{cy}" text-anchor="middle" font-size="14" fill="#222" stroke="#fff" stroke-width="4" paint-order="stroke">One reading in this period: {} of {} seats in use</text><text class="one-reading" x="{cx}" y="{cy2}" text-anchor="middle" font-size="14" fill="#222" stroke="#fff" stroke-width="4" paint-order="stroke">at {}</text>"##,
            one.in_use,
            one.count,
            moment(one.at),
            cx = (x0 + x1) / 2.0,
            cy = (y0 + y1) / 2.0 - 8.0,
            cy2 = (y0 + y1) / 2.0 + 12.0,
        );
    } else if samples.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{cx}" y="{cy}" text-anchor="middle" font-size="14" fill="#444">No readings in this period</text>"##,
            cx = (x0 + x1) / 2.0,
            cy = (y0 + y1) / 2.0,
        );
    } else {
        let count = step_path(samples, |s| s.count, x, y);
        let used = step_path(samples, |s| s.in_use, x, y);
        let _ = write!(
            svg,
            r##"<path class="line-count" d="{count}" fill="none" stroke="#1f5fa8" stroke-width="2" stroke-dasharray="6 4"/><path class="line-in-use" d="{used}" fill="none" stroke="#c0392b" stroke-width="2.5"/>"##
        );
        // Few readings: mark each (many make a line dense enough to see them all).
        if samples.len() <= 60 {
            for s in samples {
                let _ = write!(
                    svg,
                    r##"<circle class="reading" cx="{:.1}" cy="{:.1}" r="3.5" fill="#c0392b"/>"##,
                    x(s.at),
                    y(s.in_use)
                );
            }
        }
    }
    // Legend.
    let ly = HEIGHT - 8.0;
    let _ = write!(
        svg,
        r##"<g class="legend" font-size="12" fill="#222"><line x1="{a}" y1="{lm}" x2="{b}" y2="{lm}" stroke="#1f5fa8" stroke-width="2" stroke-dasharray="6 4"/><text x="{c}" y="{ly}">Seats available</text><line x1="{d}" y1="{lm}" x2="{e}" y2="{lm}" stroke="#c0392b" stroke-width="2.5"/><text x="{f}" y="{ly}">In use</text></g></svg>"##,
        a = x0,
        b = x0 + 24.0,
        c = x0 + 30.0,
        d = x0 + 150.0,
        e = x0 + 174.0,
        f = x0 + 180.0,
        lm = ly - 4.0,
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling() {
        assert_eq!(scale(5.0, 0.0, 10.0, 0.0, 100.0), 50.0);
        // Inverted range (SVG y grows downwards).
        assert_eq!(scale(10.0, 0.0, 10.0, 200.0, 0.0), 0.0);
        assert_eq!(scale(0.0, 0.0, 10.0, 200.0, 0.0), 200.0);
        // Zero-width domain: the middle.
        assert_eq!(scale(3.0, 3.0, 3.0, 0.0, 100.0), 50.0);
    }

    #[test]
    fn nice_axes() {
        assert_eq!(nice_axis(0), (1, 1));
        assert_eq!(nice_axis(3), (3, 1));
        assert_eq!(nice_axis(5), (5, 1));
        assert_eq!(nice_axis(7), (8, 2));
        assert_eq!(nice_axis(10), (10, 2));
        assert_eq!(nice_axis(23), (25, 5));
        assert_eq!(nice_axis(40), (40, 10));
        assert_eq!(nice_axis(999), (1000, 200));
    }

    #[test]
    fn merging_takes_the_larger_reading_per_time() {
        let s = |at, count, in_use| Sample { at, count, in_use };
        assert_eq!(
            merge([s(20, 10, 1), s(10, 10, 2), s(20, 10, 3)]),
            vec![s(10, 10, 2), s(20, 10, 3)]
        );
    }

    #[test]
    fn chart_has_accessible_text_axes_and_both_lines() {
        let s = [
            Sample {
                at: 1000,
                count: 10,
                in_use: 2,
            },
            Sample {
                at: 2000,
                count: 10,
                in_use: 7,
            },
        ];
        let svg = render("c1", "cad<1>", "day", &s, 0, 4000);
        assert!(svg.starts_with("<svg"));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains(r#"aria-labelledby="c1-title c1-desc""#));
        assert!(
            svg.contains("<title id=\"c1-title\">Usage of cad&lt;1&gt; over the last day</title>")
        );
        assert!(svg.contains("Latest: 7 of 10 seats in use"));
        assert!(svg.contains("Peak in use: 7"));
        assert!(svg.contains("class=\"line-count\""));
        assert!(svg.contains("class=\"line-in-use\""));
        // Axis max 10 at the top margin, 0 at the bottom; x from 0..4000 over 48..624.
        assert!(svg.contains(r#"d="M192.0,16.0 H336.0 V16.0""#), "{svg}");
        assert!(svg.contains(r#"d="M192.0,166.4 H336.0 V72.4""#), "{svg}");
        assert!(!svg.contains("cad<1>"));
    }

    #[test]
    fn time_labels_carry_their_date_and_one_reading_is_said_in_words() {
        // 2026-11-27 23:00 to 2026-11-28 01:00 UTC: across midnight, each label dated.
        let from = 1_795_820_400;
        let reading = Sample {
            at: from + 3600,
            count: 10,
            in_use: 3,
        };
        let svg = render("c3", "cad", "hour", &[reading], from, from + 7200);
        assert!(svg.contains(">23:00<tspan"), "{svg}");
        assert!(svg.contains(">Nov 27</tspan>"), "{svg}");
        assert!(svg.contains(">Nov 28</tspan>"), "{svg}");
        assert!(
            svg.contains("One reading in this period: 3 of 10 seats in use"),
            "{svg}"
        );
        assert!(svg.contains("at Nov 28, 00:00 UTC"), "{svg}");
        // No line and no dot for a single reading.
        assert!(
            !svg.contains("line-in-use") && !svg.contains("<circle"),
            "{svg}"
        );
        // A week: dates only.
        let svg = render("c4", "cad", "week", &[], from, from + 7 * 86_400);
        assert!(
            svg.contains(">Nov 27</text>") && !svg.contains("<tspan"),
            "{svg}"
        );
    }

    #[test]
    fn the_latest_reading_of_each_feature_takes_the_larger_figures_of_a_pair() {
        use crate::store::usage::UsagePoint;
        let p = |feature: &str, at, count, in_use| UsagePoint {
            feature: feature.into(),
            version: "1.0".into(),
            at,
            count,
            in_use,
        };
        assert_eq!(
            merge_latest(&[
                p("cad", 5, 10, 2),
                p("cad", 5, 10, 3),
                p("sim", 4, 2, 1),
                p("cad", 3, 10, 9)
            ]),
            vec![p("cad", 5, 10, 3), p("sim", 4, 2, 1)]
        );
    }

    #[test]
    fn empty_chart_says_so() {
        let svg = render("c2", "sim", "hour", &[], 0, 3600);
        assert!(svg.contains("No readings in this period"));
        assert!(!svg.contains("line-in-use"));
    }
}
