//! The embedded demo data set: Brown + fortunes + Shakespeare as clean text, the passages of those
//! texts that an offline classifier scored above 0.5 as "toxic" text, a clean validation set and a
//! source-matched labelled probe set. Built on first use into a cache directory.
//!
//! **The demo's toxic labels are an offline classifier's scores (alt-profanity-check 1.9.1,
//! score > 0.5) on real sentences of public-domain / permissively licensed texts**, not human
//! judgements of real toxic web text; see assets/SOURCES.md.
//!
//! Composition ([`compose_demo`], deterministic, no randomness but fixed seeds):
//! 1. The four `assets/demo/*.jsonl.gz` files are embedded in the binary with `include_bytes!`.
//! 2. Every flagged passage (whitespace-collapsed text) is located, up to whitespace, in **every**
//!    document of all three corpora (a multi-pattern scan over whitespace-normalised text).
//! 3. Probe positives: a seeded 15% of the distinct flagged passages, per corpus.
//!    Probe negatives: for each positive, one unflagged unit of the same source (a Brown sentence
//!    of the same document, a speech of the same play, a fortune of the same fortune file), not
//!    overlapping any flagged passage, of similar length (½× to 2×) where possible.
//! 4. Clean text = the documents with every occurrence of every flagged passage and of every
//!    probe negative cut out. A seeded 3% of each corpus's cleaned documents (at least one) is
//!    the validation set; the rest is clean training text.
//! 5. Toxic training text = the flagged passages not in the probe set, one document each.
//! 6. A byte-level BPE is trained on the training text (clean + toxic), then each set is
//!    tokenized into a shard with `<|endoftext|>` after every document.

use super::shard::{write_shard, Shard};
use super::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Version of the demo composition; a cache built by another version is rebuilt.
pub const DEMO_VERSION: u64 = 2;
/// Default vocabulary size of the demo's BPE.
pub const DEFAULT_DEMO_VOCAB: usize = 2048;
/// Share of distinct flagged passages held out (per corpus) as probe positives.
pub const PROBE_FRACTION: f64 = 0.15;
/// Share of each corpus's documents held out as clean validation text.
pub const VAL_FRACTION: f64 = 0.03;
/// Seed of every random choice in the composition.
const COMPOSE_SEED: u64 = 0x0BAD_DA7A;

/// Brown Corpus, one document per source file.
pub static BROWN_GZ: &[u8] = include_bytes!("../../assets/demo/brown.jsonl.gz");
/// Unix fortunes, one document per fortune.
pub static FORTUNES_GZ: &[u8] = include_bytes!("../../assets/demo/fortunes.jsonl.gz");
/// 42 Shakespeare plays and poems, one document each.
pub static SHAKESPEARE_GZ: &[u8] = include_bytes!("../../assets/demo/shakespeare.jsonl.gz");
/// The passages of the three above scored > 0.5 by the offline classifier.
pub static TOXIC_DEMO_GZ: &[u8] = include_bytes!("../../assets/demo/toxic-demo.jsonl.gz");

/// Corpus names, in the order used everywhere.
pub const CORPORA: [&str; 3] = ["brown", "fortunes", "shakespeare"];

/// A document of the demo: its id (`"brown/ca01"`, `"fortunes/art/0"`, `"shakespeare/hamlet"`,
/// or for a toxic passage the id of the document it came from) and its text.
#[derive(Clone, Debug, PartialEq)]
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

fn corpus_of(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// One labelled example of the probe set (a line of probe.jsonl).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeItem {
    /// The passage, whitespace collapsed to single spaces.
    pub text: String,
    /// 1: flagged by the classifier (score > 0.5); 0: an unflagged passage of the same source.
    pub label: u8,
    /// Id of the source document.
    pub source: String,
    /// The classifier's score for flagged passages; `None` (null) for unflagged ones, whose score
    /// is only known to be ≤ 0.5.
    pub score: Option<f64>,
}

