//! The paper's toy experiment (its Section 2, Figure 3): how a feature's share of the training
//! data shapes its geometry in a tiny transformer.
//!
//! Three deterministic cyclic Markov chains over 4 tokens define 12 features (chain, start)
//! ([`chains`]). For each share of the underrepresented chain and each seed, the project's own
//! model (an OLMo block stack with a 4-dimensional residual stream, on the CPU executor) is
//! trained from scratch with the project's AdamW and schedule, and every residual stream of the
//! 12 sequences run once through it is kept ([`cell`]: one file per finished (share, seed), so a
//! rerun skips it). Then, for the chosen stream, one probe per (feature, token) gives each
//! feature a direction, and the entanglement of each feature is its largest `|cos|` with any
//! other ([`entanglement`]). The probes run after training, on the saved streams, so changing a
//! probe setting (`--layer`, `--hook`, `--negatives`, …) retrains nothing. At the end:
//! `results.json`, `results.csv` and `entanglement.png` ([`report`]).

pub mod cell;
pub mod chains;
pub mod entanglement;
pub mod report;
pub mod summary;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::config::ModelConfig;
use cell::{train_cell, CellResult};
use chains::ToyChains;
pub use entanglement::Negatives;

/// Which residual-stream activation the probes read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// `blocks.{layer}.hook_resid_pre`: the stream entering block `layer`.
    ResidPre,
    /// `blocks.{layer}.hook_resid_post`: the stream leaving block `layer`.
    ResidPost,
}

impl Hook {
    /// The activation's TransformerLens name at `layer`.
    pub fn name(self, layer: usize) -> String {
        match self {
            Hook::ResidPre => format!("blocks.{layer}.hook_resid_pre"),
            Hook::ResidPost => format!("blocks.{layer}.hook_resid_post"),
        }
    }
}

/// Every setting of a cell: what a (share, seed) result depends on beyond its share and seed.
/// Saved in each cell file; a rerun reuses a cell only when these match exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellSettings {
    /// The chains, comma-separated cycles (`0123,0213,0321`).
    pub chains: String,
    /// Index of the underrepresented chain.
    pub rare_chain: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads (the head width `d_model / n_heads` must be even for RoPE).
    pub n_heads: usize,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps, then cosine decay to `final_lr_frac · lr`.
    pub warmup: u64,
    /// Floor of the cosine schedule as a fraction of `lr`.
    pub final_lr_frac: f32,
    /// AdamW's decoupled weight decay (projections only, as in training).
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: off).
    pub grad_clip: f32,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per training sequence (the model also sees `seq` tokens when its streams are
    /// recorded).
    pub seq: usize,
}

/// How the saved residual streams are probed (nothing here needs retraining).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// Residual-stream hook the probes read.
    pub hook: Hook,
    /// Layer of the hook.
    pub layer: usize,
    /// First position probed (0: every position; position 0 only shows the start token).
    pub probe_from: usize,
    /// What each (feature, token) probe is fit against.
    pub negatives: Negatives,
    /// L2 strength of the probes on standardised activations (scikit-learn's 1/C).
    pub probe_l2: f64,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            hook: Hook::ResidPost,
            layer: 3,
            probe_from: 0,
            negatives: Negatives::SameToken,
            probe_l2: 1.0,
        }
    }
}

impl ProbeSettings {
    /// Index of the probed stream among a cell's streams (0: the embedding,
    /// `blocks.0.hook_resid_pre`; `k ≥ 1`: `blocks.{k−1}.hook_resid_post`, which is also
    /// `blocks.{k}.hook_resid_pre`).
    pub fn stream(&self) -> usize {
        match self.hook {
            Hook::ResidPre => self.layer,
            Hook::ResidPost => self.layer + 1,
        }
    }

    /// Checks the settings against the model's; errors name the flag.
    pub fn validate(&self, cell: &CellSettings) -> Result<()> {
        ensure!(
            self.layer < cell.n_layers,
            "--layer {}: the model has {} layers (0..{})",
            self.layer,
            cell.n_layers,
            cell.n_layers - 1
        );
        ensure!(
            self.probe_from < cell.seq,
            "--probe-from {} must be below --seq {}",
            self.probe_from,
            cell.seq
        );
        ensure!(
            self.probe_l2 > 0.0 && self.probe_l2.is_finite(),
            "--probe-l2 must be positive, got {}",
            self.probe_l2
        );
        Ok(())
    }
}

