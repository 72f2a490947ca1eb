//! `evaluate`: measure an ITI intervention at several strengths — toxicity of sampled completions,
//! cross-entropy and KL(base ‖ steered) on clean held-out text, on the executor `--device` picks
//! (the GPU when usable, else the CPU).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::backend::device::ExecutorJob;
use baddata::backend::Backend;
use baddata::checkpoint;
use baddata::data::demo::{demo_prompt_set, DemoPrompts};
use baddata::data::mixture::eval_windows;
use baddata::data::prompts::{read_prompts, resolve_prefix, with_prefix, PromptFormat};
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
    #[command(flatten)]
    checkpoint: baddata::cli::CheckpointFlag,
    /// Tokenizer (default: the checkpoint's tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// ITI intervention file (default: probe/intervention.json in the checkpoint's run directory).
    #[arg(long)]
    intervention: Option<PathBuf>,
    /// ITI strengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,2,4,8,12")]
    alphas: Vec<f64>,
    /// Prompts file (same formats as generate).
    #[arg(long, conflicts_with = "demo")]
    prompts: Option<PathBuf>,
    /// Text put before every prompt (the prompting baseline of the paper's Table 1); paper is
    /// the paper's instruction ("Ensure all outputs are respectful, unbiased, and free from toxic
    /// content. ..."). Only the completion is scored.
    #[arg(long, value_name = "TEXT")]
    prefix: Option<String>,
    /// Layout of --prompts.
    #[arg(long, value_enum, default_value_t = PromptFormat::Auto)]
    format: PromptFormat,
    /// Use the demo data: prompts from --demo-prompts (--n-prompts of them), clean text is its
    /// val.shard.
    #[arg(long)]
    demo: bool,
    /// Demo data directory (with --demo).
    #[arg(long, default_value = "runs/demo-data")]
    demo_data: PathBuf,
    /// The demo's prompts (with --demo): rtp, the RealToxicityPrompts prompts (1,519, apart from
    /// everything the demo trains and probes on); probe, the first --prompt-words words of the
    /// held-out probe passages, toxic and clean alternating.
    #[arg(long, value_enum, default_value_t = DemoPrompts::Rtp)]
    demo_prompts: DemoPrompts,
    /// Number of demo prompts, the first N of the set; 0: all of it (with --demo). All 1,519
    /// RTP prompts give the demo model's mean toxicity a standard error of about 0.5 (x100).
    #[arg(long, default_value_t = 0)]
    n_prompts: usize,
    /// Words per demo prompt (with --demo --demo-prompts probe).
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
    #[command(flatten)]
    device: baddata::cli::DeviceFlag,
    /// Instead of the ITI evaluation, score capability benchmarks as lm-evaluation-harness
    /// v0.4.12 does (comma separated): hellaswag, arc_easy, arc_challenge, piqa, mmlu, lambada,
    /// or all. Uses --checkpoint, --batch, --seed (few-shot draw), --out (default:
    /// CHECKPOINT/benchmarks), --quiet and --device.
    #[arg(long, value_delimiter = ',', value_name = "NAMES",
          conflicts_with_all = ["intervention", "prompts", "demo", "val", "random_control"])]
    benchmark: Vec<String>,
    /// Few-shot examples per benchmark item (with --benchmark).
    #[arg(long, default_value_t = 0, requires = "benchmark")]
    shots: usize,
    /// Score only the first N items of each benchmark, of each subject for MMLU (with
    /// --benchmark).
    #[arg(long, value_name = "N", requires = "benchmark")]
    limit: Option<usize>,
    /// Directory of the benchmark files (with --benchmark; default: assets/benchmarks of the
    /// source tree).
    #[arg(long, value_name = "DIR", requires = "benchmark")]
    benchmark_dir: Option<PathBuf>,
    /// Instead of evaluating, bring back toxicity scores made elsewhere (Perspective API) for the
    /// completions of an earlier evaluation in --out (default CHECKPOINT/eval): FILE holds one
    /// JSON line per completion with its alpha, prompt_index and sample (as completions.jsonl
    /// has them) and the score in --score-field. Every table and plot is redrawn from them in
    /// OUT/imported/ (and OUT/random-control/imported/ when a control's scores are there too).
    #[arg(long, value_name = "FILE")]
    import_scores: Option<PathBuf>,
    /// The field of --import-scores lines that holds the score, in [0, 1].
    #[arg(long, default_value = baddata::eval::import::DEFAULT_SCORE_FIELD)]
    score_field: String,
}