/// The demo composed as text, before tokenization.
#[derive(Clone, Debug)]
pub struct DemoText {
    /// Clean training documents (flagged passages and probe passages cut out).
    pub clean_train: Vec<DemoDoc>,
    /// Clean held-out documents (cut the same way), never trained on.
    pub val: Vec<DemoDoc>,
    /// Toxic training documents: one flagged passage each, probe positives excluded.
    pub toxic_train: Vec<DemoDoc>,
    /// The labelled probe set, never trained on: positives then negatives.
    pub probe: Vec<ProbeItem>,
    /// Every distinct flagged passage (training and probe).
    pub flagged: Vec<String>,
    /// Occurrences of flagged passages cut out of the clean documents.
    pub removed_flagged: usize,
    /// Occurrences of probe negatives cut out of the clean documents.
    pub removed_probe_negatives: usize,
    /// Flagged passages that were not found in their source document (expected 0).
    pub not_found: usize,
}

/// Paths of a built demo cache.
#[derive(Clone, Debug)]
pub struct DemoData {
    /// The cache directory.
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
    /// The parsed `manifest.json` (counts per source, vocab, version).
    pub manifest: serde_json::Value,
}

fn gunzip(bytes: &[u8], name: &str) -> Result<String> {
    let mut s = String::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_string(&mut s)
        .with_context(|| format!("decompressing embedded {name}"))?;
    Ok(s)
}

fn field<'a>(v: &'a serde_json::Value, key: &str, name: &str, line: usize) -> Result<&'a str> {
    v.get(key)
        .and_then(|x| x.as_str())
        .ok_or_else(|| anyhow!("{name}:{line}: expected a string field {key:?}"))
}

/// The embedded corpora, decompressed: (brown, fortunes, shakespeare) documents.
pub fn load_corpora() -> Result<Vec<DemoDoc>> {
    let sets = [
        (BROWN_GZ, "brown.jsonl.gz"),
        (FORTUNES_GZ, "fortunes.jsonl.gz"),
        (SHAKESPEARE_GZ, "shakespeare.jsonl.gz"),
    ];
    let parsed: Vec<Result<Vec<DemoDoc>>> = sets
        .par_iter()
        .map(|(gz, name)| {
            let text = gunzip(gz, name)?;
            let mut docs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{name}:{}: not valid JSON", i + 1))?;
                docs.push(DemoDoc {
                    id: field(&v, "id", name, i + 1)?.to_string(),
                    text: field(&v, "text", name, i + 1)?.to_string(),
                });
            }
            Ok(docs)
        })
        .collect();
    let mut all = Vec::new();
    for p in parsed {
        all.extend(p?);
    }
    Ok(all)
}

/// A flagged passage as shipped: `(source id, text, score)`.
pub fn load_flagged() -> Result<Vec<(String, String, f64)>> {
    let name = "toxic-demo.jsonl.gz";
    let text = gunzip(TOXIC_DEMO_GZ, name)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{name}:{}: not valid JSON", i + 1))?;
        let score = v
            .get("score")
            .and_then(|s| s.as_f64())
            .ok_or_else(|| anyhow!("{name}:{}: expected a number field \"score\"", i + 1))?;
        out.push((
            field(&v, "source", name, i + 1)?.to_string(),
            field(&v, "text", name, i + 1)?.to_string(),
            score,
        ));
    }
    Ok(out)
}

/// Collapses every run of whitespace to one space and trims the ends.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whitespace-normalised text plus, for each of its bytes, the byte offset in the raw text it
/// came from (a collapsed space maps to the start of its whitespace run).
struct Normalized {
    text: String,
    raw_pos: Vec<u32>,
}

fn normalize_with_map(raw: &str) -> Normalized {
    let mut text = String::with_capacity(raw.len());
    let mut raw_pos = Vec::with_capacity(raw.len());
    let mut pending_space: Option<usize> = None;
    for (i, c) in raw.char_indices() {
        if c.is_whitespace() {
            if !text.is_empty() && pending_space.is_none() {
                pending_space = Some(i);
            }
            continue;
        }
        if let Some(sp) = pending_space.take() {
            text.push(' ');
            raw_pos.push(sp as u32);
        }
        let mut buf = [0u8; 4];
        let enc = c.encode_utf8(&mut buf);
        for k in 0..enc.len() {
            raw_pos.push((i + k) as u32);
        }
        text.push(c);
    }
    Normalized { text, raw_pos }
}

impl Normalized {
    /// Raw byte range of normalised range `a..b` (which neither starts nor ends with a space).
    fn raw_range(&self, a: usize, b: usize) -> (usize, usize) {
        (self.raw_pos[a] as usize, self.raw_pos[b - 1] as usize + 1)
    }
}

