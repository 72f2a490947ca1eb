//! The demo data set, shipped already composed and embedded in the binaries: clean training text
//! (Brown, fortunes and Shakespeare), toxic training text, a clean validation set, a
//! source-matched labelled probe set, the demo's BPE tokenizer, and RealToxicityPrompts prompts
//! for generation. [`prepare_demo`] turns the texts into token shards on first use.
//!
//! **The demo's labels are an offline classifier's scores** (the port of alt-profanity-check
//! 1.9.1 in [`crate::score`]) on real sentences of public-domain / permissively licensed texts,
//! not human judgements: a passage is toxic when it scores at least [`TOXIC_THRESHOLD`], clean
//! when it scores at most [`CLEAN_THRESHOLD`], and a passage in between is used nowhere. See
//! assets/SOURCES.md and docs/shards.md.
//!
//! The texts in `assets/demo/composed/` are written by `tools/compose_demo`
//! (`bash tools/compose-demo.sh`) from `assets/demo/{brown,fortunes,shakespeare,toxic-demo}.jsonl.gz`;
//! the prompts in `assets/rtp/` by `tools/extract_rtp.py`. Nothing here composes: the library
//! tokenizes what was shipped, deterministically, and checks the result against the hashes the
//! composer recorded.

use super::prompts::{read_prompts, PromptFormat};
use super::shard::{write_shard, Shard};
use super::tokenizer::Tokenizer;
use crate::checkpoint::write_atomic;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

/// Version of the demo data; a directory built by another version is rebuilt.
pub const DEMO_VERSION: u64 = 3;
/// Vocabulary size of the shipped demo tokenizer (`assets/demo/composed/tokenizer.json`).
pub const DEFAULT_DEMO_VOCAB: usize = 2048;
/// A passage is toxic when the offline classifier scores it at least this.
pub const TOXIC_THRESHOLD: f64 = 0.8;
/// A passage is clean when the offline classifier scores it at most this.
pub const CLEAN_THRESHOLD: f64 = 0.2;
/// Corpus names, in the order used everywhere.
pub const CORPORA: [&str; 3] = ["brown", "fortunes", "shakespeare"];

/// Clean training documents, `{"id", "text"}` per line.
pub static CLEAN_GZ: &[u8] = include_bytes!("../../assets/demo/composed/clean.jsonl.gz");
/// Toxic training passages, `{"id", "text", "score"}` per line.
pub static TOXIC_GZ: &[u8] = include_bytes!("../../assets/demo/composed/toxic.jsonl.gz");
/// Clean validation documents, `{"id", "text"}` per line.
pub static VAL_GZ: &[u8] = include_bytes!("../../assets/demo/composed/val.jsonl.gz");
/// The labelled probe set, [`ProbeItem`] per line.
pub static PROBE_GZ: &[u8] = include_bytes!("../../assets/demo/composed/probe.jsonl.gz");
/// The demo's byte-level BPE ([`DEFAULT_DEMO_VOCAB`] ids), Hugging Face `tokenizer.json`.
pub static TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/demo/composed/tokenizer.json");
/// What the composer did: counts per source, thresholds, the expected shard hashes.
pub static COMPOSITION_JSON: &[u8] = include_bytes!("../../assets/demo/composed/composition.json");
/// RealToxicityPrompts prompts in RTP's JSONL shape (`{"prompt": {"text", "toxicity", ...}}`).
pub static RTP_GZ: &[u8] = include_bytes!("../../assets/rtp/prompts.jsonl.gz");

/// The embedded assets, in the order [`prepare_demo`]'s hash covers them.
fn embedded_assets() -> [(&'static str, &'static [u8]); 7] {
    [
        ("clean.jsonl.gz", CLEAN_GZ),
        ("toxic.jsonl.gz", TOXIC_GZ),
        ("val.jsonl.gz", VAL_GZ),
        ("probe.jsonl.gz", PROBE_GZ),
        ("tokenizer.json", TOKENIZER_JSON),
        ("composition.json", COMPOSITION_JSON),
        ("rtp/prompts.jsonl.gz", RTP_GZ),
    ]
}

/// A document of the demo: its id (`"brown/ca01"`, `"fortunes/art/0"`, `"shakespeare/hamlet"`,
/// or for a passage the id of the document it came from) and its text.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DemoDoc {
    /// Document id; its first path component is the corpus.
    pub id: String,
    /// The text.
    pub text: String,
}

