//! `score`: toxicity scores of texts, one per line, with the offline classifier.

use anyhow::{bail, Context, Result};
use baddata::backend::device::{Device, DeviceArg};
use baddata::score::Scorer;
use clap::Parser;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Score texts for toxicity with an offline classifier.
///
/// The scorer is the model of alt-profanity-check 1.9.1 (MIT), ported exactly: TF-IDF over
/// lowercased words (scikit-learn's token pattern, English stop words removed, 15,442-term
/// vocabulary) followed by the mean of 5 calibrated linear SVMs. It is a bag-of-words linear
/// classifier trained on ~200k labelled strings (Davidson et al. hate speech, Jigsaw toxic
/// comments): it flags profane and abusive words, not meaning or context. It is NOT Perspective
/// API, and its scores are not comparable with Perspective's. The weights are built into this
/// program; nothing is downloaded. A score is the classifier's probability, in [0, 1], that the
/// text is toxic or profane (the demo calls a text toxic above 0.5).
///
/// Input is read from stdin:
///   default     one text per line; prints one score per line (6 decimals), in order
///               (bytes that are not UTF-8 are replaced and act as separators)
///   --jsonl F   one JSON object per line; prints each object with a "toxicity" field added
///               (scored on its string field F); blank lines are skipped
/// A summary (texts, time, texts/s) goes to stderr unless --quiet.
///
/// Examples:
///   echo "Have a wonderful day, friend." | score
///   zcat c4.json.gz | score --jsonl text > c4-scored.jsonl
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Read JSONL and add a "toxicity" field computed from this string field.
    #[arg(long, value_name = "FIELD")]
    jsonl: Option<String>,

    /// Use these weights instead of the built-in ones (same format as
    /// assets/toxicity-scorer.json.gz, gzipped or not).
    #[arg(long, value_name = "PATH")]
    weights: Option<PathBuf>,

    /// Texts scored per parallel batch.
    #[arg(long, default_value_t = 16_384, value_name = "N")]
    batch: usize,

    /// No summary on stderr.
    #[arg(long, short)]
    quiet: bool,

    /// Device, as on every command. The scorer runs on the CPU whatever is chosen; cuda still
    /// checks that a usable GPU is there, so scripts fail early.
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
}

/// One pending JSONL record: its line as read, and its text.
struct Record {
    line: String,
    has_toxicity: bool,
}

fn main() {
    baddata::cli::run(run);
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.device != DeviceArg::Cpu {
        let device = Device::select(args.device)?;
        if !args.quiet && device.is_cuda() {
            eprintln!(
                "score: {} is usable; the scorer itself runs on the CPU",
                device.describe()
            );
        }
    }
    let t0 = Instant::now();
    let owned;
    let scorer: &Scorer = match &args.weights {
        Some(path) => {
            owned = Scorer::from_path(path)?;
            &owned
        }
        None => Scorer::embedded()?,
    };
    let load_s = t0.elapsed().as_secs_f64();

    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let t1 = Instant::now();
    let count = match &args.jsonl {
        None => score_lines(scorer, stdin, &mut out, args.batch)?,
        Some(field) => score_jsonl(scorer, stdin, &mut out, field, args.batch)?,
    };
    out.flush().context("writing scores to stdout")?;
    let secs = t1.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "score: {count} texts in {secs:.3} s ({:.0} texts/s on {} threads; weights loaded in {load_s:.3} s)",
            count as f64 / secs.max(1e-9),
            rayon::current_num_threads()
        );
    }
    Ok(())
}

/// Plain mode: every line is one text, every text one output line.
fn score_lines(
    scorer: &Scorer,
    mut input: impl BufRead,
    out: &mut impl Write,
    batch: usize,
) -> Result<usize> {
    let mut texts = Vec::with_capacity(batch);
    let mut buf = Vec::new();
    let mut count = 0;
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .context("reading texts from stdin")?;
        if n > 0 {
            let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            texts.push(String::from_utf8_lossy(line).into_owned());
        }
        if texts.len() == batch || (n == 0 && !texts.is_empty()) {
            for s in scorer.score_batch(&texts) {
                writeln!(out, "{s:.6}").context("writing scores to stdout")?;
            }
            count += texts.len();
            texts.clear();
        }
        if n == 0 {
            return Ok(count);
        }
    }
}

/// JSONL mode: each object gets a "toxicity" field scored on its string field `field`.
fn score_jsonl(
    scorer: &Scorer,
    input: impl BufRead,
    out: &mut impl Write,
    field: &str,
    batch: usize,
) -> Result<usize> {
    let mut records: Vec<Record> = Vec::with_capacity(batch);
    let mut texts: Vec<String> = Vec::with_capacity(batch);
    let mut count = 0;
    let mut lines = input.lines().enumerate();
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some((i, line)) = next {
            let lineno = i + 1;
            let line = line.with_context(|| format!("reading stdin line {lineno}"))?;
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(trimmed)
                .with_context(|| format!("stdin line {lineno}: not valid JSON"))?;
            let Some(object) = value.as_object() else {
                bail!("stdin line {lineno}: expected a JSON object, found {trimmed:.60}");
            };
            let Some(text) = object.get(field) else {
                bail!("stdin line {lineno}: no field {field:?} (expected a string to score)");
            };
            let Some(text) = text.as_str() else {
                bail!("stdin line {lineno}: field {field:?} is not a string: {text:.60}");
            };
            texts.push(text.to_string());
            records.push(Record {
                line: trimmed.to_string(),
                has_toxicity: object.contains_key("toxicity"),
            });
        }
        if records.len() == batch || (done && !records.is_empty()) {
            let scores = scorer.score_batch(&texts);
            for (rec, s) in records.iter().zip(scores) {
                writeln!(out, "{}", with_toxicity(rec, s)?).context("writing JSONL to stdout")?;
            }
            count += records.len();
            records.clear();
            texts.clear();
        }
        if done {
            return Ok(count);
        }
    }
}

/// The record's line with `"toxicity": score` added: spliced in before the closing brace, so the
/// other fields keep their order and spelling; a record that already had the field is rewritten.
fn with_toxicity(rec: &Record, score: f64) -> Result<String> {
    let value = format!("{score:.6}");
    if rec.has_toxicity {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&rec.line)?;
        v.insert(
            "toxicity".to_string(),
            serde_json::from_str(&value).context("formatting a score")?,
        );
        return Ok(serde_json::to_string(&v)?);
    }
    let body = rec.line[..rec.line.len() - 1].trim_end();
    if body == "{" {
        Ok(format!("{{\"toxicity\":{value}}}"))
    } else {
        Ok(format!("{body},\"toxicity\":{value}}}"))
    }
}
