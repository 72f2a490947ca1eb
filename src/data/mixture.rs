//! Training windows drawn from several named sources at fixed token fractions.
//!
//! Batch `k` is a pure function of `(seed, k)`: its generator is ChaCha8 keyed by the seed and the
//! batch index, so the whole state of a mixture is the counter of batches drawn
//! ([`MixtureState`]), and a run resumed from a checkpoint sees the same batches as one that was
//! never interrupted. Each row of a batch is a window of `seq + 1` consecutive tokens
//! (inputs `row[..seq]`, targets `row[1..]`) from one source, picked with probability equal to
//! the source's fraction; rows have equal length, so token fractions match in expectation.

use super::shard::Shard;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One source of a mixture: a name (e.g. "clean", "toxic"), its tokens, its token fraction.
#[derive(Debug)]
pub struct MixtureSource {
    /// Name used in logs and in the saved state.
    pub name: String,
    /// The tokens.
    pub shard: Shard,
    /// Share of the training tokens drawn from this source, in (0, 1]; the shares sum to 1.
    pub fraction: f64,
}

/// One source as recorded in a [`MixtureState`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SourceState {
    /// The source's name.
    pub name: String,
    /// Its token fraction.
    pub fraction: f64,
    /// Tokens drawn from it so far (whole windows of `seq + 1`).
    pub tokens_drawn: u64,
}

/// Everything needed to resume a [`Mixture`] exactly: saved with a checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MixtureState {
    /// The seed batches are drawn from.
    pub seed: u64,
    /// Batches drawn so far: the next batch is batch number `batches_drawn`.
    pub batches_drawn: u64,
    /// The sources in order, with their fractions and counters.
    pub sources: Vec<SourceState>,
}

/// A deterministic, resumable stream of training batches over several sources.
#[derive(Debug)]
pub struct Mixture {
    sources: Vec<MixtureSource>,
    /// Cumulative fractions, for picking a source from a uniform draw.
    cumulative: Vec<f64>,
    seed: u64,
    batches_drawn: u64,
    tokens_drawn: Vec<u64>,
}

/// The generator for batch `index` of a stream seeded with `seed`.
fn batch_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..24].copy_from_slice(b"mixture\0");
    ChaCha8Rng::from_seed(key)
}

impl Mixture {
    /// A mixture over `sources` drawn from `seed`. Errors if there are no sources, if two share a
    /// name, if a fraction is not in (0, 1], if the fractions do not sum to 1 ± 1e-6, or if a
    /// shard holds fewer than 2 tokens. (Window length is checked by [`Mixture::next_batch`]
    /// and [`Mixture::check_seq`].)
    pub fn new(sources: Vec<MixtureSource>, seed: u64) -> Result<Mixture> {
        if sources.is_empty() {
            bail!("mixture: no sources given, expected at least one");
        }
        for (i, s) in sources.iter().enumerate() {
            if !(s.fraction > 0.0 && s.fraction <= 1.0 + 1e-6) {
                bail!(
                    "mixture source {:?} ({}): fraction is {}, expected a value in (0, 1] \
                     (leave a source out rather than giving it 0)",
                    s.name,
                    s.shard.path().display(),
                    s.fraction
                );
            }
            if sources[..i].iter().any(|o| o.name == s.name) {
                bail!(
                    "mixture: two sources are named {:?}, expected distinct names",
                    s.name
                );
            }
            if s.shard.len() < 2 {
                bail!(
                    "mixture source {:?}: shard {} has {} tokens, expected at least 2",
                    s.name,
                    s.shard.path().display(),
                    s.shard.len()
                );
            }
        }
        let sum: f64 = sources.iter().map(|s| s.fraction).sum();
        if (sum - 1.0).abs() > 1e-6 {
            let list: Vec<String> = sources
                .iter()
                .map(|s| format!("{}={}", s.name, s.fraction))
                .collect();
            bail!(
                "mixture: fractions {} sum to {sum}, expected 1 (±1e-6)",
                list.join(", ")
            );
        }
        let mut acc = 0.0;
        let cumulative = sources
            .iter()
            .map(|s| {
                acc += s.fraction / sum;
                acc
            })
            .collect();
        let n = sources.len();
        Ok(Mixture {
            sources,
            cumulative,
            seed,
            batches_drawn: 0,
            tokens_drawn: vec![0; n],
        })
    }

    /// Errors, naming the source and its file, if some shard is too short for windows of
    /// `seq + 1` tokens.
    pub fn check_seq(&self, seq: usize) -> Result<()> {
        for s in &self.sources {
            if s.shard.len() < seq + 1 {
                bail!(
                    "mixture source {:?}: shard {} has {} tokens, expected at least seq + 1 = {} \
                     for one training window",
                    s.name,
                    s.shard.path().display(),
                    s.shard.len(),
                    seq + 1
                );
            }
        }
        Ok(())
    }

