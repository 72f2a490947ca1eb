//! Output files of an evaluation: results.json, results.md, completions.jsonl and a plot of
//! toxicity against cross-entropy.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::AlphaResult;
use super::Evaluation;
use crate::plot::{chart, Chart, Legend, Line, Point};

/// Name of the plot file written by [`write_all`] and [`plot`].
pub const PLOT: &str = "toxicity_vs_ce.png";

/// Name of the file with the plotted numbers, beside [`PLOT`].
pub const PLOT_CSV: &str = "toxicity_vs_ce.csv";

/// The markdown table: one line per alpha.
pub fn markdown_table(ev: &Evaluation) -> String {
    let mut s = String::from(
        "| alpha | toxicity ×100 (± s.e.) | share > 0.5 | CE (nats) | ΔCE % | KL(base‖steered) |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &ev.rows {
        s += &format!(
            "| {} | {:.2} ± {:.2} | {:.3} | {:.4} | {:+.2} | {:.4} |\n",
            r.alpha, r.toxicity, r.toxicity_se, r.share_toxic, r.ce, r.delta_ce_pct, r.kl
        );
    }
    s
}

/// Writes `results.json` (`meta` plus the rows), `results.md` (`description` then the table),
/// `completions.jsonl` and the plot into `dir` (created if missing).
pub fn write_all(
    dir: &Path,
    ev: &Evaluation,
    meta: serde_json::Value,
    description: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::json!({
        "meta": meta,
        "base_ce": ev.base_ce,
        "rows": ev.rows,
    });
    let p = dir.join("results.json");
    std::fs::write(&p, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", p.display()))?;
    let p = dir.join("results.md");
    std::fs::write(&p, format!("{description}\n\n{}", markdown_table(ev)))
        .with_context(|| format!("writing {}", p.display()))?;
    let p = dir.join("completions.jsonl");
    let f = std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for c in &ev.completions {
        writeln!(w, "{}", serde_json::to_string(c)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", p.display()))?;
    let per_alpha = ev.completions.len() / ev.rows.len().max(1);
    plot(dir, &ev.rows, per_alpha, None)?;
    Ok(())
}

/// Draws [`PLOT`] in `dir` and writes its numbers to [`PLOT_CSV`]: mean toxicity (±1 standard
/// error over the `per_alpha` completions of each alpha) against clean cross-entropy, one point
/// per alpha and labelled with it, for the learned directions and, when given, for the
/// random-direction control (dashed, on the same axes).
pub fn plot(
    dir: &Path,
    rows: &[AlphaResult],
    per_alpha: usize,
    control: Option<&[AlphaResult]>,
) -> Result<()> {
    let mut csv = String::from("directions,alpha,toxicity_x100,toxicity_se,ce,delta_ce_pct,kl\n");
    let mut lines = Vec::new();
    for (name, rows, dashed) in [("learned", rows, false)]
        .into_iter()
        .chain(control.map(|c| ("random", c, true)))
    {
        for r in rows {
            csv += &format!(
                "{name},{},{},{},{},{},{}\n",
                r.alpha, r.toxicity, r.toxicity_se, r.ce, r.delta_ce_pct, r.kl
            );
        }
        let points = rows
            .iter()
            .map(|r| {
                Point::new(r.ce, r.toxicity)
                    .y_pm(r.toxicity_se)
                    .label(format!("α {}", r.alpha))
            })
            .collect();
        let label = if dashed {
            "random directions (control), same heads and sigmas"
        } else {
            "learned directions (ITI)"
        };
        let mut line = Line::new(label, points);
        if dashed {
            line = line.dashed();
        }
        lines.push(line);
    }
    let p = dir.join(PLOT_CSV);
    std::fs::write(&p, csv).with_context(|| format!("writing {}", p.display()))?;
    let title = format!(
        "Toxicity (mean ± s.e., {per_alpha} completions per alpha) vs clean cross-entropy over ITI strength"
    );
    let path = dir.join(PLOT);
    chart(
        &path,
        &Chart {
            legend: Legend::UpperRight,
            ..Chart::new(
                &title,
                "cross-entropy on clean text (nats)",
                "toxicity x100",
                &lines,
            )
        },
    )
    .with_context(|| format!("plotting {}", path.display()))
}