impl Default for CellSettings {
    fn default() -> Self {
        CellSettings {
            chains: chains::DEFAULT_CHAINS.to_string(),
            rare_chain: 0,
            n_layers: 4,
            d_model: 4,
            n_heads: 1,
            d_ff: 16,
            steps: 3000,
            lr: 1e-2,
            warmup: 100,
            final_lr_frac: 0.1,
            weight_decay: 0.1,
            grad_clip: 1.0,
            batch: 64,
            seq: 16,
        }
    }
}

impl CellSettings {
    /// The model: OLMo blocks of the given shape over the chains' vocabulary, unpadded (the
    /// CPU executor needs no padding, and padded rows would be 124 extra competing logits in the
    /// softmax of a 4-token problem). There is no end-of-text token; `eos_token_id` 0 is a
    /// placeholder the toy never uses.
    pub fn model_config(&self, vocab: usize) -> ModelConfig {
        ModelConfig {
            n_layers: self.n_layers,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_ff: self.d_ff,
            vocab_size: vocab,
            vocab_real: vocab,
            context: self.seq,
            rope_theta: 10_000.0,
            layer_norm_eps: 1e-5,
            eos_token_id: 0,
            tie_word_embeddings: true,
            clip_qkv: None,
        }
    }

    /// Checks every setting; errors name the flag.
    pub fn validate(&self) -> Result<ToyChains> {
        let ch = ToyChains::parse(&self.chains)?;
        ensure!(
            self.rare_chain < ch.chains.len(),
            "--rare-chain {}: there are only {} chains (0..{})",
            self.rare_chain,
            ch.chains.len(),
            ch.chains.len() - 1
        );
        self.model_config(ch.vocab)
            .validate()
            .context("--n-layers / --d-model / --n-heads / --d-ff")?;
        ensure!(self.steps > 0, "--steps must be positive");
        ensure!(self.batch > 0, "--batch must be positive");
        ensure!(self.seq >= 2, "--seq must be at least 2, got {}", self.seq);
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "--lr must be positive, got {}",
            self.lr
        );
        ensure!(
            (0.0..=1.0).contains(&self.final_lr_frac),
            "--final-lr-frac must be in [0, 1], got {}",
            self.final_lr_frac
        );
        ensure!(
            self.weight_decay >= 0.0 && self.grad_clip >= 0.0,
            "--weight-decay and --grad-clip must not be negative"
        );
        Ok(ch)
    }
}

/// The default shares of the underrepresented chain (1/3 is the balanced mixture).
pub const DEFAULT_SHARES: &[f64] = &[0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.25, 1.0 / 3.0];

/// A whole run: the cell settings, the probe settings, the grid and the output directory.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ToyConfig {
    /// What every cell's training shares.
    pub cell: CellSettings,
    /// How the cells' streams are probed.
    pub probe: ProbeSettings,
    /// Shares of the underrepresented chain, each in (0, 1).
    pub shares: Vec<f64>,
    /// Seeds `0..seeds`: seed `s` initialises the model and draws the data, the same at every
    /// share (so shares are compared on paired seeds).
    pub seeds: u64,
    /// Output directory.
    pub out: PathBuf,
}

/// How to run.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Show a progress bar.
    pub progress: bool,
}

/// What [`run_toy`] made.
#[derive(Debug)]
pub struct ToyReport {
    /// The aggregated results (also written as `results.json`).
    pub results: report::ToyResults,
    /// Cells trained by this call.
    pub trained: usize,
    /// Cells read back from an earlier run.
    pub reused: usize,
    /// `results.json`.
    pub json: PathBuf,
    /// `results.csv`: the plotted numbers.
    pub csv: PathBuf,
    /// `entanglement.png`.
    pub png: PathBuf,
}

/// The file of one finished cell.
pub fn cell_path(out: &Path, share: f64, seed: u64) -> PathBuf {
    out.join("cells")
        .join(format!("share-{share:.6}-seed-{seed}.json"))
}

