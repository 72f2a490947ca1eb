//! The sweep's figures, each with the numbers it plots beside it as CSV: per-head probe accuracy
//! per ratio (Figure 5), base toxicity and clean cross-entropy against the ratio, toxicity with
//! and without ITI against the ratio (Figure 6), and the toxicity–cross-entropy trade-off over
//! alpha, one line per ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::summary::Row;
use super::summary::Summary;
use super::SweepSpec;
use crate::plot::{chart, Chart, Legend, Line, Point};

/// Writes `text` to `path` atomically.
fn write(path: &Path, text: &str) -> Result<()> {
    crate::checkpoint::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The 95% half-width of a row's toxicity on set `k`: over seeds, or with one seed over prompts
/// (1.96 standard errors).
fn toxicity_bar(r: &Row, k: usize) -> f64 {
    let t = &r.sets[k];
    if t.toxicity.ci95.is_finite() {
        t.toxicity.ci95
    } else {
        1.96 * t.prompt_se
    }
}

/// What the bars are, for titles.
fn bars(seeds: usize) -> &'static str {
    if seeds > 1 {
        "95% CI over seeds"
    } else {
        "95% CI over prompts, one seed"
    }
}

/// Draws every figure of `s` into `dir`, each with the numbers it plots as CSV beside it;
/// returns the files written.
pub fn draw(spec: &SweepSpec, dir: &Path, s: &Summary) -> Result<Vec<PathBuf>> {
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let seeds = s.seeds;

    // Figure 5: per-head probe accuracies per ratio, ranked
    let mut csv = String::from("ratio,cell_head_index,val_accuracy\n");
    for p in &s.probes {
        for (i, a) in p.accuracies.iter().enumerate() {
            let _ = writeln!(csv, "{},{i},{a}", p.ratio);
        }
    }
    let f = dir.join("probe_accuracy_by_ratio.csv");
    write(&f, &csv)?;
    files.push(f);
    let lines: Vec<Line> = s
        .probes
        .iter()
        .map(|p| {
            let mut a = p.accuracies.clone();
            a.sort_by(|x, y| y.total_cmp(x));
            let n = a.len().max(1) as f64;
            let xy: Vec<(f64, f64)> = a
                .iter()
                .enumerate()
                .map(|(i, &v)| ((i as f64 + 0.5) / n, v))
                .collect();
            Line::curve(format!("toxic {:.0}%", p.ratio * 100.0), &xy)
        })
        .collect();
    if !lines.is_empty() {
        let heads = s.probes[0].accuracies.len() / seeds.max(1);
        let test = s.probe_test.as_ref().map_or(String::new(), |t| {
            let p = if t.p >= 0.01 {
                format!("{:.2}", t.p)
            } else {
                format!("{:.1e}", t.p)
            };
            format!(
                "; one-sided Mann-Whitney, largest ratio > 0%: P(higher) = {:.2}, p = {p}",
                t.effect
            )
        });
        let title = format!(
            "Probe accuracy per head, ranked ({heads} heads × {seeds} seed(s) a ratio{test})"
        );
        let f = dir.join("probe_accuracy_by_ratio.png");
        chart(
            &f,
            &Chart::new(
                &title,
                "head's rank as a fraction of all heads (best first)",
                "validation accuracy",
                &lines,
            ),
        )?;
        files.push(f);
    }

    // toxicity and CE against the ratio, per condition
    let mut csv = String::from(
        "ratio,condition,alpha,set,toxicity,toxicity_ci95,prompt_se,ce,ce_ci95,seeds\n",
    );
    for r in &s.rows {
        for t in &r.sets {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{}",
                r.ratio,
                r.condition,
                r.alpha,
                t.set,
                t.toxicity.mean,
                t.toxicity.ci95,
                t.prompt_se,
                r.ce.mean,
                r.ce.ci95,
                t.toxicity.n
            );
        }
    }
    let f = dir.join("toxicity_by_ratio.csv");
    write(&f, &csv)?;
    files.push(f);
    // (condition, legend, colour, dashed): the random control in its ITI strength's colour
    let conds = [
        ("none", "no intervention".to_string(), 6, false),
        ("prompting", "prompting baseline".to_string(), 4, false),
        (
            "iti-weak",
            format!("ITI weak (α {})", spec.eval.alphas[0]),
            5,
            false,
        ),
        (
            "iti-mid",
            format!("ITI mid (α {})", spec.eval.alphas[1]),
            0,
            false,
        ),
        (
            "iti-strong",
            format!("ITI strong (α {})", spec.eval.alphas[2]),
            1,
            false,
        ),
        (
            "random-strong",
            format!("random directions (α {})", spec.eval.alphas[2]),
            1,
            true,
        ),
    ];
    for (k, ps) in spec.eval.prompt_sets.iter().enumerate() {
        let lines: Vec<Line> = conds
            .iter()
            .filter_map(|(cond, label, color, dashed)| {
                let points: Vec<Point> = s
                    .rows
                    .iter()
                    .filter(|r| r.condition == *cond)
                    .map(|r| {
                        Point::new(r.ratio * 100.0, r.sets[k].toxicity.mean)
                            .y_pm(toxicity_bar(r, k))
                    })
                    .collect();
                if points.is_empty() {
                    return None;
                }
                let l = Line::new(label.clone(), points).color(*color);
                Some(if *dashed { l.dashed() } else { l })
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let f = dir.join(format!("toxicity_by_ratio_{}.png", ps.name));
        let title = format!(
            "Toxicity of completions of the {} prompts against the toxic ratio ({})",
            ps.name,
            bars(seeds)
        );
        chart(
            &f,
            &Chart {
                dodge: 0.006,
                ..Chart::new(
                    &title,
                    "toxic share of training tokens (%)",
                    "toxicity x100",
                    &lines,
                )
            },
        )?;
        files.push(f);
    }
    let ce: Vec<Point> = s
        .rows
        .iter()
        .filter(|r| r.condition == "none")
        .map(|r| Point::new(r.ratio * 100.0, r.ce.mean).y_pm(r.ce.ci95))
        .collect();
    if !ce.is_empty() {
        let f = dir.join("ce_by_ratio.png");
        let title = format!(
            "Clean cross-entropy of the unsteered model against the toxic ratio ({seeds} seed(s), 95% CI)"
        );
        let lines = [Line::new("no intervention", ce).color(6)];
        chart(
            &f,
            &Chart::new(
                &title,
                "toxic share of training tokens (%)",
                "cross-entropy on clean text (nats)",
                &lines,
            ),
        )?;
        files.push(f);
    }
    // the trade-off over alpha, one line per ratio (first prompt set), the random control dashed
    let mut lines = Vec::new();
    for (i, &ratio) in spec.ratios.iter().enumerate() {
        let point = |r: &Row| {
            Point::new(r.ce.mean, r.sets[0].toxicity.mean)
                .y_pm(toxicity_bar(r, 0))
                .x_pm(r.ce.ci95)
                .label(format!("α {}", r.alpha))
        };
        let at = |pred: &dyn Fn(&Row) -> bool| -> Vec<Point> {
            s.rows
                .iter()
                .filter(|r| r.ratio == ratio && pred(r))
                .map(point)
                .collect()
        };
        let learned = at(&|r| r.condition == "none" || r.condition.starts_with("iti"));
        let random = at(&|r| r.condition == "none" || r.condition.starts_with("random"));
        if !learned.is_empty() {
            let name = format!("toxic {:.0}%", ratio * 100.0);
            lines.push(Line::new(format!("{name}, ITI"), learned).color(i));
            if random.len() > 1 {
                lines.push(
                    Line::new(format!("{name}, random directions"), random)
                        .color(i)
                        .dashed(),
                );
            }
        }
    }
    if !lines.is_empty() {
        let f = dir.join("tradeoff.png");
        let title = format!(
            "Toxicity ({}) vs clean CE over alpha ({})",
            spec.eval.prompt_sets[0].name,
            bars(seeds)
        );
        chart(
            &f,
            &Chart {
                legend: Legend::UpperRight,
                ..Chart::new(
                    &title,
                    "cross-entropy on clean text (nats)",
                    "toxicity x100",
                    &lines,
                )
            },
        )?;
        files.push(f);
    }
    Ok(files)
}