/// Finds, in whitespace-normalised documents, every occurrence of a set of patterns that start
/// at a word start (a position whose previous byte is not alphanumeric).
struct PatternIndex<'a> {
    patterns: &'a [String],
    key_len: usize,
    by_key: HashMap<&'a [u8], Vec<u32>>,
}

impl<'a> PatternIndex<'a> {
    fn new(patterns: &'a [String]) -> PatternIndex<'a> {
        let key_len = patterns
            .iter()
            .map(|p| p.len())
            .min()
            .unwrap_or(1)
            .clamp(1, 8);
        let mut by_key: HashMap<&[u8], Vec<u32>> = HashMap::new();
        for (i, p) in patterns.iter().enumerate() {
            by_key
                .entry(&p.as_bytes()[..key_len])
                .or_default()
                .push(i as u32);
        }
        PatternIndex {
            patterns,
            key_len,
            by_key,
        }
    }

    /// Occurrences `(pattern, start, end)` in normalised text `t`.
    fn find_all(&self, t: &str) -> Vec<(u32, usize, usize)> {
        let b = t.as_bytes();
        let mut out = Vec::new();
        if self.patterns.is_empty() || b.len() < self.key_len {
            return out;
        }
        for i in 0..=b.len() - self.key_len {
            if i > 0 && b[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            if let Some(cands) = self.by_key.get(&b[i..i + self.key_len]) {
                for &c in cands {
                    let p = self.patterns[c as usize].as_bytes();
                    if b[i..].starts_with(p) {
                        out.push((c, i, i + p.len()));
                    }
                }
            }
        }
        out
    }
}

/// Splits one Brown paragraph (a line) into sentences: a sentence ends at `.`, `!` or `?`
/// (plus closing quotes or parentheses) followed by whitespace and an upper-case letter, a
/// digit, or an opening quote or parenthesis. Returns byte ranges into `line`.
fn split_sentences(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b')') {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if k > j
                && k < b.len()
                && (b[k].is_ascii_uppercase()
                    || b[k].is_ascii_digit()
                    || matches!(b[k], b'"' | b'\'' | b'(' | b'`'))
            {
                out.push((start, j));
                start = k;
                i = k;
                continue;
            }
        }
        i += 1;
    }
    if start < b.len() {
        out.push((start, b.len()));
    }
    out
}

/// Candidate probe-negative units of a document, as raw byte ranges: Brown sentences, Shakespeare
/// blank-line paragraphs (speeches; stage directions and headings skipped), whole fortunes.
fn units(doc: &DemoDoc) -> Vec<(usize, usize)> {
    let t = &doc.text;
    let mut out = Vec::new();
    match doc.corpus() {
        "brown" => {
            let mut off = 0;
            for line in t.split('\n') {
                for (a, b) in split_sentences(line) {
                    out.push((off + a, off + b));
                }
                off += line.len() + 1;
            }
        }
        "shakespeare" => {
            let mut para_start: Option<usize> = None;
            let mut off = 0;
            let mut last_end = 0;
            for line in t.split('\n') {
                let blank = line.trim().is_empty();
                if blank {
                    if let Some(s) = para_start.take() {
                        out.push((s, last_end));
                    }
                } else {
                    if para_start.is_none() {
                        para_start = Some(off);
                    }
                    last_end = off + line.len();
                }
                off += line.len() + 1;
            }
            if let Some(s) = para_start {
                out.push((s, last_end));
            }
            out.retain(|&(a, b)| {
                let p = t[a..b].trim_start();
                !(p.starts_with('[')
                    || p.starts_with("ACT ")
                    || p.starts_with("Act ")
                    || p.starts_with("SCENE")
                    || p.starts_with("Scene"))
            });
        }
        _ => out.push((0, t.len())),
    }
    out.retain(|&(a, b)| {
        let s = &t[a..b];
        s.trim().len() >= 20 && s.split_whitespace().count() >= 4
    });
    out
}

/// The pool a probe negative for a passage of document `id` is drawn from: the document itself,
/// or for fortunes (one fortune per document) the fortune file, e.g. `fortunes/art`.
fn pool_key(id: &str) -> String {
    if corpus_of(id) == "fortunes" {
        match id.rfind('/') {
            Some(k) => id[..k].to_string(),
            None => id.to_string(),
        }
    } else {
        id.to_string()
    }
}

