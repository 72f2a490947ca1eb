//! Probing attention heads for a linear toxicity direction (the `probe` command).
//!
//! ```text
//! labelled texts ─► last-token hook_z per (layer, head)        activations::collect
//!                   streamed to a capture file, then mapped     capture::{CaptureWriter, Capture}
//!                ─► stratified 80/20 split (seeded)             heads::stratified_split
//!                ─► one L2 logistic probe per head              heads::probe_heads
//!                ─► validation accuracy grid + heatmap          probe_accuracy.{json,png}
//!                ─► top-K heads: direction, sigma, model id     intervention.json
//! ```
//! [`run_probe`] runs it all on a checkpoint; [`analyse`] does the part after the activations
//! (so it can run on activations from anywhere, e.g. a saved capture).

pub mod activations;
pub mod capture;
pub mod heads;
pub mod intervention;
pub mod labels;
pub mod logistic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

pub use activations::{collect, Activations, CollectOptions, Collected, HeadRows};
pub use capture::{Capture, CaptureHeader, CaptureShape, CaptureWriter};
pub use heads::{probe_heads, rank, stratified_split, HeadResult, Split};
pub use intervention::{
    mass_mean_direction, projection_std, weights_hash, DirectionKind, HeadDirection, Intervention,
    ModelIdentity,
};
pub use labels::{read_labelled, LabelFormat, LabelledText};
pub use logistic::{Logistic, LogisticConfig};

use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::tokenizer::Tokenizer;
use crate::model::Model;

/// Settings of the analysis after the activations.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Heads kept for the intervention (capped at the model's `L·H`). The paper: 30.
    pub top_k: usize,
    /// How each kept head's direction is made.
    pub direction: DirectionKind,
    /// Seed of the train/validation split.
    pub seed: u64,
    /// Share of each class held out for validation.
    pub val_frac: f64,
    /// Logistic-regression settings.
    pub logistic: LogisticConfig,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            top_k: 30,
            direction: DirectionKind::MassMean,
            seed: 0,
            val_frac: 0.2,
            logistic: LogisticConfig::default(),
        }
    }
}

/// Everything the analysis found.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The train/validation split.
    pub split: Split,
    /// One result per head, in (layer, head) order.
    pub results: Vec<HeadResult>,
    /// Indices into `results`, best first.
    pub ranking: Vec<usize>,
    /// Directions of the top-K heads, best first.
    pub heads: Vec<HeadDirection>,
}

impl Analysis {
    /// `grid[layer][head]` of `f(result)`.
    pub fn grid(
        &self,
        layers: usize,
        heads: usize,
        f: impl Fn(&HeadResult) -> f64,
    ) -> Vec<Vec<f64>> {
        let mut g = vec![vec![f64::NAN; heads]; layers];
        for r in &self.results {
            g[r.layer][r.head] = f(r);
        }
        g
    }
}

