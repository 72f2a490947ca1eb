//! `probe`: find the attention heads that linearly encode toxicity and write the ITI
//! intervention for them.
//!
//! With `--demo` it probes the demo model (`runs/demo`) on the demo's held-out, source-matched
//! probe set (built under `runs/demo-data/` if needed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::checkpoint;
use baddata::data::demo::{prepare_demo, read_probe};
use baddata::data::tokenizer::Tokenizer;
use baddata::probe::labels::{self, TOXIGEN_THRESHOLD};
use baddata::probe::{
    CollectOptions, DirectionKind, LabelFormat, LogisticConfig, ProbeConfig, ProbeJob,
};

#[derive(Parser, Debug)]
#[command(
    name = "probe",
    about = "Probe every attention head for a linear toxicity direction and write an ITI intervention",
    long_about = "Reads labelled texts (toxic = 1, non-toxic = 0), runs each through the model and keeps the \
per-head attention output blocks.{l}.attn.hook_z at the text's last token. Fits one L2-regularised logistic \
regression per (layer, head) on a seeded, stratified 80/20 split and ranks the heads by validation accuracy. \
For the top K heads it writes a unit direction (mass-mean or probe weights, pointing toward toxic) and sigma, \
the standard deviation of the activations projected on it: ITI at strength alpha adds -alpha*sigma*direction \
to each of those heads.\n\n\
Texts longer than the model's context are cut to their first context tokens (counted in \
probe_accuracy.json); --no-truncate makes that an error.\n\n\
Examples:\n  probe --demo\n  probe --checkpoint runs/c4-pol10 --data toxigen_annotated.jsonl --format toxigen --out runs/c4-pol10/probe",
    after_help = "Inputs (--data, JSON lines, optionally gzipped):\n  \
jsonl    {\"text\": str, \"label\": 0|1}  (other fields ignored)\n  \
toxigen  {\"text\": str, \"toxicity_human\": 1..5}, toxic when > --threshold\n\n\
Outputs in --out:\n  \
probe_accuracy.json  per-head validation/train accuracy grids [layer][head], ranking, counts\n  \
probe_accuracy.png   layer x head heatmap of validation accuracy, top-K heads outlined\n  \
intervention.json    top-K heads {layer, head, direction, sigma, probe_accuracy} + the model's config and \
weights hash (refused for any other model)"
)]
struct Args {
    /// Checkpoint directory (ours, or a Hugging Face OLMo v1 release: single or sharded
    /// safetensors), or run directory (its latest). Default with --demo: runs/demo.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Labelled texts (JSON lines, see --format).
    #[arg(long, conflicts_with = "demo")]
    data: Option<PathBuf>,
    /// Use the demo's held-out probe set (runs/demo-data/probe.jsonl, built if needed).
    #[arg(long)]
    demo: bool,
    /// Layout of --data.
    #[arg(long, value_enum, default_value_t = LabelFormat::Jsonl)]
    format: LabelFormat,
    /// ToxiGen: texts with toxicity_human above this are toxic.
    #[arg(long, default_value_t = TOXIGEN_THRESHOLD)]
    threshold: f64,
    /// Heads kept for the intervention (capped at layers x heads).
    #[arg(long, default_value_t = 30)]
    top_k: usize,
    /// Direction of each kept head: class-mean difference, or the probe's weights.
    #[arg(long, value_enum, default_value_t = DirectionKind::MassMean)]
    direction: DirectionKind,
    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of each class held out for validation.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// L2 strength of the probes on standardised features (scikit-learn's 1/C).
    #[arg(long, default_value_t = 1.0)]
    l2: f64,
    /// Tokenizer (default: the checkpoint's tokenizer.json; with --demo, the demo's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output directory (default: CHECKPOINT/probe).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the activation capture (last-token hook_z [n_texts, layers, heads, d_head] f32 rows
    /// streamed to disk, then a JSON header with the shape, text ids and labels; format in
    /// docs/ARCHITECTURE.md). Without it the capture goes to a scratch file in --out, deleted at
    /// the end.
    #[arg(long, value_name = "FILE")]
    save_activations: Option<PathBuf>,
    /// Rows per chunk appended to the capture file (default: as many as fit in 8 MiB); the
    /// capture holds at most one chunk in memory.
    #[arg(long, value_name = "ROWS")]
    chunk_rows: Option<usize>,
    /// Fail on texts longer than the model's context instead of cutting them.
    #[arg(long)]
    no_truncate: bool,
    /// Texts of equal length per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[command(flatten)]
    device: baddata::cli::DeviceFlag,
    /// BPE vocabulary of the demo data (as given to train --demo-vocab).
    #[arg(long, default_value_t = baddata::data::demo::DEFAULT_DEMO_VOCAB)]
    demo_vocab: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    baddata::cli::run(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    let device = args.device.select()?;
    if !args.demo && args.data.is_none() {
        bail!("no labelled texts: pass --data FILE (with --format jsonl|toxigen) or --demo");
    }
    // Checked before the capture, which is the long part.
    if args.top_k == 0 {
        bail!("--top-k must be at least 1 (the number of heads kept for the intervention)");
    }
    if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
        bail!(
            "--val-fraction {} must be in (0, 1): the share of each class held out to measure \
             the probes' accuracy",
            args.val_fraction
        );
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let ck_path = match (&args.checkpoint, args.demo) {
        (Some(p), _) => p.clone(),
        (None, true) => PathBuf::from("runs/demo"),
        (None, false) => bail!("--checkpoint DIR is required (a checkpoint or run directory)"),
    };
    let ck = checkpoint::load(&ck_path).with_context(|| {
        if args.demo && args.checkpoint.is_none() {
            "loading the demo model (train it first: `cargo run --release --bin train`)".to_string()
        } else {
            format!("loading checkpoint {}", ck_path.display())
        }
    })?;
    let (texts, data_name, demo_tok) = if args.demo {
        let d = prepare_demo(Path::new("runs/demo-data"), args.demo_vocab, !args.quiet)?;
        let name = d.probe.display().to_string();
        let items = read_probe(&d.probe)?;
        (
            labels::from_probe_items(&items, &name)?,
            name,
            Some(d.tokenizer),
        )
    } else {
        let p = args.data.clone().context("--data")?;
        let t = labels::read_labelled(&p, args.format, args.threshold)?;
        (t, p.display().to_string(), None)
    };
    let tok_path = match (ck.tokenizer_path(args.tokenizer.as_deref()), demo_tok) {
        (Ok(p), _) => p,
        (Err(_), Some(demo)) => demo,
        (Err(e), None) => return Err(e),
    };
    let tokenizer = Tokenizer::load(&tok_path)?;
    let out = args.out.clone().unwrap_or_else(|| ck_path.join("probe"));
    baddata::checkpoint::ensure_writable_dir(&out).context("--out")?;
    let (neg, pos) = labels::class_counts(&texts);
    eprintln!(
        "probe: {} ({} layers x {} heads, d_head {}) on {data_name}: {} texts ({pos} toxic, {neg} not) on {}",
        ck.dir.display(),
        ck.config.n_layers,
        ck.config.n_heads,
        ck.config.d_head(),
        texts.len(),
        device.describe()
    );
    let job = ProbeJob {
        checkpoint: &ck,
        tokenizer: &tokenizer,
        texts: &texts,
        data_name: &data_name,
        config: ProbeConfig {
            top_k: args.top_k,
            direction: args.direction,
            seed: args.seed,
            val_frac: args.val_fraction,
            logistic: LogisticConfig {
                l2: args.l2,
                ..LogisticConfig::default()
            },
        },
        collect: CollectOptions {
            truncate: !args.no_truncate,
            batch: args.batch,
            progress: !args.quiet,
            chunk_rows: args.chunk_rows,
        },
        out: &out,
        save_activations: args.save_activations.as_deref(),
    };
    let r = device.run(&job)?;
    if r.truncated > 0 {
        eprintln!(
            "probe: {} texts were longer than the context ({} tokens) and cut to it",
            r.truncated, ck.config.context
        );
    }
    let an = &r.analysis;
    println!(
        "best heads (validation accuracy, {} validation texts):",
        an.split.val.len()
    );
    for &i in an.ranking.iter().take(10) {
        let h = &an.results[i];
        println!(
            "  layer {:>2} head {:>2}  val {:.3}  train {:.3}",
            h.layer, h.head, h.val_accuracy, h.train_accuracy
        );
    }
    println!("wrote {}", r.accuracy_json.display());
    println!("wrote {}", r.heatmap.display());
    println!(
        "wrote {} ({} heads, {} directions)",
        r.intervention_path.display(),
        r.intervention.heads.len(),
        args.direction.as_str()
    );
    if let Some(p) = &args.save_activations {
        println!("wrote {}", p.display());
    }
    Ok(())
}
