//! Composes the demo data set that `baddata` ships in `assets/demo/composed/` (run by
//! `bash tools/compose-demo.sh`; `--check` recomposes into a temporary directory and compares).
//!
//! Inputs (`assets/demo/`): the Brown Corpus, the Unix fortunes and 42 Shakespeare plays, one
//! document per line, and `toxic-demo.jsonl.gz`, the 3,068 passages of those texts that
//! alt-profanity-check 1.9.1 scored above 0.5. Steps (see docs/shards.md):
//!
//! 1. Every flagged passage is rescored with the project's scorer (`baddata::score`) and found,
//!    up to whitespace, in every document. At least [`TOXIC_THRESHOLD`]: toxic; below: left out.
//! 2. Every document is cut into units (Brown sentences, Shakespeare speeches, whole fortunes).
//!    A unit overlapping a flagged occurrence is cut out of the clean text; every other unit is
//!    scored, and cut out too unless it scores at most [`CLEAN_THRESHOLD`].
//! 3. Probe set: a seeded 25% of each corpus's toxic passages, each paired with a clean unit of
//!    the same document (Brown, Shakespeare) or fortune file, of ½× to 2× its length where
//!    possible; every occurrence of a clean probe passage is cut out of the clean text.
//! 4. A seeded 3% of each corpus's cleaned documents is the validation set, the rest the clean
//!    training text; the toxic passages outside the probe set are the toxic training text.
//! 5. The demo BPE (2,048 ids) is trained on the training text and each set tokenized; the
//!    shards' hashes go into `composition.json`, so the library checks that its own
//!    tokenization of the shipped texts gives the same shards.

mod compose;
mod segment;

use anyhow::{bail, Context, Result};
use baddata::data::demo::{
    file_sha256, gunzip_text, train_demo_bpe, write_demo_shards, CLEAN_THRESHOLD, CORPORA,
    DEFAULT_DEMO_VOCAB, DEMO_VERSION, TOXIC_THRESHOLD,
};
use baddata::score::Scorer;
use clap::Parser;
use flate2::write::GzEncoder;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The files written into the output directory.
pub const OUTPUT_FILES: [&str; 6] = [
    "clean.jsonl.gz",
    "toxic.jsonl.gz",
    "val.jsonl.gz",
    "probe.jsonl.gz",
    "tokenizer.json",
    "composition.json",
];

#[derive(Parser, Debug)]
#[command(
    name = "compose_demo",
    about = "Compose the demo data set shipped in assets/demo/composed/ from the corpora in assets/demo/"
)]
struct Args {
    /// Directory of the inputs (brown, fortunes, shakespeare and toxic-demo .jsonl.gz).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo"))]
    inputs: PathBuf,
    /// Where the composed files are written (or, with --check, compared).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/composed"))]
    out: PathBuf,
    /// Compose into a temporary directory and compare with --out instead of writing it; exits 1
    /// when a file differs.
    #[arg(long)]
    check: bool,
}

fn main() {
    let args = Args::parse();
    baddata::cli::run(|| {
        if args.check {
            check(&args.inputs, &args.out)
        } else {
            compose_into(&args.inputs, &args.out).map(|_| ())
        }
    });
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

fn jsonl<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut out, &r)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    baddata::checkpoint::write_atomic(&dir.join(name), bytes)
}

/// Composes the demo from `inputs` into `out`; returns composition.json.
fn compose_into(inputs: &Path, out: &Path) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    let scorer = Scorer::embedded()?;
    let inp = compose::load_inputs(inputs)?;
    let c = compose::compose(&inp, scorer)?;
    eprintln!("composed in {:.1}s", t0.elapsed().as_secs_f64());
    let tok = train_demo_bpe(&c.texts, DEFAULT_DEMO_VOCAB)?;
    eprintln!("BPE trained at {:.1}s", t0.elapsed().as_secs_f64());
    let shard_dir = tempfile::tempdir().context("creating a temporary directory")?;
    let shards = write_demo_shards(shard_dir.path(), &tok, &c.texts)?;
    check_probe_apart(&c)?;

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tok_tmp = shard_dir.path().join("tokenizer.json");
    tok.save(&tok_tmp)?;
    let tok_bytes =
        std::fs::read(&tok_tmp).with_context(|| format!("reading {}", tok_tmp.display()))?;
    let toxic_rows = c
        .texts
        .toxic
        .iter()
        .zip(&c.toxic_scores)
        .map(|(d, s)| json!({"id": d.id, "text": d.text, "score": s}));
    let files: [(&str, Vec<u8>); 5] = [
        ("clean.jsonl.gz", gzip(&jsonl(&c.texts.clean)?)?),
        ("toxic.jsonl.gz", gzip(&jsonl(toxic_rows)?)?),
        ("val.jsonl.gz", gzip(&jsonl(&c.texts.val)?)?),
        ("probe.jsonl.gz", gzip(&jsonl(&c.probe)?)?),
        ("tokenizer.json", tok_bytes),
    ];
    let mut composition = c.stats.clone();
    composition["version"] = json!(DEMO_VERSION);
    composition["tokenizer"] = json!({
        "vocab": tok.vocab_size(),
        "eos_id": tok.eos_id()?,
        "identity": tok.identity()?.to_string(),
    });
    let mut shard_hashes = serde_json::Map::new();
    for s in &shards {
        shard_hashes.insert(s.name.into(), json!(s.sha256));
        composition["tokens"][s.name] = s.counts_json();
        composition["shard_bytes"][s.name] = json!(std::fs::metadata(&s.path)?.len());
    }
    composition["shards_sha256"] = serde_json::Value::Object(shard_hashes);
    for (name, bytes) in &files {
        write_file(out, name, bytes)?;
    }
    write_file(
        out,
        "composition.json",
        (serde_json::to_string_pretty(&composition)? + "\n").as_bytes(),
    )?;
    print_summary(&composition, out)?;
    Ok(composition)
}