/// Probes every head of `acts` against `labels`, ranks the heads and makes the directions of
/// the top K (see [`intervention`] for how directions and sigmas are defined).
pub fn analyse<A: HeadRows + ?Sized>(
    acts: &A,
    labels: &[u8],
    cfg: &ProbeConfig,
) -> Result<Analysis> {
    ensure!(cfg.top_k > 0, "top-k must be at least 1");
    let split = stratified_split(labels, cfg.val_frac, cfg.seed)?;
    let results = probe_heads(acts, labels, &split, &cfg.logistic)?;
    let ranking = rank(&results);
    let k = cfg.top_k.min(results.len());
    let d = acts.d_head();
    let heads = ranking[..k]
        .iter()
        .map(|&i| {
            let r = &results[i];
            let x = acts.head_features(r.layer, r.head);
            let u = match cfg.direction {
                DirectionKind::MassMean => mass_mean_direction(&x, labels, d),
                DirectionKind::Probe => intervention::normalise(&r.probe.raw_weights().0),
            }
            .with_context(|| format!("direction of layer {} head {}", r.layer, r.head))?;
            Ok(HeadDirection {
                layer: r.layer,
                head: r.head,
                sigma: projection_std(&x, d, &u) as f32,
                direction: u.iter().map(|&v| v as f32).collect(),
                probe_accuracy: r.val_accuracy,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Analysis {
        split,
        results,
        ranking,
        heads,
    })
}

/// One probing run on a checkpoint.
pub struct ProbeJob<'a> {
    /// The model.
    pub checkpoint: &'a Checkpoint,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The labelled texts.
    pub texts: &'a [LabelledText],
    /// Where the texts came from (a path or a description), for messages and the reports.
    pub data_name: &'a str,
    /// Analysis settings.
    pub config: ProbeConfig,
    /// How activations are read.
    pub collect: CollectOptions,
    /// Output directory (created if needed).
    pub out: &'a Path,
    /// Keep the activation capture here (see [`capture`] for the format); without it the
    /// capture streams to a scratch file in `out`, deleted when the run ends.
    pub save_activations: Option<&'a Path>,
}

/// What a run wrote and found.
pub struct ProbeRun {
    /// `probe_accuracy.json`.
    pub accuracy_json: PathBuf,
    /// `probe_accuracy.png`, the layer × head heatmap.
    pub heatmap: PathBuf,
    /// `intervention.json`.
    pub intervention_path: PathBuf,
    /// The intervention written.
    pub intervention: Intervention,
    /// The analysis.
    pub analysis: Analysis,
    /// Texts cut to the model's context.
    pub truncated: usize,
}

/// Name of the capture `run_probe` streams to in its output directory when the job does not
/// keep one.
pub const SCRATCH_CAPTURE: &str = "hook_z.scratch.capture";

/// Deletes a file when dropped (after everything declared later, e.g. its memory map).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the whole probe on the CPU: activations, probes, heatmap, intervention (module docs).
pub fn run_probe(job: &ProbeJob) -> Result<ProbeRun> {
    run_probe_on(job, Cpu::<f32>::new())
}

/// A probe runs on any executor through [`crate::backend::device::Device::run`]
/// ([`run_probe_on`]).
impl crate::backend::device::ExecutorJob for &ProbeJob<'_> {
    type Output = ProbeRun;

    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<ProbeRun> {
        run_probe_on(self, be)
    }
}

/// [`run_probe`] with the activations read on the executor `be` (e.g. the GPU); the analysis
/// after them runs on the host either way.
pub fn run_probe_on<B: Backend<Elem = f32>>(job: &ProbeJob, be: B) -> Result<ProbeRun> {
    let ck = job.checkpoint;
    let cfg = &ck.config;
    labels::check_classes(job.texts, job.data_name)?;
    crate::data::tokenizer::check_fits(
        job.tokenizer.vocab_size(),
        cfg.vocab_size,
        Path::new(job.tokenizer.source()),
    )?;
    std::fs::create_dir_all(job.out)
        .with_context(|| format!("creating the output directory {}", job.out.display()))?;
    let mut model = Model::new(cfg.clone(), be)?;
    let mut params = model.alloc_params()?;
    model.backend().upload(&ck.params, &mut params)?;
    let texts: Vec<String> = job.texts.iter().map(|t| t.text.clone()).collect();
    let labels: Vec<u8> = job.texts.iter().map(|t| t.label).collect();
    // Activations stream to disk in chunks, then are read back through a memory map.
    let scratch;
    let capture_path = match job.save_activations {
        Some(p) => p,
        None => {
            scratch = RemoveOnDrop(job.out.join(SCRATCH_CAPTURE));
            scratch.0.as_path()
        }
    };
    let shape = capture::CaptureShape::hook_z_last(cfg);
    let chunk_rows = job
        .collect
        .chunk_rows
        .unwrap_or_else(|| capture::chunk_rows_for(capture::DEFAULT_CHUNK_BYTES, shape.row_len()));
    let mut writer = CaptureWriter::create(capture_path, shape, chunk_rows)?;
    let got = collect(
        &mut model,
        &params,
        job.tokenizer,
        &texts,
        job.data_name,
        &job.collect,
        &mut writer,
    )?;
    let hash = weights_hash(&ck.params);
    let meta = BTreeMap::from([
        ("checkpoint".to_string(), ck.dir.display().to_string()),
        ("weights_hash".to_string(), hash.clone()),
        ("data".to_string(), job.data_name.to_string()),
        (
            "truncated_to_context".to_string(),
            got.truncated.to_string(),
        ),
    ]);
    writer.finish(Some(&labels), &meta)?;
    let acts = Capture::open(capture_path)?;
    let an = analyse(&acts, &labels, &job.config)?;
    let (l_n, h_n) = (cfg.n_layers, cfg.n_heads);

    // probe_accuracy.json
    let (neg, pos) = labels::class_counts(job.texts);
    let val_pos = an.split.val.iter().filter(|&&i| labels[i] == 1).count();
    let val_n = an.split.val.len();
    let majority = val_pos.max(val_n - val_pos) as f64 / val_n as f64;
    let ranking: Vec<serde_json::Value> = an
        .ranking
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let r = &an.results[i];
            serde_json::json!({
                "rank": k + 1, "layer": r.layer, "head": r.head,
                "val_accuracy": r.val_accuracy, "train_accuracy": r.train_accuracy,
                "val_log_loss": r.val_log_loss,
            })
        })
        .collect();
    let mean_len = got.lengths.iter().sum::<usize>() as f64 / got.lengths.len() as f64;
    let summary = serde_json::json!({
        "checkpoint": ck.dir.display().to_string(),
        "weights_hash": hash,
        "data": job.data_name,
        "hook": "blocks.{l}.attn.hook_z",
        "position": "last token",
        "n_texts": job.texts.len(),
        "n_toxic": pos,
        "n_non_toxic": neg,
        "n_train": an.split.train.len(),
        "n_val": val_n,
        "majority_val_accuracy": majority,
        "truncated_to_context": got.truncated,
        "context": cfg.context,
        "mean_tokens": mean_len,
        "seed": job.config.seed,
        "val_fraction": job.config.val_frac,
        "logistic": job.config.logistic,
        "n_layers": l_n,
        "n_heads": h_n,
        "d_head": cfg.d_head(),
        "val_accuracy": an.grid(l_n, h_n, |r| r.val_accuracy),
        "train_accuracy": an.grid(l_n, h_n, |r| r.train_accuracy),
        "val_log_loss": an.grid(l_n, h_n, |r| r.val_log_loss),
        "ranking": ranking,
    });
    let accuracy_json = job.out.join("probe_accuracy.json");
    crate::checkpoint::write_atomic(&accuracy_json, &serde_json::to_vec_pretty(&summary)?)?;

    // Heatmap.
    let grid = an.grid(l_n, h_n, |r| r.val_accuracy);
    let min = grid.iter().flatten().fold(1.0f64, |m, &v| m.min(v));
    let lo = ((min * 20.0).floor() / 20.0).min(0.5);
    // Outline the chosen heads, unless every head is chosen (the outline would say nothing).
    let mut marked: Vec<(usize, usize)> = an.heads.iter().map(|h| (h.layer, h.head)).collect();
    if marked.len() == l_n * h_n {
        marked.clear();
    }
    let heatmap = job.out.join("probe_accuracy.png");
    let title = format!(
        "Probe validation accuracy per head ({} texts, {} held out for validation; majority {:.2})",
        job.texts.len(),
        an.split.val.len(),
        majority
    );
    let marked_label = format!("top {}", marked.len());
    crate::plot::heatmap(
        &heatmap,
        &crate::plot::Heatmap {
            title: &title,
            x_label: "head",
            y_label: "layer",
            legend: "validation accuracy",
            values: &grid,
            range: Some((lo, 1.0)),
            marked: &marked,
            marked_label: &marked_label,
        },
    )?;

    // intervention.json
    let probing = serde_json::json!({
        "checkpoint": ck.dir.display().to_string(),
        "data": job.data_name,
        "n_texts": job.texts.len(),
        "n_toxic": pos,
        "n_non_toxic": neg,
        "seed": job.config.seed,
        "top_k": job.config.top_k,
    });
    let intervention = Intervention::new(
        cfg,
        &ck.params,
        job.config.direction,
        an.heads.clone(),
        probing,
    );
    let intervention_path = job.out.join("intervention.json");
    intervention.save(&intervention_path)?;
    Ok(ProbeRun {
        accuracy_json,
        heatmap,
        intervention_path,
        intervention,
        analysis: an,
        truncated: got.truncated,
    })
}