/// Reads a finished cell if its file exists: `Ok(None)` when there is none, an error when it is
/// unreadable or was made with other settings (naming the file and the first differing field).
fn read_cell(path: &Path, settings: &CellSettings) -> Result<Option<CellResult>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cell: CellResult = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a toy cell result", path.display()))?;
    if &cell.settings != settings {
        let a = serde_json::to_value(&cell.settings)?;
        let b = serde_json::to_value(settings)?;
        let field = a
            .as_object()
            .zip(b.as_object())
            .and_then(|(a, b)| a.iter().find(|(k, v)| b.get(*k) != Some(v)))
            .map(|(k, v)| format!("{k} = {v} there, {} now", b[k]))
            .unwrap_or_else(|| "settings".into());
        bail!(
            "{} was made with other settings ({field}): use another --out, or delete {} to start over",
            path.display(),
            path.parent().map_or(path, |p| p).display()
        );
    }
    Ok(Some(cell))
}

/// Runs every (share, seed) cell not already in `out/cells/` (in parallel, one cell per rayon
/// task), probes them all, then writes `results.json`, `results.csv` and `entanglement.png`
/// into `out`.
pub fn run_toy(cfg: &ToyConfig, opts: RunOptions) -> Result<ToyReport> {
    let chains = cfg.cell.validate()?;
    cfg.probe.validate(&cfg.cell)?;
    ensure!(!cfg.shares.is_empty(), "--shares: no shares given");
    for &s in &cfg.shares {
        ensure!(
            s > 0.0 && s < 1.0,
            "--shares: {s} is not in (0, 1) (the share of the underrepresented chain)"
        );
    }
    ensure!(cfg.seeds > 0, "--seeds must be positive");
    for (i, &a) in cfg.shares.iter().enumerate() {
        if let Some(b) = cfg.shares[..i]
            .iter()
            .find(|&&b| format!("{a:.6}") == format!("{b:.6}"))
        {
            bail!("--shares: {a} and {b} are the same share to 6 decimals (cells are named by it)");
        }
    }
    let cells_dir = cfg.out.join("cells");
    fs::create_dir_all(&cells_dir).with_context(|| format!("creating {}", cells_dir.display()))?;

    let mut done: Vec<CellResult> = Vec::new();
    let mut todo: Vec<(f64, u64)> = Vec::new();
    for &share in &cfg.shares {
        for seed in 0..cfg.seeds {
            match read_cell(&cell_path(&cfg.out, share, seed), &cfg.cell)? {
                // the file name (share to 6 decimals) identified it: take the share as given
                // now, not as parsed back from JSON (which may differ in the last bit)
                Some(c) => {
                    ensure!(
                        (c.share - share).abs() <= 1e-9,
                        "{}: made for share {}, not {share}",
                        cell_path(&cfg.out, share, seed).display(),
                        c.share
                    );
                    done.push(CellResult { share, ..c })
                }
                None => todo.push((share, seed)),
            }
        }
    }
    let reused = done.len();
    let bar = if opts.progress && !todo.is_empty() {
        ProgressBar::new(todo.len() as u64 * cfg.cell.steps)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {percent:>3}%  {msg}  ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let total = todo.len();
    bar.set_message(format!("0/{total} cells ({reused} reused)"));
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let t0 = Instant::now();
    let fresh: Vec<CellResult> = todo
        .par_iter()
        .map(|&(share, seed)| -> Result<CellResult> {
            let cell = train_cell(&chains, &cfg.cell, share, seed, &|| bar.inc(1))
                .with_context(|| format!("cell share {share} seed {seed}"))?;
            let path = cell_path(&cfg.out, share, seed);
            write_atomic(&path, serde_json::to_string_pretty(&cell)?.as_bytes())?;
            let k = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{k}/{total} cells ({reused} reused)"));
            Ok(cell)
        })
        .collect::<Result<Vec<_>>>()?;
    bar.finish_and_clear();
    let trained = fresh.len();
    let train_secs = t0.elapsed().as_secs_f64();
    done.extend(fresh);

    let results = report::aggregate(cfg, &chains, &done, train_secs, trained)?;
    let json = cfg.out.join("results.json");
    write_atomic(&json, serde_json::to_string_pretty(&results)?.as_bytes())?;
    let csv = cfg.out.join("results.csv");
    write_atomic(&csv, report::csv(&results).as_bytes())?;
    let png = cfg.out.join("entanglement.png");
    report::plot(&results, &png)?;
    Ok(ToyReport {
        results,
        trained,
        reused,
        json,
        csv,
        png,
    })
}