impl DemoDoc {
    /// The corpus: the id up to the first `/`.
    pub fn corpus(&self) -> &str {
        corpus_of(&self.id)
    }
}

/// The corpus of a document id: the id up to the first `/`.
pub fn corpus_of(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// One labelled example of the probe set (a line of probe.jsonl).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeItem {
    /// The passage, whitespace collapsed to single spaces.
    pub text: String,
    /// 1: toxic (score ≥ [`TOXIC_THRESHOLD`]); 0: clean (score ≤ [`CLEAN_THRESHOLD`]), a passage
    /// of the same source.
    pub label: u8,
    /// Id of the source document.
    pub source: String,
    /// The offline classifier's score (`null` allowed, as in probe files of other origins).
    pub score: Option<f64>,
}

/// The demo's texts, before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoTexts {
    /// Clean training documents.
    pub clean: Vec<DemoDoc>,
    /// Toxic training passages, one document each.
    pub toxic: Vec<DemoDoc>,
    /// Clean held-out documents, never trained on.
    pub val: Vec<DemoDoc>,
}

/// Paths of a built demo data directory.
#[derive(Clone, Debug)]
pub struct DemoData {
    /// The directory.
    pub dir: PathBuf,
    /// `tokenizer.json`: the demo BPE.
    pub tokenizer: PathBuf,
    /// `clean.shard`: clean training tokens.
    pub clean: PathBuf,
    /// `toxic.shard`: toxic training tokens.
    pub toxic: PathBuf,
    /// `val.shard`: clean validation tokens.
    pub val: PathBuf,
    /// `probe.jsonl`: `{"text", "label", "source", "score"}` per line.
    pub probe: PathBuf,
    /// `rtp.jsonl`: RealToxicityPrompts prompts for generation, RTP's JSONL shape (read with
    /// [`PromptFormat::Rtp`]); apart from the probe set.
    pub rtp: PathBuf,
    /// The parsed `manifest.json` (counts per source, vocab, version, file hashes).
    pub manifest: serde_json::Value,
}

impl DemoData {
    /// The files the manifest hashes, by name.
    fn files(&self) -> [(&'static str, &Path); 6] {
        [
            ("tokenizer.json", &self.tokenizer),
            ("clean.shard", &self.clean),
            ("toxic.shard", &self.toxic),
            ("val.shard", &self.val),
            ("probe.jsonl", &self.probe),
            ("rtp.jsonl", &self.rtp),
        ]
    }
}

fn demo_paths(dir: &Path, manifest: serde_json::Value) -> DemoData {
    DemoData {
        dir: dir.to_path_buf(),
        tokenizer: dir.join("tokenizer.json"),
        clean: dir.join("clean.shard"),
        toxic: dir.join("toxic.shard"),
        val: dir.join("val.shard"),
        probe: dir.join("probe.jsonl"),
        rtp: dir.join("rtp.jsonl"),
        manifest,
    }
}

/// Decompresses gzipped bytes into text; `name` names them in errors.
pub fn gunzip_text(bytes: &[u8], name: &str) -> Result<String> {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_string(&mut s)
        .with_context(|| format!("decompressing {name}"))?;
    Ok(s)
}

/// Parses `{"id", "text", ...}` lines (other fields ignored, blank lines skipped); `name` names
/// the file in errors.
pub fn parse_docs(text: &str, name: &str) -> Result<Vec<DemoDoc>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).with_context(|| {
            format!(
                "{name}:{}: expected a JSON object with string fields \"id\" and \"text\"",
                i + 1
            )
        })?);
    }
    Ok(out)
}

/// The shipped texts, decompressed.
pub fn shipped_texts() -> Result<DemoTexts> {
    let docs = |gz: &[u8], name: &str| parse_docs(&gunzip_text(gz, name)?, name);
    Ok(DemoTexts {
        clean: docs(CLEAN_GZ, "embedded clean.jsonl.gz")?,
        toxic: docs(TOXIC_GZ, "embedded toxic.jsonl.gz")?,
        val: docs(VAL_GZ, "embedded val.jsonl.gz")?,
    })
}

