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

/// One point of a [`Line`]: its position, optional error bars (the ends of each bar, in data
/// units) and an optional text written beside it (e.g. the alpha of a trade-off point).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    /// Horizontal position.
    pub x: f64,
    /// Vertical position.
    pub y: f64,
    /// Vertical error bar `(low, high)`.
    pub y_bar: Option<(f64, f64)>,
    /// Horizontal error bar `(low, high)`.
    pub x_bar: Option<(f64, f64)>,
    /// Text written just above and to the right of the point.
    pub label: Option<String>,
}

impl Point {
    /// A point with no bars and no label.
    pub fn new(x: f64, y: f64) -> Point {
        Point {
            x,
            y,
            ..Point::default()
        }
    }

    /// With a vertical bar `y ± half` (no bar when `half` is not finite).
    pub fn y_pm(mut self, half: f64) -> Point {
        if half.is_finite() {
            self.y_bar = Some((self.y - half, self.y + half));
        }
        self
    }

    /// With a vertical bar from `low` to `high`.
    pub fn y_range(mut self, low: f64, high: f64) -> Point {
        self.y_bar = Some((low, high));
        self
    }

    /// With a horizontal bar `x ± half` (no bar when `half` is not finite).
    pub fn x_pm(mut self, half: f64) -> Point {
        if half.is_finite() {
            self.x_bar = Some((self.x - half, self.x + half));
        }
        self
    }

    /// With a text beside it.
    pub fn label(mut self, text: impl Into<String>) -> Point {
        self.label = Some(text.into());
        self
    }
}

/// One named series: its points joined in the order given.
#[derive(Clone, Debug, Default)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// The points.
    pub points: Vec<Point>,
    /// Drawn dashed (e.g. a control beside the measurement it controls).
    pub dashed: bool,
    /// A filled circle at every point (leave off for dense curves such as a loss per step).
    pub markers: bool,
    /// Colour, an index into the palette; `None`: the line's own position in the chart.
    pub color: Option<usize>,
}

impl Line {
    /// A solid line with markers, coloured by its position.
    pub fn new(label: impl Into<String>, points: Vec<Point>) -> Line {
        Line {
            label: label.into(),
            points,
            markers: true,
            ..Line::default()
        }
    }

    /// From plain `(x, y)` pairs, with no markers.
    pub fn curve(label: impl Into<String>, xy: &[(f64, f64)]) -> Line {
        Line {
            label: label.into(),
            points: xy.iter().map(|&(x, y)| Point::new(x, y)).collect(),
            ..Line::default()
        }
    }

    /// Drawn dashed.
    pub fn dashed(mut self) -> Line {
        self.dashed = true;
        self
    }

    /// In palette colour `i`.
    pub fn color(mut self, i: usize) -> Line {
        self.color = Some(i);
        self
    }
}

/// A horizontal reference line across the whole chart (drawn dashed, labelled in the legend).
pub struct RefLine<'a> {
    /// Legend label.
    pub label: &'a str,
    /// Its height.
    pub y: f64,
}

/// Where the legend sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Legend {
    /// Top right corner.
    #[default]
    UpperRight,
    /// Top left corner.
    UpperLeft,
    /// Bottom right corner.
    LowerRight,
    /// Bottom left corner.
    LowerLeft,
}

/// A chart of [`Line`]s on shared axes, with reference lines.
pub struct Chart<'a> {
    /// Chart title: what was measured, on how many samples.
    pub title: &'a str,
    /// Label of the horizontal axis.
    pub x_label: &'a str,
    /// Label of the vertical axis.
    pub y_label: &'a str,
    /// The series.
    pub lines: &'a [Line],
    /// Horizontal reference lines.
    pub ref_lines: &'a [RefLine<'a>],
    /// Vertical range; `None`: the points', bars' and lines' own range, padded by 5%.
    pub y_range: Option<(f64, f64)>,
    /// Horizontal offset between neighbouring lines, as a fraction of the x range, so that bars
    /// at the same x do not hide each other (0: none; the lines are centred on the true x).
    pub dodge: f64,
    /// Where the legend sits.
    pub legend: Legend,
}

