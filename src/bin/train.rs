//! `train`: pretrain an OLMo-style model on a mixture of clean and toxic text.
//!
//! With no arguments it trains the `tiny` preset on the embedded demo (built and cached under
//! `runs/demo-data/` on the first run) and writes checkpoints, `log.jsonl` and `loss.png` to
//! `runs/demo/`; run again, it continues that run (a finished one just reports itself).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

use baddata::backend::device::Device;
use baddata::config::ModelConfig;
use baddata::perf;
use baddata::train::interrupt::{Interrupt, EXIT_INTERRUPTED};
use baddata::train::run_dir;
use baddata::train::setup::{
    base_model, check_flags, fresh_config, read_config_file, resumed_config, Base, TrainFlags,
    DEMO_DATA,
};
use baddata::train::{train, RunOptions, TrainConfig, TrainReport};

#[derive(Parser, Debug)]
#[command(
    name = "train",
    about = "Pretrain an OLMo v1 model on a mixture of clean and toxic text",
    long_about = "Pretrain an OLMo v1 model (non-parametric layernorm, SwiGLU, RoPE, tied embeddings; or continue \
a released one with --init-from) on a \
mixture of token shards drawn at fixed token fractions, with AdamW, a cosine schedule and global-norm clipping.\n\n\
With no arguments: the tiny preset on the embedded demo (clean = Brown + fortunes + Shakespeare, toxic = \
passages of the same texts that an offline classifier scores above 0.5, 10% of training tokens), a BPE trained on \
the demo text, output in runs/demo/. Run again, the demo continues its run in runs/demo/ (a finished run only \
reports itself); --overwrite trains it again from scratch.\n\n\
Real runs: prepare your corpora into shard directories, then e.g.\n  \
train --preset olmo-124m --data c4/ --toxic pol/ --toxic-ratio 0.1 --out runs/c4-pol10\n\
or put any of the fields of run.json's config in a JSON file and pass --config (flags override it).\n\n\
A directory that holds a run is never mixed with another: --resume continues it with the configuration it was \
started with (a flag that would change the run is refused), --overwrite replaces it. Ctrl-C (or SIGTERM) stops \
after the micro-batch in progress and saves the last completed step; a second Ctrl-C exits at once.",
    after_help = "Outputs in --out: run.json (the run's configuration), step-NNNNNN/ checkpoints (model.safetensors + \
config.json load in Hugging Face transformers as OlmoForCausalLM; optimizer.safetensors and state.json resume the \
run), latest, log.jsonl, loss.png, final.json, summary.json.\n\n\
Defaults that depend on the preset: steps 1000 (tiny) / 100000 (olmo-124m, olmo-1b); batch 4 / 64 / 8; seq 256 / \
the preset's context (1024, 2048); lr 4e-3 / 4e-4; warmup 40 / 2000; eval every 50 / 500; save every 500 / 1000."
)]
struct Args {
    #[command(flatten)]
    run: TrainFlags,
    /// Output directory [default: runs/demo for the demo, else runs/PRESET].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint, with the configuration it was started
    /// with (flags that would change the run are refused; --stop-after, --quiet, --profile and
    /// --device may change).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run in --out (its checkpoints, log and plots are deleted first).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    device: baddata::cli::DeviceFlag,
    /// Write no checkpoint (throughput runs).
    #[arg(long)]
    no_checkpoint: bool,
    /// Stop after this many steps (the schedule still spans --steps); for splitting a run.
    #[arg(long, value_name = "N")]
    stop_after: Option<u64>,
    /// Time every op of the last N steps (forward, backward, optimizer) and write the table to
    /// profile.md and profile.json in the run directory: milliseconds per step, share and
    /// TFLOP/s per op and shape. Those steps record one timing event per op on the GPU, so they
    /// are left out of the median throughput.
    #[arg(long, value_name = "N")]
    profile: Option<u64>,
    /// Print the plan (model, data, tokens, FLOPs, estimated time) and exit without training.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Testing aid: poison the loss at this step to exercise the NaN guard.
    #[arg(long, hide = true)]
    inject_nan_at: Option<u64>,
}

/// How `train` ended, for the exit status.
enum Outcome {
    Done,
    Interrupted,
}