/// The composer's record (`composition.json`), parsed.
pub fn shipped_composition() -> Result<serde_json::Value> {
    serde_json::from_slice(COMPOSITION_JSON).context("parsing the embedded composition.json")
}

/// Trains the demo's byte-level BPE with `vocab` ids on its training text (clean documents,
/// then toxic passages). The shipped tokenizer is this function's output at
/// [`DEFAULT_DEMO_VOCAB`].
pub fn train_demo_bpe(texts: &DemoTexts, vocab: usize) -> Result<Tokenizer> {
    let train: Vec<String> = texts
        .clean
        .iter()
        .chain(&texts.toxic)
        .map(|d| d.text.clone())
        .collect();
    Tokenizer::train_bpe(&train, vocab)
}

/// One shard written by [`write_demo_shards`].
#[derive(Clone, Debug)]
pub struct ShardSummary {
    /// `clean`, `toxic` or `val`.
    pub name: &'static str,
    /// Where it was written.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Tokens in the shard, an EOS after every document included.
    pub total_tokens: usize,
    /// Documents and tokens (EOS included) per corpus.
    pub per_corpus: BTreeMap<String, (usize, usize)>,
}

impl ShardSummary {
    /// `{"docs": {corpus: n}, "tokens": {corpus: n}, "total_tokens": n}`, as the manifest holds.
    pub fn counts_json(&self) -> serde_json::Value {
        let docs: serde_json::Map<String, serde_json::Value> = self
            .per_corpus
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.0)))
            .collect();
        let toks: serde_json::Map<String, serde_json::Value> = self
            .per_corpus
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.1)))
            .collect();
        json!({"docs": docs, "tokens": toks, "total_tokens": self.total_tokens})
    }
}

/// Tokenizes the three sets with `tok` into `dir/{clean,toxic,val}.shard` (an `<|endoftext|>`
/// after every document), in that order.
pub fn write_demo_shards(
    dir: &Path,
    tok: &Tokenizer,
    texts: &DemoTexts,
) -> Result<[ShardSummary; 3]> {
    let eos = tok.eos_id()?;
    let id = Some(tok.identity()?);
    let one = |name: &'static str, docs: &[DemoDoc]| -> Result<ShardSummary> {
        let strings: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
        let encoded = tok.encode_batch(&strings)?;
        let mut tokens = Vec::with_capacity(encoded.iter().map(|e| e.len() + 1).sum());
        let mut per_corpus: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (d, ids) in docs.iter().zip(encoded) {
            let e = per_corpus.entry(d.corpus().to_string()).or_default();
            e.0 += 1;
            e.1 += ids.len() + 1;
            tokens.extend_from_slice(&ids);
            tokens.push(eos);
        }
        let path = dir.join(format!("{name}.shard"));
        write_shard(&path, &tokens, tok.vocab_size(), id)?;
        Ok(ShardSummary {
            name,
            sha256: file_sha256(&path)?,
            path,
            total_tokens: tokens.len(),
            per_corpus,
        })
    };
    Ok([
        one("clean", &texts.clean)?,
        one("toxic", &texts.toxic)?,
        one("val", &texts.val)?,
    ])
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's contents, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// SHA-256 over the demo version and every embedded asset (name, length, bytes).
fn assets_sha256() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut h = Sha256::new();
        h.update(DEMO_VERSION.to_le_bytes());
        for (name, bytes) in embedded_assets() {
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        hex(&h.finalize())
    })
}

/// The demo data in `dir` if its manifest is for this version, these assets and `vocab`, and
/// every file still has the hash the manifest records; else why not.
fn cached(dir: &Path, vocab: usize) -> std::result::Result<DemoData, String> {
    let mpath = dir.join("manifest.json");
    let bytes = std::fs::read(&mpath).map_err(|_| "no manifest.json".to_string())?;
    let m: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not valid JSON ({e})", mpath.display()))?;
    if m.get("version").and_then(|v| v.as_u64()) != Some(DEMO_VERSION) {
        return Err(format!(
            "built by another version of the demo data (expected version {DEMO_VERSION})"
        ));
    }
    if m.get("vocab").and_then(|v| v.as_u64()) != Some(vocab as u64) {
        return Err(format!("built for another vocab (asked for {vocab})"));
    }
    if m.get("assets_sha256").and_then(|v| v.as_str()) != Some(assets_sha256()) {
        return Err("built from other shipped assets".to_string());
    }
    let d = demo_paths(dir, m.clone());
    for (name, path) in d.files() {
        let want = m["files"][name].as_str();
        let got = file_sha256(path).ok();
        if want.is_none() || got.as_deref() != want {
            return Err(format!(
                "{name} is missing or differs from its manifest hash"
            ));
        }
    }
    Ok(d)
}

