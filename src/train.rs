//! The training loop: mixture batches → forward/backward → clipped AdamW → log, eval,
//! checkpoint. `src/bin/train.rs` is its command-line front end; [`run_dir`] is what a run
//! leaves in its directory, [`interrupt`] how Ctrl-C stops it without losing work.

pub mod interrupt;
pub mod run_dir;
pub mod setup;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use rand::{Rng, SeedableRng};

use crate::backend::device::{Device, ExecutorJob};
use crate::backend::profile::Profiled;
use crate::backend::Backend;
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::data::mixture::{eval_windows, Mixture, MixtureSource, MixtureState};
use crate::data::shard::Shard;
use crate::data::tokenizer::TokenizerId;
use crate::model::params::ParamLayout;
use crate::model::Model;
use crate::optim::adamw::clip_scale;
use crate::optim::{AdamW, AdamWConfig, CosineSchedule};

/// One data source of the training mixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Name, e.g. `clean` or `toxic`.
    pub name: String,
    /// Token shard (see docs/shards.md).
    pub path: PathBuf,
    /// Fraction of training tokens drawn from it.
    pub fraction: f64,
}

/// Everything that defines a training run; saved in `run.json` and in every checkpoint's
/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model shape (the preset, with the tokenizer's vocabulary).
    pub model: ModelConfig,
    /// Training sources and their token fractions.
    pub sources: Vec<SourceSpec>,
    /// Held-out shard for validation loss.
    pub val: PathBuf,
    /// Tokenizer copied into each checkpoint, when known.
    pub tokenizer: Option<PathBuf>,
    /// Where checkpoints, log.jsonl and loss.png go.
    pub out: PathBuf,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Cosine floor as a fraction of `lr`.
    pub final_lr_frac: f32,
    /// Global-norm gradient clip (0 = off).
    pub grad_clip: f32,
    /// AdamW betas, eps and weight decay.
    pub adamw: AdamWConfig,
    /// Seed for initialisation and the data mixture.
    pub seed: u64,
    /// Evaluate validation loss every this many steps (and at the first and last step).
    pub eval_every: u64,
    /// Validation windows per evaluation.
    pub eval_windows: usize,
    /// Write a checkpoint every this many steps (and at the end).
    pub save_every: u64,
    /// Train on seeded uniform random token rows instead of `sources` (throughput measurements
    /// at any preset without data or tokenizer); no validation loss is measured.
    #[serde(default)]
    pub synthetic: bool,
    /// Start from the weights of this checkpoint (ours or a Hugging Face OLMo v1 release)
    /// instead of a random init: continued pretraining, with a fresh optimizer and this run's
    /// data mixture. `model` must be that checkpoint's shape. A resumed run takes its weights
    /// from its own checkpoint, not from here.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
}

/// One line of `log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Optimizer step (0-based) this line reports.
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f32,
    /// Validation loss, on steps where it was measured (before the update of this step).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f32>,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Training throughput of this step.
    pub tokens_per_s: f64,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Every logged step.
    pub log: Vec<LogEntry>,
    /// Directory of the final checkpoint.
    pub checkpoint: PathBuf,
    /// Validation loss before any update (step 0) and after the last.
    pub val_first: f32,
    /// Validation loss at the end.
    pub val_last: f32,
    /// Wall time of the loop, seconds.
    pub seconds: f64,
    /// The executor that ran (e.g. `cpu-f32`, or the GPU's description).
    pub device: String,
    /// Median training throughput over the steps from the fourth on (all steps when fewer),
    /// tokens per second; validation time excluded.
    pub tokens_per_s_median: f64,
    /// Median wall time of one optimizer step over the same steps, milliseconds.
    pub step_ms_median: f64,
    /// Device memory in use after the first step (GPU only), bytes.
    pub peak_mem_bytes: Option<usize>,
    /// `Some(step)` when an interrupt stopped the run: the steps completed and saved.
    pub interrupted: Option<u64>,
}

