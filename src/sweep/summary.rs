//! The sweep's summary: every condition of every ratio averaged over seeds, in Table 1's layout
//! (`summary.md`) and in full (`summary.json`), plus the probe-accuracy comparison of Figure 5.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::cell::{read_results, CellResults, EvalResult, ProbeResult, TrainResult};
use super::stats::{estimate, mann_whitney_greater, Estimate, RankTest};
use super::SweepSpec;
use crate::eval::AlphaResult;

/// The conditions of Table 1, in its order.
pub const CONDITIONS: &[&str] = &[
    "none",
    "prompting",
    "iti-weak",
    "iti-mid",
    "iti-strong",
    "random-weak",
    "random-mid",
    "random-strong",
];

/// One prompt set's toxicity in one (ratio, condition) row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetToxicity {
    /// The set.
    pub set: String,
    /// Mean toxicity × 100 over seeds, with its 95% interval over seeds.
    pub toxicity: Estimate,
    /// Mean over seeds of each cell's standard error over prompts (× 100).
    pub prompt_se: f64,
    /// Share of completions above 0.5, mean over seeds.
    pub share_toxic: f64,
}

/// One row of the table: a ratio under one condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Toxic ratio.
    pub ratio: f64,
    /// One of [`CONDITIONS`].
    pub condition: String,
    /// The ITI strength (0 for none and prompting).
    pub alpha: f64,
    /// Per prompt set.
    pub sets: Vec<SetToxicity>,
    /// Clean cross-entropy (nats), mean over seeds with its 95% interval.
    pub ce: Estimate,
    /// KL(base ‖ steered), mean over seeds.
    pub kl: Estimate,
}

/// Figure 5's numbers for one ratio: the probe accuracy of every head of every seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// Toxic ratio.
    pub ratio: f64,
    /// Validation accuracy of every head, pooled over seeds.
    pub accuracies: Vec<f64>,
    /// Mean accuracy of each seed's best 10% of heads (at least one), over seeds.
    pub top_decile: Estimate,
    /// Best head's accuracy, over seeds.
    pub best: Estimate,
}

/// What training did at one ratio.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRow {
    /// Toxic ratio.
    pub ratio: f64,
    /// Optimizer steps of each cell.
    pub steps: u64,
    /// Clean and toxic tokens drawn, mean over seeds.
    pub clean_tokens: f64,
    /// Toxic tokens drawn, mean over seeds.
    pub toxic_tokens: f64,
    /// Validation loss at the end, over seeds.
    pub val_loss: Estimate,
    /// Training seconds per cell, mean over seeds.
    pub seconds: f64,
}

/// Everything the summary holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What scored the completions: the offline scorer, or an imported file.
    pub toxicity_from: String,
    /// Cells finished, of all.
    pub cells_done: usize,
    /// Cells in the sweep.
    pub cells: usize,
    /// Seeds per ratio.
    pub seeds: usize,
    /// The table's rows, ratio-major, in [`CONDITIONS`] order.
    pub rows: Vec<Row>,
    /// Figure 5.
    pub probes: Vec<ProbeRow>,
    /// Mann–Whitney test that the largest ratio's head accuracies exceed ratio 0's (pooled over
    /// seeds), when both are done.
    pub probe_test: Option<RankTest>,
    /// Training per ratio.
    pub train: Vec<TrainRow>,
    /// Capability benchmarks per ratio (when the sweep scores them).
    pub benchmarks: Vec<BenchRow>,
}

/// One benchmark at one ratio, over seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Toxic ratio.
    pub ratio: f64,
    /// The benchmark.
    pub name: String,
    /// Items per cell.
    pub n_items: usize,
    /// Accuracy, mean over seeds with its 95% interval.
    pub acc: Estimate,
    /// Mean over seeds of each cell's standard error over items.
    pub item_se: f64,
    /// A uniform random guess's expected accuracy.
    pub chance: f64,
}

