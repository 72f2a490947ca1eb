//! Offline toxicity scorer: the classifier of `alt-profanity-check` 1.9.1, ported.
//!
//! This is a bag-of-words linear model, the project's offline stand-in for a toxicity API; it is
//! **not** Perspective API and knows nothing of context. Its weights (MIT, trained on ~200k
//! labelled strings from Davidson et al.'s hate-speech data and the Jigsaw toxic comments) ship in
//! `assets/toxicity-scorer.json.gz` and are embedded in the library.
//!
//! The math, as scikit-learn computes it for one text:
//! 1. terms = the word analyzer of [`tokenize`] (lowercase, token pattern `(?u)\b\w\w+\b`,
//!    stop words removed, word n-grams when the range asks for them);
//! 2. counts c_j of each term j found in the vocabulary (the rest is ignored);
//! 3. x_j = tf(c_j) · idf_j, tf(c) = c, or 1 + ln c with `sublinear_tf`;
//! 4. x ← x / ‖x‖ (L2, or L1; nothing when the norm is null or ‖x‖ = 0);
//! 5. for each of the 5 calibrated linear SVMs m: f_m = coef_m · x + intercept_m and
//!    p_m = 1 / (1 + exp(a_m · f_m + b_m)) (scikit-learn's `_SigmoidCalibration`);
//! 6. score = mean_m p_m, in [0, 1]; a text with no known term scores the intercepts alone.
//!
//! Memory layout: `coef` is term-major, `coef[j * members + m]`, so the members' weights of one
//! term are adjacent and a text touches one short run per distinct term.

pub mod tokenize;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::Deserialize;

pub use tokenize::{Analyzer, SKLEARN_TOKEN_PATTERN};

/// The gzipped JSON weights of `alt-profanity-check` 1.9.1, embedded at build time.
pub static SCORER_GZ: &[u8] = include_bytes!("../../assets/toxicity-scorer.json.gz");

/// How the weights file spells a row norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Divide by the Euclidean length.
    L2,
    /// Divide by the sum of absolute values.
    L1,
    /// Leave the row as it is.
    None,
}

/// The weights file, field for field. Unknown keys are refused, so that a vectorizer flag this
/// port does not implement (`binary`, `strip_accents`, ...) is an error rather than a silent
/// difference from scikit-learn.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsFile {
    token_pattern: String,
    lowercase: bool,
    stop_words: Option<Vec<String>>,
    vocabulary: HashMap<String, usize>,
    idf: Vec<f64>,
    norm: Option<String>,
    #[serde(default)]
    sublinear_tf: bool,
    #[serde(default)]
    ngram_range: Option<(usize, usize)>,
    members: Vec<MemberFile>,
}

/// One calibrated linear SVM of the weights file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberFile {
    coef: Vec<f64>,
    intercept: f64,
    sigmoid_a: f64,
    sigmoid_b: f64,
}

/// The toxicity scorer: TF-IDF features followed by an ensemble of calibrated linear SVMs (see the
/// module docs for the math). Cheap to share across threads; scoring takes `&self`.
#[derive(Clone, Debug)]
pub struct Scorer {
    analyzer: Analyzer,
    /// term → column.
    vocabulary: HashMap<String, u32>,
    /// Inverse document frequency per column.
    idf: Vec<f64>,
    norm: Norm,
    sublinear_tf: bool,
    /// Term-major weights, `coef[column * members + member]`.
    coef: Vec<f64>,
    intercept: Vec<f64>,
    sigmoid_a: Vec<f64>,
    sigmoid_b: Vec<f64>,
}

impl Scorer {
    /// The embedded `alt-profanity-check` 1.9.1 model, parsed on first use and shared by the
    /// whole process afterwards.
    pub fn embedded() -> Result<&'static Scorer> {
        static EMBEDDED: OnceLock<std::result::Result<Scorer, String>> = OnceLock::new();
        EMBEDDED
            .get_or_init(|| {
                Scorer::from_json_bytes(SCORER_GZ, "embedded toxicity-scorer.json.gz")
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Loads a weights file in the format of `assets/toxicity-scorer.json.gz` (gzipped or plain
    /// JSON; see assets/SOURCES.md for its keys).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Scorer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading toxicity scorer weights {}", path.display()))?;
        Scorer::from_json_bytes(&bytes, &path.display().to_string())
    }

    /// Parses weights from JSON bytes, gunzipping them first when they start with the gzip magic.
    /// `what` names the source in error messages.
    pub fn from_json_bytes(bytes: &[u8], what: &str) -> Result<Scorer> {
        let file: WeightsFile = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut json)
                .with_context(|| format!("gunzipping toxicity scorer weights {what}"))?;
            serde_json::from_slice(&json)
        } else {
            serde_json::from_slice(bytes)
        }
        .with_context(|| {
            format!(
                "parsing toxicity scorer weights {what}: expected a JSON object with keys \
                 token_pattern, lowercase, stop_words, vocabulary, idf, norm, \
                 members[{{coef, intercept, sigmoid_a, sigmoid_b}}] \
                 (optional: sublinear_tf, ngram_range)"
            )
        })?;
        Scorer::from_file(file).with_context(|| format!("toxicity scorer weights {what}"))
    }

