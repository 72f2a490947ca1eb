//! How a training run's configuration comes from the command line: the preset's defaults, the
//! data flags, a `--config` file over them and single flags over that ([`fresh_config`]); and,
//! for `--resume`, the run's own configuration checked against what the flags ask
//! ([`resumed_config`]). `train` and `sweep` build their runs through it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::run_dir::ExistingRun;
use super::{SourceSpec, TrainConfig};
use crate::config::{ModelConfig, Preset};
use crate::data::demo::prepare_demo;
use crate::data::tokenizer::Tokenizer;
use crate::optim::AdamWConfig;

/// The fields of a `--config` file.
pub type ConfigFile = serde_json::Map<String, serde_json::Value>;

/// The flags that define a training run (the rest of `train`'s flags change how it runs, not
/// what it computes).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrainFlags {
    /// Model preset [default: tiny].
    #[arg(long, value_enum, value_name = "NAME")]
    pub preset: Option<Preset>,
    /// Continued pretraining: start from this checkpoint's weights (ours, or a Hugging Face OLMo
    /// v1 release such as allenai/OLMo-1B-hf or OLMo-1B-0724-hf, single or sharded) with a fresh
    /// optimizer and this run's data. The model shape is the checkpoint's, so --preset is refused
    /// beside it; the data must be tokenized with the checkpoint's tokenizer. Defaults as for
    /// olmo-1b (lr 4e-4, warm-up 2000, batch 8), seq min(context, 2048); out runs/init-NAME.
    #[arg(long, value_name = "DIR", conflicts_with = "preset")]
    pub init_from: Option<PathBuf>,
    /// JSON file with training-config fields (model, sources, val, lr, steps, adamw, ...; nested
    /// objects merge field by field); flags override it. Without sources in it, it adjusts the
    /// demo.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A directory written by prepare (train.shard, val.shard, tokenizer.json): the clean source
    /// and the validation set. Without it, the embedded demo is used.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A directory written by prepare (or a .shard file) used as the toxic source.
    #[arg(long, value_name = "DIR")]
    pub toxic: Option<PathBuf>,
    /// Fraction of training tokens drawn from the toxic source, in [0, 1); 0 leaves the toxic
    /// source out (the model shape does not change) [default: 0.1 with --toxic or the demo].
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    pub toxic_ratio: Option<f64>,
    /// Sources given one by one, NAME=SHARD:FRACTION (repeatable; instead of --data's train.shard
    /// and --toxic; the validation shard comes from --data or --val).
    #[arg(long = "source", value_name = "NAME=SHARD:FRACTION")]
    pub sources: Vec<String>,
    /// Validation shard [default: val.shard of --data].
    #[arg(long, value_name = "SHARD")]
    pub val: Option<PathBuf>,
    /// Optimizer steps (the length of the learning-rate schedule) [default: 1000 for tiny,
    /// 100000 for olmo-124m and olmo-1b].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Sequences per micro-batch [default: 4 for tiny, 64 for olmo-124m, 8 for olmo-1b].
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Tokens per sequence, at most the preset's context [default: 256 for tiny, else the
    /// context: 1024 for olmo-124m, 2048 for olmo-1b].
    #[arg(long, value_name = "N")]
    pub seq: Option<usize>,
    /// Micro-batches accumulated per optimizer step [default: 1].
    #[arg(long, value_name = "N")]
    pub grad_accum: Option<usize>,
    /// Peak learning rate [default: 4e-3 for tiny, 4e-4 (OLMo-1B's) otherwise].
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// Linear warm-up steps [default: 40 for tiny, 2000 otherwise].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Global-norm gradient clip, 0 turns it off [default: 1.0].
    #[arg(long, value_name = "NORM")]
    pub grad_clip: Option<f32>,
    /// AdamW weight decay, on the projections only (the embedding is never decayed)
    /// [default: 0.1].
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f32>,
    /// Seed for initialisation and data order [default: 1234].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Validation every N steps [default: 50 for tiny, 500 otherwise].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps, and at the end [default: 500 for tiny, 1000 otherwise].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub save_every: Option<u64>,
    /// BPE vocabulary size of the demo tokenizer [default: 2048, the shipped one; another size
    /// trains a BPE on the demo's training text on first use].
    #[arg(long, value_name = "N")]
    pub demo_vocab: Option<usize>,
    /// Train on seeded random token rows at the preset's own vocabulary instead of data (for
    /// throughput measurements: no data, no tokenizer, no validation).
    #[arg(long)]
    pub synthetic: bool,
}