fn condition_result<'a>(e: &'a EvalResult, set: usize, condition: &str) -> Option<&'a AlphaResult> {
    let s = e.sets.get(set)?;
    match condition {
        "none" => Some(&s.none),
        "prompting" => Some(&s.prompting),
        "iti-weak" => s.iti.first(),
        "iti-mid" => s.iti.get(1),
        "iti-strong" => s.iti.get(2),
        "random-weak" => s.control.first(),
        "random-mid" => s.control.get(1),
        "random-strong" => s.control.get(2),
        _ => None,
    }
}

/// Collects every finished cell of the sweep in `out` into a [`Summary`]; with `scores`, each
/// cell's toxicity is recomputed from those imported scores ([`crate::eval::import`]).
pub fn summarise(
    spec: &SweepSpec,
    out: &Path,
    scores: Option<(&std::collections::HashMap<String, f64>, &str)>,
) -> Result<Summary> {
    let mut per_ratio: Vec<Vec<CellResults>> = Vec::new();
    let mut done = 0;
    for &r in &spec.ratios {
        let mut v = Vec::new();
        for c in spec.cells.iter().filter(|c| c.ratio == r) {
            let dir = SweepSpec::cell_dir(out, c);
            let mut res = read_results(&dir)?;
            if let (Some((scores, _)), Some(e)) = (scores, &res.eval) {
                res.eval = Some(
                    super::cell::rescore_eval(e, &c.name(), &dir, scores)
                        .with_context(|| format!("rescoring cell {}", c.name()))?,
                );
            }
            done += res.eval.is_some() as usize;
            v.push(res);
        }
        per_ratio.push(v);
    }
    let mut rows = Vec::new();
    let mut probes = Vec::new();
    let mut train = Vec::new();
    let mut benchmarks = Vec::new();
    for (ri, &ratio) in spec.ratios.iter().enumerate() {
        let cells = &per_ratio[ri];
        let evals: Vec<&EvalResult> = cells.iter().filter_map(|c| c.eval.as_ref()).collect();
        for &cond in CONDITIONS {
            let first = evals.first().and_then(|e| condition_result(e, 0, cond));
            let Some(first) = first else { continue };
            let alpha = if cond == "none" || cond == "prompting" {
                0.0
            } else {
                first.alpha
            };
            let sets = spec
                .eval
                .prompt_sets
                .iter()
                .enumerate()
                .map(|(k, ps)| {
                    let rs: Vec<&AlphaResult> = evals
                        .iter()
                        .filter_map(|e| condition_result(e, k, cond))
                        .collect();
                    let tox: Vec<f64> = rs.iter().map(|r| r.toxicity).collect();
                    SetToxicity {
                        set: ps.name.clone(),
                        toxicity: estimate(&tox),
                        prompt_se: super::stats::mean(
                            &rs.iter().map(|r| r.toxicity_se).collect::<Vec<_>>(),
                        ),
                        share_toxic: super::stats::mean(
                            &rs.iter().map(|r| r.share_toxic).collect::<Vec<_>>(),
                        ),
                    }
                })
                .collect();
            let rs: Vec<&AlphaResult> = evals
                .iter()
                .filter_map(|e| condition_result(e, 0, cond))
                .collect();
            rows.push(Row {
                ratio,
                condition: cond.to_string(),
                alpha,
                sets,
                ce: estimate(&rs.iter().map(|r| r.ce).collect::<Vec<_>>()),
                kl: estimate(&rs.iter().map(|r| r.kl).collect::<Vec<_>>()),
            });
        }
        let probe_results: Vec<&ProbeResult> =
            cells.iter().filter_map(|c| c.probe.as_ref()).collect();
        if !probe_results.is_empty() {
            let mut tops = Vec::new();
            let mut bests = Vec::new();
            let mut all = Vec::new();
            for p in &probe_results {
                let mut acc: Vec<f64> = p.heads.iter().map(|h| h.val_accuracy).collect();
                acc.sort_by(|a, b| b.total_cmp(a));
                let k = (acc.len() / 10).max(1);
                tops.push(super::stats::mean(&acc[..k]));
                bests.push(acc[0]);
                all.extend(acc);
            }
            probes.push(ProbeRow {
                ratio,
                accuracies: all,
                top_decile: estimate(&tops),
                best: estimate(&bests),
            });
        }
        let benches: Vec<&Vec<super::cell::BenchScore>> =
            cells.iter().filter_map(|c| c.bench.as_ref()).collect();
        if let Some(first) = benches.first() {
            for (k, b) in first.iter().enumerate() {
                let accs: Vec<f64> = benches
                    .iter()
                    .filter_map(|v| v.get(k))
                    .map(|s| s.acc.0)
                    .collect();
                let ses: Vec<f64> = benches
                    .iter()
                    .filter_map(|v| v.get(k))
                    .map(|s| s.acc.1)
                    .collect();
                benchmarks.push(BenchRow {
                    ratio,
                    name: b.name.clone(),
                    n_items: b.n_items,
                    acc: estimate(&accs),
                    item_se: super::stats::mean(&ses),
                    chance: b.chance,
                });
            }
        }
        let trains: Vec<&TrainResult> = cells.iter().filter_map(|c| c.train.as_ref()).collect();
        if !trains.is_empty() {
            let tokens = |name: &str| {
                super::stats::mean(
                    &trains
                        .iter()
                        .map(|t| {
                            t.tokens_drawn
                                .iter()
                                .filter(|(n, _)| n == name)
                                .map(|(_, k)| *k as f64)
                                .sum::<f64>()
                                + 0.0
                        })
                        .collect::<Vec<_>>(),
                )
            };
            train.push(TrainRow {
                ratio,
                steps: trains[0].steps,
                clean_tokens: tokens("clean"),
                toxic_tokens: tokens("toxic"),
                val_loss: estimate(&trains.iter().map(|t| t.val_last as f64).collect::<Vec<_>>()),
                seconds: super::stats::mean(&trains.iter().map(|t| t.seconds).collect::<Vec<_>>()),
            });
        }
    }
    let probe_test = match (probes.first(), probes.last()) {
        (Some(a), Some(b)) if probes.len() > 1 && a.ratio == spec.ratios[0] => {
            mann_whitney_greater(&a.accuracies, &b.accuracies)
        }
        _ => None,
    };
    Ok(Summary {
        toxicity_from: scores.map_or_else(
            || "the offline scorer (a bag-of-words classifier), on the completion only".to_string(),
            |(_, from)| format!("scores imported from {from}"),
        ),
        cells_done: done,
        cells: spec.cells.len(),
        seeds: spec.seeds.len(),
        rows,
        probes,
        probe_test,
        train,
        benchmarks,
    })
}

