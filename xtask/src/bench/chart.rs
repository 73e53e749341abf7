//! The PNG chart of a run: one bar per metric, the engine's advantage over the peer measured in
//! the same run (×; above 1 the engine is better, for latency too), with the spread as a
//! whisker. Drawn with plotters' bitmap backend; text through ab_glyph with DejaVu Sans from
//! fonts-dejavu-core (no fontconfig or freetype).

use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// Where Debian's fonts-dejavu-core puts the font.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One bar: label, advantage (median), advantage range from the rounds' extremes.
pub struct Bar {
    pub label: String,
    pub advantage: f64,
    pub low: f64,
    pub high: f64,
}

pub fn draw(path: &Path, title: &str, bars: &[Bar]) -> Result<()> {
    let font = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT}: install fonts-dejavu-core (cargo xtask deps)"))?;
    // plotters keeps fonts for the process's life.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a font plotters can read"))?;
    let height = 120 + 44 * bars.len().max(1) as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars
        .iter()
        .map(|b| b.high.max(b.advantage))
        .filter(|v| v.is_finite())
        .fold(1.5f64, f64::max)
        * 1.1;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d(0f64..max, 0f64..n as f64)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1) * 2 + 1)
        .y_label_formatter(&|y| {
            // Labels at bar centres (i + 0.5), bar 0 at the top.
            let pos = y - y.floor();
            if (pos - 0.5).abs() > 0.01 {
                return String::new();
            }
            let i = n.saturating_sub(1 + y.floor() as usize);
            labels.get(i).cloned().unwrap_or_default()
        })
        .x_desc("engine advantage over the peer, × (same run; > 1: engine better)")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, b) in bars.iter().enumerate() {
        let y0 = (n - 1 - i) as f64 + 0.2;
        let y1 = y0 + 0.6;
        let colour = if b.advantage >= 1.0 {
            RGBColor(46, 125, 50)
        } else {
            RGBColor(198, 40, 40)
        };
        if b.advantage.is_finite() {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (b.advantage, y1)],
                colour.filled(),
            )))?;
            let yc = (y0 + y1) / 2.0;
            if b.low.is_finite() && b.high.is_finite() {
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(b.low, yc), (b.high, yc)],
                    BLACK.stroke_width(2),
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.2}×", b.advantage),
                (
                    b.advantage.max(b.high).min(max * 0.93) + max * 0.01,
                    yc + 0.15,
                ),
                ("sans-serif", 15),
            )))?;
        }
    }
    // Parity.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0.0), (1.0, n as f64)],
        BLACK.stroke_width(1),
    )))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
