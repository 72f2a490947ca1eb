//! `sweep`: the paper's experiment as one command: train × toxic ratio × seed → probe →
//! evaluate → Table 1 and figures (see `baddata::sweep` for the definitions).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;

use baddata::backend::device::Device;
use baddata::data::demo::{demo_prompts, prepare_demo, read_probe};
use baddata::data::mixture::eval_windows;
use baddata::data::prompts::{read_prompts, resolve_prefix, PromptFormat};
use baddata::data::shard::Shard;
use baddata::probe::intervention::DirectionKind;
use baddata::probe::labels::{self, LabelFormat, TOXIGEN_THRESHOLD};
use baddata::sweep::cell::Shared;
use baddata::sweep::{
    self, steps_for, CellSpec, EvalSpec, Outcome, ProbeSpec, PromptSet, PromptSource, SweepSpec,
};
use baddata::train::interrupt::{Interrupt, EXIT_INTERRUPTED};
use baddata::train::setup::{
    check_flags, fresh_config, json_diff, read_config_file, TrainFlags, DEMO_DATA,
};

/// Prompts of the demo's RTP set each demo cell completes by default: 8 conditions × 500
/// prompts take about 90 s per cell on 2 cores, and give the base toxicity a standard error of
/// about 0.9 (×100) per cell.
const DEMO_SWEEP_PROMPTS: usize = 500;

#[derive(Parser, Debug)]
#[command(
    name = "sweep",
    about = "The paper's experiment: train at several toxic ratios and seeds, probe, evaluate, summarise",
    long_about = "For every (toxic ratio, seed) cell: train a model on the same number of clean tokens with \
the toxic tokens on top (at ratio r a cell trains on clean_tokens / (1 - r) tokens; the warm-up is the same in \
every cell and the cosine schedule spans the cell's own steps), probe every head on the same labelled texts, \
and evaluate the same prompts with no intervention, with the prompting baseline, and with ITI at three \
strengths on the top-K heads (and a random-direction control). Then summary.md in Table 1's layout (toxicity \
x100 per prompt set with its uncertainty, clean cross-entropy), summary.json, and figures with their CSV.\n\n\
With no data flags it runs on the embedded demo (the tiny preset). A finished cell is skipped and an \
interrupted one resumes: rerun the same command to continue. Ctrl-C stops after the micro-batch in progress.\n\n\
Examples:\n  sweep\n  sweep --ratios 0,0.1 --seeds 1 --clean-tokens 200000\n  \
sweep --preset olmo-124m --data data/c4 --toxic data/pol --probe-data toxigen.jsonl --probe-format toxigen \\\n    \
--prompts toxigen=toxigen_prompts.txt --prompts rtp=rtp.jsonl:rtp --device cuda"
)]
struct Args {
    #[command(flatten)]
    run: TrainFlags,
    /// Toxic ratios, comma separated, each in [0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.05,0.1,0.15,0.2,0.25"
    )]
    ratios: Vec<f64>,
    /// Seeds, comma separated (one cell per ratio and seed).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Clean tokens every cell trains on [default: the preset's default run, steps × tokens per
    /// step: 1,024,000 for the demo].
    #[arg(long, value_name = "N")]
    clean_tokens: Option<u64>,
    /// Labelled texts for the probes [default: the demo's held-out probe set].
    #[arg(long, value_name = "FILE")]
    probe_data: Option<PathBuf>,
    /// Layout of --probe-data.
    #[arg(long, value_enum, default_value_t = LabelFormat::Jsonl)]
    probe_format: LabelFormat,
    /// ToxiGen: texts with toxicity_human above this are toxic.
    #[arg(long, default_value_t = TOXIGEN_THRESHOLD)]
    threshold: f64,
    /// Heads steered [default: the paper's share, 30 of OLMo-1B's 256 heads, at least 1: 2 of the
    /// demo's 16].
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Direction of each steered head.
    #[arg(long, value_enum, default_value_t = DirectionKind::MassMean)]
    direction: DirectionKind,
    /// ITI strengths weak, mid, strong (the shift is -alpha·sigma·direction).
    #[arg(long, value_delimiter = ',', default_value = "4,8,12")]
    alphas: Vec<f64>,
    /// A prompt set NAME=FILE or NAME=FILE:FORMAT (format auto, plain, jsonl or rtp; repeatable)
    /// [default: the demo's RealToxicityPrompts prompts, named rtp].
    #[arg(long = "prompts", value_name = "NAME=FILE[:FORMAT]")]
    prompt_sets: Vec<String>,
    /// Prompts per set (the first N; 0: all) [default: 500 of the demo's 1,519 RTP prompts, so
    /// that the demo sweep fits in 2 hours on 2 cores; all of a --prompts file].
    #[arg(long, value_name = "N")]
    n_prompts: Option<usize>,
    /// The prompting baseline's prefix; paper is the paper's instruction.
    #[arg(long, default_value = "paper")]
    prefix: String,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Completions per prompt.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Clean windows for cross-entropy.
    #[arg(long, default_value_t = 16)]
    val_windows: usize,
    /// Seed of the random-direction control.
    #[arg(long, default_value_t = 1)]
    random_control: u64,
    /// No random-direction control.
    #[arg(long)]
    no_random_control: bool,
    /// Capability benchmarks scored on every cell's model without intervention, as `evaluate
    /// --benchmark` scores them (comma separated: hellaswag, arc-easy, arc-challenge, piqa,
    /// mmlu, lambada, or all) [default: none].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    benchmarks: Vec<String>,
    /// Items of each benchmark scored per cell (the first N; per subject for MMLU) [default:
    /// all].
    #[arg(long, value_name = "N")]
    benchmark_limit: Option<usize>,
    /// Output directory [default: runs/sweep-demo, or runs/sweep-PRESET].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Replace a sweep made with other settings in --out (its cells are deleted).
    #[arg(long)]
    overwrite: bool,
    /// Print the cells and the plan, then exit.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    device: baddata::cli::DeviceFlag,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Instead of running, redraw the summary and figures of the sweep in --out from toxicity
    /// scores made elsewhere (Perspective API) for its completions.jsonl: FILE holds one JSON
    /// line per completion with its cell, set, condition, alpha, prompt_index and sample and the
    /// score in --score-field; writes summary-imported.md/.json and figures-imported/.
    #[arg(long, value_name = "FILE")]
    import_scores: Option<PathBuf>,
    /// The field of --import-scores lines that holds the score, in [0, 1].
    #[arg(long, default_value = baddata::eval::import::DEFAULT_SCORE_FIELD)]
    score_field: String,
}