/// Options that change how a run executes but not what it computes.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Continue the run in this directory (`out`) from its latest checkpoint, or from step 0
    /// when it was stopped before its first checkpoint.
    pub resume: Option<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop after this many steps even if `steps` is larger (the schedule still uses `steps`).
    pub stop_after: Option<u64>,
    /// Testing aid: make the loss of this step NaN, to exercise the NaN guard.
    pub inject_nan_at: Option<u64>,
    /// Where to run (`None`: the CPU executor).
    pub device: Option<Device>,
    /// Write no checkpoint at all (throughput runs).
    pub no_checkpoint: bool,
    /// Time every op of the last this-many steps ([`crate::backend::profile::Profiled`]) and
    /// write `profile.md` and `profile.json` to the output directory; those steps are left out
    /// of the median throughput.
    pub profile: Option<u64>,
    /// Stop after the micro-batch in progress, save the last completed step and return, when
    /// this flag is set ([`interrupt::Interrupt::install`] sets it on Ctrl-C / SIGTERM).
    pub interrupt: Option<interrupt::Interrupt>,
}

impl TrainConfig {
    /// Checks the run is coherent; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        if self.batch == 0 || self.seq == 0 || self.grad_accum == 0 {
            bail!("train config: batch, seq and grad_accum must be positive");
        }
        if self.steps == 0 {
            bail!("train config: steps must be at least 1");
        }
        if self.eval_every == 0 || self.save_every == 0 {
            bail!(
                "train config: eval_every and save_every must be positive (got {} and {}; use a \
                 number larger than steps to evaluate or save only at the end)",
                self.eval_every,
                self.save_every
            );
        }
        if self.seq > self.model.context {
            bail!(
                "train config: seq ({}) exceeds the model's context ({})",
                self.seq,
                self.model.context
            );
        }
        if self.sources.is_empty() && !self.synthetic {
            bail!("train config: no training sources");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!(
                "train config: lr must be a positive number (got {})",
                self.lr
            );
        }
        Ok(())
    }

    fn schedule(&self) -> CosineSchedule {
        CosineSchedule {
            lr: self.lr,
            warmup: self.warmup,
            total_steps: self.steps,
            final_frac: self.final_lr_frac,
        }
    }
}

/// Opens every shard of the run and checks each fits the model's vocabulary.
fn open_shard(path: &Path, model: &ModelConfig) -> Result<Shard> {
    let s = Shard::open(path)?;
    if s.vocab_size() > model.vocab_real {
        bail!(
            "{}: the shard's vocabulary has {} ids but the model's vocab_real is {} (tokenizer and model disagree)",
            path.display(),
            s.vocab_size(),
            model.vocab_real
        );
    }
    Ok(s)
}

/// The training state in a checkpoint's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Steps completed.
    pub step: u64,
    /// The data position (absent for synthetic-data runs).
    pub mixture: Option<MixtureState>,
    /// The run's configuration.
    pub config: TrainConfig,
}

/// Reads the `state.json` of checkpoint directory `dir`; errors name the file and the field.
pub fn read_state(dir: &Path) -> Result<SavedState> {
    let path = dir.join("state.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        anyhow::anyhow!(
            "{}: field `{field}`: {} (not the training state of a checkpoint)",
            path.display(),
            e.into_inner()
        )
    })
}

/// Checks that every shard of the run and its tokenizer file come from one tokenizer, where they
/// record it (shards written before shards carried their tokenizer's identity are not checked).
fn check_one_tokenizer(cfg: &TrainConfig, shards: &[&Shard]) -> Result<()> {
    let mut known: Vec<(String, TokenizerId)> = shards
        .iter()
        .filter_map(|s| s.tokenizer().map(|id| (s.path().display().to_string(), id)))
        .collect();
    if let Some(t) = &cfg.tokenizer {
        known.push((
            format!("the run's tokenizer {}", t.display()),
            TokenizerId::of_file(t)?,
        ));
    }
    if let Some((first, id)) = known.first() {
        if let Some((other, oid)) = known.iter().find(|(_, o)| o != id) {
            bail!(
                "the run mixes tokenizers: {first} was made with tokenizer {} but {other} with                  tokenizer {}; expected every source, the validation shard and the tokenizer to                  come from the same tokenizer (prepare each corpus with the same --olmo or                  --tokenizer)",
                id.short(),
                oid.short()
            );
        }
    }
    Ok(())
}

