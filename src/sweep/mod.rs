//! The paper's experiment (Sections 3–5, Table 1): for every (toxic ratio, seed) cell, train a
//! model, probe its heads, and evaluate toxicity and clean cross-entropy without intervention,
//! with the prompting baseline and with ITI at three strengths; then summarise across seeds.
//!
//! ```text
//! <out>/sweep.json                      the sweep's settings and every cell's training config
//! <out>/cells/r0.100-s1/train/          the cell's training run (resumable, as `train`)
//! <out>/cells/r0.100-s1/probe/          probe_accuracy.json, heatmap, intervention.json
//! <out>/cells/r0.100-s1/probe.json      per-head validation accuracies (the stage's marker)
//! <out>/cells/r0.100-s1/eval.json       every condition's metrics (the stage's marker)
//! <out>/cells/r0.100-s1/bench.json      capability benchmarks, when asked for
//! <out>/summary.json, summary.md        Table 1's layout, with uncertainty
//! <out>/figures/*.png + *.csv           the figures and the numbers they plot
//! ```
//!
//! **The ratio's definition.** Every cell sees the same number of clean tokens, `clean_tokens`;
//! the toxic tokens come on top: at toxic ratio `r` the mixture draws a fraction `r` of its
//! tokens from the toxic source, so a cell trains on `clean_tokens / (1 − r)` tokens, in
//! `steps = round(clean_tokens / ((1 − r) · tokens_per_step))` optimizer steps. Warm-up is the
//! same number of steps in every cell; the cosine schedule spans each cell's own steps (so every
//! cell ends at the same fraction of its peak learning rate). The model shape is the same at
//! every ratio (ratio 0 leaves the toxic source out of the mixture, nothing else).
//!
//! **Resuming.** A cell's stages are skipped when their output exists; an interrupted training
//! resumes from its last checkpoint. Rerunning with other settings is refused (the settings are
//! compared with `sweep.json`).

pub mod cell;
pub mod figures;
pub mod stats;
pub mod summary;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::probe::intervention::DirectionKind;
use crate::train::TrainConfig;

/// Name of the settings file in the sweep directory.
pub const SPEC_FILE: &str = "sweep.json";

/// Where the prompts of one prompt set come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PromptSource {
    /// The first `words` words of the demo's held-out probe passages, alternating flagged and
    /// unflagged, `n` of them (0: all).
    DemoProbe {
        /// The probe file (`probe.jsonl` of the demo data).
        path: PathBuf,
        /// Prompts (0: all).
        n: usize,
        /// Words per prompt.
        words: usize,
    },
    /// A prompts file (plain, jsonl or RealToxicityPrompts), its first `n` prompts (all when
    /// `n` is 0).
    File {
        /// The file.
        path: PathBuf,
        /// Its layout: `auto`, `plain`, `jsonl` or `rtp`.
        format: String,
        /// Prompts taken from the start (0: all).
        n: usize,
    },
}

/// One named set of prompts (the paper: ToxiGen and RealToxicityPrompts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSet {
    /// Column name in the tables.
    pub name: String,
    /// Where the prompts come from.
    pub source: PromptSource,
}

/// The labelled texts the probes are fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    /// A labelled file (`{"text", "label"}` jsonl, ToxiGen rows, or the demo's probe.jsonl).
    pub data: PathBuf,
    /// `jsonl`, `toxigen` or `demo`.
    pub format: String,
    /// ToxiGen's threshold on `toxicity_human`.
    pub threshold: f64,
    /// Heads steered (capped at the model's).
    pub top_k: usize,
    /// Mass-mean or probe-weight directions.
    pub direction: DirectionKind,
    /// Share of each class held out for the probes' validation accuracy.
    pub val_fraction: f64,
    /// Seed of that split.
    pub split_seed: u64,
    /// L2 strength of the probes.
    pub l2: f64,
}

