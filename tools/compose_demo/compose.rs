//! The composition itself: from the three corpora and the flagged passages to the clean, toxic
//! and validation texts and the probe set. Deterministic (fixed seed, ordered collections).

use crate::segment::{
    cut_ranges, normalize_with_map, normalize_ws, pool_key, segments, Normalized, PatternIndex,
};
use anyhow::{bail, Context, Result};
use baddata::data::demo::{
    corpus_of, gunzip_text, parse_docs, sha256_hex, DemoDoc, DemoTexts, ProbeItem, CLEAN_THRESHOLD,
    CORPORA, TOXIC_THRESHOLD,
};
use baddata::score::Scorer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Share of the distinct toxic passages held out (per corpus) as probe positives.
pub const PROBE_FRACTION: f64 = 0.25;
/// Share of each corpus's documents held out as clean validation text.
pub const VAL_FRACTION: f64 = 0.03;
/// Seed of every random choice in the composition.
const COMPOSE_SEED: u64 = 0x0BAD_DA7A;

/// The input files, in `assets/demo/`.
pub const INPUT_FILES: [&str; 4] = [
    "brown.jsonl.gz",
    "fortunes.jsonl.gz",
    "shakespeare.jsonl.gz",
    "toxic-demo.jsonl.gz",
];

/// A row of `toxic-demo.jsonl.gz`: a passage the Python classifier scored above 0.5.
#[derive(serde::Deserialize)]
struct FlaggedRow {
    source: String,
    text: String,
    score: f64,
}

/// What the composer reads.
pub struct Inputs {
    /// Brown, fortunes and Shakespeare documents, in that order.
    pub docs: Vec<DemoDoc>,
    /// The flagged passages: (source document id, text, recorded score).
    flagged: Vec<FlaggedRow>,
    /// SHA-256 of each input file.
    pub sha256: BTreeMap<String, String>,
}

/// Reads the four input files of `dir`.
pub fn load_inputs(dir: &Path) -> Result<Inputs> {
    let mut docs = Vec::new();
    let mut sha256 = BTreeMap::new();
    let mut flagged = Vec::new();
    for name in INPUT_FILES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        sha256.insert(name.to_string(), sha256_hex(&bytes));
        let shown = path.display().to_string();
        let text = gunzip_text(&bytes, &shown)?;
        if name == "toxic-demo.jsonl.gz" {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                flagged.push(serde_json::from_str(line).with_context(|| {
                    format!(
                        "{shown}:{}: expected {{\"source\", \"text\", \"score\"}}",
                        i + 1
                    )
                })?);
            }
        } else {
            docs.extend(parse_docs(&text, &shown)?);
        }
    }
    Ok(Inputs {
        docs,
        flagged,
        sha256,
    })
}

/// The composed demo.
pub struct Composed {
    /// Clean training, toxic training and validation texts.
    pub texts: DemoTexts,
    /// The classifier's score of each toxic training passage, in order.
    pub toxic_scores: Vec<f64>,
    /// The labelled probe set: toxic passages, then their clean partners in the same order.
    pub probe: Vec<ProbeItem>,
    /// Counts of what was kept and cut, for composition.json.
    pub stats: serde_json::Value,
}

/// A scored unit of a document that overlaps no flagged passage.
struct Unit {
    doc: usize,
    a: usize,
    b: usize,
    probe_ok: bool,
    text: String,
    score: f64,
}