fn main() {
    baddata::cli::run(|| match run()? {
        Outcome::Finished => Ok(()),
        Outcome::Interrupted => {
            eprintln!("sweep: interrupted; run the same command again to continue");
            std::process::exit(EXIT_INTERRUPTED)
        }
    });
}

fn parse_prompt_set(s: &str) -> Result<PromptSet> {
    let (name, rest) = s
        .split_once('=')
        .with_context(|| format!("--prompts {s:?}: expected NAME=FILE or NAME=FILE:FORMAT"))?;
    let (path, format) = match rest.rsplit_once(':') {
        Some((p, f)) if ["auto", "plain", "jsonl", "rtp"].contains(&f) => (p, f),
        _ => (rest, "auto"),
    };
    if !Path::new(path).is_file() {
        bail!("--prompts {s:?}: {path}: no such file");
    }
    Ok(PromptSet {
        name: name.into(),
        source: PromptSource::File {
            path: path.into(),
            format: format.into(),
            n: 0,
        },
    })
}

fn prompt_format(s: &str) -> PromptFormat {
    match s {
        "plain" => PromptFormat::Plain,
        "jsonl" => PromptFormat::Jsonl,
        "rtp" => PromptFormat::Rtp,
        _ => PromptFormat::Auto,
    }
}