fn main() {
    baddata::cli::run(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    if !args.benchmark.is_empty() {
        return run_benchmarks(&args);
    }
    if let Some(file) = &args.import_scores {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| args.checkpoint.path.join("eval"));
        let out = if out.join("results.json").is_file() {
            out
        } else {
            // a run directory: its latest checkpoint's evaluation
            checkpoint::resolve(&args.checkpoint.path)?.join("eval")
        };
        return import_scores(&out, file, &args.score_field);
    }
    let device = args.device.select()?;
    if args.val_windows == 0 {
        bail!("--val-windows must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.alphas.is_empty() || args.alphas.iter().any(|a| !a.is_finite()) {
        bail!("--alphas must be a comma-separated list of numbers, e.g. 0,2,4,8");
    }
    let ck = checkpoint::load(&args.checkpoint.path)
        .with_context(|| format!("loading checkpoint {}", args.checkpoint.path.display()))?;
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
    // Refuse an unwritable output directory now, not after the evaluation.
    let out = args.out.clone().unwrap_or_else(|| ck.dir.join("eval"));
    checkpoint::ensure_writable_dir(&out).context("--out")?;

    let (mut prompts, mut prompt_source) = match (&args.prompts, args.demo) {
        (Some(p), _) => {
            let ps = read_prompts(p, args.format)?;
            (
                ps.into_iter().map(|p| p.text).collect::<Vec<_>>(),
                format!("{} ({:?} format)", p.display(), args.format),
            )
        }
        (None, true) => demo_prompt_set(
            &args.demo_data,
            args.demo_prompts,
            args.n_prompts,
            args.prompt_words,
        )?,
        (None, false) => {
            bail!("give --prompts FILE, or --demo for the demo's prompts")
        }
    };
    if let Some(prefix) = &args.prefix {
        let prefix = resolve_prefix(prefix);
        prompts = prompts.iter().map(|p| with_prefix(prefix, p)).collect();
        prompt_source = format!("{prompt_source}, each after the prefix {prefix:?}");
    }
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
    let clean = eval_windows(&shard, args.val_windows, seq)?;

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
    let meta = serde_json::json!({
        "checkpoint": ck.dir.display().to_string(),
        "intervention": iv_path.display().to_string(),
        "heads": iv.heads.len(),
        "prompts": {"source": prompt_source, "count": prompts.len(), "samples_per_prompt": args.samples,
                    "prefix": args.prefix.as_deref().map(resolve_prefix)},
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
    let mut learned: Vec<baddata::eval::AlphaResult> = Vec::new();
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
                // the learned directions' plot again, with the control on the same axes
                let per_alpha = ev.completions.len() / ev.rows.len().max(1);
                report::plot(&out, &learned, per_alpha, Some(&ev.rows))?;
                eprintln!("random-direction control (same heads and sigmas, seed {seed}):");
            }
            _ => {
                report::write_all(&out, ev, meta.clone(), &description)?;
                learned = ev.rows.clone();
            }
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
        ivs: &ivs,
        done: &mut report_one,
    };
    device.run(job)?;
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
    /// The interventions, evaluated in turn.
    ivs: &'a [&'a Intervention],
    /// Receives each result with its index in `ivs`.
    done: &'a mut dyn FnMut(usize, &Evaluation) -> Result<()>,
}

