//! PNG charts (plotters with an embedded DejaVu Sans font, so they render on any machine).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        // A failure here would only cost the text of the chart, never the run.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// One named line of `(x, y)` points.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Points in x order.
    pub points: &'a [(f64, f64)],
}

/// Draws line series on shared axes into a PNG (`width`×`height` pixels).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Err(anyhow!(
            "chart {}: no finite points to draw",
            path.display()
        ));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            })
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
        for (i, s) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), c.stroke_width(2)))?
                .label(s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// One named series of points with error bars: `(x, y, y_low, y_high)`, in x order.
pub struct ErrorSeries<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Points and the ends of their error bars.
    pub points: &'a [(f64, f64, f64, f64)],
}

/// A horizontal reference line across the whole chart (drawn dashed, labelled in the legend).
pub struct RefLine<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Its height.
    pub y: f64,
}

/// A chart of series with point markers and vertical error bars, plus reference lines.
pub struct ErrorChart<'a> {
    /// Chart title.
    pub title: &'a str,
    /// Label of the horizontal axis.
    pub x_label: &'a str,
    /// Label of the vertical axis.
    pub y_label: &'a str,
    /// The series, each joined by a thin line through its points.
    pub series: &'a [ErrorSeries<'a>],
    /// Horizontal reference lines.
    pub ref_lines: &'a [RefLine<'a>],
    /// Vertical range; `None`: the points', bars' and lines' own range, padded by 5%.
    pub y_range: Option<(f64, f64)>,
    /// Horizontal offset between neighbouring series, as a fraction of the x range, so that
    /// bars at the same x do not hide each other (0: none; the series are centred on the true x).
    pub dodge: f64,
}

/// Draws an [`ErrorChart`] into a PNG (1000×620 pixels): each series a colour, circles at the
/// points, error bars with caps, reference lines dashed in grey tones.
pub fn errorbar_chart(path: &Path, spec: &ErrorChart) -> Result<()> {
    register_font();
    let finite = |v: &f64| v.is_finite();
    let xs: Vec<f64> = spec
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(finite)
        .collect();
    if xs.is_empty() {
        return Err(anyhow!(
            "chart {}: no finite points to draw",
            path.display()
        ));
    }
    let (mut x0, mut x1) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let xpad = ((x1 - x0) * 0.04).max(1e-3);
    (x0, x1) = (x0 - xpad, x1 + xpad);
    let (y0, y1) = spec.y_range.unwrap_or_else(|| {
        let ys = spec
            .series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [p.1, p.2, p.3]))
            .chain(spec.ref_lines.iter().map(|l| l.y))
            .filter(finite);
        let (a, b) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((b - a) * 0.05).max(1e-3);
        (a - pad, b + pad)
    });
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(spec.title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let greys = [
            RGBColor(40, 40, 40),
            RGBColor(120, 120, 120),
            RGBColor(170, 120, 40),
            RGBColor(90, 140, 90),
        ];
        for (i, l) in spec.ref_lines.iter().enumerate() {
            let c = greys[i % greys.len()];
            chart
                .draw_series(DashedLineSeries::new(
                    [(x0, l.y), (x1, l.y)],
                    8,
                    5,
                    c.stroke_width(2),
                ))?
                .label(l.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
        let cap = (x1 - x0) * 0.006;
        let n = spec.series.len() as f64;
        for (i, s) in spec.series.iter().enumerate() {
            let c = colors[i % colors.len()];
            let shift = (i as f64 - (n - 1.0) / 2.0) * spec.dodge * (x1 - x0);
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 + shift, p.1)).collect();
            chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(1)))?;
            chart.draw_series(s.points.iter().flat_map(|&(x, _, lo, hi)| {
                let x = x + shift;
                [
                    PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(2)),
                    PathElement::new(vec![(x - cap, lo), (x + cap, lo)], c.stroke_width(2)),
                    PathElement::new(vec![(x - cap, hi), (x + cap, hi)], c.stroke_width(2)),
                ]
            }))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))?
                .label(s.label)
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// A grid of values drawn as coloured cells: `values[row][col]`, row 0 at the bottom.
pub struct Heatmap<'a> {
    /// Chart title.
    pub title: &'a str,
    /// Label of the horizontal axis (columns).
    pub x_label: &'a str,
    /// Label of the vertical axis (rows).
    pub y_label: &'a str,
    /// Label of the colour scale.
    pub legend: &'a str,
    /// `values[row][col]`; every row the same length. Non-finite values are drawn grey.
    pub values: &'a [Vec<f64>],
    /// Value range of the colour scale `(low, high)`; `None`: the values' own range.
    pub range: Option<(f64, f64)>,
    /// Cells `(row, col)` to outline (e.g. the heads chosen for an intervention).
    pub marked: &'a [(usize, usize)],
    /// Legend text for the outlined cells (drawn under the colour scale when any are marked).
    pub marked_label: &'a str,
}

