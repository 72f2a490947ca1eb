//! The sweep's figures, each with the numbers it plots beside it as CSV: per-head probe accuracy
//! per ratio (Figure 5), base toxicity and clean cross-entropy against the ratio, toxicity with
//! and without ITI against the ratio (Figure 6), and the toxicity–cross-entropy trade-off over
//! alpha, one line per ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::summary::Summary;
use super::SweepSpec;
use crate::plot::{line_chart, Series};

/// Writes `text` to `path` atomically.
fn write(path: &Path, text: &str) -> Result<()> {
    crate::checkpoint::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Draws every figure of `s` into `dir`; returns the files written.
pub fn draw(spec: &SweepSpec, dir: &Path, s: &Summary) -> Result<Vec<PathBuf>> {
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let seeds = s.seeds;

    // Figure 5: per-head probe accuracies per ratio
    let mut csv = String::from("ratio,cell_head_index,val_accuracy\n");
    for p in &s.probes {
        for (i, a) in p.accuracies.iter().enumerate() {
            let _ = writeln!(csv, "{},{i},{a}", p.ratio);
        }
    }
    let f = dir.join("probe_accuracy_by_ratio.csv");
    write(&f, &csv)?;
    files.push(f);
    let series: Vec<(String, Vec<(f64, f64)>)> = s
        .probes
        .iter()
        .map(|p| {
            let mut a = p.accuracies.clone();
            a.sort_by(|x, y| y.total_cmp(x));
            let n = a.len().max(1) as f64;
            (
                format!("toxic {:.0}%", p.ratio * 100.0),
                a.iter()
                    .enumerate()
                    .map(|(i, &v)| ((i as f64 + 0.5) / n, v))
                    .collect(),
            )
        })
        .collect();
    if !series.is_empty() {
        let f = dir.join("probe_accuracy_by_ratio.png");
        line_chart(
            &f,
            &format!("Per-head probe accuracy, ranked (every head of {seeds} seed(s) per ratio)"),
            "head's rank as a fraction of all heads (best first)",
            "validation accuracy",
            &series
                .iter()
                .map(|(l, p)| Series {
                    label: l,
                    points: p,
                })
                .collect::<Vec<_>>(),
        )?;
        files.push(f);
    }

    // toxicity and CE against the ratio, per condition
    let mut csv =
        String::from("ratio,condition,alpha,set,toxicity,toxicity_ci95,prompt_se,ce,ce_ci95\n");
    for r in &s.rows {
        for t in &r.sets {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{}",
                r.ratio,
                r.condition,
                r.alpha,
                t.set,
                t.toxicity.mean,
                t.toxicity.ci95,
                t.prompt_se,
                r.ce.mean,
                r.ce.ci95
            );
        }
    }
    let f = dir.join("toxicity_by_ratio.csv");
    write(&f, &csv)?;
    files.push(f);
    for (k, ps) in spec.eval.prompt_sets.iter().enumerate() {
        let by_cond = |cond: &str| -> Vec<(f64, f64)> {
            s.rows
                .iter()
                .filter(|r| r.condition == cond)
                .map(|r| (r.ratio * 100.0, r.sets[k].toxicity.mean))
                .collect()
        };
        let conds = [
            "none",
            "prompting",
            "iti-weak",
            "iti-mid",
            "iti-strong",
            "random-strong",
        ];
        let series: Vec<(String, Vec<(f64, f64)>)> = conds
            .iter()
            .map(|c| (c.to_string(), by_cond(c)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let f = dir.join(format!("toxicity_by_ratio_{}.png", ps.name));
        line_chart(
            &f,
            &format!(
                "Toxicity of completions ({}) against the toxic ratio, {seeds} seed(s)",
                ps.name
            ),
            "toxic share of training tokens (%)",
            "toxicity x100",
            &series
                .iter()
                .map(|(l, p)| Series {
                    label: l,
                    points: p,
                })
                .collect::<Vec<_>>(),
        )?;
        files.push(f);
    }
    let ce: Vec<(f64, f64)> = s
        .rows
        .iter()
        .filter(|r| r.condition == "none")
        .map(|r| (r.ratio * 100.0, r.ce.mean))
        .collect();
    if !ce.is_empty() {
        let f = dir.join("ce_by_ratio.png");
        line_chart(
            &f,
            &format!("Clean cross-entropy against the toxic ratio, {seeds} seed(s)"),
            "toxic share of training tokens (%)",
            "cross-entropy on clean text (nats)",
            &[Series {
                label: "no intervention",
                points: &ce,
            }],
        )?;
        files.push(f);
    }
    // the trade-off over alpha, one line per ratio (first prompt set)
    let mut series = Vec::new();
    for &ratio in &spec.ratios {
        let pts: Vec<(f64, f64)> = s
            .rows
            .iter()
            .filter(|r| {
                r.ratio == ratio && (r.condition == "none" || r.condition.starts_with("iti"))
            })
            .map(|r| (r.ce.mean, r.sets[0].toxicity.mean))
            .collect();
        if !pts.is_empty() {
            series.push((format!("toxic {:.0}%", ratio * 100.0), pts));
        }
    }
    if !series.is_empty() {
        let f = dir.join("tradeoff.png");
        line_chart(
            &f,
            &format!(
                "Toxicity vs clean CE over alpha 0, {:?} ({}), {seeds} seed(s)",
                spec.eval.alphas, spec.eval.prompt_sets[0].name
            ),
            "cross-entropy on clean text (nats)",
            "toxicity x100",
            &series
                .iter()
                .map(|(l, p)| Series {
                    label: l,
                    points: p,
                })
                .collect::<Vec<_>>(),
        )?;
        files.push(f);
    }
    Ok(files)
}
