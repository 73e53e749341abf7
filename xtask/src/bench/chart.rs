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
    // A log axis, symmetric around parity: 0.5× and 2× are as far from 1. Bars run from 1 to the
    // advantage; the rounds' range is a whisker, clipped to the axis.
    let finite = || {
        bars.iter()
            .map(|b| b.advantage)
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let far = finite()
        .map(|v| if v >= 1.0 { v } else { 1.0 / v })
        .fold(2.0f64, f64::max)
        * 2.0;
    let (lo, hi) = (1.0 / far, far);
    let clip = |v: f64| v.clamp(lo, hi);
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n as f64)?;
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
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("engine advantage over the peer, × (log scale; same run; > 1: engine better)")
        .label_style(("sans-serif", 15))
        .draw()?;
    // Ticks at powers of two, drawn by hand (plotters' log axis labels only part of the range).
    let mut tick = 1.0f64;
    while tick / 2.0 >= lo {
        tick /= 2.0;
    }
    while tick <= hi {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(tick, 0.0), (tick, n as f64)],
            RGBColor(220, 220, 220).stroke_width(1),
        )))?;
        let text = if tick >= 1.0 {
            format!("{tick}×")
        } else {
            format!("1/{}", (1.0 / tick).round())
        };
        chart.draw_series(std::iter::once(Text::new(
            text,
            (tick * 1.02, 0.12),
            ("sans-serif", 13),
        )))?;
        tick *= 2.0;
    }
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
                [(1.0, y0), (clip(b.advantage), y1)],
                colour.filled(),
            )))?;
            let yc = (y0 + y1) / 2.0;
            if b.low.is_finite() && b.high.is_finite() {
                // Along the bar's bottom edge, clear of the label.
                let yw = y0 + 0.06;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(clip(b.low), yw), (clip(b.high), yw)],
                    BLACK.stroke_width(2),
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                format!("{:.2}×", b.advantage),
                (clip(b.advantage.max(1.0) * 1.08).min(hi / 1.6), yc + 0.15),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs fonts-dejavu-core (`cargo xtask deps` installs it).
    #[test]
    fn draws_a_png() {
        let path = std::env::temp_dir().join(format!("sbs-chart-{}.png", std::process::id()));
        let bars = vec![
            Bar {
                label: "ICMP echo".into(),
                advantage: 0.37,
                low: 0.25,
                high: 1.5,
            },
            Bar {
                label: "HTTP p99".into(),
                advantage: 3.58,
                low: 0.2,
                high: 29.6,
            },
            Bar {
                label: "no data".into(),
                advantage: f64::NAN,
                low: f64::NAN,
                high: f64::NAN,
            },
        ];
        draw(&path, "test", &bars).unwrap();
        let png = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // 1000 × (120 + 44 × 3) pixels, in the IHDR chunk.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1000);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 252);
    }
}
