//! Output files of `evaluate --benchmark`: per benchmark `NAME.json` (the summary, MMLU's
//! subjects included) and `NAME-items.jsonl` (every item's log-likelihoods and choices), and for
//! the whole run `benchmarks.json` and `benchmarks.md` (the table). Every file is written to a
//! temporary name and renamed.

use std::path::Path;

use anyhow::{Context, Result};

use super::{BenchmarkResult, Metric, TaskKind};
use crate::checkpoint::write_atomic;

fn pm(m: &Metric) -> String {
    if m.stderr.is_nan() {
        format!("{:.4}", m.value)
    } else {
        format!("{:.4} ± {:.4}", m.value, m.stderr)
    }
}

/// The markdown table of a run: one line per benchmark (`truncated`: items whose context was
/// left-truncated; `skipped`: items not scored, a continuation being longer than the window).
pub fn markdown_table(results: &[BenchmarkResult]) -> String {
    let mut s = String::from(
        "| benchmark | split | items | shots | acc ± stderr | acc_norm ± stderr | perplexity | chance | truncated | skipped |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let norm = r.acc_norm.as_ref().map_or("—".to_string(), pm);
        let ppl = r.perplexity.as_ref().map_or("—".to_string(), pm);
        let chance = match r.benchmark.kind() {
            TaskKind::MultipleChoice => format!("{:.4}", r.chance),
            TaskKind::Cloze => "—".to_string(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.benchmark.name(),
            r.split,
            r.n_items,
            r.shots,
            pm(&r.acc),
            norm,
            ppl,
            chance,
            r.n_truncated,
            r.skipped.len()
        );
    }
    s
}

/// One line for the terminal: the benchmark, its items and its metrics.
pub fn summary_line(r: &BenchmarkResult) -> String {
    let mut s = format!(
        "{}: {} items, {}-shot, acc {}",
        r.benchmark.name(),
        r.n_items,
        r.shots,
        pm(&r.acc)
    );
    if let Some(m) = &r.acc_norm {
        s += &format!(", acc_norm {}", pm(m));
    }
    if let Some(m) = &r.perplexity {
        s += &format!(", perplexity {}", pm(m));
    }
    if r.benchmark.kind() == TaskKind::MultipleChoice {
        s += &format!(" (chance {:.4})", r.chance);
    }
    s + &format!(", {:.1} s", r.seconds)
}

/// One benchmark's files in `dir` (created if missing): `NAME.json` and `NAME-items.jsonl`.
pub fn write_benchmark(dir: &Path, r: &BenchmarkResult, meta: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = r.benchmark.name();
    let json = serde_json::json!({"meta": meta, "result": r});
    write_atomic(
        &dir.join(format!("{name}.json")),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    let mut lines = String::new();
    for it in &r.items {
        lines += &serde_json::to_string(it)?;
        lines.push('\n');
    }
    write_atomic(&dir.join(format!("{name}-items.jsonl")), lines.as_bytes())
}

/// The run's `benchmarks.json` (summaries, subjects left out) and `benchmarks.md`
/// (`description`, then the table) in `dir`.
pub fn write_summary(
    dir: &Path,
    results: &[BenchmarkResult],
    meta: &serde_json::Value,
    description: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r)?;
            if let Some(o) = v.as_object_mut() {
                o.remove("groups");
            }
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let json = serde_json::json!({"meta": meta, "results": rows});
    write_atomic(
        &dir.join("benchmarks.json"),
        (serde_json::to_string_pretty(&json)? + "\n").as_bytes(),
    )?;
    write_atomic(
        &dir.join("benchmarks.md"),
        format!("{description}\n\n{}", markdown_table(results)).as_bytes(),
    )
}