/// Runs (or resumes) training as `cfg` says on the executor `opts.device` names; returns the
/// log and the final checkpoint.
pub fn train(cfg: &TrainConfig, opts: &RunOptions) -> Result<TrainReport> {
    let device = opts.device.clone().unwrap_or(Device::Cpu);
    if let Device::Cuda(ctx) = &device {
        if let Ok((free, total)) = ctx.mem_get_info() {
            check_device_memory(cfg, free as u64, total as u64)?;
        }
    }
    device.run(TrainJob { cfg, opts })
}

/// [`train`]'s work on whichever executor the device gives.
struct TrainJob<'a> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
}

impl ExecutorJob for TrainJob<'_> {
    type Output = TrainReport;

    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<TrainReport> {
        run_on(self.cfg, self.opts, be)
    }
}

/// Refuses a GPU run whose buffers ([`crate::perf::cuda_train_memory`]), plus 256 MiB and 1% of
/// headroom, cannot fit the device's `free` bytes, before anything is allocated, saying what
/// takes the memory and what to change.
pub fn check_device_memory(cfg: &TrainConfig, free: u64, total: u64) -> Result<()> {
    let rows = crate::perf::cuda_train_memory(&cfg.model, cfg.batch, cfg.seq);
    let need: u64 = rows.iter().map(|r| r.1).sum();
    // Headroom for what the count leaves out: allocation rounding, the kernel images loaded
    // after this check, the embedding backward's plan.
    let margin = (256 << 20) + need / 100;
    if need + margin <= free {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut sorted = rows.clone();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.1));
    let parts = sorted
        .iter()
        .take(3)
        .map(|r| format!("{}: {:.1} GiB", r.0, gib(r.1)))
        .collect::<Vec<_>>()
        .join("; ");
    bail!(
        "a step at batch {} × seq {} needs {:.1} GiB of device memory (largest: {parts}), plus \
         {:.2} GiB of headroom, but the GPU has {:.1} GiB free of {:.1} GiB. Activations grow \
         with batch × seq: lower --batch (or --seq) and raise --grad-accum to keep the tokens \
         per optimizer step",
        cfg.batch,
        cfg.seq,
        gib(need),
        gib(margin),
        gib(free),
        gib(total)
    )
}

/// The step the run stops before: `steps`, or earlier with `stop_after`.
fn end_step(cfg: &TrainConfig, opts: &RunOptions) -> u64 {
    opts.stop_after.map_or(cfg.steps, |s| s.min(cfg.steps))
}

/// The steps `opts.profile` asks to profile: the last N of the run.
fn profiled_steps(cfg: &TrainConfig, opts: &RunOptions) -> Option<std::ops::Range<u64>> {
    let end = end_step(cfg, opts);
    opts.profile
        .filter(|&n| n > 0)
        .map(|n| end.saturating_sub(n)..end)
}

/// [`run`] on `be`, through a [`Profiled`] executor when `opts.profile` asks for one.
fn run_on<B: Backend<Elem = f32>>(
    cfg: &TrainConfig,
    opts: &RunOptions,
    be: B,
) -> Result<TrainReport> {
    match profiled_steps(cfg, opts) {
        Some(steps) => run(cfg, opts, Profiled::new(be, steps, Some(cfg.out.clone()))),
        None => run(cfg, opts, be),
    }
}

/// Where training rows come from: the mixture of shards, or seeded random tokens.
enum Batches {
    Mixture(Mixture),
    Synthetic {
        rng: Box<rand_chacha::ChaCha8Rng>,
        vocab: u32,
    },
}

impl Batches {
    fn next(&mut self, batch: usize, seq: usize) -> Result<Vec<u32>> {
        match self {
            Batches::Mixture(m) => m.next_batch(batch, seq),
            Batches::Synthetic { rng, vocab } => Ok((0..batch * (seq + 1))
                .map(|_| rng.random_range(0..*vocab))
                .collect()),
        }
    }

    fn state(&self) -> Option<MixtureState> {
        match self {
            Batches::Mixture(m) => Some(m.state()),
            Batches::Synthetic { .. } => None,
        }
    }
}