impl TrainFlags {
    /// Whether these flags (and the `--config` file's fields) describe the embedded demo: no
    /// `--data`, `--source` or `--synthetic`, and no sources in the file.
    pub fn is_demo(&self, file: Option<&ConfigFile>) -> bool {
        self.data.is_none()
            && self.sources.is_empty()
            && !self.synthetic
            && !file.is_some_and(|f| f.contains_key("sources"))
    }
}

/// Where the demo's shards and tokenizer are built and cached.
pub const DEMO_DATA: &str = "runs/demo-data";

/// Parses `--toxic-ratio`: a fraction in [0, 1).
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number; expected a fraction in [0, 1), e.g. 0.1"))?;
    if !(0.0..1.0).contains(&r) {
        return Err(format!(
            "{r} is not in [0, 1): the toxic ratio is the share of training tokens drawn from the \
             toxic source (0.1 = 10%)"
        ));
    }
    Ok(r)
}

/// Defaults of a demo run on the tiny preset (tuned to finish in minutes on two CPU cores).
pub fn demo_defaults(
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

pub fn real_defaults(base: &Base, mut cfg: TrainConfig) -> TrainConfig {
    // OLMo-1B's recipe; batch sizes for one 80 GB GPU.
    cfg.lr = 4e-4;
    cfg.warmup = 2000;
    cfg.steps = 100_000;
    cfg.eval_every = 500;
    cfg.save_every = 1000;
    cfg.seq = cfg.model.context;
    match base {
        Base::Preset(Preset::Olmo1b) => cfg.batch = 8,
        Base::Preset(_) => cfg.batch = 64,
        Base::InitFrom { .. } => {
            // continued pretraining of a released model on one GPU
            cfg.seq = cfg.model.context.min(2048);
            cfg.batch = 8;
        }
    }
    cfg
}

/// What a run's model starts from.
#[derive(Clone, Debug, PartialEq)]
pub enum Base {
    /// A preset's shape, freshly initialised.
    Preset(Preset),
    /// A checkpoint's weights (`--init-from`).
    InitFrom {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Its directory name.
        name: String,
    },
}

impl Base {
    /// The run's name for default output paths: the preset's, or `init-DIRNAME`.
    pub fn name(&self) -> String {
        match self {
            Base::Preset(p) => p.name().to_string(),
            Base::InitFrom { name, .. } => format!("init-{name}"),
        }
    }

    /// Whether this is the CPU demo's preset (whose vocabulary follows the tokenizer).
    pub fn is_tiny(&self) -> bool {
        *self == Base::Preset(Preset::Tiny)
    }
}

/// The model shape a run starts from, and what it comes from: the preset's (tiny by default),
/// or with `--init-from` the checkpoint's (never re-sized to a tokenizer).
pub fn base_model(args: &TrainFlags) -> Result<(ModelConfig, Base)> {
    match &args.init_from {
        Some(dir) => {
            let (ck_dir, m) = crate::checkpoint::read_config(dir)
                .with_context(|| format!("--init-from {}", dir.display()))?;
            let name = ck_dir
                .file_name()
                .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
            Ok((m, Base::InitFrom { dir: ck_dir, name }))
        }
        None => {
            let p = args.preset.unwrap_or(Preset::Tiny);
            Ok((p.model(), Base::Preset(p)))
        }
    }
}

/// With `--init-from`: the data's tokenizer (file `path`) must be the checkpoint's, when the
/// checkpoint has one (the same identity, [`crate::data::tokenizer::TokenizerId`]); without one
/// a line says it could not be checked.
fn check_same_tokenizer(path: &Path, ck_dir: &Path) -> Result<()> {
    use crate::data::tokenizer::TokenizerId;
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
    let (a, b) = (TokenizerId::of_file(path)?, TokenizerId::of_file(&theirs)?);
    if a != b {
        bail!(
            "the data's tokenizer {} ({}) differs from the --init-from checkpoint's {} ({}): \
             tokenize the data with the checkpoint's tokenizer (prepare --tokenizer {})",
            path.display(),
            a.short(),
            theirs.display(),
            b.short(),
            theirs.display()
        );
    }
    Ok(())
}

/// Parses `--source NAME=SHARD:FRACTION`.
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
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("--source {s:?}: fraction {fraction} is not in (0, 1]");
    }
    if !Path::new(path).is_file() {
        bail!("--source {s:?}: {path}: no such shard file");
    }
    Ok(SourceSpec {
        name: name.into(),
        path: path.into(),
        fraction,
    })
}