/// `12.34 ± 0.56` (the 95% interval over seeds), or `12.34 (± 0.56 s.e.)` from one seed (the
/// standard error over prompts).
fn fmt_tox(t: &SetToxicity) -> String {
    if t.toxicity.ci95.is_finite() {
        format!("{:.2} ± {:.2}", t.toxicity.mean, t.toxicity.ci95)
    } else {
        format!("{:.2} (s.e. {:.2})", t.toxicity.mean, t.prompt_se)
    }
}

fn fmt_est(e: &Estimate, digits: usize) -> String {
    if e.ci95.is_finite() {
        format!("{:.d$} ± {:.d$}", e.mean, e.ci95, d = digits)
    } else {
        format!("{:.d$}", e.mean, d = digits)
    }
}

fn condition_label(spec: &SweepSpec, row: &Row) -> String {
    let a = spec.eval.alphas;
    match row.condition.as_str() {
        "none" => "no intervention".into(),
        "prompting" => "prompting".into(),
        "iti-weak" => format!("ITI weak (α {})", a[0]),
        "iti-mid" => format!("ITI mid (α {})", a[1]),
        "iti-strong" => format!("ITI strong (α {})", a[2]),
        "random-weak" => format!("random directions (α {})", a[0]),
        "random-mid" => format!("random directions (α {})", a[1]),
        "random-strong" => format!("random directions (α {})", a[2]),
        other => other.to_string(),
    }
}