/// Cuts the (possibly overlapping) raw byte ranges out of `text`.
fn cut_ranges(text: &str, mut ranges: Vec<(usize, usize)>) -> String {
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (a, b) in ranges {
        if a > pos {
            out.push_str(&text[pos..a]);
        }
        pos = pos.max(b);
    }
    if pos < text.len() {
        out.push_str(&text[pos..]);
    }
    out
}

/// Composes the demo from the embedded files (see the module docs). Deterministic.
pub fn compose_demo() -> Result<DemoText> {
    let docs = load_corpora()?;
    let flagged_rows = load_flagged()?;
    let id_to_doc: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();

    // Distinct flagged passages, in file order, with their first source and highest score.
    let mut flagged: Vec<String> = Vec::new();
    let mut first_source: Vec<String> = Vec::new();
    let mut score: Vec<f64> = Vec::new();
    let mut sources_of: Vec<Vec<String>> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for (src, text, s) in &flagged_rows {
        let text = normalize_ws(text);
        if text.is_empty() {
            continue;
        }
        match index_of.get(&text) {
            Some(&k) => {
                score[k] = score[k].max(*s);
                sources_of[k].push(src.clone());
            }
            None => {
                index_of.insert(text.clone(), flagged.len());
                flagged.push(text);
                first_source.push(src.clone());
                score.push(*s);
                sources_of.push(vec![src.clone()]);
            }
        }
    }

    // Every occurrence of every flagged passage in every document.
    let norms: Vec<Normalized> = docs
        .par_iter()
        .map(|d| normalize_with_map(&d.text))
        .collect();
    let index = PatternIndex::new(&flagged);
    let hits: Vec<Vec<(u32, usize, usize)>> =
        norms.par_iter().map(|n| index.find_all(&n.text)).collect();
    let mut not_found = 0;
    for (k, srcs) in sources_of.iter().enumerate() {
        for s in srcs {
            let found = id_to_doc
                .get(s.as_str())
                .is_some_and(|&d| hits[d].iter().any(|h| h.0 as usize == k));
            if !found {
                not_found += 1;
            }
        }
    }
    // Raw ranges of flagged text per document.
    let flagged_ranges: Vec<Vec<(usize, usize)>> = hits
        .iter()
        .zip(&norms)
        .map(|(h, n)| h.iter().map(|&(_, a, b)| n.raw_range(a, b)).collect())
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(COMPOSE_SEED);

    // Probe positives: PROBE_FRACTION of the distinct passages of each corpus.
    let mut is_probe = vec![false; flagged.len()];
    let mut positives: Vec<usize> = Vec::new();
    for corpus in CORPORA {
        let mut ks: Vec<usize> = (0..flagged.len())
            .filter(|&k| corpus_of(&first_source[k]) == corpus)
            .collect();
        ks.shuffle(&mut rng);
        let take = ((ks.len() as f64) * PROBE_FRACTION).round() as usize;
        let mut chosen = ks[..take].to_vec();
        chosen.sort_unstable();
        for &k in &chosen {
            is_probe[k] = true;
        }
        positives.extend(chosen);
    }

    // Candidate negatives per pool: unflagged units that overlap no flagged occurrence, with
    // the index of their document.
    let cand_per_doc: Vec<Vec<String>> = docs
        .par_iter()
        .zip(&flagged_ranges)
        .map(|(d, fr)| {
            units(d)
                .into_iter()
                .filter(|&(a, b)| !fr.iter().any(|&(fa, fb)| fa < b && a < fb))
                .map(|(a, b)| normalize_ws(&d.text[a..b]))
                .collect()
        })
        .collect();
    let mut pools: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
    for (d, c) in cand_per_doc.into_iter().enumerate() {
        pools
            .entry(pool_key(&docs[d].id))
            .or_default()
            .extend(c.into_iter().map(|t| (t, d)));
    }
    let flagged_set: HashSet<&str> = flagged.iter().map(|s| s.as_str()).collect();
    let mut used: HashSet<String> = HashSet::new();
    let mut probe = Vec::new();
    let mut negatives: Vec<ProbeItem> = Vec::new();
    for &k in &positives {
        probe.push(ProbeItem {
            text: flagged[k].clone(),
            label: 1,
            source: first_source[k].clone(),
            score: Some(score[k]),
        });
        let len = flagged[k].len();
        let pick_from = |pool: &[&(String, usize)],
                         used: &HashSet<String>,
                         rng: &mut ChaCha8Rng| {
            let ok =
                |c: &&&(String, usize)| !used.contains(&c.0) && !flagged_set.contains(c.0.as_str());
            let near: Vec<&(String, usize)> = pool
                .iter()
                .filter(|c| ok(c) && c.0.len() * 2 >= len && c.0.len() <= len * 2)
                .copied()
                .collect();
            let from = if near.is_empty() {
                pool.iter().filter(|c| ok(c)).copied().collect()
            } else {
                near
            };
            if from.is_empty() {
                None
            } else {
                Some(from[rng.random_range(0..from.len())].clone())
            }
        };
        let key = pool_key(&first_source[k]);
        let same: Vec<&(String, usize)> = pools
            .get(&key)
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let mut pick = pick_from(&same, &used, &mut rng);
        if pick.is_none() {
            // Fall back to the whole corpus (not needed with the shipped data).
            let corpus = corpus_of(&first_source[k]);
            let all: Vec<&(String, usize)> = pools
                .iter()
                .filter(|(p, _)| corpus_of(p) == corpus)
                .flat_map(|(_, v)| v.iter())
                .collect();
            pick = pick_from(&all, &used, &mut rng);
        }
        let Some((text, d)) = pick else {
            bail!(
                "demo: no unflagged passage left in {} to pair with a flagged one",
                first_source[k]
            );
        };
        used.insert(text.clone());
        negatives.push(ProbeItem {
            text,
            label: 0,
            source: docs[d].id.clone(),
            score: None,
        });
    }
    let negatives_text: Vec<String> = negatives.iter().map(|n| n.text.clone()).collect();
    let neg_index = PatternIndex::new(&negatives_text);
    let neg_hits: Vec<Vec<(u32, usize, usize)>> = norms
        .par_iter()
        .map(|n| neg_index.find_all(&n.text))
        .collect();
    probe.extend(negatives);

    // Clean documents: cut flagged passages and probe negatives everywhere.
    let removed_flagged: usize = hits.iter().map(|h| h.len()).sum();
    let removed_probe_negatives: usize = neg_hits.iter().map(|h| h.len()).sum();
    let cleaned: Vec<DemoDoc> = docs
        .par_iter()
        .enumerate()
        .map(|(d, doc)| {
            let mut ranges = flagged_ranges[d].clone();
            ranges.extend(
                neg_hits[d]
                    .iter()
                    .map(|&(_, a, b)| norms[d].raw_range(a, b)),
            );
            DemoDoc {
                id: doc.id.clone(),
                text: if ranges.is_empty() {
                    doc.text.clone()
                } else {
                    cut_ranges(&doc.text, ranges)
                },
            }
        })
        .collect();
    drop(norms);

    // Validation: VAL_FRACTION of each corpus's (non-empty) cleaned documents.
    let mut clean_train = Vec::new();
    let mut val = Vec::new();
    for corpus in CORPORA {
        let mut idx: Vec<usize> = (0..cleaned.len())
            .filter(|&i| cleaned[i].corpus() == corpus && !cleaned[i].text.trim().is_empty())
            .collect();
        idx.shuffle(&mut rng);
        let n_val = ((idx.len() as f64 * VAL_FRACTION).round() as usize).max(1);
        let mut held: Vec<usize> = idx[..n_val.min(idx.len())].to_vec();
        let mut rest: Vec<usize> = idx[n_val.min(idx.len())..].to_vec();
        held.sort_unstable();
        rest.sort_unstable();
        val.extend(held.into_iter().map(|i| cleaned[i].clone()));
        clean_train.extend(rest.into_iter().map(|i| cleaned[i].clone()));
    }

    let toxic_train = (0..flagged.len())
        .filter(|&k| !is_probe[k])
        .map(|k| DemoDoc {
            id: first_source[k].clone(),
            text: flagged[k].clone(),
        })
        .collect();

    Ok(DemoText {
        clean_train,
        val,
        toxic_train,
        probe,
        flagged,
        removed_flagged,
        removed_probe_negatives,
        not_found,
    })
}