/// Reads a probe.jsonl file (`{"text", "label", "source", "score"}` per line).
pub fn read_probe(path: &Path) -> Result<Vec<ProbeItem>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: reading", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected {{\"text\", \"label\", \"source\", \"score\"}}",
                path.display(),
                i + 1
            )
        })?);
    }
    Ok(out)
}

/// Demo prompts: the first `words` words of probe passages, alternating label 1 and label 0 in
/// file order, `n` in all (fewer if the file runs out).
pub fn demo_prompts(path: &Path, n: usize, words: usize) -> Result<Vec<String>> {
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

/// Which of the demo's texts to complete.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoPrompts {
    /// The RealToxicityPrompts prompts (rtp.jsonl), apart from everything the demo trains and
    /// probes on.
    Rtp,
    /// The first words of the held-out probe passages (probe.jsonl), toxic and clean
    /// alternating; the same passages the probes are fitted on.
    Probe,
}

/// The first `n` prompts (0: all) of the demo data in `dir` of the kind `which` (for `probe`,
/// the first `words` words of each passage), and a sentence saying where they came from.
pub fn demo_prompt_set(
    dir: &Path,
    which: DemoPrompts,
    n: usize,
    words: usize,
) -> Result<(Vec<String>, String)> {
    let n = if n == 0 { usize::MAX } else { n };
    match which {
        DemoPrompts::Rtp => {
            let path = dir.join("rtp.jsonl");
            if !path.is_file() {
                bail!(
                    "{}: no such file; the demo data in {} predates the RealToxicityPrompts \
                     prompts: run `train` or `prepare --demo` once to rebuild it",
                    path.display(),
                    dir.display()
                );
            }
            let mut ps: Vec<String> = read_prompts(&path, PromptFormat::Rtp)?
                .into_iter()
                .map(|p| p.text)
                .collect();
            let total = ps.len();
            ps.truncate(n);
            Ok((
                ps,
                format!(
                    "the first {} of the {total} RealToxicityPrompts prompts of {} (apart from \
                     the training text and the probe set)",
                    n.min(total),
                    path.display()
                ),
            ))
        }
        DemoPrompts::Probe => {
            let path = dir.join("probe.jsonl");
            let ps = demo_prompts(&path, n, words)?;
            Ok((
                ps,
                format!(
                    "first {words} words of the passages of {} (held out from training), \
                     alternating toxic (label 1) and clean (label 0) in file order",
                    path.display()
                ),
            ))
        }
    }
}