/// `summary.md`: the settings, Table 1's layout, training and probes per ratio.
pub fn markdown(spec: &SweepSpec, s: &Summary) -> String {
    let mut md = String::from("# Toxic-ratio sweep\n\n");
    md += &format!(
        "{} of {} cells done: ratios {:?} × seeds {:?}; {} clean tokens per cell, toxic tokens on \
         top; top {} heads steered ({} directions); alphas {:?} × sigma.\n\n",
        s.cells_done,
        s.cells,
        spec.ratios,
        spec.seeds,
        spec.clean_tokens,
        spec.probe.top_k,
        spec.probe.direction.as_str(),
        spec.eval.alphas
    );
    md += &format!("Toxicity ×100 of the completions, by {}; ", s.toxicity_from);
    md += "± is the 95% confidence interval over seeds (with one seed: the standard error over prompts). \
           CE: cross-entropy on clean held-out text (nats per token; prompting leaves it \
           unchanged, since the prefix applies to the prompts only).\n\n";
    md += "| toxic ratio | condition |";
    for ps in &spec.eval.prompt_sets {
        md += &format!(" {} toxicity ×100 |", ps.name);
    }
    md += " clean CE |\n|---:|---|";
    md += &"---:|".repeat(spec.eval.prompt_sets.len() + 1);
    md += "\n";
    for r in &s.rows {
        md += &format!("| {:.0}% | {} |", r.ratio * 100.0, condition_label(spec, r));
        for t in &r.sets {
            md += &format!(" {} |", fmt_tox(t));
        }
        md += &format!(" {} |\n", fmt_est(&r.ce, 3));
    }
    md += "\n## Training\n\n| toxic ratio | steps | clean tokens | toxic tokens | final val loss | s per cell |\n|---:|---:|---:|---:|---:|---:|\n";
    for t in &s.train {
        md += &format!(
            "| {:.0}% | {} | {:.0} | {:.0} | {} | {:.0} |\n",
            t.ratio * 100.0,
            t.steps,
            t.clean_tokens,
            t.toxic_tokens,
            fmt_est(&t.val_loss, 3),
            t.seconds
        );
    }
    md += "\n## Probes (Figure 5)\n\n| toxic ratio | heads × seeds | mean of the best 10% of heads | best head |\n|---:|---:|---:|---:|\n";
    for p in &s.probes {
        md += &format!(
            "| {:.0}% | {} | {} | {} |\n",
            p.ratio * 100.0,
            p.accuracies.len(),
            fmt_est(&p.top_decile, 3),
            fmt_est(&p.best, 3)
        );
    }
    if let Some(t) = &s.probe_test {
        md += &format!(
            "\nMann–Whitney U test that the {:.0}% model's head accuracies exceed the {:.0}% \
             model's (pooled over seeds): P(larger) = {:.3}, one-sided p = {:.3}.\n",
            spec.ratios.last().copied().unwrap_or(0.0) * 100.0,
            spec.ratios[0] * 100.0,
            t.effect,
            t.p
        );
    }
    if !s.benchmarks.is_empty() {
        md +=
            "\n## Capability benchmarks (no intervention; lm-evaluation-harness rules, 0-shot)\n\n\
               | toxic ratio | benchmark | items | acc | chance |\n|---:|---|---:|---:|---:|\n";
        for b in &s.benchmarks {
            let acc = if b.acc.ci95.is_finite() {
                format!("{:.4} ± {:.4}", b.acc.mean, b.acc.ci95)
            } else {
                format!("{:.4} (s.e. {:.4})", b.acc.mean, b.item_se)
            };
            md += &format!(
                "| {:.0}% | {} | {} | {acc} | {:.3} |\n",
                b.ratio * 100.0,
                b.name,
                b.n_items,
                b.chance
            );
        }
    }
    md
}

/// Writes `<name>.json` and `<name>.md` (e.g. `summary`) into `out`.
pub fn write(spec: &SweepSpec, out: &Path, name: &str, s: &Summary) -> Result<()> {
    crate::checkpoint::write_atomic(
        &out.join(format!("{name}.json")),
        serde_json::to_string_pretty(s)?.as_bytes(),
    )
    .with_context(|| format!("writing {name}.json"))?;
    crate::checkpoint::write_atomic(
        &out.join(format!("{name}.md")),
        markdown(spec, s).as_bytes(),
    )
    .with_context(|| format!("writing {name}.md"))
}