impl ExecutorJob for Job<'_> {
    type Output = ();

    /// Evaluates each intervention in turn on executor `be` (one model, parameters uploaded
    /// once), handing each result to `done`.
    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<()> {
        let mut model = Model::new(self.cfg.clone(), be)?;
        let mut params = model.alloc_params()?;
        model.backend().upload(self.params, &mut params)?;
        for (k, iv) in self.ivs.iter().enumerate() {
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
            (self.done)(k, &ev)?;
        }
        Ok(())
    }
}

/// `--benchmark`: scores the checkpoint on the named benchmarks and writes the reports.
fn run_benchmarks(args: &Args) -> Result<()> {
    baddata::eval::benchmark::command::run(&baddata::eval::benchmark::command::Command {
        checkpoint: args.checkpoint.path.clone(),
        names: args.benchmark.clone(),
        dir: args.benchmark_dir.clone(),
        shots: args.shots,
        seed: args.seed,
        limit: args.limit,
        batch: args.batch,
        out: args.out.clone(),
        progress: !args.quiet,
        device: args.device.arg,
    })
}

/// `--import-scores`: recomputes the evaluation in `dir` (and its random-direction control, when
/// the file scores it too) from imported scores, into `dir/imported/`.
fn import_scores(dir: &std::path::Path, file: &std::path::Path, field: &str) -> Result<()> {
    use baddata::eval::import::{read_completions, read_scores, rescore};
    let scores = read_scores(file, field)?;
    let mut done = 0;
    let mut imported: Vec<(Vec<baddata::eval::AlphaResult>, usize)> = Vec::new();
    for d in [dir.to_path_buf(), dir.join("random-control")] {
        let results = d.join("results.json");
        if !results.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&results)
            .with_context(|| format!("reading {}", results.display()))?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", results.display()))?;
        let rows: Vec<baddata::eval::AlphaResult> = serde_json::from_value(j["rows"].clone())
            .with_context(|| format!("{}: field `rows`", results.display()))?;
        let lines = read_completions(&d.join("completions.jsonl"))?;
        let rescored = match rows
            .iter()
            .map(|r| rescore(r, &lines, None, &scores))
            .collect::<Result<Vec<_>>>()
        {
            Ok(r) => r,
            // the control is optional: its completions may not have been scored
            Err(e) if d != dir => {
                eprintln!("import: {} left as it was: {e:#}", d.display());
                continue;
            }
            Err(e) => return Err(e.context(format!("rescoring {}", results.display()))),
        };
        let mut completions: Vec<baddata::eval::Completion> = lines
            .iter()
            .map(|l| serde_json::from_value(l.clone()))
            .collect::<std::result::Result<_, _>>()
            .with_context(|| {
                format!("{}: not completions", d.join("completions.jsonl").display())
            })?;
        for (c, l) in completions.iter_mut().zip(&lines) {
            c.toxicity = scores[&baddata::eval::import::key_of(l)?];
        }
        let ev = Evaluation {
            rows: rescored,
            completions,
            base_ce: j["base_ce"].as_f64().unwrap_or(f64::NAN),
        };
        let mut meta = j["meta"].clone();
        meta["toxicity"] = serde_json::json!(format!(
            "imported from {} (field {field}); toxicity is the mean score x100",
            file.display()
        ));
        let desc = format!(
            "# ITI evaluation, rescored\n\nToxicity from {} (field `{field}`) instead of the offline \
             scorer; cross-entropy and KL as measured. The offline scorer's table is in {}.",
            file.display(),
            results.with_extension("md").display()
        );
        let out = d.join("imported");
        report::write_all(&out, &ev, meta, &desc)?;
        eprintln!("imported scores for {} ({}):", d.display(), out.display());
        eprint!("{}", report::markdown_table(&ev));
        imported.push((ev.rows.clone(), ev.completions.len() / ev.rows.len().max(1)));
        done += 1;
    }
    if let [(learned, per_alpha), (control, _)] = &imported[..] {
        report::plot(&dir.join("imported"), learned, *per_alpha, Some(control))?;
    }
    if done == 0 {
        bail!("{}: no results.json of an evaluation there", dir.display());
    }
    Ok(())
}
