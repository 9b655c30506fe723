//! The picture of a run: the timeline (throughput, errors and p99 per
//! bucket, with the faults marked) over the latency distribution (latency
//! at each percentile, on a "nines" scale so p99.9 gets as much room as
//! p50). SVG, drawn with plotters, readable in a browser or on GitHub.

use plotters::prelude::*;

use crate::recorder::Summary;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 760;

/// Percentile (0-100) to the "nines" axis: 90% is 1, 99% is 2, 99.9% is 3.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-7).log10()
}

/// Renders one run as an SVG document.
pub fn run_svg(title: &str, summary: &Summary) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 20))?;
        let (upper, lower) = root.split_vertically(HEIGHT * 11 / 20);
        timeline(&upper, summary)?;
        distribution(&lower, summary)?;
        root.present()?;
    }
    Ok(svg)
}

fn timeline<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &Summary,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let end = s.timeline.len() as f64 * s.bucket_s;
    let end = end.max(s.bucket_s);
    let top_rate = s
        .timeline
        .iter()
        .map(|b| b.throughput.max(b.errors as f64 / s.bucket_s))
        .fold(1.0, f64::max)
        * 1.15;
    let top_p99 = s
        .timeline
        .iter()
        .filter_map(|b| b.p99_ms)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .caption("timeline", ("sans-serif", 16))
        .build_cartesian_2d(0f64..end, 0f64..top_rate)?
        .set_secondary_coord(0f64..end, 0f64..top_p99);
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("requests per second")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 latency, ms")
        .draw()?;
    let mid = |start: f64| start + s.bucket_s / 2.0;
    chart
        .draw_series(LineSeries::new(
            s.timeline.iter().map(|b| (mid(b.start_s), b.throughput)),
            BLUE.stroke_width(2),
        ))?
        .label("completed per second")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            s.timeline
                .iter()
                .map(|b| (mid(b.start_s), b.errors as f64 / s.bucket_s)),
            RED.stroke_width(2),
        ))?
        .label("errors per second")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(
            s.timeline
                .iter()
                .filter_map(|b| b.p99_ms.map(|p| (mid(b.start_s), p))),
            GREEN.stroke_width(2),
        ))?
        .label("p99 latency (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    for (i, marker) in s.markers.iter().enumerate() {
        let grey = BLACK.mix(0.6);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(marker.at_s, 0.0), (marker.at_s, top_rate)],
            grey.stroke_width(1),
        )))?;
        // Stagger the labels so that close markers stay readable.
        let y = top_rate * (0.97 - 0.06 * (i % 5) as f64);
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", marker.label),
            (marker.at_s, y),
            ("sans-serif", 12).into_font().color(&BLACK),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn distribution<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &Summary,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    // The max is drawn half a "nine" past the last percentile.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for &(percentile, ms) in &s.distribution {
        let x = if percentile >= 100.0 {
            points.last().map_or(0.0, |p| p.0) + 0.5
        } else {
            nines(percentile)
        };
        points.push((x, ms.max(0.001)));
    }
    let right = points.last().map_or(1.0, |p| p.0).max(1.0);
    let low = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let high = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let (low, high) = if points.is_empty() {
        (0.1, 1.0)
    } else {
        (low * 0.8, high * 1.25)
    };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .caption("latency distribution (successes)", ("sans-serif", 16))
        .build_cartesian_2d(0f64..right, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log scale)")
        // One label per nine: 0%, 90%, 99%, 99.9%...
        .x_labels(right.floor() as usize + 1)
        .x_label_formatter(&|x| percentile_label(100.0 * (1.0 - 10f64.powf(-x))))
        .y_labels(12)
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().copied(),
        BLUE.stroke_width(2),
    ))?;
    // The headline percentiles, at their exact values from the summary;
    // only those the run has enough samples for (inside the curve).
    let l = &s.latency_ms;
    let marks = [
        (50.0, "p50", l.p50),
        (90.0, "p90", l.p90),
        (99.0, "p99", l.p99),
        (99.9, "p99.9", l.p999),
    ];
    let last_percentile = points.iter().rev().nth(1).map_or(0.0, |p| p.0);
    let mut last_marked = None;
    for (percentile, name, ms) in marks {
        let at = nines(percentile);
        if at <= last_percentile + 1e-9 {
            last_marked = Some(ms);
            chart.draw_series(std::iter::once(Circle::new((at, ms), 4, BLUE.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" {name} {ms:.2} ms"),
                (at, ms),
                ("sans-serif", 12).into_font().color(&BLACK),
            )))?;
        }
    }
    // The max, unless it is the last percentile marked (the labels would
    // overlap).
    if let Some(&(x, ms)) = points.last()
        && last_marked.is_none_or(|marked| (ms - marked).abs() > 0.02 * ms)
    {
        chart.draw_series(std::iter::once(Text::new(
            format!(" max {ms:.2} ms"),
            (x - 0.5, ms),
            ("sans-serif", 12).into_font().color(&BLACK),
        )))?;
    }
    Ok(())
}

/// `99.9%`, `90%`, `0%`: at most three decimals, no trailing zeros.
fn percentile_label(percentile: f64) -> String {
    let text = format!("{percentile:.3}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Outcome, Recorder};
    use std::time::Duration;

    #[test]
    fn the_nines_scale_gives_each_nine_the_same_room() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        assert_eq!(percentile_label(99.9), "99.9%");
        assert_eq!(percentile_label(90.0), "90%");
        assert_eq!(percentile_label(0.0), "0%");
    }

    #[test]
    fn a_run_draws_as_an_svg_with_its_markers() {
        let mut recorder = Recorder::new(Duration::from_millis(500));
        for i in 0..2_000u64 {
            let due = Duration::from_millis(i * 2);
            recorder.record(
                due,
                due + Duration::from_micros(500 + i % 97 * 10),
                &Outcome::Ok,
            );
        }
        recorder.mark(Duration::from_secs(2), "worker-2 killed");
        let svg = run_svg("test run", &recorder.summary(Duration::from_secs(4))).expect("drawn");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("worker-2 killed"));
        assert!(svg.contains("p99"));
    }
}