/// The training loop on executor `be`. Parameters, gradients and both Adam moments live in
/// executor buffers for the whole run; they come to the host only to be checkpointed. Per
/// micro-batch the pass is queued, the next batch is read from the shards while the executor
/// runs it; after the last micro-batch the gradient norm is queued behind it and read back, the
/// step's one wait, and the losses (by then computed) come back with it.
fn run<B: Backend<Elem = f32>>(cfg: &TrainConfig, opts: &RunOptions, be: B) -> Result<TrainReport> {
    cfg.validate()?;
    fs::create_dir_all(&cfg.out)
        .with_context(|| format!("creating output directory {}", cfg.out.display()))?;
    let layout = ParamLayout::new(&cfg.model);
    let mut batches = if cfg.synthetic {
        if opts.resume.is_some() {
            bail!("--resume: a synthetic-data run has no data position to resume from");
        }
        Batches::Synthetic {
            rng: Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed)),
            vocab: cfg.model.vocab_real as u32,
        }
    } else {
        let sources = cfg
            .sources
            .iter()
            .map(|s| {
                Ok(MixtureSource {
                    name: s.name.clone(),
                    shard: open_shard(&s.path, &cfg.model)?,
                    fraction: s.fraction,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m = Mixture::new(sources, cfg.seed)?;
        m.check_seq(cfg.seq)?;
        Batches::Mixture(m)
    };
    let val_tokens = if cfg.synthetic {
        Vec::new()
    } else {
        let val_shard = open_shard(&cfg.val, &cfg.model)?;
        if let Batches::Mixture(m) = &batches {
            let mut shards: Vec<&Shard> = m.sources().iter().map(|s| &s.shard).collect();
            shards.push(&val_shard);
            check_one_tokenizer(cfg, &shards)?;
        }
        let n_eval = cfg.eval_windows.div_ceil(cfg.batch).max(1) * cfg.batch;
        eval_windows(&val_shard, n_eval, cfg.seq)?
    };
    // The run's record comes first: a run stopped before its first checkpoint can resume.
    if !cfg.out.join(run_dir::RUN_FILE).exists() {
        run_dir::write_record(
            &cfg.out,
            &run_dir::RunRecord {
                config: cfg.clone(),
                device: be.name(),
            },
        )?;
    }

    // Parameters and optimizer: fresh, or from a checkpoint.
    let resume_from = opts
        .resume
        .as_ref()
        .filter(|dir| dir.join("latest").exists() || dir.join("model.safetensors").exists());
    let (host_params, host_opt, start, mut log) = match resume_from {
        Some(dir) => {
            let ck = checkpoint::load(dir)?;
            if ck.config != cfg.model {
                bail!(
                    "{}: checkpoint model config differs from this run's",
                    ck.dir.display()
                );
            }
            let st = read_state(&ck.dir)?;
            if let Batches::Mixture(m) = &mut batches {
                let ms = st.mixture.as_ref().with_context(|| {
                    format!("{}: state.json records no data position", ck.dir.display())
                })?;
                m.restore(ms)?;
            }
            let opt = ck
                .optimizer
                .with_context(|| format!("{}: no optimizer.safetensors", ck.dir.display()))?;
            let log = read_log(&cfg.out.join("log.jsonl"), st.step)?;
            (ck.params, opt, st.step, log)
        }
        None => {
            let params = match &cfg.init_from {
                Some(dir) => {
                    let ck = checkpoint::load_model(dir)
                        .with_context(|| format!("--init-from {}", dir.display()))?;
                    if ck.config != cfg.model {
                        bail!(
                            "--init-from {}: the checkpoint's model config ({:?}) differs from \
                             this run's ({:?})",
                            ck.dir.display(),
                            ck.config,
                            cfg.model
                        );
                    }
                    ck.params
                }
                None => crate::model::init_params(&cfg.model, &layout, cfg.seed),
            };
            // the embedding, first in the buffer, is not decayed (an untied lm_head is)
            let embed_len = layout.tensors[0].len();
            (
                params,
                AdamW::new(cfg.adamw, layout.len(), embed_len),
                0,
                Vec::new(),
            )
        }
    };
    rewrite_log(&cfg.out.join("log.jsonl"), &log)?;

    // Everything the step touches, on the executor.
    let n_params = layout.len();
    let device = be.name();
    let mut model = Model::new(cfg.model.clone(), be)?;
    let be = model.backend();
    let upload = |host: &[f32], what: &str| -> Result<B::Buf> {
        let mut b = be.alloc(host.len())?;
        be.upload(host, &mut b)
            .with_context(|| format!("uploading {what}"))?;
        Ok(b)
    };
    let mut params = upload(&host_params, "parameters")?;
    let mut opt_m = upload(&host_opt.m, "AdamW first moments")?;
    let mut opt_v = upload(&host_opt.v, "AdamW second moments")?;
    let mut grads = be.alloc(n_params)?;
    let (adamw_cfg, no_decay_len, mut opt_step) =
        (host_opt.cfg, host_opt.no_decay_len, host_opt.step);
    drop((host_params, host_opt));

    let sched = cfg.schedule();
    let end = end_step(cfg, opts);
    let profiled = profiled_steps(cfg, opts);

    let bar = if opts.progress {
        ProgressBar::new(end)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_position(start);

    // Validation: a whole number of batches of fixed, evenly spaced windows of held-out text.
    let eval = |model: &mut Model<B>, params: &B::Buf| -> Result<f32> {
        if val_tokens.is_empty() {
            return Ok(f32::NAN);
        }
        let row = cfg.seq + 1;
        let mut total = 0.0f64;
        let chunks = val_tokens.chunks_exact(cfg.batch * row);
        let n = chunks.len();
        for chunk in chunks {
            total += model.loss(params, chunk, cfg.batch, cfg.seq)?;
        }
        Ok((total / n as f64) as f32)
    };

    let t0 = Instant::now();
    // a resumed run reports the step-0 validation loss its log recorded
    let mut val_first = log.first().and_then(|e| e.val_loss).unwrap_or(f32::NAN);
    let mut val_last = f32::NAN;
    let mut last_ckpt = None;
    let mut peak_mem_bytes = None;
    let mut step_secs = Vec::new();
    let mut profiled_secs = Vec::new();
    let toks_per_step = (cfg.batch * cfg.seq * cfg.grad_accum) as f64;
    // The data position a checkpoint records: before the batch read ahead, if any.
    let mut data_state = batches.state();
    let mut next = if start < end {
        Some(batches.next(cfg.batch, cfg.seq)?)
    } else {
        None
    };
    // A checkpoint of `done` completed steps at data position `pos`.
    let save = |be: &B,
                done: u64,
                pos: &Option<MixtureState>,
                params: &B::Buf,
                opt_m: &B::Buf,
                opt_v: &B::Buf,
                opt_step: u64|
     -> Result<PathBuf> {
        let state = SavedState {
            step: done,
            mixture: pos.clone(),
            config: cfg.clone(),
        };
        let opt = AdamW {
            cfg: adamw_cfg,
            m: be.download(opt_m)?,
            v: be.download(opt_v)?,
            step: opt_step,
            no_decay_len,
        };
        checkpoint::save(
            &cfg.out,
            done,
            &cfg.model,
            &be.download(params)?,
            &opt,
            &serde_json::to_value(&state)?,
            cfg.tokenizer.as_deref(),
        )
    };
    let mut last_saved = start;
    let stop_asked = || opts.interrupt.as_ref().is_some_and(|i| i.requested());
    let mut interrupted = None;
    for step in start..end {
        if stop_asked() {
            interrupted = Some(step);
            break;
        }
        // the data position before this step's batches, saved if the step is abandoned
        let step_start_state = data_state.clone();
        let lr = sched.at(step);
        let do_eval = !cfg.synthetic && (step == start || step % cfg.eval_every == 0);
        let val_loss = if do_eval {
            Some(eval(&mut model, &params)?)
        } else {
            None
        };
        if step == 0 {
            val_first = val_loss.unwrap_or(f32::NAN);
        }
        model.backend().on_step(Some(step))?;
        let t_step = Instant::now();
        // gradients of the mean loss over the micro-batches: each contributes 1/k
        let k = cfg.grad_accum as f64;
        let mut loss_sum = 0.0f64;
        let mut norm = f32::NAN;
        for micro in 0..cfg.grad_accum {
            let tokens = next.take().context("no batch read ahead")?;
            model.start_forward_backward(
                &params,
                &mut grads,
                &tokens,
                cfg.batch,
                cfg.seq,
                micro > 0,
                1.0 / k,
            )?;
            // read the next batch while the executor runs this one
            // (the checkpoint's data position is always the one before the batch read ahead)
            data_state = batches.state();
            let last_micro = micro + 1 == cfg.grad_accum;
            if !(last_micro && step + 1 == end) {
                next = Some(batches.next(cfg.batch, cfg.seq)?);
            }
            if last_micro {
                // The gradient is complete once the last pass is queued: its norm is queued
                // behind it, so the step waits once, here, and the loss below is already there.
                norm = model.backend().norm_sq(&grads, n_params)?.sqrt() as f32;
            }
            loss_sum += model.finish_forward_backward()?;
            if stop_asked() && !last_micro {
                break;
            }
        }
        if stop_asked() {
            // The step is abandoned before its update: parameters and moments are those of the
            // last completed step, and the data position goes back to before this step's batches.
            data_state = step_start_state;
            interrupted = Some(step);
            break;
        }
        let be = model.backend();
        let mut loss = (loss_sum / k) as f32;
        if opts.inject_nan_at == Some(step) {
            loss = f32::NAN;
        }
        if !loss.is_finite() || !norm.is_finite() {
            bar.abandon();
            let kept = last_ckpt
                .as_ref()
                .map(|p: &PathBuf| {
                    format!("the last good checkpoint, {}, is untouched", p.display())
                })
                .unwrap_or_else(|| "no checkpoint had been written yet".to_string());
            bail!("step {step}: loss is {loss}, gradient norm {norm}: stopping before the update ({kept}); try a lower --lr or more --warmup");
        }
        // exactly AdamW::update: step count first, then the bias corrections of that count
        opt_step += 1;
        let args = adamw_cfg.step_args(lr, clip_scale(norm, cfg.grad_clip), opt_step, no_decay_len);
        be.adamw(&mut params, &grads, &mut opt_m, &mut opt_v, n_params, &args)?;
        be.on_step(None)?;
        if peak_mem_bytes.is_none() {
            peak_mem_bytes = be.memory_in_use()?;
        }
        let secs = t_step.elapsed().as_secs_f64();
        // profiled steps carry the timing events: left out of the median throughput (unless
        // every step was profiled)
        if profiled.as_ref().is_some_and(|r| r.contains(&step)) {
            profiled_secs.push(secs);
        } else {
            step_secs.push(secs);
        }
        let tps = toks_per_step / secs;
        let entry = LogEntry {
            step,
            loss,
            val_loss,
            lr,
            grad_norm: norm,
            tokens_per_s: tps,
        };
        append_log(&cfg.out.join("log.jsonl"), &entry)?;
        if let Some(v) = val_loss {
            val_last = v;
        }
        bar.set_message(format!(
            "loss {loss:.3}  val {}  lr {lr:.2e}  {tps:.0} tok/s",
            val_last_fmt(val_last)
        ));
        bar.inc(1);
        log.push(entry);
        let done = step + 1;
        if !opts.no_checkpoint && (done % cfg.save_every == 0 || done == end) {
            last_ckpt = Some(save(
                be,
                done,
                &data_state,
                &params,
                &opt_m,
                &opt_v,
                opt_step,
            )?);
            last_saved = done;
        }
    }
    if let Some(done) = interrupted {
        bar.abandon();
        if !opts.no_checkpoint && done > last_saved {
            let be = model.backend();
            save(be, done, &data_state, &params, &opt_m, &opt_v, opt_step)?;
        }
        plot_log(cfg, val_tokens.len(), &log, end, f32::NAN)?;
        return Ok(TrainReport {
            log,
            checkpoint: if opts.no_checkpoint || done == 0 {
                PathBuf::new()
            } else {
                cfg.out.join(checkpoint::step_dir_name(done))
            },
            val_first,
            val_last,
            seconds: t0.elapsed().as_secs_f64(),
            device,
            tokens_per_s_median: toks_per_step / median(&step_secs),
            step_ms_median: median(&step_secs) * 1e3,
            peak_mem_bytes,
            interrupted: Some(done),
        });
    }
    // final validation loss after the last update
    let v = eval(&mut model, &params)?;
    val_last = v;
    bar.finish_with_message(format!("done: val loss {v:.3}"));
    write_final(&cfg.out, end, v)?;
    plot_log(cfg, val_tokens.len(), &log, end, v)?;
    let checkpoint = match last_ckpt {
        Some(p) => p,
        None if opts.no_checkpoint => PathBuf::new(),
        None => checkpoint::resolve(&cfg.out)?,
    };
    if step_secs.is_empty() {
        step_secs = profiled_secs;
    }
    // steady state: skip the first three steps (allocation, first launches) when there are more
    let timed = if step_secs.len() > 3 {
        &step_secs[3..]
    } else {
        &step_secs[..]
    };
    let step_s = median(timed);
    Ok(TrainReport {
        log,
        checkpoint,
        val_first,
        val_last,
        seconds: t0.elapsed().as_secs_f64(),
        device,
        tokens_per_s_median: toks_per_step / step_s,
        step_ms_median: step_s * 1e3,
        peak_mem_bytes,
        interrupted: None,
    })
}

/// Median of `x` (NaN when empty).
fn median(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut v = x.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn val_last_fmt(v: f32) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "-".into()
    }
}

fn append_log(path: &Path, e: &LogEntry) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(e)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `log.jsonl`, keeping the entries of steps before `upto` (a resumed run drops what a
/// crashed run logged after its last checkpoint). A last line without its newline is the torn
/// write of a killed run and is dropped; any other bad line is an error naming it.
pub fn read_log(path: &Path, upto: u64) -> Result<Vec<LogEntry>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..=i],
        None => &bytes[..0],
    };
    let text = std::str::from_utf8(whole)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: LogEntry = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a log entry", path.display(), i + 1))?;
        if e.step < upto {
            out.push(e);
        }
    }
    Ok(out)
}

