//! `generate`: continue prompts with a trained checkpoint (KV-cache decoding on the executor
//! `--device` picks: the GPU when usable, else the CPU), optionally steered by an ITI
//! intervention.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::backend::device::ExecutorJob;
use baddata::backend::Backend;
use baddata::checkpoint;
use baddata::data::prompts::{read_prompts, resolve_prefix, with_prefix, PromptFormat};
use baddata::data::tokenizer::Tokenizer;
use baddata::model::generate::{Generated, SampleOptions, ShiftPositions};
use baddata::model::Model;
use baddata::probe::intervention::Intervention;

#[derive(Parser, Debug)]
#[command(
    name = "generate",
    about = "Continue prompts with a trained checkpoint (KV-cache decoding), optionally steered by ITI",
    long_about = "Loads a checkpoint and its tokenizer.json, encodes each prompt, prefills it and samples \
a continuation one token at a time from a KV cache (on the GPU when usable, else the CPU; \
--device). Padded vocabulary ids are never sampled. \
With --intervention FILE --alpha A, the ITI shift -A*sigma*direction is added to each steered head's \
attention output (refused if the file was made for another model).\n\n\
Examples:\n  generate --prompts prompts.txt --max-new-tokens 32\n  \
generate --checkpoint runs/c4-pol10 --prompts rtp.jsonl --format rtp --temperature 0.7 --top-p 0.9 \\\n    \
--intervention runs/c4-pol10/probe/intervention.json --alpha 4 --out gen.jsonl",
    after_help = "Prompt files (--format):\n  \
plain  one prompt per line (empty lines skipped)\n  \
jsonl  {\"text\": str} or {\"prompt\": str} per line\n  \
rtp    RealToxicityPrompts: {\"prompt\": {\"text\": str}, ...} per line\n\n\
Output (--out, or stdout), one JSON object per prompt:\n  \
{\"index\", \"line\", \"prompt\", \"completion\", \"prompt_tokens\", \"completion_tokens\", \"stop\": \
\"eos\"|\"max_new_tokens\"|\"context\"}"
)]
struct Args {
    #[command(flatten)]
    checkpoint: baddata::cli::CheckpointFlag,
    /// Tokenizer (default: the checkpoint's tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompts file (see --format).
    #[arg(long)]
    prompts: PathBuf,
    /// Text put before every prompt (the prompting baseline); paper is the paper's instruction
    /// ("Ensure all outputs are respectful, unbiased, and free from toxic content. ..."). The
    /// output's "prompt" field shows the prompt as the model saw it.
    #[arg(long, value_name = "TEXT")]
    prefix: Option<String>,
    /// Layout of --prompts.
    #[arg(long, value_enum, default_value_t = PromptFormat::Auto)]
    format: PromptFormat,
    /// Most tokens generated per prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed (prompt i uses stream i, so results do not depend on --batch).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// ITI intervention file (intervention.json written by probe).
    #[arg(long)]
    intervention: Option<PathBuf>,
    /// ITI strength (with --intervention).
    #[arg(long, default_value_t = 0.0, requires = "intervention")]
    alpha: f64,
    /// Positions the ITI shift applies to: every position, or only those whose output is sampled
    /// (the last prompt token and the generated ones).
    #[arg(long, value_enum, default_value_t = ShiftPositions::All)]
    shift_positions: ShiftPositions,
    /// Keep generating after <|endoftext|> (default: stop there).
    #[arg(long)]
    ignore_eos: bool,
    /// Output JSON lines (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: baddata::cli::DeviceFlag,
}