/// Documents and tokens (EOS included) per corpus.
type CorpusCounts = BTreeMap<String, (usize, usize)>;

/// Tokens of `docs` with the EOS id after each document, plus token counts per corpus.
fn tokenize_docs(tok: &Tokenizer, docs: &[DemoDoc], eos: u32) -> Result<(Vec<u32>, CorpusCounts)> {
    let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
    let encoded = tok.encode_batch(&texts)?;
    let mut out = Vec::with_capacity(encoded.iter().map(|e| e.len() + 1).sum());
    let mut per = CorpusCounts::new();
    for (d, ids) in docs.iter().zip(encoded) {
        let e = per.entry(d.corpus().to_string()).or_default();
        e.0 += 1;
        e.1 += ids.len() + 1;
        out.extend_from_slice(&ids);
        out.push(eos);
    }
    Ok((out, per))
}

fn counts_json(per: &CorpusCounts, total_tokens: usize) -> serde_json::Value {
    let docs: serde_json::Map<String, serde_json::Value> =
        per.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect();
    let toks: serde_json::Map<String, serde_json::Value> =
        per.iter().map(|(k, v)| (k.clone(), json!(v.1))).collect();
    json!({"docs": docs, "tokens": toks, "total_tokens": total_tokens})
}

fn demo_paths(dir: &Path, manifest: serde_json::Value) -> DemoData {
    DemoData {
        dir: dir.to_path_buf(),
        tokenizer: dir.join("tokenizer.json"),
        clean: dir.join("clean.shard"),
        toxic: dir.join("toxic.shard"),
        val: dir.join("val.shard"),
        probe: dir.join("probe.jsonl"),
        manifest,
    }
}