/// `dir_or_file` itself when it is a file, else the shard `name` inside it.
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

/// The fields of a `--config` file, read and checked to be a JSON object.
pub fn read_config_file(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("config file {}: invalid JSON", path.display()))?;
    let serde_json::Value::Object(fields) = file else {
        bail!(
            "config file {}: expected a JSON object of training-config fields",
            path.display()
        );
    };
    Ok(fields)
}

/// Cheap checks of flag combinations, before anything is read or built.
pub fn check_flags(args: &TrainFlags) -> Result<()> {
    if args.toxic.is_some() && args.data.is_none() && args.sources.is_empty() {
        bail!("--toxic needs --data (the clean source and the validation set)");
    }
    if !args.sources.is_empty() {
        if args.toxic.is_some() {
            bail!(
                "--toxic and --source together: --source replaces --data's train.shard and \
                 --toxic; add the toxic shard as --source toxic=SHARD:FRACTION"
            );
        }
        if args.toxic_ratio.is_some() {
            bail!(
                "--toxic-ratio has no effect with --source: give each source's fraction in \
                 NAME=SHARD:FRACTION"
            );
        }
        if args.data.is_none() && args.val.is_none() {
            bail!(
                "--source needs a validation shard: give --val SHARD, or --data DIR (its \
                 val.shard)"
            );
        }
    }
    if let (Some(r), None, Some(_)) = (args.toxic_ratio, &args.toxic, &args.data) {
        if r > 0.0 && args.sources.is_empty() {
            bail!(
                "--toxic-ratio {r} without --toxic: there is no toxic source to draw {:.0}% of \
                 the tokens from (give --toxic DIR, or --toxic-ratio 0 for a clean-only run)",
                r * 100.0
            );
        }
    }
    if args.synthetic
        && (args.data.is_some()
            || args.toxic.is_some()
            || !args.sources.is_empty()
            || args.val.is_some())
    {
        bail!("--synthetic trains on random tokens: drop --data, --toxic, --source and --val");
    }
    if args.demo_vocab.is_some() && (args.data.is_some() || !args.sources.is_empty()) {
        bail!("--demo-vocab sets the demo's tokenizer; with --data or --source the data's own tokenizer is used");
    }
    Ok(())
}