    /// The next batch: `batch * (seq + 1)` tokens, row-major; row `r` is `seq + 1` consecutive
    /// tokens of one source (inputs `row[..seq]`, targets `row[1..]`). Errors, naming the
    /// source, if a shard is shorter than `seq + 1`.
    pub fn next_batch(&mut self, batch: usize, seq: usize) -> Result<Vec<u32>> {
        self.check_seq(seq)?;
        let w = seq + 1;
        let mut rng = batch_rng(self.seed, self.batches_drawn);
        let mut out = vec![0u32; batch * w];
        for row in out.chunks_exact_mut(w) {
            let u: f64 = rng.random();
            let k = self
                .cumulative
                .iter()
                .position(|&c| u < c)
                .unwrap_or(self.sources.len() - 1);
            let shard = &self.sources[k].shard;
            let start = rng.random_range(0..=shard.len() - w);
            shard.copy_to(start, row);
            self.tokens_drawn[k] += w as u64;
        }
        self.batches_drawn += 1;
        Ok(out)
    }

    /// Number of batches drawn so far.
    pub fn batches_drawn(&self) -> u64 {
        self.batches_drawn
    }

    /// Tokens drawn so far from each source, as `(name, tokens)` in source order.
    pub fn tokens_drawn(&self) -> Vec<(String, u64)> {
        self.sources
            .iter()
            .zip(&self.tokens_drawn)
            .map(|(s, &n)| (s.name.clone(), n))
            .collect()
    }

    /// The realised share of drawn tokens from the source `name` (0 before any draw; `None` if
    /// there is no such source).
    pub fn realised_fraction(&self, name: &str) -> Option<f64> {
        let k = self.sources.iter().position(|s| s.name == name)?;
        let total: u64 = self.tokens_drawn.iter().sum();
        Some(if total == 0 {
            0.0
        } else {
            self.tokens_drawn[k] as f64 / total as f64
        })
    }

    /// The sources, in order.
    pub fn sources(&self) -> &[MixtureSource] {
        &self.sources
    }

    /// The resumable state (seed, batches drawn, sources with counters).
    pub fn state(&self) -> MixtureState {
        MixtureState {
            seed: self.seed,
            batches_drawn: self.batches_drawn,
            sources: self
                .sources
                .iter()
                .zip(&self.tokens_drawn)
                .map(|(s, &n)| SourceState {
                    name: s.name.clone(),
                    fraction: s.fraction,
                    tokens_drawn: n,
                })
                .collect(),
        }
    }

    /// Continues from a saved state: the next batch is the one that followed it. The seed is
    /// taken from the state. Errors if the state's sources (names, order, fractions within
    /// 1e-12) differ from this mixture's.
    pub fn restore(&mut self, state: &MixtureState) -> Result<()> {
        let mine: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{}={}", s.name, s.fraction))
            .collect();
        let theirs: Vec<String> = state
            .sources
            .iter()
            .map(|s| format!("{}={}", s.name, s.fraction))
            .collect();
        let same = state.sources.len() == self.sources.len()
            && state
                .sources
                .iter()
                .zip(&self.sources)
                .all(|(a, b)| a.name == b.name && (a.fraction - b.fraction).abs() <= 1e-12);
        if !same {
            bail!(
                "cannot resume the data mixture: the checkpoint was drawn from [{}] but this run \
                 mixes [{}]; expected the same sources and fractions",
                theirs.join(", "),
                mine.join(", ")
            );
        }
        self.seed = state.seed;
        self.batches_drawn = state.batches_drawn;
        self.tokens_drawn = state.sources.iter().map(|s| s.tokens_drawn).collect();
        Ok(())
    }
}

/// `n` fixed windows of `seq + 1` tokens, evenly spaced over the shard from its start to its
/// end, concatenated (`n * (seq + 1)` tokens): a validation set that is the same for every call.
/// Errors, naming the shard, when it is shorter than one window.
pub fn eval_windows(shard: &Shard, n: usize, seq: usize) -> Result<Vec<u32>> {
    let w = seq + 1;
    if shard.len() < w {
        bail!(
            "validation shard {} has {} tokens, expected at least seq + 1 = {w} for one window \
             (hold out more text for validation, e.g. prepare --val-fraction, or lower --seq)",
            shard.path().display(),
            shard.len()
        );
    }
    let span = shard.len() - w;
    let mut out = vec![0u32; n * w];
    for (i, row) in out.chunks_exact_mut(w).enumerate() {
        let start = if n <= 1 {
            0
        } else {
            ((span as u128 * i as u128) / (n as u128 - 1)) as usize
        };
        shard.copy_to(start, row);
    }
    Ok(out)
}
