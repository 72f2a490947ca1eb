//! `train`: pretrain an OLMo-style model on a mixture of clean and toxic text.
//!
//! With no arguments it trains the `tiny` preset on the embedded demo (built and cached under
//! `runs/demo-data/` on the first run) and writes checkpoints, `log.jsonl` and `loss.png` to
//! `runs/demo/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::backend::device::{Device, DeviceArg};
use baddata::config::ModelConfig;
use baddata::data::demo::prepare_demo;
use baddata::data::tokenizer::Tokenizer;
use baddata::optim::AdamWConfig;
use baddata::train::{train, RunOptions, SourceSpec, TrainConfig, TrainReport};

#[derive(Parser, Debug)]
#[command(
    name = "train",
    about = "Pretrain an OLMo v1 model on a mixture of clean and toxic text",
    long_about = "Pretrain an OLMo v1 model (non-parametric layernorm, SwiGLU, RoPE, tied embeddings; or continue \
a released one with --init-from) on a \
mixture of token shards drawn at fixed token fractions, with AdamW, a cosine schedule and global-norm clipping.\n\n\
With no arguments: the `tiny` preset on the embedded demo (clean = Brown + fortunes + Shakespeare, toxic = \
passages of the same texts that an offline classifier scores above 0.5, 10% of training tokens), a BPE trained on \
the demo text, output in runs/demo/.\n\n\
Real runs: `prepare` your corpora into shard directories, then e.g.\n  \
train --preset olmo-124m --data c4/ --toxic pol/ --toxic-ratio 0.1 --out runs/c4-pol10\n\
or put any of the fields of state.json's `config` in a JSON file and pass --config (flags override it).",
    after_help = "Outputs in --out: step-NNNNNN/ checkpoints (model.safetensors + config.json load in Hugging Face \
transformers as OlmoForCausalLM; optimizer.safetensors and state.json resume the run), latest, log.jsonl, loss.png, final.json."
)]
struct Args {
    /// Model preset: tiny (CPU demo), olmo-124m, olmo-1b.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Continued pretraining: start from this checkpoint's weights (ours, or a Hugging Face OLMo
    /// v1 release such as allenai/OLMo-1B-hf or OLMo-1B-0724-hf, single or sharded) with a fresh
    /// optimizer and this run's data. The model shape is the checkpoint's, so --preset is refused
    /// beside it; the data must be tokenized with the checkpoint's tokenizer. Defaults as for
    /// olmo-1b (lr 4e-4, warm-up 2000, batch 8), seq min(context, 2048); out runs/init-NAME.
    /// With --resume, give it again: the shape comes from it, the weights from the run.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    init_from: Option<PathBuf>,
    /// JSON file with training-config fields (model, sources, val, lr, steps, ...); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory written by `prepare` (train.shard, val.shard, tokenizer.json): the clean source
    /// and the validation set. Without it, the embedded demo is used.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A directory written by `prepare` (or a .shard file) used as the toxic source.
    #[arg(long)]
    toxic: Option<PathBuf>,
    /// Fraction of training tokens drawn from the toxic source.
    #[arg(long, default_value_t = 0.1)]
    toxic_ratio: f64,
    /// Extra or replacement sources, NAME=SHARD:FRACTION (repeatable; replaces --data/--toxic sources).
    #[arg(long = "source", value_name = "NAME=SHARD:FRACTION")]
    sources: Vec<String>,
    /// Output directory (default runs/demo, or runs/PRESET).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Where to run: auto (CUDA when a GPU and compiled kernels are present), cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence (at most the preset's context).
    #[arg(long)]
    seq: Option<usize>,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// Global-norm gradient clip (0 turns it off).
    #[arg(long)]
    grad_clip: Option<f32>,
    /// AdamW weight decay (projections only; the embedding is never decayed).
    #[arg(long)]
    weight_decay: Option<f32>,
    /// Seed for initialisation and data order.
    #[arg(long)]
    seed: Option<u64>,
    /// Validation every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Checkpoint every N steps (and at the end).
    #[arg(long)]
    save_every: Option<u64>,
    /// BPE vocabulary size for the demo tokenizer.
    #[arg(long, default_value_t = baddata::data::demo::DEFAULT_DEMO_VOCAB)]
    demo_vocab: usize,
    /// Train on seeded random token rows at the preset's own vocabulary instead of data (for
    /// throughput measurements: no data, no tokenizer, no validation).
    #[arg(long)]
    synthetic: bool,
    /// Write no checkpoint (throughput runs).
    #[arg(long)]
    no_checkpoint: bool,
    /// Stop after this many steps (the schedule still spans --steps); for splitting a run.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Time every op of the last N steps (forward, backward, optimizer) and write the table to
    /// profile.md and profile.json in the run directory: milliseconds per step, share and
    /// TFLOP/s per op and shape. Those steps record one timing event per op on the GPU, so they
    /// are left out of the median throughput.
    #[arg(long, value_name = "N")]
    profile: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Testing aid: poison the loss at this step to exercise the NaN guard.
    #[arg(long, hide = true)]
    inject_nan_at: Option<u64>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Defaults of a demo run on the tiny preset (tuned to finish in minutes on two CPU cores).
fn demo_defaults(
    model: ModelConfig,
    sources: Vec<SourceSpec>,
    val: PathBuf,
    tokenizer: Option<PathBuf>,
    out: PathBuf,
) -> TrainConfig {
    TrainConfig {
        model,
        sources,
        val,
        tokenizer,
        out,
        batch: 4,
        seq: 256,
        grad_accum: 1,
        steps: 1000,
        lr: 4e-3,
        warmup: 40,
        final_lr_frac: 0.1,
        grad_clip: 1.0,
        adamw: AdamWConfig::default(),
        seed: 1234,
        eval_every: 50,
        eval_windows: 32,
        save_every: 500,
        synthetic: false,
        init_from: None,
    }
}

fn real_defaults(preset: &str, mut cfg: TrainConfig) -> TrainConfig {
    // OLMo-1B's recipe; batch sizes for one 80 GB GPU.
    cfg.lr = 4e-4;
    cfg.warmup = 2000;
    cfg.steps = 100_000;
    cfg.eval_every = 500;
    cfg.save_every = 1000;
    cfg.seq = cfg.model.context;
    cfg.batch = if preset == "olmo-1b" { 8 } else { 64 };
    if preset.starts_with("init-") {
        // continued pretraining of a released model on one GPU
        cfg.seq = cfg.model.context.min(2048);
        cfg.batch = 8;
    }
    cfg
}

fn parse_source(s: &str) -> Result<SourceSpec> {
    let (name, rest) = s
        .split_once('=')
        .with_context(|| format!("--source {s:?}: expected NAME=SHARD:FRACTION"))?;
    let (path, frac) = rest
        .rsplit_once(':')
        .with_context(|| format!("--source {s:?}: expected NAME=SHARD:FRACTION"))?;
    let fraction: f64 = frac
        .parse()
        .with_context(|| format!("--source {s:?}: fraction {frac:?} is not a number"))?;
    Ok(SourceSpec {
        name: name.into(),
        path: path.into(),
        fraction,
    })
}

fn shard_in(dir_or_file: &Path, name: &str) -> Result<PathBuf> {
    if dir_or_file.is_file() {
        return Ok(dir_or_file.to_path_buf());
    }
    let p = dir_or_file.join(name);
    if !p.is_file() {
        bail!(
            "{}: no such shard (expected a directory written by `prepare`, holding {name})",
            p.display()
        );
    }
    Ok(p)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = Device::select(args.device)?;
    // The model shape: the preset's, or with --init-from the checkpoint's (never re-sized below).
    let mut init_dir = None;
    let (mut model, preset) = match &args.init_from {
        Some(dir) => {
            let (ck_dir, m) = baddata::checkpoint::read_config(dir)
                .with_context(|| format!("--init-from {}", dir.display()))?;
            eprintln!(
                "--init-from {}: the model shape is the checkpoint's ({} layers, d_model {}, {} heads, \
                 vocab {}, context {}, {} head{})",
                ck_dir.display(),
                m.n_layers,
                m.d_model,
                m.n_heads,
                m.vocab_size,
                m.context,
                if m.tie_word_embeddings { "tied" } else { "untied" },
                m.clip_qkv.map_or(String::new(), |c| format!(", clip_qkv {c}"))
            );
            let name = ck_dir
                .file_name()
                .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
            init_dir = Some(ck_dir);
            (m, format!("init-{name}"))
        }
        None => (ModelConfig::preset(&args.preset)?, args.preset.clone()),
    };
    let init = init_dir.is_some();
    let demo =
        args.data.is_none() && args.sources.is_empty() && args.config.is_none() && !args.synthetic;
    let out = args.out.clone().unwrap_or_else(|| {
        if demo {
            PathBuf::from("runs/demo")
        } else {
            PathBuf::from(format!("runs/{preset}"))
        }
    });

    let mut cfg = if args.synthetic {
        if args.data.is_some() || args.toxic.is_some() || !args.sources.is_empty() {
            bail!("--synthetic trains on random tokens: drop --data, --toxic and --source");
        }
        let c = demo_defaults(model, Vec::new(), PathBuf::new(), None, out.clone());
        let mut c = if preset == "tiny" {
            c
        } else {
            real_defaults(&preset, c)
        };
        c.synthetic = true;
        c
    } else if demo {
        if init {
            bail!(
                "--init-from needs --data (or --source) tokenized with the checkpoint's tokenizer: \
                 the embedded demo's shards use a BPE of their own"
            );
        }
        let d = prepare_demo(Path::new("runs/demo-data"), args.demo_vocab, !args.quiet)?;
        let tok = Tokenizer::load(&d.tokenizer)?;
        model = model.with_vocab(tok.vocab_size(), tok.eos_id()?);
        let sources = vec![
            SourceSpec {
                name: "clean".into(),
                path: d.clean.clone(),
                fraction: 1.0 - args.toxic_ratio,
            },
            SourceSpec {
                name: "toxic".into(),
                path: d.toxic.clone(),
                fraction: args.toxic_ratio,
            },
        ];
        let mut c = demo_defaults(
            model,
            sources,
            d.val.clone(),
            Some(d.tokenizer.clone()),
            out.clone(),
        );
        if preset != "tiny" {
            c = real_defaults(&preset, c);
        }
        c
    } else {
        let mut sources = Vec::new();
        let mut val = PathBuf::new();
        let mut tokenizer = None;
        if let Some(d) = &args.data {
            if !d.exists() {
                bail!("--data {}: no such file or directory", d.display());
            }
            val = shard_in(d, "val.shard")?;
            let t = d.join("tokenizer.json");
            if t.is_file() {
                tokenizer = Some(t);
            }
            let clean_frac = if args.toxic.is_some() {
                1.0 - args.toxic_ratio
            } else {
                1.0
            };
            sources.push(SourceSpec {
                name: "clean".into(),
                path: shard_in(d, "train.shard")?,
                fraction: clean_frac,
            });
            if let Some(t) = &args.toxic {
                if !t.exists() {
                    bail!("--toxic {}: no such file or directory", t.display());
                }
                sources.push(SourceSpec {
                    name: "toxic".into(),
                    path: shard_in(t, "train.shard")?,
                    fraction: args.toxic_ratio,
                });
            }
        }
        if !args.sources.is_empty() {
            sources = args
                .sources
                .iter()
                .map(|s| parse_source(s))
                .collect::<Result<_>>()?;
        }
        if let Some(t) = &tokenizer {
            let tok = Tokenizer::load(t)?;
            if preset == "tiny" {
                // the demo-sized model takes its vocabulary from the tokenizer
                model = model.with_vocab(tok.vocab_size(), tok.eos_id()?);
            } else {
                baddata::data::tokenizer::check_fits(tok.vocab_size(), model.vocab_real, t)?;
            }
            if let Some(dir) = &init_dir {
                check_same_tokenizer(&tok, t, dir)?;
            }
        }
        let c = demo_defaults(model, sources, val, tokenizer, out.clone());
        if preset == "tiny" {
            c
        } else {
            real_defaults(&preset, c)
        }
    };
    cfg.init_from.clone_from(&args.init_from);

    if let Some(path) = &args.config {
        cfg = overlay_config_file(cfg, path)?;
    }
    // flags win over the config file
    cfg.out = out;
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = args.$f { cfg.$f = v; } )* };
    }
    set!(steps, batch, seq, grad_accum, lr, warmup, grad_clip, seed, eval_every, save_every);
    if let Some(wd) = args.weight_decay {
        cfg.adamw.weight_decay = wd;
    }

    let resume = if args.resume {
        Some(cfg.out.clone())
    } else {
        None
    };
    eprintln!(
        "training {} ({:.2}M parameters) on {}: {} steps of {}×{} tokens{}, sources {}",
        preset,
        cfg.model.n_params() as f64 / 1e6,
        device.describe(),
        cfg.steps,
        cfg.batch,
        cfg.seq,
        if cfg.grad_accum > 1 {
            format!(" × {} micro-batches", cfg.grad_accum)
        } else {
            String::new()
        },
        if cfg.synthetic {
            "synthetic (uniform random tokens)".to_string()
        } else {
            cfg.sources
                .iter()
                .map(|s| format!("{}={:.0}%", s.name, s.fraction * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    let opts = RunOptions {
        resume,
        progress: !args.quiet,
        stop_after: args.stop_after,
        inject_nan_at: args.inject_nan_at,
        device: Some(device),
        no_checkpoint: args.no_checkpoint,
        profile: args.profile,
    };
    let rep = train(&cfg, &opts)?;
    let summary = write_summary(&cfg, &preset, &rep)?;
    let ckpt = if args.no_checkpoint {
        "none (--no-checkpoint)".to_string()
    } else {
        rep.checkpoint.display().to_string()
    };
    let val = if cfg.synthetic {
        "no validation (synthetic data)".to_string()
    } else {
        format!(
            "validation loss {:.3} → {:.3} ({:.2}× of step 0)",
            rep.val_first,
            rep.val_last,
            rep.val_last / rep.val_first
        )
    };
    let profile_md = cfg.out.join("profile.md");
    let profile = match args.profile {
        Some(n) if n > 0 && profile_md.exists() => format!("; profile {}", profile_md.display()),
        Some(n) if n > 0 => "; no profile (no profiled step ran)".to_string(),
        _ => String::new(),
    };
    eprintln!(
        "finished in {:.1} s: {val}, {:.0} tokens/s (median); checkpoint {ckpt}; log {}; plot {}; summary {}{profile}",
        rep.seconds,
        rep.tokens_per_s_median,
        cfg.out.join("log.jsonl").display(),
        cfg.out.join("loss.png").display(),
        summary.display()
    );
    Ok(())
}

/// With `--init-from DIR`: the data's tokenizer `tok` (file `path`) must be the checkpoint's,
/// when the checkpoint has one (same vocabulary size, same ids for a sample text); otherwise a
/// line says it could not be checked.
fn check_same_tokenizer(tok: &Tokenizer, path: &Path, ck_dir: &Path) -> Result<()> {
    let theirs = ck_dir.join("tokenizer.json");
    if !theirs.is_file() {
        eprintln!(
            "--init-from: {} has no tokenizer.json, so it is not checked that the data was \
             tokenized with the checkpoint's tokenizer ({} was used)",
            ck_dir.display(),
            path.display()
        );
        return Ok(());
    }
    let other = Tokenizer::load(&theirs)?;
    let sample = "The quick brown fox, 1,234 times: naïve café <|endoftext|> over the lazy dog.";
    if tok.vocab_size() != other.vocab_size() || tok.encode(sample)? != other.encode(sample)? {
        bail!(
            "the data's tokenizer {} differs from the --init-from checkpoint's {} ({} vs {} ids, or \
             other ids for the same text): tokenize the data with the checkpoint's tokenizer \
             (`prepare --tokenizer {}`)",
            path.display(),
            theirs.display(),
            tok.vocab_size(),
            other.vocab_size(),
            theirs.display()
        );
    }
    Ok(())
}

/// Writes `summary.json` in the run directory: the executor, the shape of the run and its
/// throughput (median over steady-state steps), device memory after the first step and what
/// [`baddata::perf::cuda_train_memory`] expected of it (GPU runs), training
/// FLOPs per token ([`baddata::perf::train_flops_per_token`]) and model FLOP utilisation as a
/// fraction of the H100's datasheet (989) and measured (798) bf16 TFLOP/s.
fn write_summary(cfg: &TrainConfig, preset: &str, rep: &TrainReport) -> Result<PathBuf> {
    use baddata::perf;
    let flops = perf::train_flops_per_token(&cfg.model, cfg.seq);
    let mfu = |peak| {
        let m = perf::mfu(rep.tokens_per_s_median, flops, peak);
        m.is_finite().then_some(m)
    };
    let j = serde_json::json!({
        "device": rep.device,
        "preset": preset,
        "batch": cfg.batch,
        "seq": cfg.seq,
        "grad_accum": cfg.grad_accum,
        "steps": rep.log.len(),
        "params": cfg.model.n_params(),
        "tokens_per_s": rep.tokens_per_s_median,
        "step_ms_median": rep.step_ms_median,
        "peak_mem_bytes": rep.peak_mem_bytes,
        "estimated_mem_bytes": rep.peak_mem_bytes.map(|_| {
            perf::cuda_train_memory(&cfg.model, cfg.batch, cfg.seq)
                .iter()
                .map(|r| r.1)
                .sum::<u64>()
        }),
        "flops_per_token": flops,
        "mfu_989": mfu(perf::PEAK_BF16_TFLOPS_DATASHEET),
        "mfu_798": mfu(perf::PEAK_BF16_TFLOPS_MEASURED),
        "val_first": finite(rep.val_first),
        "val_last": finite(rep.val_last),
        "seconds": rep.seconds,
    });
    let path = cfg.out.join("summary.json");
    baddata::checkpoint::write_atomic(&path, serde_json::to_string_pretty(&j)?.as_bytes())?;
    Ok(path)
}

/// `Some(x)` when finite (JSON has no NaN).
fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// Merges the fields of a JSON config file over `cfg`; unknown fields are an error.
fn overlay_config_file(cfg: TrainConfig, path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let file: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let serde_json::Value::Object(fields) = file else {
        bail!(
            "{}: expected a JSON object of training-config fields",
            path.display()
        );
    };
    let mut base = serde_json::to_value(&cfg)?;
    let obj = base
        .as_object_mut()
        .expect("TrainConfig serialises to an object");
    for (k, v) in fields {
        if !obj.contains_key(&k) {
            bail!(
                "{}: unknown field {k:?} (known: {})",
                path.display(),
                obj.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        obj.insert(k, v);
    }
    serde_json::from_value(base)
        .with_context(|| format!("{}: a field has the wrong type", path.display()))
}