/// The configuration a new run gets from the flags: the preset's defaults, the data, the
/// `--config` file over them, the flags over that.
pub fn fresh_config(
    args: &TrainFlags,
    file: Option<&ConfigFile>,
    demo: bool,
    out: &Path,
    progress: bool,
) -> Result<TrainConfig> {
    let (mut model, base) = base_model(args)?;
    let defaults = |c: TrainConfig| {
        if base.is_tiny() {
            c
        } else {
            real_defaults(&base, c)
        }
    };
    let mut cfg = if args.synthetic {
        let mut c = defaults(demo_defaults(
            model,
            Vec::new(),
            PathBuf::new(),
            None,
            out.into(),
        ));
        c.synthetic = true;
        c
    } else if demo {
        if matches!(base, Base::InitFrom { .. }) {
            bail!(
                "--init-from needs --data (or --source) tokenized with the checkpoint's tokenizer: \
                 the embedded demo's shards use a BPE of their own"
            );
        }
        let vocab = args
            .demo_vocab
            .unwrap_or(crate::data::demo::DEFAULT_DEMO_VOCAB);
        let d = prepare_demo(Path::new(DEMO_DATA), vocab, progress)?;
        let tok = Tokenizer::load(&d.tokenizer)?;
        model = model.with_vocab(tok.vocab_size(), tok.eos_id()?);
        let ratio = args.toxic_ratio.unwrap_or(0.1);
        let mut sources = vec![SourceSpec {
            name: "clean".into(),
            path: d.clean.clone(),
            fraction: 1.0 - ratio,
        }];
        if ratio > 0.0 {
            sources.push(SourceSpec {
                name: "toxic".into(),
                path: d.toxic.clone(),
                fraction: ratio,
            });
        }
        defaults(demo_defaults(
            model,
            sources,
            d.val.clone(),
            Some(d.tokenizer.clone()),
            out.into(),
        ))
    } else if args.data.is_none() && args.sources.is_empty() {
        // the sources (and val, tokenizer) come from the --config file
        defaults(demo_defaults(
            model,
            Vec::new(),
            PathBuf::new(),
            None,
            out.into(),
        ))
    } else {
        let (sources, val, tokenizer) = data_sources(args)?;
        if let Some(t) = &tokenizer {
            let tok = Tokenizer::load(t)?;
            if base.is_tiny() {
                // the demo-sized model takes its vocabulary from the tokenizer
                model = model.with_vocab(tok.vocab_size(), tok.eos_id()?);
            } else {
                crate::data::tokenizer::check_fits(tok.vocab_size(), model.vocab_real, t)?;
            }
            if let Base::InitFrom { dir, .. } = &base {
                check_same_tokenizer(t, dir)?;
            }
        }
        defaults(demo_defaults(model, sources, val, tokenizer, out.into()))
    };
    if let (Some(fields), Some(path)) = (file, &args.config) {
        cfg = overlay_config(&cfg, fields, path)?;
        let file_sets_vocab = fields
            .get("model")
            .and_then(|m| m.as_object())
            .is_some_and(|m| m.contains_key("vocab_size") || m.contains_key("vocab_real"));
        if let (Some(t), false, true) = (&cfg.tokenizer, file_sets_vocab, base.is_tiny()) {
            // a tiny model takes its vocabulary from the tokenizer the file names
            let tok = Tokenizer::load(t)?;
            cfg.model = cfg
                .model
                .clone()
                .with_vocab(tok.vocab_size(), tok.eos_id()?);
        }
    }
    cfg.init_from.clone_from(&args.init_from);
    apply_flags(&mut cfg, args);
    cfg.out = out.into();
    Ok(cfg)
}

