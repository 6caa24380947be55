//! The scaling curves of `fleet-bench hollow`: each figure against the cluster size (log x
//! axis) beside its target, as one SVG. Drawn with plotters' SVG backend alone: text is SVG
//! text, laid out with plotters' own estimate of its size, so no font library is needed.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use crate::hollow::{active_target, Figures};

/// One line of a panel.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// A target (dashed) rather than a measured figure.
    target: bool,
}

struct Panel {
    title: &'static str,
    unit: &'static str,
    series: Vec<Series>,
}

const MEASURED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TARGET: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SECOND: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const THIRD: RGBColor = RGBColor(0x94, 0x67, 0xbd);

fn measured(name: &str, rows: &[Figures], y: impl Fn(&Figures) -> f64, color: RGBColor) -> Series {
    Series {
        name: name.into(),
        points: rows.iter().map(|f| (f.machines as f64, y(f))).collect(),
        color,
        target: false,
    }
}

fn target(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
        color: TARGET,
        target: true,
    }
}

fn panels(rows: &[Figures], ttl: Duration) -> Vec<Panel> {
    let at_every_size = |y: f64| rows.iter().map(|f| (f.machines as f64, y)).collect();
    let active_targets: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|f| Some((f.machines as f64, active_target(f.machines)?)))
        .collect();
    let mut active = vec![measured(
        "measured: written → all active",
        rows,
        |f| f.active,
        MEASURED,
    )];
    if !active_targets.is_empty() {
        active.push(target("issue 10", active_targets));
    }
    vec![
        Panel {
            title: "10 units per machine placed and active",
            unit: "s",
            series: active,
        },
        Panel {
            title: "idle etcd messages per second",
            unit: "messages/s",
            series: vec![
                measured("measured", rows, |f| f.idle_rate, MEASURED),
                target(
                    "keepalives: machines ÷ (ttl/3)",
                    rows.iter()
                        .map(|f| (f.machines as f64, f.keepalive_rate))
                        .collect(),
                ),
            ],
        },
        Panel {
            title: "machine powered off: its units active elsewhere",
            unit: "s",
            series: vec![
                measured("measured", rows, |f| f.kill, MEASURED),
                target("agent_ttl + 2 s", at_every_size(ttl.as_secs_f64() + 2.0)),
            ],
        },
        Panel {
            title: "new engine leader: new units placed",
            unit: "s",
            series: vec![
                measured("measured", rows, |f| f.new_leader, MEASURED),
                target("issue 10 (at 100,000 units)", at_every_size(5.0)),
            ],
        },
        Panel {
            title: "one event: unit written → placed",
            unit: "ms",
            series: vec![measured(
                "measured (median of 5)",
                rows,
                |f| f.one_event_ms,
                MEASURED,
            )],
        },
        Panel {
            title: "memory",
            unit: "MB",
            series: vec![
                measured("etcd database", rows, |f| f.db_mb, MEASURED),
                measured("engine process RSS", rows, |f| f.engine_rss, SECOND),
                measured("simulation process RSS", rows, |f| f.sim_rss, THIRD),
            ],
        },
    ]
}

/// A log axis' label: powers of ten only (the axis has many more label positions).
fn power_of_ten(x: &f64) -> String {
    let exponent = x.log10();
    if (exponent - exponent.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

/// Draws the curves of `rows` (at least one) into an SVG file at `path`.
pub fn hollow_svg(path: &Path, rows: &[Figures], ttl: Duration) -> Result<(), String> {
    let sizes = rows.iter().map(|f| f.machines as f64);
    let smallest = sizes.clone().fold(f64::INFINITY, f64::min);
    let largest = sizes.fold(0.0, f64::max);
    if !(smallest.is_finite() && largest > 0.0) {
        return Err("no figures to draw".into());
    }
    let x_range = (smallest / 2.0)..(largest * 2.0);
    let root = SVGBackend::new(path, (1500, 900)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            "fleet on hollow (simulated) machines: real engine and etcd, against cluster size",
            ("sans-serif", 22),
        )
        .map_err(e)?;
    for (area, panel) in root.split_evenly((2, 3)).iter().zip(panels(rows, ttl)) {
        let y_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .fold(0.0, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.25 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(panel.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x_range.clone().log_scale(), 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("machines (log scale)")
            .y_desc(panel.unit)
            .x_label_formatter(&power_of_ten)
            .light_line_style(WHITE)
            .draw()
            .map_err(e)?;
        for series in &panel.series {
            let points: Vec<(f64, f64)> = series
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            let color = series.color;
            let style = color.stroke_width(2);
            let drawn = if series.target {
                chart
                    .draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
                    .map_err(e)?
            } else {
                chart
                    .draw_series(LineSeries::new(points.clone(), style))
                    .map_err(e)?
            };
            drawn.label(series.name.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