fn rewrite_log(path: &Path, log: &[LogEntry]) -> Result<()> {
    let mut s = String::new();
    for e in log {
        s.push_str(&serde_json::to_string(e)?);
        s.push('\n');
    }
    checkpoint::write_atomic(path, s.as_bytes())
}

fn write_final(out: &Path, step: u64, val: f32) -> Result<()> {
    let j = serde_json::json!({"step": step, "val_loss": val});
    checkpoint::write_atomic(
        &out.join("final.json"),
        serde_json::to_string_pretty(&j)?.as_bytes(),
    )
}

/// Draws `loss.png` in the run directory: the training loss (a trailing mean) and the validation
/// loss at each evaluation (`val_tokens` held-out tokens) against the step; the numbers are in
/// `log.jsonl` and `final.json` beside it.
fn plot_log(
    cfg: &TrainConfig,
    val_tokens: usize,
    log: &[LogEntry],
    end: u64,
    final_val: f32,
) -> Result<()> {
    // training loss as a trailing mean over `w` steps (single batches are noisy)
    let w = (log.len() / 50).clamp(1, 20);
    let train: Vec<(f64, f64)> = log
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let lo = (i + 1).saturating_sub(w);
            let mean = log[lo..=i].iter().map(|x| x.loss as f64).sum::<f64>() / (i + 1 - lo) as f64;
            (e.step as f64, mean)
        })
        .collect();
    let train_label = if w > 1 {
        format!("train (mean of {w} steps)")
    } else {
        "train".to_string()
    };
    let mut val: Vec<(f64, f64)> = log
        .iter()
        .filter_map(|e| e.val_loss.map(|v| (e.step as f64, v as f64)))
        .collect();
    val.push((end as f64, final_val as f64));
    let title = format!(
        "Training loss ({}×{} tokens a step); validation on {} held-out clean tokens",
        cfg.batch * cfg.grad_accum,
        cfg.seq,
        val_tokens
    );
    let val = crate::plot::Line::new(
        "validation (held-out clean text)",
        val.iter()
            .map(|&(x, y)| crate::plot::Point::new(x, y))
            .collect(),
    );
    crate::plot::chart(
        &cfg.out.join("loss.png"),
        &crate::plot::Chart::new(
            &title,
            "step",
            "cross-entropy (nats)",
            &[crate::plot::Line::curve(train_label, &train), val],
        ),
    )
}
