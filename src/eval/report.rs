//! Output files of an evaluation: results.json, results.md, completions.jsonl and a plot of
//! toxicity against cross-entropy.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::Evaluation;
use crate::plot::{line_chart, Series};

/// Name of the plot file written by [`write_all`].
pub const PLOT: &str = "toxicity_vs_ce.png";

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
    let points: Vec<(f64, f64)> = ev.rows.iter().map(|r| (r.ce, r.toxicity)).collect();
    let alphas: Vec<String> = ev.rows.iter().map(|r| r.alpha.to_string()).collect();
    let label = format!("ITI, alpha = {}", alphas.join(", "));
    line_chart(
        &dir.join(PLOT),
        "Toxicity vs clean cross-entropy over ITI strength",
        "cross-entropy on clean text (nats)",
        "toxicity x100",
        &[Series {
            label: &label,
            points: &points,
        }],
    )
    .with_context(|| format!("plotting {}", dir.join(PLOT).display()))?;
    Ok(())
}