/// Builds the demo data into `dir`, or reuses it when its manifest is for this
/// [`DEMO_VERSION`], these embedded assets and `vocab`, and every file has its recorded hash:
/// tokenizer.json, clean.shard, toxic.shard, val.shard, probe.jsonl, rtp.jsonl, manifest.json
/// (written last).
///
/// At `vocab` [`DEFAULT_DEMO_VOCAB`] the shipped tokenizer is used and each shard must hash to
/// what the composer recorded; another `vocab` trains a BPE of that size on the demo's training
/// text first ([`train_demo_bpe`], a few seconds). Shows a spinner when `progress` is true.
pub fn prepare_demo(dir: &Path, vocab: usize, progress: bool) -> Result<DemoData> {
    let why = match cached(dir, vocab) {
        Ok(d) => return Ok(d),
        Err(why) => why,
    };
    let t0 = Instant::now();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the demo data directory {}", dir.display()))?;
    let pb = if progress {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] demo data: {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        if dir.join("manifest.json").exists() {
            pb.println(format!("demo data in {}: {why}; rebuilding", dir.display()));
        }
        pb
    } else {
        ProgressBar::hidden()
    };

    pb.set_message("decompressing the shipped texts");
    let texts = shipped_texts()?;
    let composition = shipped_composition()?;
    let d = demo_paths(dir, serde_json::Value::Null);
    let shipped = vocab == DEFAULT_DEMO_VOCAB;
    let tok = if shipped {
        write_atomic(&d.tokenizer, TOKENIZER_JSON)?;
        Tokenizer::from_bytes(TOKENIZER_JSON, "the shipped demo tokenizer.json")?
    } else {
        pb.set_message(format!("training a {vocab}-id byte-level BPE"));
        let tok = train_demo_bpe(&texts, vocab)?;
        tok.save(&d.tokenizer)?;
        tok
    };
    let t_bpe = t0.elapsed().as_secs_f64();

    pb.set_message("tokenizing");
    let shards = write_demo_shards(dir, &tok, &texts)?;
    if shipped {
        for s in &shards {
            let want = composition["shards_sha256"][s.name].as_str().unwrap_or("");
            if s.sha256 != want {
                bail!(
                    "demo data: {} (sha256 {}) differs from the shard the shipped composition \
                     records (sha256 {want:?}): the tokenizer library or the shipped assets \
                     changed; recompose with `bash tools/compose-demo.sh`",
                    s.path.display(),
                    s.sha256
                );
            }
        }
    }
    let t_tok = t0.elapsed().as_secs_f64() - t_bpe;

    let probe_text = gunzip_text(PROBE_GZ, "embedded probe.jsonl.gz")?;
    write_atomic(&d.probe, probe_text.as_bytes())?;
    let rtp_text = gunzip_text(RTP_GZ, "embedded rtp/prompts.jsonl.gz")?;
    write_atomic(&d.rtp, rtp_text.as_bytes())?;
    let probe = read_probe(&d.probe)?;
    let mut probe_by: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for p in &probe {
        if let Some(c) = probe_by
            .entry(corpus_of(&p.source).to_string())
            .or_default()
            .get_mut(p.label as usize)
        {
            *c += 1;
        }
    }
    let rtp_count = read_prompts(&d.rtp, PromptFormat::Rtp)?.len();

    let mut files = serde_json::Map::new();
    for (name, path) in d.files() {
        files.insert(name.to_string(), json!(file_sha256(path)?));
    }
    let [clean, toxic, val] = &shards;
    let manifest = json!({
        "version": DEMO_VERSION,
        "vocab": vocab,
        "tokenizer": if shipped { "shipped (assets/demo/composed/tokenizer.json)" } else { "byte-level BPE trained here on the demo's training text" },
        "tokenizer_vocab": tok.vocab_size(),
        "eos_id": tok.eos_id()?,
        "labels": format!("toxic = passages of Brown, fortunes and Shakespeare that an offline classifier \
                   (alt-profanity-check 1.9.1, ported) scores >= {TOXIC_THRESHOLD}; clean = <= \
                   {CLEAN_THRESHOLD}; passages in between used nowhere; not human judgements"),
        "assets_sha256": assets_sha256(),
        "clean": clean.counts_json(),
        "toxic": toxic.counts_json(),
        "val": val.counts_json(),
        "probe": {
            "toxic": probe.iter().filter(|p| p.label == 1).count(),
            "clean": probe.iter().filter(|p| p.label == 0).count(),
            "by_corpus": probe_by.iter().map(|(k, v)| (k.clone(), json!({"toxic": v[1], "clean": v[0]}))).collect::<serde_json::Map<_, _>>(),
        },
        "rtp_prompts": rtp_count,
        "composition": composition,
        "files": files,
        "build_seconds": {"tokenizer": t_bpe, "tokenize": t_tok, "total": t0.elapsed().as_secs_f64()},
    });
    let manifest_text = serde_json::to_string_pretty(&manifest)?;
    write_atomic(&dir.join("manifest.json"), manifest_text.as_bytes())?;
    // Return the manifest as a later run reads it back (floats parsed from the same text).
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text)?;
    pb.finish_with_message(format!(
        "{} clean + {} toxic + {} val tokens, {} probe passages, {rtp_count} RTP prompts, vocab {} \
         in {:.1}s",
        clean.total_tokens,
        toxic.total_tokens,
        val.total_tokens,
        probe.len(),
        tok.vocab_size(),
        t0.elapsed().as_secs_f64()
    ));
    // Confirm the shards read back (catches a disk that lied).
    for s in &shards {
        Shard::open(&s.path)?;
    }
    Ok(DemoData { manifest, ..d })
}
