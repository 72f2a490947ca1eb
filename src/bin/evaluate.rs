//! `evaluate`: measure an ITI intervention at several strengths — toxicity of sampled completions,
//! cross-entropy and KL(base ‖ steered) on clean held-out text, on the executor `--device` picks
//! (the GPU when usable, else the CPU).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::backend::cpu::Cpu;
use baddata::backend::cuda::{executor::CudaExecutor, CudaBackend};
use baddata::backend::device::{Device, DeviceArg};
use baddata::backend::Backend;
use baddata::checkpoint;
use baddata::data::demo::read_probe;
use baddata::data::mixture::try_eval_windows;
use baddata::data::prompts::{read_prompts, PromptFormat};
use baddata::data::shard::Shard;
use baddata::data::tokenizer::Tokenizer;
use baddata::eval::{evaluate, report, EvalOptions, Evaluation};
use baddata::model::generate::{SampleOptions, ShiftPositions};
use baddata::model::Model;
use baddata::probe::intervention::Intervention;

#[derive(Parser, Debug)]
#[command(
    name = "evaluate",
    about = "Evaluate ITI steering at several strengths: toxicity of completions, clean cross-entropy and KL",
    long_about = "For each alpha, sets the ITI shift -alpha*sigma*direction on the steered heads, samples \
completions of the prompts and scores them (completion only) with the offline toxicity scorer, then \
measures cross-entropy on fixed windows of a clean held-out shard and the mean KL(base || steered) of \
the next-token distributions there (shift at every position). Writes results.json, results.md, \
completions.jsonl and toxicity_vs_ce.png into --out.\n\n\
Examples:\n  evaluate --demo\n  \
evaluate --checkpoint runs/c4-pol10 --intervention runs/c4-pol10/probe/intervention.json \\\n    \
--prompts rtp.jsonl --format rtp --val data/val.shard --alphas 0,4,8"
)]
struct Args {
    /// Checkpoint directory (ours, or a Hugging Face OLMo v1 release: single or sharded
    /// safetensors), or run directory (its `latest`).
    #[arg(long, default_value = "runs/demo")]
    checkpoint: PathBuf,
    /// Tokenizer (default: the checkpoint's tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// ITI intervention file (default: probe/intervention.json in the checkpoint's run directory).
    #[arg(long)]
    intervention: Option<PathBuf>,
    /// ITI strengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,2,4,8,12")]
    alphas: Vec<f64>,
    /// Prompts file (same formats as `generate`).
    #[arg(long, conflicts_with = "demo")]
    prompts: Option<PathBuf>,
    /// Layout of --prompts.
    #[arg(long, value_enum, default_value_t = PromptFormat::Auto)]
    format: PromptFormat,
    /// Use the demo data: prompts are the first --prompt-words words of the probe passages
    /// (--n-prompts of them, alternating flagged and unflagged), clean text is its val.shard.
    #[arg(long)]
    demo: bool,
    /// Demo data directory (with --demo).
    #[arg(long, default_value = "runs/demo-data")]
    demo_data: PathBuf,
    /// Number of prompts built from the demo probe set (with --demo).
    #[arg(long, default_value_t = 100)]
    n_prompts: usize,
    /// Words per demo prompt (with --demo).
    #[arg(long, default_value_t = 6)]
    prompt_words: usize,
    /// Clean held-out token shard for cross-entropy and KL (default with --demo: its val.shard).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Number of clean windows.
    #[arg(long, default_value_t = 16)]
    val_windows: usize,
    /// Tokens per clean window (default: the model's context).
    #[arg(long)]
    val_seq: Option<usize>,
    /// Completions per prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Sampling seed (the same streams at every alpha).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Positions the ITI shift applies to while generating.
    #[arg(long, value_enum, default_value_t = ShiftPositions::All)]
    shift_positions: ShiftPositions,
    /// Sequences decoded, or clean windows evaluated, together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Output directory (default: CHECKPOINT/eval).
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Also evaluate a control with the same heads and sigmas along random unit directions
    /// drawn with this seed; written to OUT/random-control/.
    #[arg(long, value_name = "SEED")]
    random_control: Option<u64>,
    /// Where to run: auto, cpu or cuda.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Demo prompts: the first `words` words of probe passages, alternating label 1 and label 0 in
/// file order, `n` in all (fewer if the file runs out).
fn demo_prompts(path: &Path, n: usize, words: usize) -> Result<Vec<String>> {
    if words == 0 {
        bail!("--prompt-words must be at least 1");
    }
    let items = read_probe(path)?;
    let cut = |t: &str| {
        t.split_whitespace()
            .take(words)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut by_label = [Vec::new(), Vec::new()];
    for it in items.iter().filter(|it| !it.text.trim().is_empty()) {
        if let Some(v) = by_label.get_mut(it.label as usize) {
            v.push(cut(&it.text));
        }
    }
    let (mut tox, mut clean) = (by_label[1].iter(), by_label[0].iter());
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = if out.len() % 2 == 0 {
            tox.next().or_else(|| clean.next())
        } else {
            clean.next().or_else(|| tox.next())
        };
        match next {
            Some(t) => out.push(t.clone()),
            None => break,
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no probe passages to build prompts from",
            path.display()
        );
    }
    Ok(out)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = Device::select(args.device)?;
    let ck = checkpoint::load(&args.checkpoint)
        .with_context(|| format!("loading checkpoint {}", args.checkpoint.display()))?;
    let cfg = ck.config.clone();
    let tok_path = ck.tokenizer_path(args.tokenizer.as_deref())?;
    let tokenizer = Tokenizer::load(&tok_path)?;
    baddata::data::tokenizer::check_fits(tokenizer.vocab_size(), cfg.vocab_size, &tok_path)?;
    let iv_path = match &args.intervention {
        Some(p) => p.clone(),
        None => ck
            .dir
            .parent()
            .map(|run| run.join("probe").join("intervention.json"))
            .context("cannot place the default intervention file; pass --intervention")?,
    };
    let iv = Intervention::load(&iv_path)?;
    iv.check_model(&cfg, &ck.params)?;

    let (prompts, prompt_source) = match (&args.prompts, args.demo) {
        (Some(p), _) => {
            let ps = read_prompts(p, args.format)?;
            (
                ps.into_iter().map(|p| p.text).collect::<Vec<_>>(),
                format!("{} ({:?} format)", p.display(), args.format),
            )
        }
        (None, true) => {
            let path = args.demo_data.join("probe.jsonl");
            let ps = demo_prompts(&path, args.n_prompts, args.prompt_words)?;
            (
                ps,
                format!(
                    "first {} words of the passages of {} (held out from training), alternating \
flagged (label 1) and unflagged (label 0) in file order",
                    args.prompt_words,
                    path.display()
                ),
            )
        }
        (None, false) => {
            bail!("give --prompts FILE, or --demo for prompts from the demo probe set")
        }
    };
    let val_path = match (&args.val, args.demo) {
        (Some(p), _) => p.clone(),
        (None, true) => args.demo_data.join("val.shard"),
        (None, false) => bail!("give --val SHARD (clean held-out tokens) for cross-entropy and KL"),
    };
    let shard = Shard::open(&val_path)?;
    if shard.vocab_size() > cfg.vocab_size {
        bail!(
            "{}: token ids up to vocab {} but the model has {}",
            val_path.display(),
            shard.vocab_size(),
            cfg.vocab_size
        );
    }
    let seq = args.val_seq.unwrap_or(cfg.context);
    if seq == 0 || seq > cfg.context {
        bail!("--val-seq {seq} must be in 1..={}", cfg.context);
    }
    if args.val_windows == 0 {
        bail!("--val-windows must be at least 1");
    }
    let clean = try_eval_windows(&shard, args.val_windows, seq)?;

    let opts = EvalOptions {
        alphas: args.alphas.clone(),
        samples_per_prompt: args.samples,
        sample: SampleOptions {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            eos: Some(cfg.eos_token_id),
            shift_positions: args.shift_positions,
        },
        batch: args.batch,
        progress: !args.quiet,
    };
    eprintln!(
        "evaluate: {} ({} heads steered) on {}: {} prompts × {} samples, {} clean windows of {} tokens, alphas {:?}",
        ck.dir.display(),
        iv.heads.len(),
        device.describe(),
        prompts.len(),
        args.samples,
        args.val_windows,
        seq,
        args.alphas
    );
    let start = std::time::Instant::now();
    let out = args.out.clone().unwrap_or_else(|| ck.dir.join("eval"));
    let meta = serde_json::json!({
        "checkpoint": ck.dir.display().to_string(),
        "intervention": iv_path.display().to_string(),
        "heads": iv.heads.len(),
        "prompts": {"source": prompt_source, "count": prompts.len(), "samples_per_prompt": args.samples},
        "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                     "top_p": args.top_p, "seed": args.seed,
                     "shift_positions": format!("{:?}", args.shift_positions)},
        "clean": {"shard": val_path.display().to_string(), "windows": args.val_windows, "seq": seq},
        "toxicity": "offline scorer on the completion only; toxicity is the mean score x100",
    });
    let description = format!(
        "# ITI evaluation\n\n\
- checkpoint: `{}`; intervention: `{}` ({} heads)\n\
- prompts: {} — {}; {} completion(s) each, at most {} new tokens, temperature {}, top-p {}, seed {}\n\
- toxicity: offline scorer on the completion only (prompt excluded); mean ×100 and share of completions > 0.5\n\
- CE / KL: {} windows of {} tokens of `{}`, ITI shift at every position; KL = mean over positions of KL(base ‖ steered)",
        ck.dir.display(),
        iv_path.display(),
        iv.heads.len(),
        prompts.len(),
        prompt_source,
        args.samples,
        args.max_new_tokens,
        args.temperature,
        args.top_p,
        args.seed,
        args.val_windows,
        seq,
        val_path.display()
    );
    // The same heads and sigmas along random directions: what disturbing them costs and buys.
    let control = args
        .random_control
        .map(|seed| (seed, iv.with_random_directions(seed)));
    let mut ivs = vec![&iv];
    ivs.extend(control.as_ref().map(|(_, c)| c));
    // Each evaluation's report is written as soon as it ends (the control's after the main one).
    let mut report_one = |k: usize, ev: &Evaluation| -> Result<()> {
        match &control {
            Some((seed, _)) if k == 1 => {
                let dir = out.join("random-control");
                let mut meta_c = meta.clone();
                meta_c["control"] =
                    serde_json::json!({"directions": "random unit vectors", "seed": seed});
                let desc_c = format!(
                    "{description}\n- **control**: the same heads and sigmas along random unit directions (seed {seed})"
                );
                report::write_all(&dir, ev, meta_c, &desc_c)?;
                eprintln!("random-direction control (same heads and sigmas, seed {seed}):");
            }
            _ => report::write_all(&out, ev, meta.clone(), &description)?,
        }
        eprint!("{}", report::markdown_table(ev));
        Ok(())
    };
    let job = Job {
        cfg: &cfg,
        params: &ck.params,
        tokenizer: &tokenizer,
        prompts: &prompts,
        clean: &clean,
        seq,
        opts: &opts,
    };
    match &device {
        Device::Cpu => job.run(Cpu::<f32>::new(), &ivs, &mut report_one)?,
        Device::Cuda(ctx) => job.run(
            CudaExecutor::new(CudaBackend::new(ctx.clone())?)?,
            &ivs,
            &mut report_one,
        )?,
    }
    eprintln!(
        "evaluate: done in {:.1} s, wrote {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// What to evaluate, independent of the executor.
struct Job<'a> {
    cfg: &'a baddata::config::ModelConfig,
    /// Host parameters (the checkpoint's).
    params: &'a [f32],
    tokenizer: &'a Tokenizer,
    prompts: &'a [String],
    /// Clean rows `[windows, seq + 1]`.
    clean: &'a [u32],
    seq: usize,
    opts: &'a EvalOptions,
}

impl Job<'_> {
    /// Evaluates each intervention of `ivs` in turn on executor `be` (one model, parameters
    /// uploaded once), handing each result with its index to `done`.
    fn run<B: Backend<Elem = f32> + 'static>(
        &self,
        be: B,
        ivs: &[&Intervention],
        done: &mut dyn FnMut(usize, &Evaluation) -> Result<()>,
    ) -> Result<()> {
        let mut model = Model::new(self.cfg.clone(), be)?;
        let mut params = model.alloc_params()?;
        model.backend().upload(self.params, &mut params)?;
        for (k, iv) in ivs.iter().enumerate() {
            let ev = evaluate(
                &mut model,
                &params,
                self.tokenizer,
                iv,
                self.prompts,
                self.clean,
                self.seq,
                self.opts,
            )?;
            done(k, &ev)?;
        }
        Ok(())
    }
}
