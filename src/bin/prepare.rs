//! `prepare`: raw text → tokenizer → token shards (train.shard, val.shard) for `train`.

use anyhow::{bail, Context, Result};
use baddata::backend::device::{Device, DeviceArg};
use baddata::data::demo::{prepare_demo, DEFAULT_DEMO_VOCAB};
use baddata::data::shard::write_shard;
use baddata::data::text::{documents, Format};
use baddata::data::tokenizer::Tokenizer;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Turn raw text into the token shards train reads.
///
/// Reads documents from the inputs, tokenizes them (with an existing tokenizer, OLMo's, or a
/// byte-level BPE trained on the inputs), separates documents with <|endoftext|>, holds out a
/// share of documents for validation, and writes OUT/train.shard, OUT/val.shard and
/// OUT/tokenizer.json.
///
/// Input formats (--format, or guessed from each file name with auto):
///   text   a plain text file is one document
///   jsonl  one JSON object per line with a "text" field (C4: {"text","timestamp","url"})
///   pol    4chan /pol/ ndjson (Papasavva et al. 2020): one thread per line, {"posts":[{"com"}]};
///          a thread is one document, its posts' HTML stripped and joined by newlines
/// Any input may be gzipped. auto: *.jsonl[.gz], *.json[.gz] → jsonl; *.ndjson[.gz] → pol;
/// anything else → text.
///
/// Examples:
///   prepare --olmo --out data/c4 c4-train.00000-of-01024.json.gz
///   prepare --train-bpe 8192 --out data/mine books/*.txt
///   prepare --demo                      (build the embedded demo into runs/demo-data)
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Input files (a pattern with * or ? is expanded when the shell did not).
    inputs: Vec<PathBuf>,

    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,

    /// Use this tokenizer (a Hugging Face tokenizer.json, or tokenizer.json.gz).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["train_bpe", "olmo"])]
    tokenizer: Option<PathBuf>,

    /// Train a byte-level BPE with this many ids on the training documents (with --demo: the
    /// demo's vocabulary; default 2048, the shipped tokenizer; another size trains a BPE on the
    /// demo's training text).
    #[arg(long, value_name = "VOCAB", conflicts_with = "olmo")]
    train_bpe: Option<usize>,

    /// Use OLMo-1B's tokenizer (GPT-NeoX BPE, 50,280 ids), shipped inside this program.
    #[arg(long)]
    olmo: bool,

    /// Share of documents held out as validation (every document lands in exactly one shard).
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    val_fraction: f64,

    /// Seed of the train/validation split.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Output directory (default: data/prepared, or runs/demo-data with --demo).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Build the embedded demo data (tokenizer, clean/toxic/val shards, probe set, RTP prompts)
    /// instead of reading inputs.
    #[arg(long, conflicts_with_all = ["tokenizer", "olmo"])]
    demo: bool,

    /// Device, as on every command. Tokenization runs on the CPU whatever is chosen; cuda still
    /// checks that a usable GPU is there, so scripts fail early rather than at train.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// Expands `*`/`?` in the last path component (for shells that pass patterns through).