/// Viridis, sampled at 9 points and interpolated linearly; `t` in [0, 1].
pub fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Draws a heatmap with integer-labelled axes, a colour-scale bar on the right and, when cells
/// are large enough, each cell's value written in it.
pub fn heatmap(path: &Path, spec: &Heatmap) -> Result<()> {
    register_font();
    let rows = spec.values.len();
    let cols = spec.values.first().map_or(0, |r| r.len());
    if rows == 0 || cols == 0 || spec.values.iter().any(|r| r.len() != cols) {
        return Err(anyhow!(
            "heatmap {}: expected a non-empty grid with rows of equal length",
            path.display()
        ));
    }
    let (mut lo, mut hi) = spec.range.unwrap_or_else(|| {
        let finite = spec.values.iter().flatten().filter(|v| v.is_finite());
        finite.fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)))
    });
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let norm = |v: f64| (v - lo) / (hi - lo);
    let cell = (640 / rows.max(cols)).clamp(14, 64) as u32;
    let (plot_w, plot_h) = (cols as u32 * cell, rows as u32 * cell);
    let (y_area, x_area, bar_w, top) = (80u32, 60u32, 150u32, 60u32);
    // Wide enough for the title (about 11 px a character at 22 px).
    let title_w = spec.title.chars().count() as u32 * 11 + 40;
    let width = (plot_w + y_area + bar_w + 40).max(520).max(title_w);
    let height = (plot_h + x_area + top + 20).max(360);
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let root = root.titled(spec.title, ("sans-serif", 22))?;
        let (left, right) = root.split_horizontally(width - bar_w);
        let mut chart = ChartBuilder::on(&left)
            .margin(10)
            .x_label_area_size(x_area)
            .y_label_area_size(y_area)
            .build_cartesian_2d(-0.5..cols as f64 - 0.5, -0.5..rows as f64 - 0.5)?;
        let int_label = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 {
                format!("{:.0}", v)
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(cols.min(32) + 1)
            .y_labels(rows.min(32) + 1)
            .x_label_formatter(&int_label)
            .y_label_formatter(&int_label)
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let grey = RGBColor(200, 200, 200);
        chart.draw_series(spec.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                let color = if v.is_finite() {
                    viridis(norm(v))
                } else {
                    grey
                };
                Rectangle::new(
                    [
                        (c as f64 - 0.5, r as f64 - 0.5),
                        (c as f64 + 0.5, r as f64 + 0.5),
                    ],
                    color.filled(),
                )
            })
        }))?;
        if cell >= 34 {
            let size = (cell as f64 * 0.3).clamp(10.0, 16.0);
            chart.draw_series(spec.values.iter().enumerate().flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_finite())
                    .map(move |(c, &v)| {
                        let ink = if norm(v) > 0.6 { BLACK } else { WHITE };
                        let style = ("sans-serif", size).into_font().color(&ink).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        );
                        Text::new(format!("{v:.2}"), (c as f64, r as f64), style)
                    })
            }))?;
        }
        let outline = RGBColor(230, 30, 30);
        chart.draw_series(
            spec.marked
                .iter()
                .filter(|&&(r, c)| r < rows && c < cols)
                .map(|&(r, c)| {
                    let inset = 0.06;
                    Rectangle::new(
                        [
                            (c as f64 - 0.5 + inset, r as f64 - 0.5 + inset),
                            (c as f64 + 0.5 - inset, r as f64 + 0.5 - inset),
                        ],
                        outline.stroke_width(if cell >= 24 { 3 } else { 2 }),
                    )
                }),
        )?;
        // Colour scale: a vertical bar from lo to hi with its own axis.
        let mut bar = ChartBuilder::on(&right)
            .margin_top(10)
            .margin_bottom(x_area + 10)
            .margin_right(10)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..1.0, lo..hi)?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.2}"))
            .y_desc(spec.legend)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        let steps = 120;
        bar.draw_series((0..steps).map(|i| {
            let a = lo + (hi - lo) * i as f64 / steps as f64;
            let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
            Rectangle::new([(0.0, a), (1.0, b)], viridis(norm((a + b) / 2.0)).filled())
        }))?;
        if !spec.marked.is_empty() {
            let (_, rh) = right.dim_in_pixel();
            let y = rh as i32 - x_area as i32 + 14;
            right.draw(&Rectangle::new(
                [(20, y), (38, y + 18)],
                outline.stroke_width(3),
            ))?;
            right.draw(&Text::new(
                spec.marked_label.to_string(),
                (44, y + 2),
                ("sans-serif", 14),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let a: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 9.0 - (i as f64).sqrt()))
            .collect();
        let b: Vec<(f64, f64)> = (0..50)
            .step_by(10)
            .map(|i| (i as f64, 9.2 - (i as f64).sqrt()))
            .collect();
        line_chart(
            &p,
            "loss",
            "step",
            "loss (nats)",
            &[
                Series {
                    label: "train",
                    points: &a,
                },
                Series {
                    label: "val",
                    points: &b,
                },
            ],
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(line_chart(
            &p,
            "x",
            "x",
            "y",
            &[Series {
                label: "e",
                points: &[]
            }]
        )
        .is_err());
    }
    #[test]
    fn errorbar_chart_writes_a_png_and_refuses_empty_series() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.png");
        let pts = [(0.1, 0.9, 0.85, 0.95), (0.3, 0.8, 0.78, 0.83)];
        let spec = ErrorChart {
            title: "t",
            x_label: "x",
            y_label: "y",
            series: &[ErrorSeries {
                label: "a",
                points: &pts,
            }],
            ref_lines: &[RefLine {
                label: "bound",
                y: 0.5,
            }],
            y_range: None,
            dodge: 0.01,
        };
        errorbar_chart(&p, &spec).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[1..4], b"PNG");
        let empty = ErrorChart {
            series: &[ErrorSeries {
                label: "a",
                points: &[],
            }],
            ..spec
        };
        assert!(errorbar_chart(&p, &empty).is_err());
    }

    #[test]
    fn heatmap_writes_a_png_and_refuses_ragged_grids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.png");
        let values = vec![vec![0.5, 0.9, f64::NAN], vec![0.7, 1.0, 0.6]];
        let spec = Heatmap {
            title: "accuracy",
            x_label: "head",
            y_label: "layer",
            legend: "validation accuracy",
            values: &values,
            range: Some((0.5, 1.0)),
            marked: &[(1, 1)],
            marked_label: "top 1",
        };
        heatmap(&p, &spec).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[1..4], b"PNG");
        let ragged = vec![vec![0.5, 0.9], vec![0.7]];
        let err = heatmap(
            &p,
            &Heatmap {
                values: &ragged,
                ..spec
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("rows of equal length"), "{err}");
    }

    #[test]
    fn viridis_ends_and_middle() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(0.5), RGBColor(33, 144, 141));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
    }
}