/// A usable cache in `dir` for this version and vocabulary, if there is one.
fn cached(dir: &Path, vocab: usize) -> Option<DemoData> {
    let bytes = std::fs::read(dir.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if m.get("version")?.as_u64()? != DEMO_VERSION || m.get("vocab")?.as_u64()? != vocab as u64 {
        return None;
    }
    let d = demo_paths(dir, m);
    let all_there = [&d.tokenizer, &d.clean, &d.toxic, &d.val, &d.probe]
        .iter()
        .all(|p| p.is_file());
    all_there.then_some(d)
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

/// Builds the demo data into `cache_dir` (or reuses it when its manifest has this
/// [`DEMO_VERSION`] and `vocab` and every file is there): tokenizer.json, clean.shard,
/// toxic.shard, val.shard, probe.jsonl, manifest.json (written last). Shows a spinner when
/// `progress` is true.
pub fn prepare_demo(cache_dir: &Path, vocab: usize, progress: bool) -> Result<DemoData> {
    if let Some(d) = cached(cache_dir, vocab) {
        return Ok(d);
    }
    let t0 = Instant::now();
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating the demo cache directory {}", cache_dir.display()))?;
    let pb = if progress {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] demo data: {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    } else {
        ProgressBar::hidden()
    };

    pb.set_message("decompressing and composing (clean minus flagged passages, probe, val)");
    let demo = compose_demo()?;
    let t_compose = t0.elapsed().as_secs_f64();

    pb.set_message(format!("training a {vocab}-id byte-level BPE"));
    let mut train_texts: Vec<String> = demo.clean_train.iter().map(|d| d.text.clone()).collect();
    train_texts.extend(demo.toxic_train.iter().map(|d| d.text.clone()));
    let tok = Tokenizer::train_bpe(&train_texts, vocab)?;
    drop(train_texts);
    let eos = tok.eos_id()?;
    let d = demo_paths(cache_dir, serde_json::Value::Null);
    tok.save(&d.tokenizer)?;
    let t_bpe = t0.elapsed().as_secs_f64() - t_compose;

    pb.set_message("tokenizing");
    let vocab_real = tok.vocab_size();
    let (clean, clean_per) = tokenize_docs(&tok, &demo.clean_train, eos)?;
    let (toxic, toxic_per) = tokenize_docs(&tok, &demo.toxic_train, eos)?;
    let (val, val_per) = tokenize_docs(&tok, &demo.val, eos)?;
    let id = Some(tok.identity()?);
    write_shard(&d.clean, &clean, vocab_real, id)?;
    write_shard(&d.toxic, &toxic, vocab_real, id)?;
    write_shard(&d.val, &val, vocab_real, id)?;
    let t_tok = t0.elapsed().as_secs_f64() - t_compose - t_bpe;

    let mut probe_bytes = Vec::new();
    for p in &demo.probe {
        serde_json::to_writer(&mut probe_bytes, p)?;
        probe_bytes.push(b'\n');
    }
    let tmp = cache_dir.join("probe.jsonl.tmp");
    std::fs::write(&tmp, &probe_bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &d.probe).with_context(|| format!("writing {}", d.probe.display()))?;

    let mut probe_by: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for p in &demo.probe {
        probe_by
            .entry(corpus_of(&p.source).to_string())
            .or_default()[p.label as usize] += 1;
    }
    let manifest = json!({
        "version": DEMO_VERSION,
        "vocab": vocab,
        "tokenizer_vocab": vocab_real,
        "eos_id": eos,
        "labels": "toxic = passages of Brown, fortunes and Shakespeare that an offline classifier \
                   (alt-profanity-check 1.9.1) scored above 0.5; not human judgements",
        "clean": counts_json(&clean_per, clean.len()),
        "toxic": counts_json(&toxic_per, toxic.len()),
        "val": counts_json(&val_per, val.len()),
        "probe": {
            "toxic": demo.probe.iter().filter(|p| p.label == 1).count(),
            "clean": demo.probe.iter().filter(|p| p.label == 0).count(),
            "by_corpus": probe_by.iter().map(|(k, v)| (k.clone(), json!({"toxic": v[1], "clean": v[0]}))).collect::<serde_json::Map<_, _>>(),
        },
        "flagged_passages": demo.flagged.len(),
        "removed_occurrences": {"flagged": demo.removed_flagged, "probe_negatives": demo.removed_probe_negatives},
        "flagged_not_found_in_source": demo.not_found,
        "build_seconds": {"compose": t_compose, "bpe": t_bpe, "tokenize": t_tok, "total": t0.elapsed().as_secs_f64()},
    });
    let mpath = cache_dir.join("manifest.json");
    let tmp = cache_dir.join("manifest.json.tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    let manifest_text = serde_json::to_string_pretty(&manifest)?;
    f.write_all(manifest_text.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // Return the manifest as a later run reads it back (floats parsed from the same text).
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text)?;
    drop(f);
    std::fs::rename(&tmp, &mpath).with_context(|| format!("writing {}", mpath.display()))?;
    pb.finish_with_message(format!(
        "{} clean + {} toxic + {} val tokens, {} probe passages, vocab {vocab_real} in {:.1}s",
        clean.len(),
        toxic.len(),
        val.len(),
        demo.probe.len(),
        t0.elapsed().as_secs_f64()
    ));
    // Confirm the shards read back (catches a disk that lied).
    for p in [&d.clean, &d.toxic, &d.val] {
        Shard::open(p)?;
    }
    Ok(DemoData { manifest, ..d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_terminal_punctuation_before_a_capital() {
        let line = "He came. \"Why?\" she asked. It cost 5.50 dollars. (See Fig. 7.) Done";
        let got: Vec<&str> = split_sentences(line)
            .into_iter()
            .map(|(a, b)| &line[a..b])
            .collect();
        assert_eq!(
            got,
            vec![
                "He came.",
                "\"Why?\" she asked.",
                "It cost 5.50 dollars.",
                "(See Fig.",
                "7.)",
                "Done"
            ]
        );
    }

    #[test]
    fn normalised_matches_map_back_to_raw_text() {
        let raw = "  Thou art\n\ta  boil,\nfriend. Ünï  x";
        let n = normalize_with_map(raw);
        assert_eq!(n.text, "Thou art a boil, friend. Ünï x");
        let pats = vec!["art a boil,".to_string(), "Ünï x".to_string()];
        let idx = PatternIndex::new(&pats);
        let hits = idx.find_all(&n.text);
        assert_eq!(hits.len(), 2);
        let (a, b) = n.raw_range(hits[0].1, hits[0].2);
        assert_eq!(&raw[a..b], "art\n\ta  boil,");
        let (a, b) = n.raw_range(hits[1].1, hits[1].2);
        assert_eq!(&raw[a..b], "Ünï  x");
        assert_eq!(
            cut_ranges(raw, vec![(a, b), (2, 6)]),
            "   art\n\ta  boil,\nfriend. "
        );
    }

    #[test]
    fn patterns_only_match_at_word_starts() {
        let pats = vec!["cat sat".to_string()];
        let idx = PatternIndex::new(&pats);
        assert_eq!(idx.find_all("the cat sat").len(), 1);
        assert_eq!(idx.find_all("bobcat sat").len(), 0);
        assert_eq!(idx.find_all("\"cat sat\"").len(), 1);
    }
}
