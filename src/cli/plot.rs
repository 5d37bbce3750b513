//! `dlm profile --plot`: the latency grid as an SVG chart (plotters), drawn by the command, not
//! the library.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use dlm::profile::CaseResult;

/// Latency (p50 per request) against step budget, one line per precision and batch, as SVG.
pub fn plot_latency(results: &[CaseResult], path: &Path) -> anyhow::Result<()> {
    draw_latency(results, path)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: cannot draw the plot", path.display()))
}

/// plotters' errors are generic over the backend: kept as their messages.
fn draw_latency(results: &[CaseResult], path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max_steps = results.iter().map(|r| r.steps).max().unwrap_or(1) as f64;
    let max_ms = results.iter().map(|r| r.request_ms.p95).fold(1e-3, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("dlm: latency per request against step budget", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_steps * 1.05, 0.0..max_ms * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("denoising steps")
        .y_desc("ms per request (p50; bars to p95)")
        .draw()
        .map_err(|e| e.to_string())?;
    let mut lines: BTreeMap<(String, usize, String), Vec<&CaseResult>> = BTreeMap::new();
    for r in results {
        lines.entry((r.precision.clone(), r.batch, r.controls.clone())).or_default().push(r);
    }
    for (k, ((precision, batch, controls), mut cases)) in lines.into_iter().enumerate() {
        cases.sort_by_key(|c| c.steps);
        let color = Palette99::pick(k).to_rgba();
        let points: Vec<(f64, f64)> = cases.iter().map(|c| (c.steps as f64, c.request_ms.p50)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{precision}, batch {batch}, {controls}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| e.to_string())?;
        let whiskers = cases.iter().map(|c| {
            let x = c.steps as f64;
            PathElement::new(vec![(x, c.request_ms.p50), (x, c.request_ms.p95)], color.stroke_width(1))
        });
        chart.draw_series(whiskers).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