fn main() {
    baddata::cli::run(|| match run()? {
        Outcome::Done => Ok(()),
        Outcome::Interrupted => std::process::exit(EXIT_INTERRUPTED),
    });
}

fn run() -> Result<Outcome> {
    let args = Args::parse();
    let flags = &args.run;
    check_flags(flags)?;
    let file = flags.config.as_deref().map(read_config_file).transpose()?;
    let mut demo = flags.is_demo(file.as_ref());
    let (base, start) = base_model(flags)?;
    if let Base::InitFrom { dir, .. } = &start {
        eprintln!(
            "--init-from {}: the model shape is the checkpoint's ({} layers, d_model {}, {} heads, \
             vocab {}, context {}, {} head{})",
            dir.display(),
            base.n_layers,
            base.d_model,
            base.n_heads,
            base.vocab_size,
            base.context,
            if base.tie_word_embeddings { "tied" } else { "untied" },
            base.clip_qkv.map_or(String::new(), |c| format!(", clip_qkv {c}"))
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        if demo {
            PathBuf::from("runs/demo")
        } else {
            PathBuf::from(format!("runs/{}", start.name()))
        }
    });
    if out.exists() && !out.is_dir() {
        bail!("--out {}: exists and is not a directory", out.display());
    }

    let device = args.device.select()?;
    let mut existing = run_dir::read(&out)?;
    if let Some(run) = &existing {
        // Without data flags the command is the demo's only if the run there is a demo run;
        // `--resume --out DIR` continues any run.
        demo &= run.config.val.starts_with(DEMO_DATA);
    }
    if args.overwrite && existing.is_some() && !args.dry_run {
        let removed = run_dir::clear(&out)?;
        eprintln!(
            "--overwrite: removed the run in {} ({})",
            out.display(),
            removed.join(", ")
        );
        existing = None;
    }
    // The demo continues its own run; any other run directory is resumed only when asked.
    let resume = match &existing {
        Some(run) if args.resume || demo => Some(run.clone()),
        Some(run) => bail!(
            "{} already holds a training run ({} of {} steps checkpointed); pass --resume to \
             continue it, --overwrite to replace it, or --out DIR for a new run",
            out.display(),
            run.checkpoint_step,
            run.config.steps
        ),
        None if args.resume => bail!(
            "--resume: {} holds no training run (no {} and no checkpoint)",
            out.display(),
            run_dir::RUN_FILE
        ),
        None => None,
    };
    if args.resume && flags.synthetic {
        bail!("--resume: a synthetic-data run has no data position to resume from");
    }

    let cfg = match &resume {
        Some(run) => resumed_config(flags, file.as_ref(), demo, &out, run, !args.quiet)?,
        None => fresh_config(flags, file.as_ref(), demo, &out, !args.quiet)?,
    };
    cfg.validate()?;

    if let Some(run) = &resume {
        if run.finished() {
            eprintln!(
                "{}: this run already finished ({} of {} steps; checkpoint {}); nothing to do. \
                 Pass --overwrite to train it again from scratch, or --out DIR for another run.",
                out.display(),
                run.checkpoint_step,
                run.config.steps,
                run.checkpoint
                    .as_ref()
                    .map_or("none".into(), |p| p.display().to_string())
            );
            return Ok(Outcome::Done);
        }
    }
    if let Some(run) = &resume {
        match &run.checkpoint {
            Some(ck) => eprintln!(
                "resuming {} from step {} of {} (checkpoint {})",
                out.display(),
                run.checkpoint_step,
                cfg.steps,
                ck.display()
            ),
            None => eprintln!(
                "resuming {}: it stopped before its first checkpoint, so it starts again from \
                 step 0 of {}",
                out.display(),
                cfg.steps
            ),
        }
        if let Some(was) = &run.device {
            if was.starts_with("cpu") == device.is_cuda() {
                eprintln!(
                    "note: the run was started on {was} and continues on {}: the executors round \
                     differently, so the result will not be bit-identical to a run on one of them",
                    device.describe()
                );
            }
        }
    }

    let model_name = preset_name(&cfg.model);
    eprintln!(
        "training {} ({:.2}M parameters) on {}: {} steps of {}×{} tokens{}, sources {}",
        model_name,
        baddata::model::params::n_params(&cfg.model) as f64 / 1e6,
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
                .map(|s| format!("{}={}", s.name, percent(s.fraction)))
                .collect::<Vec<_>>()
                .join(" ")
        }
    );
    let first = resume.as_ref().map_or(0, |r| r.checkpoint_step);
    let est = perf::estimate_train(
        &cfg.model,
        cfg.seq,
        cfg.steps - first,
        cfg.batch * cfg.seq * cfg.grad_accum,
        device.is_cuda(),
    );
    let part = match args.stop_after {
        Some(s) if s < cfg.steps => format!(
            " (this command stops after step {s}: about {})",
            perf::human_duration(
                est.seconds * s.saturating_sub(first) as f64 / (cfg.steps - first) as f64
            )
        ),
        _ => String::new(),
    };
    eprintln!(
        "plan: steps {first}..{} of {:.3}M tokens in all, {:.2e} training FLOPs; about {} {}{part}",
        cfg.steps,
        est.tokens / 1e6,
        est.flops,
        perf::human_duration(est.seconds),
        est.basis
    );
    if est.seconds > 86_400.0 {
        eprintln!(
            "warning: this run would take about {} on {}. Use a GPU (--device cuda), a smaller \
             --preset, or fewer --steps; the progress bar's ETA will correct the estimate once \
             steps run.",
            perf::human_duration(est.seconds),
            device.describe()
        );
    }

    if args.dry_run {
        return Ok(Outcome::Done);
    }
    let interrupt = Interrupt::install()?;
    let opts = RunOptions {
        resume: resume.as_ref().map(|_| out.clone()),
        progress: !args.quiet,
        stop_after: args.stop_after,
        inject_nan_at: args.inject_nan_at,
        device: Some(device.clone()),
        no_checkpoint: args.no_checkpoint,
        profile: args.profile,
        interrupt: Some(interrupt),
    };
    let rep = train(&cfg, &opts)?;
    if let Some(step) = rep.interrupted {
        let saved = if args.no_checkpoint {
            "nothing saved (--no-checkpoint)".to_string()
        } else if step == 0 {
            "no step had completed".to_string()
        } else {
            format!("saved {}", rep.checkpoint.display())
        };
        eprintln!(
            "interrupted after step {step} of {}: {saved}. Continue with:\n  train --resume --out {}",
            cfg.steps,
            out.display()
        );
        return Ok(Outcome::Interrupted);
    }
    let summary = write_summary(&cfg, &model_name, &device, &rep)?;
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
    Ok(Outcome::Done)
}