fn expand(input: &Path) -> Result<Vec<PathBuf>> {
    let s = input.to_string_lossy();
    if !s.contains('*') && !s.contains('?') {
        if !input.exists() {
            bail!("input {} does not exist", input.display());
        }
        return Ok(vec![input.to_path_buf()]);
    }
    let dir = input
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let pat = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir.to_string_lossy().contains(['*', '?']) {
        bail!("input pattern {s}: only the file name may contain * or ?");
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("input pattern {s}: reading directory {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| wildcard(&pat, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("input pattern {s} matches no file");
    }
    Ok(out)
}

/// `*` matches any run, `?` any one character.
fn wildcard(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Whether document `i` goes to validation: a seeded hash of its index below the fraction.
fn is_val(seed: u64, i: u64, fraction: f64) -> bool {
    // SplitMix64 of (seed, index): a fixed, documented split.
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

fn run_demo(args: &Args) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/demo-data"));
    let vocab = args.train_bpe.unwrap_or(DEFAULT_DEMO_VOCAB);
    let t0 = Instant::now();
    let d = prepare_demo(&out, vocab, true)?;
    let m = &d.manifest;
    println!(
        "demo data in {} ({:.1}s): clean {} tokens, toxic {} tokens, val {} tokens, probe {} \
         toxic + {} clean passages, {} RealToxicityPrompts prompts, vocab {}",
        d.dir.display(),
        t0.elapsed().as_secs_f64(),
        m["clean"]["total_tokens"],
        m["toxic"]["total_tokens"],
        m["val"]["total_tokens"],
        m["probe"]["toxic"],
        m["probe"]["clean"],
        m["rtp_prompts"],
        m["tokenizer_vocab"],
    );
    println!(
        "note: the demo's labels are an offline classifier's scores on real sentences of Brown, \
         fortunes and Shakespeare (toxic >= 0.8, clean <= 0.2), not human judgements"
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    baddata::cli::run(|| run(&args));
}

fn run(args: &Args) -> Result<()> {
    Device::select(args.device)?;
    if args.demo {
        return run_demo(args);
    }
    if args.inputs.is_empty() {
        bail!("no inputs given: pass text/JSONL/ndjson files, or --demo (see --help)");
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction {} is out of range: expected a value in [0, 1)",
            args.val_fraction
        );
    }
    if args.tokenizer.is_none() && args.train_bpe.is_none() && !args.olmo {
        bail!("choose a tokenizer: --tokenizer PATH, --olmo, or --train-bpe VOCAB");
    }
    let mut files = Vec::new();
    for i in &args.inputs {
        files.extend(expand(i)?);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/prepared"));
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating output directory {}", out.display()))?;
    let t0 = Instant::now();

    let tok = if let Some(p) = &args.tokenizer {
        Tokenizer::load(p)?
    } else if args.olmo {
        Tokenizer::olmo()?
    } else {
        // The BPE trainer needs the training documents in memory: read them once for it.
        let vocab = args.train_bpe.unwrap_or(DEFAULT_DEMO_VOCAB);
        let sp = ProgressBar::new_spinner();
        sp.enable_steady_tick(std::time::Duration::from_millis(120));
        sp.set_message("reading the training documents for the BPE");
        let mut train_docs = Vec::new();
        let mut i = 0u64;
        for f in &files {
            for d in documents(f, args.format)? {
                let d = d?;
                if d.trim().is_empty() {
                    continue;
                }
                if !is_val(args.seed, i, args.val_fraction) {
                    train_docs.push(d);
                }
                i += 1;
            }
        }
        sp.set_message(format!(
            "training a {vocab}-id byte-level BPE on {} documents",
            train_docs.len()
        ));
        let t = Tokenizer::train_bpe(&train_docs, vocab)?;
        sp.finish_and_clear();
        t
    };
    let eos = tok.eos_id()?;
    let vocab = tok.vocab_size();

    // Stream the documents through the tokenizer in batches; only tokens are kept.
    let total_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(total_bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "[{elapsed_precise}] {bar:40} {bytes}/{total_bytes} of input ({bytes_per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t_tok = Instant::now();
    let mut train: Vec<u32> = Vec::new();
    let mut val: Vec<u32> = Vec::new();
    let (mut n_docs, mut n_val) = (0u64, 0u64);
    let mut last_train_doc_start = 0usize;
    let mut batch: Vec<String> = Vec::new();
    let mut batch_val: Vec<bool> = Vec::new();
    let mut flush = |batch: &mut Vec<String>,
                     batch_val: &mut Vec<bool>,
                     train: &mut Vec<u32>,
                     val: &mut Vec<u32>|
     -> Result<()> {
        for (ids, &v) in tok.encode_batch(batch)?.into_iter().zip(batch_val.iter()) {
            let dst = if v {
                &mut *val
            } else {
                last_train_doc_start = train.len();
                &mut *train
            };
            dst.extend_from_slice(&ids);
            dst.push(eos);
        }
        batch.clear();
        batch_val.clear();
        Ok(())
    };
    for f in &files {
        bar.set_message(format!("{}", f.display()));
        for d in documents(f, args.format)? {
            let d = d?;
            if d.trim().is_empty() {
                continue;
            }
            let v = is_val(args.seed, n_docs, args.val_fraction);
            n_docs += 1;
            n_val += v as u64;
            batch.push(d);
            batch_val.push(v);
            if batch.len() == 1024 {
                flush(&mut batch, &mut batch_val, &mut train, &mut val)?;
                bar.set_message(format!(
                    "{}: {} tokens",
                    f.display(),
                    train.len() + val.len()
                ));
            }
        }
        flush(&mut batch, &mut batch_val, &mut train, &mut val)?;
        bar.inc(std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
    }
    bar.finish_and_clear();
    if n_docs == 0 {
        bail!("the inputs hold no non-empty document");
    }
    if args.val_fraction > 0.0 && n_val == 0 && n_docs >= 2 {
        // Too few documents for the hash to pick one: hold out the last training document.
        val.extend(train.drain(last_train_doc_start..));
        n_val = 1;
    }
    let secs = t_tok.elapsed().as_secs_f64();

    let id = Some(tok.identity()?);
    write_shard(&out.join("train.shard"), &train, vocab, id)?;
    write_shard(&out.join("val.shard"), &val, vocab, id)?;
    tok.save(&out.join("tokenizer.json"))?;
    let total = train.len() + val.len();
    println!(
        "{n_docs} documents ({} train, {n_val} val) from {} files → {total} tokens ({} train, \
         {} val), vocab {vocab}, tokenized at {:.0} tokens/s; {:.1}s in all",
        n_docs - n_val,
        files.len(),
        train.len(),
        val.len(),
        total as f64 / secs.max(1e-9),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "wrote {}, {}, {}",
        out.join("train.shard").display(),
        out.join("val.shard").display(),
        out.join("tokenizer.json").display()
    );
    Ok(())
}