    fn from_file(file: WeightsFile) -> Result<Scorer> {
        ensure!(
            file.token_pattern == SKLEARN_TOKEN_PATTERN,
            "field token_pattern is {:?}; only scikit-learn's default {:?} is implemented",
            file.token_pattern,
            SKLEARN_TOKEN_PATTERN
        );
        let n = file.idf.len();
        ensure!(n > 0, "field idf is empty");
        ensure!(
            file.vocabulary.len() == n,
            "field vocabulary has {} terms but idf has {n} entries",
            file.vocabulary.len()
        );
        let mut seen = vec![false; n];
        let mut vocabulary = HashMap::with_capacity(n);
        for (term, col) in file.vocabulary {
            ensure!(
                col < n && !seen[col],
                "field vocabulary maps {term:?} to column {col}: expected each column 0..{n} once"
            );
            seen[col] = true;
            vocabulary.insert(term, col as u32);
        }
        let norm = match file.norm.as_deref() {
            Some("l2") => Norm::L2,
            Some("l1") => Norm::L1,
            None => Norm::None,
            Some(other) => bail!("field norm is {other:?}: expected \"l2\", \"l1\" or null"),
        };
        let ngram_range = file.ngram_range.unwrap_or((1, 1));
        ensure!(
            ngram_range.0 >= 1 && ngram_range.0 <= ngram_range.1,
            "field ngram_range is {ngram_range:?}: expected [min_n, max_n] with 1 ≤ min_n ≤ max_n"
        );
        let k = file.members.len();
        ensure!(k > 0, "field members is empty");
        let mut coef = vec![0.0; n * k];
        for (m, member) in file.members.iter().enumerate() {
            ensure!(
                member.coef.len() == n,
                "members[{m}].coef has {} weights: expected {n} (one per vocabulary term)",
                member.coef.len()
            );
            for (j, &w) in member.coef.iter().enumerate() {
                coef[j * k + m] = w;
            }
        }
        let stop_words: HashSet<String> = file.stop_words.unwrap_or_default().into_iter().collect();
        Ok(Scorer {
            analyzer: Analyzer {
                lowercase: file.lowercase,
                stop_words,
                ngram_range,
            },
            vocabulary,
            idf: file.idf,
            norm,
            sublinear_tf: file.sublinear_tf,
            coef,
            intercept: file.members.iter().map(|m| m.intercept).collect(),
            sigmoid_a: file.members.iter().map(|m| m.sigmoid_a).collect(),
            sigmoid_b: file.members.iter().map(|m| m.sigmoid_b).collect(),
        })
    }

    /// Number of vocabulary terms (TF-IDF columns).
    pub fn vocab_size(&self) -> usize {
        self.idf.len()
    }

    /// Number of calibrated SVMs averaged.
    pub fn members(&self) -> usize {
        self.intercept.len()
    }

    /// The word analyzer (tokenizer settings) in use.
    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    /// The L2/L1-normalised TF-IDF row of `text` as sorted (column, value) pairs.
    pub fn features(&self, text: &str) -> Vec<(u32, f64)> {
        let mut cols: Vec<u32> = Vec::new();
        self.analyzer.for_each_term(text, |term| {
            if let Some(&c) = self.vocabulary.get(term) {
                cols.push(c);
            }
        });
        cols.sort_unstable();
        let mut row: Vec<(u32, f64)> = Vec::new();
        for c in cols {
            match row.last_mut() {
                Some((last, count)) if *last == c => *count += 1.0,
                _ => row.push((c, 1.0)),
            }
        }
        for (c, x) in row.iter_mut() {
            let tf = if self.sublinear_tf { 1.0 + x.ln() } else { *x };
            *x = tf * self.idf[*c as usize];
        }
        let length = match self.norm {
            Norm::L2 => row.iter().map(|(_, x)| x * x).sum::<f64>().sqrt(),
            Norm::L1 => row.iter().map(|(_, x)| x.abs()).sum::<f64>(),
            Norm::None => 1.0,
        };
        if length > 0.0 {
            for (_, x) in row.iter_mut() {
                *x /= length;
            }
        }
        row
    }

    /// Probability in [0, 1] that `text` is toxic/profane (scikit-learn's
    /// `predict_proba(...)[:, 1]` of the original model). Any Unicode is accepted.
    pub fn score(&self, text: &str) -> f64 {
        let k = self.members();
        let mut f = self.intercept.clone();
        for (c, x) in self.features(text) {
            let w = &self.coef[c as usize * k..(c as usize + 1) * k];
            for (fm, wm) in f.iter_mut().zip(w) {
                *fm += wm * x;
            }
        }
        let total: f64 = f
            .iter()
            .zip(self.sigmoid_a.iter().zip(&self.sigmoid_b))
            .map(|(&fm, (&a, &b))| 1.0 / (1.0 + (a * fm + b).exp()))
            .sum();
        total / k as f64
    }

    /// [`Scorer::score`] of every text, in parallel (rayon), in input order.
    pub fn score_batch(&self, texts: &[String]) -> Vec<f64> {
        texts.par_iter().map(|t| self.score(t)).collect()
    }
}
