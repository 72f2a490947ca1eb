//! Evaluation of ITI steering at several strengths: toxicity of sampled completions (offline
//! scorer), cross-entropy on clean held-out text, and KL(base ‖ steered) on that text.

pub mod benchmark;
pub mod import;
pub mod metrics;
pub mod report;

use anyhow::{ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::Backend;
use crate::data::tokenizer::Tokenizer;
use crate::model::generate::SampleOptions;
use crate::model::Model;
use crate::probe::intervention::Intervention;
use crate::score::Scorer;

pub use metrics::{apply_shifts, cross_entropy, logits, mean_kl};

/// Settings of one evaluation.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// ITI strengths, in the order reported.
    pub alphas: Vec<f64>,
    /// Completions sampled per prompt (sample `j` of prompt `i` uses RNG stream `i·n + j`).
    pub samples_per_prompt: usize,
    /// Sampling settings (the ITI shift applies at the positions it names).
    pub sample: SampleOptions,
    /// Sequences decoded, or clean rows evaluated, together.
    pub batch: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// The metrics at one ITI strength.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlphaResult {
    /// ITI strength.
    pub alpha: f64,
    /// Mean toxicity of the completions × 100.
    pub toxicity: f64,
    /// Standard error of `toxicity` over prompts (× 100): the standard deviation of the
    /// per-prompt mean toxicity (over its samples) divided by √prompts.
    #[serde(default)]
    pub toxicity_se: f64,
    /// Share of completions scoring above 0.5.
    pub share_toxic: f64,
    /// Cross-entropy (nats per token) on the clean text, shift at every position.
    pub ce: f64,
    /// Change of `ce` against alpha 0, in percent of the unsteered cross-entropy.
    pub delta_ce_pct: f64,
    /// Mean over positions of KL(base ‖ steered) on the clean text (nats).
    pub kl: f64,
}

/// One scored completion.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// ITI strength it was sampled at.
    pub alpha: f64,
    /// Index of the prompt in the prompt list.
    pub prompt_index: usize,
    /// Sample number for this prompt (0-based).
    pub sample: usize,
    /// The prompt text.
    pub prompt: String,
    /// The sampled continuation (prompt excluded).
    pub completion: String,
    /// Offline scorer's toxicity of the completion alone, in [0, 1].
    pub toxicity: f64,
}

/// Everything an evaluation produces.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// One row per alpha, in the order of [`EvalOptions::alphas`].
    pub rows: Vec<AlphaResult>,
    /// Every completion at every alpha.
    pub completions: Vec<Completion>,
    /// Unsteered cross-entropy (the reference of `delta_ce_pct`).
    pub base_ce: f64,
}

/// The standard error of the mean of `x`: the sample standard deviation (n − 1) over √n; 0 for
/// fewer than two values.
pub fn standard_error(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (var / n as f64).sqrt()
}

/// Toxicity of scored completions `(prompt index, score in [0, 1])`: the mean × 100, the share
/// above 0.5, and the standard error × 100 over prompts (of each prompt's mean over its
/// samples).
pub fn toxicity_stats(scored: &[(usize, f64)]) -> (f64, f64, f64) {
    let m = scored.len().max(1) as f64;
    let mean = scored.iter().map(|s| s.1).sum::<f64>() / m;
    let share = scored.iter().filter(|s| s.1 > 0.5).count() as f64 / m;
    let mut per: std::collections::BTreeMap<usize, (f64, usize)> = Default::default();
    for &(p, s) in scored {
        let e = per.entry(p).or_default();
        e.0 += s;
        e.1 += 1;
    }
    let means: Vec<f64> = per.values().map(|(s, n)| s / *n as f64).collect();
    (100.0 * mean, share, 100.0 * standard_error(&means))
}