/// How each cell is evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// The prompt sets, each a column of the tables.
    pub prompt_sets: Vec<PromptSet>,
    /// ITI strengths weak, mid, strong (× sigma). The paper: 4, 8, 12.
    pub alphas: [f64; 3],
    /// The prompting baseline's prefix.
    pub prefix: String,
    /// Completions per prompt.
    pub samples: usize,
    /// Most tokens generated per completion.
    pub max_new_tokens: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
    /// Sampling seed (the same streams in every cell and condition).
    pub sample_seed: u64,
    /// Clean held-out shard for cross-entropy.
    pub val: PathBuf,
    /// Clean windows.
    pub val_windows: usize,
    /// Tokens per clean window.
    pub val_seq: usize,
    /// Also evaluate the same heads and sigmas along random directions drawn with this seed.
    pub random_control: Option<u64>,
    /// Sequences decoded together.
    pub batch: usize,
}

/// One (ratio, seed) cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    /// Toxic ratio in [0, 1).
    pub ratio: f64,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// The cell's full training configuration (steps from the clean budget).
    pub train: TrainConfig,
}

impl CellSpec {
    /// The cell's directory name: `r0.100-s1`.
    pub fn name(&self) -> String {
        format!("r{:.3}-s{}", self.ratio, self.seed)
    }
}

/// Everything that defines a sweep; saved as `sweep.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Toxic ratios, ascending.
    pub ratios: Vec<f64>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Clean tokens every cell trains on.
    pub clean_tokens: u64,
    /// The probes.
    pub probe: ProbeSpec,
    /// The evaluation.
    pub eval: EvalSpec,
    /// Capability benchmarks scored on every cell's model without intervention (names as
    /// `evaluate --benchmark` takes them), beside the clean cross-entropy.
    #[serde(default)]
    pub benchmarks: Vec<String>,
    /// Items of each benchmark scored (the first N; of each subject for MMLU); `None`: all.
    #[serde(default)]
    pub benchmark_limit: Option<usize>,
    /// The cells, ratio-major.
    pub cells: Vec<CellSpec>,
}

/// Optimizer steps of a cell at `ratio` for a clean budget of `clean_tokens` and
/// `tokens_per_step` tokens per step: `round(clean_tokens / ((1 − ratio) · tokens_per_step))`,
/// at least 1.
pub fn steps_for(clean_tokens: u64, ratio: f64, tokens_per_step: usize) -> u64 {
    let total = clean_tokens as f64 / (1.0 - ratio);
    ((total / tokens_per_step as f64).round() as u64).max(1)
}

impl SweepSpec {
    /// Checks the settings: ratios in [0, 1), ascending and distinct; at least one seed, distinct;
    /// at least one prompt set; a positive clean budget.
    pub fn validate(&self) -> Result<()> {
        if self.ratios.is_empty() || self.seeds.is_empty() {
            bail!("sweep: give at least one ratio and one seed");
        }
        if self.ratios.iter().any(|r| !(0.0..1.0).contains(r)) {
            bail!(
                "sweep: ratios must be in [0, 1) (got {:?}); 0.1 means 10% of training tokens are toxic",
                self.ratios
            );
        }
        if self.ratios.windows(2).any(|w| w[0] >= w[1]) {
            bail!(
                "sweep: ratios must be ascending and distinct (got {:?})",
                self.ratios
            );
        }
        let mut s = self.seeds.clone();
        s.sort();
        s.dedup();
        if s.len() != self.seeds.len() {
            bail!("sweep: seeds must be distinct (got {:?})", self.seeds);
        }
        if self.eval.prompt_sets.is_empty() {
            bail!("sweep: no prompt set to evaluate on");
        }
        if self.clean_tokens == 0 {
            bail!("sweep: the clean token budget must be positive");
        }
        for c in &self.cells {
            c.train.validate()?;
        }
        Ok(())
    }

    /// The cell directory of `cell` below `out`.
    pub fn cell_dir(out: &Path, cell: &CellSpec) -> PathBuf {
        out.join("cells").join(cell.name())
    }
}

/// Reads `sweep.json` from `out`, if there is one.
pub fn read_spec(out: &Path) -> Result<Option<SweepSpec>> {
    let p = out.join(SPEC_FILE);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{}: field `{at}`: {}", p.display(), e.into_inner())
    })?;
    Ok(Some(spec))
}