/// The sources, validation shard and tokenizer that --data, --toxic, --toxic-ratio, --source and
/// --val name.
pub fn data_sources(args: &TrainFlags) -> Result<(Vec<SourceSpec>, PathBuf, Option<PathBuf>)> {
    let mut sources = Vec::new();
    let mut val = None;
    let mut tokenizer = None;
    if let Some(d) = &args.data {
        if !d.exists() {
            bail!("--data {}: no such file or directory", d.display());
        }
        val = Some(shard_in(d, "val.shard")?);
        let t = d.join("tokenizer.json");
        if t.is_file() {
            tokenizer = Some(t);
        }
        let ratio = if args.toxic.is_some() {
            args.toxic_ratio.unwrap_or(0.1)
        } else {
            0.0
        };
        sources.push(SourceSpec {
            name: "clean".into(),
            path: shard_in(d, "train.shard")?,
            fraction: 1.0 - ratio,
        });
        if let Some(t) = &args.toxic {
            if !t.exists() {
                bail!("--toxic {}: no such file or directory", t.display());
            }
            if ratio > 0.0 {
                sources.push(SourceSpec {
                    name: "toxic".into(),
                    path: shard_in(t, "train.shard")?,
                    fraction: ratio,
                });
            }
        }
    }
    if !args.sources.is_empty() {
        sources = args
            .sources
            .iter()
            .map(|s| parse_source(s))
            .collect::<Result<_>>()?;
        if tokenizer.is_none() {
            // the tokenizer `prepare` wrote beside the first source's shard, if any
            tokenizer = sources[0]
                .path
                .parent()
                .map(|d| d.join("tokenizer.json"))
                .filter(|t| t.is_file());
        }
    }
    if let Some(v) = &args.val {
        if !v.is_file() {
            bail!("--val {}: no such shard file", v.display());
        }
        val = Some(v.clone());
    }
    let val = val.context("no validation shard: give --data DIR or --val SHARD")?;
    Ok((sources, val, tokenizer))
}

/// The flags that set one field each, over `cfg`.
pub fn apply_flags(cfg: &mut TrainConfig, args: &TrainFlags) {
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = args.$f { cfg.$f = v; } )* };
    }
    set!(steps, batch, seq, grad_accum, lr, warmup, grad_clip, seed, eval_every, save_every);
    if let Some(wd) = args.weight_decay {
        cfg.adamw.weight_decay = wd;
    }
}

/// Merges `fields` (a `--config` file) over `cfg`: nested objects field by field, anything else
/// replaced. Every unknown field, at any depth, and every type error is an error naming the
/// file and the field's path.
pub fn overlay_config(cfg: &TrainConfig, fields: &ConfigFile, path: &Path) -> Result<TrainConfig> {
    fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
        match (base, over) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    match b.get_mut(k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            b.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            (b, o) => *b = o.clone(),
        }
    }
    let mut base = serde_json::to_value(cfg)?;
    merge(&mut base, &serde_json::Value::Object(fields.clone()));
    serde_path_to_error::deserialize(base).map_err(|e| {
        let at = e.path().to_string();
        let msg = e.into_inner().to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            // "unknown field `x`, expected ..." with x's whole path
            let expected = rest.split_once("`, ").map_or("", |(_, e)| e);
            anyhow::anyhow!(
                "config file {}: unknown field `{at}`, {expected}",
                path.display()
            )
        } else {
            anyhow::anyhow!("config file {}: field `{at}`: {msg}", path.display())
        }
    })
}

/// The flag that sets a config field, for messages.
fn flag_of(field: &str) -> &'static str {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    match top {
        "steps" => "--steps",
        "batch" => "--batch",
        "seq" => "--seq",
        "grad_accum" => "--grad-accum",
        "lr" => "--lr",
        "warmup" => "--warmup",
        "grad_clip" => "--grad-clip",
        "seed" => "--seed",
        "eval_every" => "--eval-every",
        "save_every" => "--save-every",
        "adamw" if field == "adamw.weight_decay" => "--weight-decay",
        "sources" | "val" | "tokenizer" => "--data/--toxic/--toxic-ratio/--source/--val",
        "model" => "--preset/--demo-vocab",
        "synthetic" => "--synthetic",
        _ => "--config",
    }
}

/// The leaves where two JSON values differ, as `(path, a, b)`.
pub fn json_diff(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: &str,
    out: &mut Vec<[String; 3]>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                json_diff(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                json_diff(u, v, &format!("{at}[{i}]"), out);
            }
        }
        _ if a != b => out.push([at.to_string(), show(a), show(b)]),
        _ => {}
    }
}