fn main() {
    baddata::cli::run(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = args.device.select()?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let ck = checkpoint::load(&args.checkpoint.path)
        .with_context(|| format!("loading checkpoint {}", args.checkpoint.path.display()))?;
    let tok_path = ck.tokenizer_path(args.tokenizer.as_deref())?;
    let tokenizer = Tokenizer::load(&tok_path)?;
    let cfg = ck.config.clone();
    baddata::data::tokenizer::check_fits(tokenizer.vocab_size(), cfg.vocab_size, &tok_path)?;
    let mut shifts = Vec::new();
    if let Some(p) = &args.intervention {
        let iv = Intervention::load(p)?;
        iv.check_model(&cfg, &ck.params)?;
        shifts = iv.head_shifts(args.alpha)?;
        eprintln!(
            "generate: ITI on {} heads at alpha {} ({:?} positions)",
            iv.heads.len(),
            args.alpha,
            args.shift_positions
        );
    }
    let mut prompts = read_prompts(&args.prompts, args.format)?;
    if let Some(prefix) = &args.prefix {
        let prefix = resolve_prefix(prefix);
        for p in &mut prompts {
            p.text = with_prefix(prefix, &p.text);
        }
    }
    let texts: Vec<String> = prompts.iter().map(|p| p.text.clone()).collect();
    let ids = tokenizer.encode_batch(&texts)?;
    for (p, t) in prompts.iter().zip(&ids) {
        if t.len() > cfg.context {
            bail!(
                "{} line {}: the prompt has {} tokens, more than the model's context of {}",
                args.prompts.display(),
                p.line,
                t.len(),
                cfg.context
            );
        }
        if t.is_empty() {
            bail!(
                "{} line {}: the prompt encodes to no tokens",
                args.prompts.display(),
                p.line
            );
        }
    }
    let opts = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        eos: (!args.ignore_eos).then_some(cfg.eos_token_id),
        shift_positions: args.shift_positions,
    };
    eprintln!(
        "generate: {} ({} layers, d_model {}) on {}: {} prompts",
        ck.dir.display(),
        cfg.n_layers,
        cfg.d_model,
        device.describe(),
        prompts.len()
    );
    let mut sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let start = std::time::Instant::now();
    let mut n_tokens = 0;
    let mut emit = |first: u64, gens: &[Generated]| -> Result<()> {
        let b = first as usize / args.batch;
        let ps = prompts.chunks(args.batch).nth(b).context("batch index")?;
        let is = ids.chunks(args.batch).nth(b).context("batch index")?;
        for (k, ((p, pid), g)) in ps.iter().zip(is).zip(gens).enumerate() {
            n_tokens += g.tokens.len();
            let rec = serde_json::json!({
                "index": first + k as u64,
                "line": p.line,
                "prompt": p.text,
                "completion": tokenizer.decode(&g.tokens)?,
                "prompt_tokens": pid.len(),
                "completion_tokens": g.tokens.len(),
                "stop": g.stop.as_str(),
            });
            writeln!(sink, "{rec}")?;
        }
        Ok(())
    };
    let job = Job {
        cfg: &cfg,
        params: &ck.params,
        shifts: &shifts,
        ids: &ids,
        batch: args.batch,
        opts: &opts,
        emit: &mut emit,
    };
    device.run(job)?;
    sink.flush()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "generate: {n_tokens} tokens in {secs:.2} s ({:.1} tokens/s){}",
        n_tokens as f64 / secs.max(1e-9),
        args.out
            .as_ref()
            .map_or(String::new(), |p| format!(", wrote {}", p.display()))
    );
    Ok(())
}

/// What to generate, independent of the executor.
struct Job<'a> {
    cfg: &'a baddata::config::ModelConfig,
    /// Host parameters (the checkpoint's).
    params: &'a [f32],
    /// Per layer ITI shift (empty: none).
    shifts: &'a [Option<Vec<f32>>],
    /// Encoded prompts.
    ids: &'a [Vec<u32>],
    batch: usize,
    opts: &'a SampleOptions,
    /// Receives each batch's continuations, with the index of its first prompt, in order.
    emit: &'a mut dyn FnMut(u64, &[Generated]) -> Result<()>,
}

impl ExecutorJob for Job<'_> {
    type Output = ();

    /// Continues every prompt on executor `be`, `batch` prompts at a time, handing each batch's
    /// continuations to `emit`.
    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<()> {
        let mut model = Model::new(self.cfg.clone(), be)?;
        for (l, s) in self.shifts.iter().enumerate() {
            model.set_head_shift(l, s.as_deref())?;
        }
        let mut params = model.alloc_params()?;
        model.backend().upload(self.params, &mut params)?;
        for (b, is) in self.ids.chunks(self.batch).enumerate() {
            let first = (b * self.batch) as u64;
            let gens = model.generate(&params, is, first, self.opts)?;
            (self.emit)(first, &gens)?;
        }
        Ok(())
    }
}