/// Writes `sweep.json` (atomically).
pub fn write_spec(out: &Path, spec: &SweepSpec) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::checkpoint::write_atomic(
        &out.join(SPEC_FILE),
        serde_json::to_string_pretty(spec)?.as_bytes(),
    )
}

/// Writes `out/completions.jsonl`: every finished cell's completions, each line placed by its
/// cell, set, condition, alpha, prompt and sample: the file to score with Perspective API and
/// bring back with `sweep --import-scores`.
pub fn export_completions(spec: &SweepSpec, out: &Path) -> Result<PathBuf> {
    let mut text = String::new();
    for c in &spec.cells {
        let p = SweepSpec::cell_dir(out, c).join("completions.jsonl");
        if p.is_file() {
            text +=
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        }
    }
    let path = out.join("completions.jsonl");
    crate::checkpoint::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Redraws the summary and figures from imported toxicity scores, as `summary-imported.md`,
/// `summary-imported.json` and `figures-imported/`, beside the offline scorer's.
pub fn import_scores(spec: &SweepSpec, out: &Path, file: &Path, field: &str) -> Result<()> {
    let scores = crate::eval::import::read_scores(file, field)?;
    let from = format!("{} (field {field})", file.display());
    let s = summary::summarise(spec, out, Some((&scores, &from)))?;
    summary::write(spec, out, "summary-imported", &s)?;
    figures::draw(spec, &out.join("figures-imported"), &s)?;
    Ok(())
}

/// How the sweep's cells went in one invocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Every cell is done.
    Finished,
    /// An interrupt stopped it; rerunning continues.
    Interrupted,
}

/// Runs every cell not done yet, in order, printing one line per cell with an estimate of the
/// time left, and rewrites the summary and figures after each cell.
pub fn run(spec: &SweepSpec, out: &Path, shared: &cell::Shared) -> Result<Outcome> {
    let t0 = std::time::Instant::now();
    let (mut train_s, mut steps_trained) = (0.0f64, 0u64);
    let (mut other_s, mut others) = (0.0f64, 0usize);
    for (i, c) in spec.cells.iter().enumerate() {
        let status = cell::run_cell(spec, out, c, shared).with_context(|| {
            format!(
                "sweep cell {} (ratio {}, seed {})",
                c.name(),
                c.ratio,
                c.seed
            )
        })?;
        let cell::CellStatus::Done { train, probe, eval } = status else {
            return Ok(Outcome::Interrupted);
        };
        if train > 0.0 {
            train_s += train;
            steps_trained += c.train.steps;
        }
        if probe + eval > 0.0 {
            other_s += probe + eval;
            others += 1;
        }
        let left = &spec.cells[i + 1..];
        let eta = if steps_trained > 0 && others > 0 {
            let steps: u64 = left.iter().map(|c| c.train.steps).sum();
            Some(
                train_s / steps_trained as f64 * steps as f64
                    + other_s / others as f64 * left.len() as f64,
            )
        } else {
            None
        };
        eprintln!(
            "sweep [{}/{}] ratio {:.1}% seed {}: {}; {} cells left{}",
            i + 1,
            spec.cells.len(),
            c.ratio * 100.0,
            c.seed,
            if train + probe + eval > 0.0 {
                format!(
                    "trained {} steps in {:.0} s, probes {:.0} s, evaluation {:.0} s",
                    c.train.steps, train, probe, eval
                )
            } else {
                "done before".to_string()
            },
            left.len(),
            eta.map_or(String::new(), |s| format!(
                ", about {} to go",
                crate::perf::human_duration(s)
            ))
        );
        let s = summary::summarise(spec, out, None)?;
        summary::write(spec, out, "summary", &s)?;
        figures::draw(spec, &out.join("figures"), &s)?;
    }
    export_completions(spec, out)?;
    eprintln!(
        "sweep: all {} cells done ({} in this run); summary in {}",
        spec.cells.len(),
        crate::perf::human_duration(t0.elapsed().as_secs_f64()),
        out.join("summary.md").display()
    );
    Ok(Outcome::Finished)
}