/// Fails unless every probe passage is absent from the training text (clean and toxic), and
/// every toxic passage and clean probe passage is on its side of the thresholds.
fn check_probe_apart(c: &compose::Composed) -> Result<()> {
    let probe: Vec<String> = c.probe.iter().map(|p| p.text.clone()).collect();
    let index = segment::PatternIndex::new(&probe);
    for d in c.texts.clean.iter().chain(&c.texts.toxic) {
        let n = segment::normalize_ws(&d.text);
        if let Some((k, _, _)) = index.find_all(&n).first() {
            bail!(
                "probe passage {:?} occurs in the training text of {}",
                probe[*k as usize],
                d.id
            );
        }
    }
    for p in &c.probe {
        let s = p.score.unwrap_or(f64::NAN);
        let ok = if p.label == 1 {
            s >= TOXIC_THRESHOLD
        } else {
            s <= CLEAN_THRESHOLD
        };
        if !ok {
            bail!("probe passage {:?} (label {}) scores {s}", p.text, p.label);
        }
    }
    Ok(())
}

fn print_summary(composition: &serde_json::Value, out: &Path) -> Result<()> {
    let c = composition;
    for corpus in CORPORA {
        eprintln!(
            "{corpus:>11}: toxic {} (probe {}, left out between thresholds {}); clean probe {}; \
             clean {} docs {} bytes, val {} docs; clean tokens {}",
            c["flagged"]["by_corpus"][corpus]["toxic"],
            c["flagged"]["by_corpus"][corpus]["probe"],
            c["flagged"]["by_corpus"][corpus]["left_out_between_thresholds"],
            c["probe"]["by_corpus"][corpus]["clean"],
            c["clean"][corpus]["docs"],
            c["clean"][corpus]["bytes"],
            c["val"][corpus]["docs"],
            c["tokens"]["clean"]["tokens"][corpus],
        );
    }
    for name in OUTPUT_FILES {
        let p = out.join(name);
        eprintln!(
            "{:>9} bytes  {}",
            std::fs::metadata(&p)
                .with_context(|| format!("{}", p.display()))?
                .len(),
            p.display()
        );
    }
    Ok(())
}

/// The content of a composed file: decompressed for .gz (so a different deflate library does
/// not count as a difference).
fn content(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        Ok(gunzip_text(&bytes, &path.display().to_string())?.into_bytes())
    } else {
        Ok(bytes)
    }
}

/// Recomposes into a temporary directory and compares every file with `shipped`.
fn check(inputs: &Path, shipped: &Path) -> Result<()> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    compose_into(inputs, tmp.path())?;
    let mut differ = Vec::new();
    for name in OUTPUT_FILES {
        let (a, b) = (tmp.path().join(name), shipped.join(name));
        if content(&a)? != content(&b)? {
            differ.push(format!(
                "{} (recomposed sha256 {}, shipped {})",
                b.display(),
                file_sha256(&a)?,
                file_sha256(&b)?
            ));
        }
    }
    if !differ.is_empty() {
        bail!(
            "the recomposed demo differs from the shipped one in:\n  {}",
            differ.join("\n  ")
        );
    }
    eprintln!(
        "compose_demo --check: the shipped {} match the recomposition",
        OUTPUT_FILES.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "recomposes the whole demo (about 20 s in release); run by tools/compose-demo.sh --check"]
    fn shipped_assets_are_what_the_composer_writes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        super::check(
            &root.join("assets/demo"),
            &root.join("assets/demo/composed"),
        )
        .unwrap();
    }
}