/// Composes the demo (see docs/shards.md for the steps).
pub fn compose(inputs: &Inputs, scorer: &Scorer) -> Result<Composed> {
    let docs = &inputs.docs;
    let id_to_doc: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();

    // Distinct flagged passages, in file order, with their first source and every source.
    let mut flagged: Vec<String> = Vec::new();
    let mut first_source: Vec<String> = Vec::new();
    let mut recorded: Vec<f64> = Vec::new();
    let mut sources_of: Vec<Vec<String>> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for row in &inputs.flagged {
        let text = normalize_ws(&row.text);
        if text.is_empty() {
            continue;
        }
        match index_of.get(&text) {
            Some(&k) => {
                recorded[k] = recorded[k].max(row.score);
                sources_of[k].push(row.source.clone());
            }
            None => {
                index_of.insert(text.clone(), flagged.len());
                flagged.push(text);
                first_source.push(row.source.clone());
                recorded.push(row.score);
                sources_of.push(vec![row.source.clone()]);
            }
        }
    }
    // Our scorer decides; the recorded (Python, 4-decimal) scores only check it.
    let score = scorer.score_batch(&flagged);
    let max_diff = score
        .iter()
        .zip(&recorded)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    if max_diff > 1e-4 {
        bail!("the scorer disagrees with the recorded scores by {max_diff:.2e} (expected ≤ 5e-5)");
    }
    let is_toxic: Vec<bool> = score.iter().map(|&s| s >= TOXIC_THRESHOLD).collect();

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
    if not_found > 0 {
        bail!("{not_found} flagged passages were not found in their source document");
    }
    let flagged_ranges: Vec<Vec<(usize, usize)>> = hits
        .iter()
        .zip(&norms)
        .map(|(h, n)| h.iter().map(|&(_, a, b)| n.raw_range(a, b)).collect())
        .collect();
    drop(norms);

    // Every unit of every document; those overlapping a flagged occurrence are cut whole, the
    // others scored.
    let segs: Vec<_> = docs.par_iter().map(segments).collect();
    let mut cut: Vec<Vec<(usize, usize)>> = flagged_ranges.clone();
    let mut units: Vec<Unit> = Vec::new();
    let mut n_segments: BTreeMap<&str, usize> = BTreeMap::new();
    let mut n_overlap: BTreeMap<&str, usize> = BTreeMap::new();
    for (d, ss) in segs.iter().enumerate() {
        let corpus = docs[d].corpus();
        *n_segments.entry(corpus).or_default() += ss.len();
        for s in ss {
            if flagged_ranges[d]
                .iter()
                .any(|&(fa, fb)| fa < s.b && s.a < fb)
            {
                cut[d].push((s.a, s.b));
                *n_overlap.entry(corpus).or_default() += 1;
            } else {
                units.push(Unit {
                    doc: d,
                    a: s.a,
                    b: s.b,
                    probe_ok: s.probe_ok,
                    text: normalize_ws(&docs[d].text[s.a..s.b]),
                    score: 0.0,
                });
            }
        }
    }
    let texts: Vec<String> = units.iter().map(|u| u.text.clone()).collect();
    for (u, s) in units.iter_mut().zip(scorer.score_batch(&texts)) {
        u.score = s;
    }
    drop(texts);
    // Units above the clean threshold are left out of the clean text.
    let mut left_out: BTreeMap<&str, [usize; 4]> = BTreeMap::new(); // units, bytes, > 0.5, ≥ 0.8
    for u in units.iter().filter(|u| u.score > CLEAN_THRESHOLD) {
        cut[u.doc].push((u.a, u.b));
        let e = left_out.entry(docs[u.doc].corpus()).or_default();
        e[0] += 1;
        e[1] += u.b - u.a;
        e[2] += usize::from(u.score > 0.5);
        e[3] += usize::from(u.score >= TOXIC_THRESHOLD);
    }

    let mut rng = ChaCha8Rng::seed_from_u64(COMPOSE_SEED);

    // Probe positives: PROBE_FRACTION of the distinct toxic passages of each corpus.
    let mut is_probe = vec![false; flagged.len()];
    let mut positives: Vec<usize> = Vec::new();
    for corpus in CORPORA {
        let mut ks: Vec<usize> = (0..flagged.len())
            .filter(|&k| is_toxic[k] && corpus_of(&first_source[k]) == corpus)
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

    // Probe negatives: clean units (score ≤ CLEAN_THRESHOLD) of the same pool, ½× to 2× the
    // positive's length where possible.
    let flagged_set: HashSet<&str> = flagged.iter().map(|s| s.as_str()).collect();
    let mut pools: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        if u.probe_ok && u.score <= CLEAN_THRESHOLD && !flagged_set.contains(u.text.as_str()) {
            pools.entry(pool_key(&docs[u.doc].id)).or_default().push(i);
        }
    }
    let mut used: HashSet<&str> = HashSet::new();
    let mut probe = Vec::new();
    let mut negatives: Vec<ProbeItem> = Vec::new();
    let (mut same_pool, mut length_matched) = (0usize, 0usize);
    for &k in &positives {
        probe.push(ProbeItem {
            text: flagged[k].clone(),
            label: 1,
            source: first_source[k].clone(),
            score: Some(score[k]),
        });
        let len = flagged[k].len();
        let pick = |pool: &[usize], used: &HashSet<&str>, rng: &mut ChaCha8Rng| {
            let free: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&i| !used.contains(units[i].text.as_str()))
                .collect();
            let near: Vec<usize> = free
                .iter()
                .copied()
                .filter(|&i| units[i].text.len() * 2 >= len && units[i].text.len() <= len * 2)
                .collect();
            let from = if near.is_empty() { free } else { near };
            (!from.is_empty()).then(|| from[rng.random_range(0..from.len())])
        };
        let key = pool_key(&first_source[k]);
        let same: &[usize] = pools.get(&key).map_or(&[], |v| v.as_slice());
        let mut chosen = pick(same, &used, &mut rng);
        if chosen.is_some() {
            same_pool += 1;
        } else {
            let corpus = corpus_of(&first_source[k]);
            let all: Vec<usize> = pools
                .iter()
                .filter(|(p, _)| corpus_of(p) == corpus)
                .flat_map(|(_, v)| v.iter().copied())
                .collect();
            chosen = pick(&all, &used, &mut rng);
        }
        let Some(i) = chosen else {
            bail!(
                "no clean passage left in {} to pair with a toxic one",
                first_source[k]
            );
        };
        let u = &units[i];
        if u.text.len() * 2 >= len && u.text.len() <= len * 2 {
            length_matched += 1;
        }
        used.insert(u.text.as_str());
        negatives.push(ProbeItem {
            text: u.text.clone(),
            label: 0,
            source: docs[u.doc].id.clone(),
            score: Some(u.score),
        });
    }
    // Every occurrence of a probe negative is cut out of the clean text.
    let negatives_text: Vec<String> = negatives.iter().map(|n| n.text.clone()).collect();
    let neg_index = PatternIndex::new(&negatives_text);
    let neg_cuts: Vec<Vec<(usize, usize)>> = docs
        .par_iter()
        .map(|d| {
            let n = normalize_with_map(&d.text);
            neg_index
                .find_all(&n.text)
                .into_iter()
                .map(|(_, a, b)| n.raw_range(a, b))
                .collect()
        })
        .collect();
    let removed_negatives: usize = neg_cuts.iter().map(|c| c.len()).sum();
    probe.extend(negatives);
    for (c, n) in cut.iter_mut().zip(neg_cuts) {
        c.extend(n);
    }

    let cleaned: Vec<DemoDoc> = docs
        .par_iter()
        .zip(cut)
        .map(|(doc, ranges)| DemoDoc {
            id: doc.id.clone(),
            text: cut_ranges(&doc.text, ranges),
        })
        .collect();

    // Validation: VAL_FRACTION of each corpus's (non-empty) cleaned documents.
    let mut clean = Vec::new();
    let mut val = Vec::new();
    for corpus in CORPORA {
        let mut idx: Vec<usize> = (0..cleaned.len())
            .filter(|&i| cleaned[i].corpus() == corpus && !cleaned[i].text.trim().is_empty())
            .collect();
        idx.shuffle(&mut rng);
        let n_val = ((idx.len() as f64 * VAL_FRACTION).round() as usize).clamp(1, idx.len());
        let mut held: Vec<usize> = idx[..n_val].to_vec();
        let mut rest: Vec<usize> = idx[n_val..].to_vec();
        held.sort_unstable();
        rest.sort_unstable();
        val.extend(held.into_iter().map(|i| cleaned[i].clone()));
        clean.extend(rest.into_iter().map(|i| cleaned[i].clone()));
    }

    let train_toxic: Vec<usize> = (0..flagged.len())
        .filter(|&k| is_toxic[k] && !is_probe[k])
        .collect();
    let toxic: Vec<DemoDoc> = train_toxic
        .iter()
        .map(|&k| DemoDoc {
            id: first_source[k].clone(),
            text: flagged[k].clone(),
        })
        .collect();
    let toxic_scores = train_toxic.iter().map(|&k| score[k]).collect();

    // Counts per corpus, for composition.json.
    let per_corpus = |f: &dyn Fn(&str) -> serde_json::Value| -> serde_json::Value {
        CORPORA
            .iter()
            .map(|c| (c.to_string(), f(c)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let docs_bytes = |set: &[DemoDoc]| {
        per_corpus(&|c| {
            let of: Vec<&DemoDoc> = set.iter().filter(|d| d.corpus() == c).collect();
            json!({"docs": of.len(), "bytes": of.iter().map(|d| d.text.len()).sum::<usize>()})
        })
    };
    let flagged_count = |f: &dyn Fn(usize) -> bool, c: &str| {
        (0..flagged.len())
            .filter(|&k| corpus_of(&first_source[k]) == c && f(k))
            .count()
    };
    let stats = json!({
        "thresholds": {"toxic_at_least": TOXIC_THRESHOLD, "clean_at_most": CLEAN_THRESHOLD},
        "scorer": "alt-profanity-check 1.9.1 as ported in src/score (assets/toxicity-scorer.json.gz)",
        "inputs_sha256": inputs.sha256,
        "input_bytes": docs_bytes(docs),
        "flagged": {
            "rows": inputs.flagged.len(),
            "distinct": flagged.len(),
            "max_abs_diff_from_recorded_score": max_diff,
            "by_corpus": per_corpus(&|c| json!({
                "distinct": flagged_count(&|_| true, c),
                "toxic": flagged_count(&|k| is_toxic[k], c),
                "left_out_between_thresholds": flagged_count(&|k| !is_toxic[k], c),
                "probe": flagged_count(&|k| is_probe[k], c),
                "toxic_training": flagged_count(&|k| is_toxic[k] && !is_probe[k], c),
            })),
        },
        "units": per_corpus(&|c| {
            let lo = left_out.get(c).copied().unwrap_or_default();
            json!({
                "units": n_segments.get(c).copied().unwrap_or(0),
                "overlapping_flagged_cut": n_overlap.get(c).copied().unwrap_or(0),
                "unflagged_above_clean_cut": lo[0],
                "unflagged_above_clean_cut_bytes": lo[1],
                "unflagged_above_0.5": lo[2],
                "unflagged_at_least_toxic": lo[3],
            })
        }),
        "probe": {
            "toxic": positives.len(),
            "clean": probe.len() - positives.len(),
            "clean_from_the_same_document_or_fortune_file": same_pool,
            "clean_within_half_to_twice_the_length": length_matched,
            "by_corpus": per_corpus(&|c| {
                let n = |l: u8| probe.iter().filter(|p| p.label == l && corpus_of(&p.source) == c).count();
                json!({"toxic": n(1), "clean": n(0)})
            }),
            "clean_occurrences_cut_from_clean_text": removed_negatives,
        },
        "clean": docs_bytes(&clean),
        "val": docs_bytes(&val),
        "toxic": docs_bytes(&toxic),
    });
    Ok(Composed {
        texts: DemoTexts { clean, toxic, val },
        toxic_scores,
        probe,
        stats,
    })
}