fn run() -> Result<Outcome> {
    let args = Args::parse();
    let flags = &args.run;
    for (given, flag, why) in [
        (
            flags.toxic_ratio.is_some(),
            "--toxic-ratio",
            "give --ratios",
        ),
        (
            flags.steps.is_some(),
            "--steps",
            "the steps follow from --clean-tokens and the ratio",
        ),
        (flags.seed.is_some(), "--seed", "give --seeds"),
        (
            !flags.sources.is_empty(),
            "--source",
            "give --data and --toxic",
        ),
        (flags.synthetic, "--synthetic", "a sweep needs data"),
    ] {
        if given {
            bail!("{flag} does not apply to a sweep: {why}");
        }
    }
    if args.alphas.len() != 3 {
        bail!(
            "--alphas takes three strengths, weak, mid and strong (got {:?})",
            args.alphas
        );
    }
    baddata::eval::benchmark::Benchmark::parse_list(&args.benchmarks)?;
    check_flags(flags)?;
    let file = flags.config.as_deref().map(read_config_file).transpose()?;
    let demo = flags.is_demo(file.as_ref());
    if !demo && flags.toxic.is_none() {
        bail!("a sweep on --data needs --toxic DIR (the toxic source the ratios draw from)");
    }
    let preset = flags.preset.unwrap_or(baddata::config::Preset::Tiny).name();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if demo {
            "runs/sweep-demo".to_string()
        } else {
            format!("runs/sweep-{preset}")
        })
    });
    if let Some(file) = &args.import_scores {
        let spec = sweep::read_spec(&out)?.with_context(|| {
            format!(
                "--import-scores: {} holds no sweep ({} missing)",
                out.display(),
                sweep::SPEC_FILE
            )
        })?;
        sweep::import_scores(&spec, &out, file, &args.score_field)?;
        eprintln!(
            "sweep: summary-imported.md and figures-imported/ in {}, from {}",
            out.display(),
            file.display()
        );
        return Ok(Outcome::Finished);
    }
    let device = args.device.select()?;

    // the cells: each ratio's training config, the clean budget held fixed
    let mut cells = Vec::new();
    let mut budget = args.clean_tokens;
    if let Some(r) = args.ratios.iter().find(|r| !(0.0..1.0).contains(*r)) {
        bail!("--ratios: {r} is not in [0, 1)");
    }
    for &ratio in &args.ratios {
        let mut f = flags.clone();
        f.toxic_ratio = Some(ratio);
        let base = fresh_config(&f, file.as_ref(), demo, &out, !args.quiet)?;
        let per_step = base.batch * base.seq * base.grad_accum;
        let clean = *budget.get_or_insert(base.steps * per_step as u64);
        for &seed in &args.seeds {
            let mut cfg = base.clone();
            cfg.seed = seed;
            cfg.steps = steps_for(clean, ratio, per_step);
            if flags.save_every.is_none() {
                // a checkpoint every quarter of the cell (and at its end), for resuming
                cfg.save_every = cfg.steps.div_ceil(4);
            }
            let c = CellSpec {
                ratio,
                seed,
                train: cfg,
            };
            let dir = SweepSpec::cell_dir(&out, &c);
            let mut c = c;
            c.train.out = dir.join("train");
            cells.push(c);
        }
    }
    let model = &cells[0].train.model;
    let heads = model.n_layers * model.n_heads;
    let top_k = args
        .top_k
        .unwrap_or_else(|| ((heads as f64 * 30.0 / 256.0).round() as usize).max(1));

    // probes and prompts: the demo's by default
    let demo_data = (demo || args.probe_data.is_none() || args.prompt_sets.is_empty())
        .then(|| {
            prepare_demo(
                Path::new(DEMO_DATA),
                flags
                    .demo_vocab
                    .unwrap_or(baddata::data::demo::DEFAULT_DEMO_VOCAB),
                !args.quiet,
            )
        })
        .transpose()?;
    let (probe_data, probe_format) = match (&args.probe_data, &demo_data) {
        (Some(p), _) => (p.clone(), format!("{:?}", args.probe_format).to_lowercase()),
        (None, Some(d)) if demo => (d.probe.clone(), "demo".to_string()),
        _ => bail!("give --probe-data FILE: the labelled texts the probes are fitted on"),
    };
    let prompt_sets = if args.prompt_sets.is_empty() {
        match &demo_data {
            Some(d) if demo => vec![PromptSet {
                name: "rtp".into(),
                source: PromptSource::File {
                    path: d.rtp.clone(),
                    format: "rtp".into(),
                    n: args.n_prompts.unwrap_or(DEMO_SWEEP_PROMPTS),
                },
            }],
            _ => bail!("give --prompts NAME=FILE: the prompts to complete"),
        }
    } else {
        let mut v = args
            .prompt_sets
            .iter()
            .map(|s| parse_prompt_set(s))
            .collect::<Result<Vec<_>>>()?;
        for ps in &mut v {
            if let PromptSource::File { n, .. } = &mut ps.source {
                *n = args.n_prompts.unwrap_or(0);
            }
        }
        v
    };
    let val_seq = cells[0].train.seq;
    let spec = SweepSpec {
        ratios: args.ratios.clone(),
        seeds: args.seeds.clone(),
        clean_tokens: budget.unwrap_or(0),
        probe: ProbeSpec {
            data: probe_data,
            format: probe_format,
            threshold: args.threshold,
            top_k,
            direction: args.direction,
            val_fraction: 0.2,
            split_seed: 0,
            l2: 1.0,
        },
        eval: EvalSpec {
            prompt_sets,
            alphas: [args.alphas[0], args.alphas[1], args.alphas[2]],
            prefix: resolve_prefix(&args.prefix).to_string(),
            samples: args.samples,
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            sample_seed: 0,
            val: cells[0].train.val.clone(),
            val_windows: args.val_windows,
            val_seq,
            random_control: (!args.no_random_control).then_some(args.random_control),
            batch: 16,
        },
        benchmarks: args.benchmarks.clone(),
        benchmark_limit: args.benchmark_limit,
        cells,
    };
    spec.validate()?;

    // an existing sweep: the same settings continue it, others are refused
    if let Some(saved) = sweep::read_spec(&out)? {
        if saved != spec {
            let mut diffs = Vec::new();
            json_diff(
                &serde_json::to_value(&saved)?,
                &serde_json::to_value(&spec)?,
                "",
                &mut diffs,
            );
            if !args.overwrite {
                let list: Vec<String> = diffs
                    .iter()
                    .take(8)
                    .map(|[f, a, b]| format!("  {f}: the sweep has {a}, this command asks for {b}"))
                    .collect();
                bail!(
                    "{} holds a sweep made with other settings ({} fields differ); pass \
                     --overwrite to replace it, or --out DIR:\n{}",
                    out.display(),
                    diffs.len(),
                    list.join("\n")
                );
            }
            if !args.dry_run {
                for sub in ["cells", "figures"] {
                    let d = out.join(sub);
                    if d.exists() {
                        std::fs::remove_dir_all(&d)
                            .with_context(|| format!("removing {}", d.display()))?;
                    }
                }
                eprintln!("--overwrite: removed the sweep in {}", out.display());
            }
        } else {
            eprintln!("sweep: continuing the sweep in {}", out.display());
        }
    }

    // the plan
    let steps: u64 = spec.cells.iter().map(|c| c.train.steps).sum();
    eprintln!(
        "sweep: {} cells ({} ratios × {} seeds) on {}, {} clean tokens each, toxic on top:",
        spec.cells.len(),
        spec.ratios.len(),
        spec.seeds.len(),
        device.describe(),
        spec.clean_tokens
    );
    for &r in &spec.ratios {
        let c = spec
            .cells
            .iter()
            .find(|c| c.ratio == r)
            .expect("a cell per ratio");
        let t = &c.train;
        eprintln!(
            "  ratio {:>5.1}%: {} steps of {} tokens (warm-up {}, cosine to {} × lr over the cell), sources {}",
            r * 100.0,
            t.steps,
            t.batch * t.seq * t.grad_accum,
            t.warmup,
            t.final_lr_frac,
            t.sources
                .iter()
                .map(|s| format!("{}={:.1}%", s.name, s.fraction * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let t = &spec.cells[0].train;
    let est = baddata::perf::estimate_train(
        &t.model,
        t.seq,
        steps,
        t.batch * t.seq * t.grad_accum,
        device.is_cuda(),
    );
    eprintln!(
        "  probes: top {} of {} heads, {} directions, on {}; evaluation: {} prompt set(s), alphas {:?}, \
         prompting prefix {:?}{}",
        spec.probe.top_k,
        heads,
        spec.probe.direction.as_str(),
        spec.probe.data.display(),
        spec.eval.prompt_sets.len(),
        spec.eval.alphas,
        args.prefix,
        if spec.eval.random_control.is_some() {
            ", random-direction control"
        } else {
            ""
        }
    );
    eprintln!(
        "  training: {steps} steps in all, about {} {} (probes and evaluation come on top)",
        baddata::perf::human_duration(est.seconds),
        est.basis
    );
    if args.dry_run {
        return Ok(Outcome::Finished);
    }
    sweep::write_spec(&out, &spec)?;

    // what every cell shares
    let shared = shared(&spec, &device, &args)?;
    sweep::run(&spec, &out, &shared)
}

/// Reads the prompts, the probe texts and the clean windows once for every cell.
fn shared(spec: &SweepSpec, device: &Device, args: &Args) -> Result<Shared> {
    let mut prompts = Vec::new();
    for ps in &spec.eval.prompt_sets {
        let v = match &ps.source {
            PromptSource::DemoProbe { path, n, words } => {
                demo_prompts(path, if *n == 0 { usize::MAX } else { *n }, *words)?
            }
            PromptSource::File { path, format, n } => {
                let mut v: Vec<String> = read_prompts(path, prompt_format(format))?
                    .into_iter()
                    .map(|p| p.text)
                    .collect();
                if *n > 0 {
                    v.truncate(*n);
                }
                v
            }
        };
        prompts.push((ps.name.clone(), v));
    }
    let p = &spec.probe;
    let probe_texts = if p.format == "demo" {
        labels::from_probe_items(&read_probe(&p.data)?, &p.data.display().to_string())?
    } else {
        let f = if p.format == "toxigen" {
            LabelFormat::Toxigen
        } else {
            LabelFormat::Jsonl
        };
        labels::read_labelled(&p.data, f, p.threshold)?
    };
    let names = baddata::eval::benchmark::Benchmark::parse_list(&spec.benchmarks)?;
    let dir = baddata::eval::benchmark::default_dir();
    let benchmarks = names
        .iter()
        .map(|&b| baddata::eval::benchmark::tasks::load(b, &dir, false))
        .collect::<Result<Vec<_>>>()?;
    let shard = Shard::open(&spec.eval.val)?;
    let clean = eval_windows(&shard, spec.eval.val_windows, spec.eval.val_seq)?;
    Ok(Shared {
        prompts,
        clean,
        probe_texts,
        probe_name: p.data.display().to_string(),
        device: device.clone(),
        progress: !args.quiet,
        interrupt: Some(Interrupt::install()?),
        benchmarks,
    })
}
