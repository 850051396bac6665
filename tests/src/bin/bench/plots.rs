//! SVG plots of the benchmarks (plotters), written under `docs/bench/`.

use plotters::prelude::*;

/// One phase's curves.
pub struct Series {
    pub name: String,
    /// (seconds, writes answered but not applied).
    pub backlog: Vec<(f64, usize)>,
    /// (percentile, latency in ms).
    pub percentiles: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// `docs/bench/e2e-<label>-backlog.svg` and `docs/bench/e2e-<label>-latency.svg`.
pub fn e2e(label: &str, series: &[Series]) -> anyhow::Result<()> {
    std::fs::create_dir_all("docs/bench")?;
    let path = format!("docs/bench/e2e-{label}-backlog.svg");
    {
        let root = SVGBackend::new(&path, (800, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series
            .iter()
            .flat_map(|s| s.backlog.iter().map(|b| b.0))
            .fold(1.0, f64::max);
        let y_max = series
            .iter()
            .flat_map(|s| s.backlog.iter().map(|b| b.1))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("App ({label} store): writes answered, not yet applied"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0usize..y_max + y_max / 10 + 1)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the phase started")
            .y_desc("backlog (writes)")
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.backlog.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()?;
    }
    let path = format!("docs/bench/e2e-{label}-latency.svg");
    {
        let root = SVGBackend::new(&path, (800, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let y_max = series
            .iter()
            .flat_map(|s| s.percentiles.iter().map(|p| p.1))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("App ({label} store): REST response → applied, by percentile"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (0usize..6usize).into_segmented(),
                (0.1f64..y_max * 1.5).log_scale(),
            )?;
        let labels = ["p50", "p75", "p90", "p95", "p99", "p99.9", "max"];
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("ms (log)")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => labels.get(*i).copied().unwrap_or("").to_owned(),
                _ => String::new(),
            })
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = s
                .percentiles
                .iter()
                .enumerate()
                .map(|(j, p)| (SegmentValue::CenterOf(j), p.1.max(0.1)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(s.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()?;
    }
    println!("plots: docs/bench/e2e-{label}-backlog.svg, docs/bench/e2e-{label}-latency.svg");
    Ok(())
}