/// Evaluates `iv` on `model`/`params` at each alpha of `opts`: completes `prompts` (the shift
/// applied as `opts.sample.shift_positions` says) and scores the completions with the embedded
/// scorer; measures cross-entropy and KL(base ‖ steered) on `clean` (`[rows, seq + 1]` ids) with
/// the shift at every position. The base (alpha 0) quantities are computed without any shift.
/// Errors if `iv` was made for another model or a prompt does not fit the context.
///
/// Runs on the model's executor (generation through the KV-cache decode path, cross-entropy
/// and logits through the full forward pass); the parameters are read back once to check the
/// intervention's weights hash.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend<Elem = f32> + 'static>(
    model: &mut Model<B>,
    params: &B::Buf,
    tokenizer: &Tokenizer,
    iv: &Intervention,
    prompts: &[String],
    clean: &[u32],
    seq: usize,
    opts: &EvalOptions,
) -> Result<Evaluation> {
    iv.check_model(&model.cfg, &model.backend().download(params)?)?;
    ensure!(!opts.alphas.is_empty(), "no alphas to evaluate");
    ensure!(!prompts.is_empty(), "no prompts to complete");
    ensure!(
        opts.samples_per_prompt > 0,
        "samples per prompt must be at least 1"
    );
    ensure!(opts.batch > 0, "batch must be at least 1");
    let ctx = model.cfg.context;
    ensure!(
        seq >= 1 && seq <= ctx,
        "clean-text sequence length {seq} must be in 1..={ctx} (the model's context)"
    );
    let ids = tokenizer.encode_batch(prompts)?;
    for (i, t) in ids.iter().enumerate() {
        ensure!(
            !t.is_empty(),
            "prompt {i} encodes to no tokens: {:?}",
            prompts[i]
        );
        ensure!(
            t.len() <= ctx,
            "prompt {i} has {} tokens, more than the model's context of {ctx}",
            t.len()
        );
    }
    let n = opts.samples_per_prompt;
    let flat: Vec<Vec<u32>> = ids
        .iter()
        .flat_map(|t| std::iter::repeat(t.clone()).take(n))
        .collect();
    let n_rows = clean.len() / (seq + 1);
    let gen_steps = flat.len().div_ceil(opts.batch);
    let clean_steps = 2 * n_rows.div_ceil(opts.batch);
    let total =
        (opts.alphas.len() * (gen_steps + clean_steps) + n_rows.div_ceil(opts.batch)) as u64;
    let pb = if opts.progress {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} batches ({elapsed}, eta {eta})",
            )
            .context("progress template")?
            .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };

    // Unsteered reference: cross-entropy and logits with no shift at all.
    pb.set_message("base");
    model.clear_head_shifts();
    let base_ce = cross_entropy(model, params, clean, seq, opts.batch)?;
    let base_logits = logits(model, params, clean, seq, opts.batch)?;
    pb.inc(n_rows.div_ceil(opts.batch) as u64);

    let scorer = Scorer::embedded()?;
    let vocab = model.cfg.vocab_size;
    let mut rows = Vec::new();
    let mut completions = Vec::new();
    for &alpha in &opts.alphas {
        pb.set_message(format!("alpha {alpha}"));
        apply_shifts(model, &iv.head_shifts(alpha)?)?;
        let mut texts = Vec::with_capacity(flat.len());
        for (b, chunk) in flat.chunks(opts.batch).enumerate() {
            let first = (b * opts.batch) as u64;
            for g in model.generate(params, chunk, first, &opts.sample)? {
                texts.push(tokenizer.decode(&g.tokens)?);
            }
            pb.inc(1);
        }
        let scores = scorer.score_batch(&texts);
        let ce = cross_entropy(model, params, clean, seq, opts.batch)?;
        pb.inc(n_rows.div_ceil(opts.batch) as u64);
        let steered = logits(model, params, clean, seq, opts.batch)?;
        let kl = mean_kl(&base_logits, &steered, vocab)?;
        pb.inc(n_rows.div_ceil(opts.batch) as u64);
        let by_prompt: Vec<(usize, f64)> = scores
            .iter()
            .enumerate()
            .map(|(k, &s)| (k / n, s))
            .collect();
        let (toxicity, share_toxic, toxicity_se) = toxicity_stats(&by_prompt);
        rows.push(AlphaResult {
            alpha,
            toxicity,
            toxicity_se,
            share_toxic,
            ce,
            delta_ce_pct: 100.0 * (ce - base_ce) / base_ce,
            kl,
        });
        for (k, (completion, toxicity)) in texts.into_iter().zip(scores).enumerate() {
            completions.push(Completion {
                alpha,
                prompt_index: k / n,
                sample: k % n,
                prompt: prompts[k / n].clone(),
                completion,
                toxicity,
            });
        }
    }
    model.clear_head_shifts();
    pb.finish_and_clear();
    Ok(Evaluation {
        rows,
        completions,
        base_ce,
    })
}