/// A JSON leaf for a message; numbers that are `f32` values print as the `f32` would.
pub fn show(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if !v.is_u64() && !v.is_i64() && (x as f32) as f64 == x => (x as f32).to_string(),
        _ => v.to_string(),
    }
}

/// Whether two paths name the same file (the same string, or the same file once resolved).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Refuses a resume whose flags would change the run: every field where `asked` differs from the
/// run's `saved` configuration is named with its flag and both values.
fn check_unchanged(saved: &TrainConfig, mut asked: TrainConfig, hint: &str) -> Result<()> {
    // the same files, however they are spelled, are the same run
    for (a, s) in asked.sources.iter_mut().zip(&saved.sources) {
        if same_file(&a.path, &s.path) {
            a.path = s.path.clone();
        }
    }
    if same_file(&asked.val, &saved.val) {
        asked.val = saved.val.clone();
    }
    if let (Some(a), Some(s)) = (&asked.tokenizer, &saved.tokenizer) {
        if same_file(a, s) {
            asked.tokenizer = saved.tokenizer.clone();
        }
    }
    asked.out = saved.out.clone();
    let mut diffs = Vec::new();
    json_diff(
        &serde_json::to_value(saved)?,
        &serde_json::to_value(&asked)?,
        "",
        &mut diffs,
    );
    if diffs.is_empty() {
        return Ok(());
    }
    let list = diffs
        .iter()
        .map(|[f, s, a]| {
            format!(
                "  {f}: the run has {s}, this command asks for {a} ({})",
                flag_of(f)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    bail!("{hint}:\n{list}")
}

/// The configuration a resumed run continues with: the run's own, checked against the flags
/// given now.
pub fn resumed_config(
    args: &TrainFlags,
    file: Option<&ConfigFile>,
    demo: bool,
    out: &Path,
    run: &ExistingRun,
    progress: bool,
) -> Result<TrainConfig> {
    let saved = &run.config;
    if demo {
        // the demo is defined by its flags: what they give now must be the run on disk
        let asked = fresh_config(args, file, demo, out, progress)?;
        check_unchanged(
            saved,
            asked,
            &format!(
                "{} holds a demo run made with other settings; pass --overwrite to train the \
                 demo again with these, or --out DIR for a new run beside it",
                out.display()
            ),
        )?;
    } else {
        let mut asked = saved.clone();
        if let (Some(fields), Some(path)) = (file, &args.config) {
            asked = overlay_config(&asked, fields, path)?;
        }
        apply_flags(&mut asked, args);
        if let Some(p) = args.preset {
            let m = p.model();
            let s = &saved.model;
            if (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.context)
                != (s.n_layers, s.d_model, s.n_heads, s.d_ff, s.context)
            {
                asked.model = m.with_vocab(s.vocab_real, s.eos_token_id);
            }
        }
        if args.data.is_some() || !args.sources.is_empty() || args.val.is_some() {
            let (sources, val, tokenizer) = data_sources(args)?;
            asked.sources = sources;
            asked.val = val;
            asked.tokenizer = tokenizer;
        } else if let Some(r) = args.toxic_ratio {
            // the run's own sources at this ratio
            let toxic = saved.sources.iter().find(|s| s.name == "toxic").cloned();
            asked.sources.retain(|s| s.name != "toxic");
            if let Some(c) = asked.sources.iter_mut().find(|s| s.name == "clean") {
                c.fraction = 1.0 - r;
            }
            if let (Some(mut t), true) = (toxic, r > 0.0) {
                t.fraction = r;
                asked.sources.push(t);
            }
        }
        check_unchanged(
            saved,
            asked,
            &format!(
                "--resume: {} continues with the configuration it was started with, and these \
                 flags would change it (drop them, or start a new run with --out DIR or \
                 --overwrite)",
                out.display()
            ),
        )?;
    }
    let mut cfg = saved.clone();
    cfg.out = out.into();
    Ok(cfg)
}