/// Writes `summary.json` in the run directory: the executor, the shape of the run and its
/// throughput (median over steady-state steps), device memory after the first step and what
/// [`baddata::perf::cuda_train_memory`] expected of it (GPU runs), training
/// FLOPs per token ([`baddata::perf::train_flops_per_token`]) and, for GPU runs, model FLOP
/// utilisation as a fraction of the H100's datasheet (989) and measured (798) bf16 TFLOP/s
/// (`null` on the CPU, which those peaks do not describe).
fn write_summary(
    cfg: &TrainConfig,
    preset: &str,
    device: &Device,
    rep: &TrainReport,
) -> Result<PathBuf> {
    let flops = perf::train_flops_per_token(&cfg.model, cfg.seq);
    let mfu = |peak| {
        let m = perf::mfu(rep.tokens_per_s_median, flops, peak);
        (device.is_cuda() && m.is_finite()).then_some(m)
    };
    let j = serde_json::json!({
        "device": rep.device,
        "preset": preset,
        "batch": cfg.batch,
        "seq": cfg.seq,
        "grad_accum": cfg.grad_accum,
        "steps": rep.log.len(),
        "params": baddata::model::params::n_params(&cfg.model),
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

/// The preset whose shape `model` has (the vocabulary aside), or a description of the shape.
fn preset_name(model: &ModelConfig) -> String {
    let shape = |m: &ModelConfig| (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.context);
    baddata::config::Preset::ALL
        .into_iter()
        .find(|p| shape(&p.model()) == shape(model))
        .map_or_else(
            || format!("a {}-layer d_model {} model", model.n_layers, model.d_model),
            |p| p.name().to_string(),
        )
}

/// A fraction as a percentage: `10%`, `2.5%`.
fn percent(f: f64) -> String {
    let p = f * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// `Some(x)` when finite (JSON has no NaN).
fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}