impl<'a> Chart<'a> {
    /// A chart of `lines` with no reference lines, its own range, no dodge, legend top right.
    pub fn new(title: &'a str, x_label: &'a str, y_label: &'a str, lines: &'a [Line]) -> Self {
        Chart {
            title,
            x_label,
            y_label,
            lines,
            ref_lines: &[],
            y_range: None,
            dodge: 0.0,
            legend: Legend::UpperRight,
        }
    }
}

/// The line colours: Okabe and Ito's palette (distinguishable with the common colour-vision
/// deficiencies), yellow left out (too faint on white).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// Tick text for `v` on an axis spanning `span`: as many decimals as the span needs.
fn tick(v: f64, span: f64) -> String {
    let decimals = if span > 0.0 {
        (1.0 - span.log10().floor()).clamp(0.0, 5.0) as usize
    } else {
        2
    };
    if v.fract() == 0.0 && span >= 5.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// Draws a [`Chart`] into a PNG (1000×620 pixels): each line a palette colour, optional circles
/// at the points, error bars with caps, point labels, reference lines dashed in grey tones.
/// An error when no line has a finite point.
pub fn chart(path: &Path, spec: &Chart) -> Result<()> {
    register_font();
    let finite = |v: &f64| v.is_finite();
    let pts = || spec.lines.iter().flat_map(|l| l.points.iter());
    let xs: Vec<f64> = pts()
        .flat_map(|p| {
            let (a, b) = p.x_bar.unwrap_or((p.x, p.x));
            [p.x, a, b]
        })
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
        let ys = pts()
            .flat_map(|p| {
                let (a, b) = p.y_bar.unwrap_or((p.y, p.y));
                [p.y, a, b]
            })
            .chain(spec.ref_lines.iter().map(|l| l.y))
            .filter(finite);
        let (a, b) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((b - a) * 0.05).max(1e-3);
        (a - pad, b + pad)
    });
    let (xspan, yspan) = (x1 - x0, y1 - y0);
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    // The largest title size up to 20 px whose text fits the width (long titles shrink, down to
    // 12 px, rather than run off the image).
    let title_px = (12..=20)
        .rev()
        .find(|&px| {
            root.estimate_text_size(spec.title, &("sans-serif", px).into_text_style(&root))
                .is_ok_and(|(w, _)| w + 32 <= 1000)
        })
        .unwrap_or(12);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(spec.title, ("sans-serif", title_px))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(spec.x_label)
            .y_desc(spec.y_label)
            .x_label_formatter(&|x| tick(*x, xspan))
            .y_label_formatter(&|y| tick(*y, yspan))
            .light_line_style(RGBColor(246, 246, 246))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let greys = [
            RGBColor(30, 30, 30),
            RGBColor(110, 110, 110),
            RGBColor(165, 165, 165),
            RGBColor(200, 200, 200),
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
        let cap = xspan * 0.006;
        let ycap = yspan * 0.010;
        let n = spec.lines.len() as f64;
        for (i, l) in spec.lines.iter().enumerate() {
            let c = PALETTE[l.color.unwrap_or(i) % PALETTE.len()];
            let shift = (i as f64 - (n - 1.0) / 2.0) * spec.dodge * xspan;
            let at: Vec<(f64, f64)> = l
                .points
                .iter()
                .filter(|p| p.x.is_finite() && p.y.is_finite())
                .map(|p| (p.x + shift, p.y))
                .collect();
            let width = if l.markers { 1 } else { 2 };
            let series = if l.dashed {
                chart.draw_series(DashedLineSeries::new(
                    at.iter().copied(),
                    9,
                    6,
                    c.stroke_width(2),
                ))?
            } else {
                chart.draw_series(LineSeries::new(at.iter().copied(), c.stroke_width(width)))?
            };
            let (markers, dashed) = (l.markers, l.dashed);
            series.label(l.label.as_str()).legend(move |(x, y)| {
                let (a, b) = if dashed { (7, 13) } else { (20, 0) };
                let dot: ShapeStyle = if markers {
                    c.filled()
                } else {
                    c.mix(0.0).filled()
                };
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (a, 0)], c.stroke_width(2))
                    + PathElement::new(vec![(b, 0), (20, 0)], c.stroke_width(2))
                    + Circle::new((10, 0), 4, dot)
            });
            chart.draw_series(l.points.iter().flat_map(|p| {
                let x = p.x + shift;
                let mut e = Vec::new();
                if let Some((lo, hi)) = p.y_bar.filter(|b| b.0.is_finite() && b.1.is_finite()) {
                    e.push(PathElement::new(vec![(x, lo), (x, hi)], c.stroke_width(2)));
                    e.push(PathElement::new(
                        vec![(x - cap, lo), (x + cap, lo)],
                        c.stroke_width(2),
                    ));
                    e.push(PathElement::new(
                        vec![(x - cap, hi), (x + cap, hi)],
                        c.stroke_width(2),
                    ));
                }
                if let Some((lo, hi)) = p.x_bar.filter(|b| b.0.is_finite() && b.1.is_finite()) {
                    let (lo, hi) = (lo + shift, hi + shift);
                    let y = p.y;
                    e.push(PathElement::new(vec![(lo, y), (hi, y)], c.stroke_width(2)));
                    e.push(PathElement::new(
                        vec![(lo, y - ycap), (lo, y + ycap)],
                        c.stroke_width(2),
                    ));
                    e.push(PathElement::new(
                        vec![(hi, y - ycap), (hi, y + ycap)],
                        c.stroke_width(2),
                    ));
                }
                e
            }))?;
            if l.markers {
                chart.draw_series(at.iter().map(|&p| Circle::new(p, 5, c.filled())))?;
            }
            chart.draw_series(
                l.points
                    .iter()
                    .filter(|p| p.x.is_finite() && p.y.is_finite())
                    .filter_map(|p| {
                        let text = p.label.as_ref()?;
                        Some(
                            EmptyElement::at((p.x + shift, p.y))
                                + Text::new(
                                    text.clone(),
                                    (7, -18),
                                    ("sans-serif", 14).into_font().color(&c),
                                ),
                        )
                    }),
            )?;
        }
        let pos = match spec.legend {
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
            Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
        };
        chart
            .configure_series_labels()
            .position(pos)
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
    fn chart_writes_a_png_and_refuses_a_chart_with_nothing_to_draw() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let curve: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 9.0 - (i as f64).sqrt()))
            .collect();
        let lines = [
            Line::curve("train", &curve),
            Line::new(
                "measured",
                vec![
                    Point::new(1.0, 8.0).y_pm(0.3).x_pm(0.5).label("α 4"),
                    Point::new(20.0, 5.0).y_range(4.5, 5.2),
                ],
            ),
            Line::new("control", vec![Point::new(1.0, 8.5), Point::new(20.0, 8.4)])
                .dashed()
                .color(1),
        ];
        let spec = Chart {
            ref_lines: &[RefLine {
                label: "bound",
                y: 4.0,
            }],
            dodge: 0.01,
            legend: Legend::LowerLeft,
            ..Chart::new("t", "x", "y", &lines)
        };
        chart(&p, &spec).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[1..4], b"PNG");
        let empty = [Line::new("e", vec![Point::new(f64::NAN, 1.0)])];
        assert!(chart(&p, &Chart::new("x", "x", "y", &empty)).is_err());
        assert!(chart(&p, &Chart::new("x", "x", "y", &[])).is_err());
    }

    #[test]
    fn ticks_carry_the_decimals_the_span_needs() {
        assert_eq!(tick(1000.0, 900.0), "1000");
        assert_eq!(tick(4.5, 1.0), "4.5");
        assert_eq!(tick(0.861, 0.05), "0.861");
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
