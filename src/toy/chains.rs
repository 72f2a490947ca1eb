//! The toy's data: deterministic cyclic Markov chains over one small shared vocabulary.
//!
//! A chain is a cycle of distinct tokens, e.g. `0 → 1 → 2 → 3 → 0`: from each of its tokens the
//! next one is fixed. A *feature* is a (chain, start token) pair, i.e. one sequence
//! `s, next(s), next(next(s)), …`; three 4-cycles over 4 tokens make 12 features. Training rows
//! draw a feature at random (the underrepresented chain with probability `share`, each other chain
//! with `(1 − share)/(n_chains − 1)`, the start uniformly within the chain) and write its sequence
//! from position 0.

use anyhow::{bail, ensure, Context, Result};
use rand::Rng;

/// One deterministic cycle: `tokens[k] → tokens[(k + 1) % len]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The cycle's tokens in order, each at most once.
    pub tokens: Vec<u32>,
}

impl Chain {
    /// Parses a cycle written as its tokens, e.g. `0123` (single digits) or `0-1-2-3`.
    pub fn parse(s: &str) -> Result<Chain> {
        let s = s.trim();
        let parts: Vec<&str> = if s.contains('-') {
            s.split('-').collect()
        } else {
            s.split("").filter(|p| !p.is_empty()).collect()
        };
        let tokens = parts
            .iter()
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .with_context(|| format!("chain {s:?}: {p:?} is not a token id"))
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            tokens.len() >= 2,
            "chain {s:?}: a cycle needs at least 2 tokens"
        );
        for (i, t) in tokens.iter().enumerate() {
            if tokens[..i].contains(t) {
                bail!("chain {s:?}: token {t} appears twice (a cycle visits each token once)");
            }
        }
        Ok(Chain { tokens })
    }

    /// The token that follows `t`, or `None` when `t` is not on the cycle.
    pub fn next(&self, t: u32) -> Option<u32> {
        let k = self.tokens.iter().position(|&x| x == t)?;
        Some(self.tokens[(k + 1) % self.tokens.len()])
    }

    /// The `len` tokens of the sequence that starts at `start` (which must be on the cycle).
    pub fn sequence(&self, start: u32, len: usize) -> Vec<u32> {
        let k0 = self
            .tokens
            .iter()
            .position(|&x| x == start)
            .expect("start token on the chain");
        (0..len)
            .map(|i| self.tokens[(k0 + i) % self.tokens.len()])
            .collect()
    }

    /// The cycle written as [`Chain::parse`] reads it.
    pub fn label(&self) -> String {
        let single = self.tokens.iter().all(|&t| t < 10);
        let parts: Vec<String> = self.tokens.iter().map(|t| t.to_string()).collect();
        parts.join(if single { "" } else { "-" })
    }
}

/// One feature: a chain and the token its sequence starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    /// Index of the chain.
    pub chain: usize,
    /// The first token of the sequence.
    pub start: u32,
}

/// The toy's chains and the features they define.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyChains {
    /// The cycles, in order.
    pub chains: Vec<Chain>,
    /// Vocabulary size: one more than the largest token of any chain.
    pub vocab: usize,
}

/// The default chains: three distinct directed 4-cycles over tokens 0..4 (`0123`, `0213`,
/// `0321`). `0123` and `0321` are each other's reverse and disagree on every successor; `0213`
/// shares one successor with each (`3 → 0` with the first, `2 → 1` with the third). No three
/// 4-cycles over 4 tokens can disagree pairwise on every successor.
pub const DEFAULT_CHAINS: &str = "0123,0213,0321";

impl ToyChains {
    /// Parses a comma-separated list of cycles (see [`Chain::parse`]).
    pub fn parse(list: &str) -> Result<ToyChains> {
        let chains = list
            .split(',')
            .map(Chain::parse)
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("--chains {list:?}"))?;
        Self::new(chains)
    }

    /// Checks the chains (at least two, all distinct as sequences) and sets the vocabulary.
    pub fn new(chains: Vec<Chain>) -> Result<ToyChains> {
        ensure!(chains.len() >= 2, "the toy needs at least two chains");
        let vocab = chains
            .iter()
            .flat_map(|c| c.tokens.iter())
            .max()
            .map_or(0, |&t| t as usize + 1);
        let out = ToyChains { chains, vocab };
        let feats = out.features();
        let n = 2 * out.vocab + 1;
        for (i, a) in feats.iter().enumerate() {
            for b in &feats[..i] {
                if out.sequence(*a, n) == out.sequence(*b, n) {
                    bail!(
                        "chains {} and {} give the same sequence from token {}: features must differ",
                        out.chains[a.chain].label(),
                        out.chains[b.chain].label(),
                        a.start
                    );
                }
            }
        }
        Ok(out)
    }

    /// Every feature: chain by chain, each chain's tokens in cycle order as starts.
    pub fn features(&self) -> Vec<Feature> {
        self.chains
            .iter()
            .enumerate()
            .flat_map(|(c, ch)| {
                ch.tokens
                    .iter()
                    .map(move |&start| Feature { chain: c, start })
            })
            .collect()
    }

    /// The first `len` tokens of feature `f`'s sequence.
    pub fn sequence(&self, f: Feature, len: usize) -> Vec<u32> {
        self.chains[f.chain].sequence(f.start, len)
    }

    /// Probability of drawing chain `c` when chain `rare` has share `share` and the others split
    /// the rest equally.
    pub fn chain_prob(&self, c: usize, rare: usize, share: f64) -> f64 {
        if c == rare {
            share
        } else {
            (1.0 - share) / (self.chains.len() - 1) as f64
        }
    }

    /// `batch` training rows of `len` tokens, `[batch, len]` row-major: each row one feature's
    /// sequence, the chain drawn with [`ToyChains::chain_prob`], the start uniformly on it.
    pub fn sample_rows<R: Rng>(
        &self,
        rng: &mut R,
        rare: usize,
        share: f64,
        batch: usize,
        len: usize,
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(batch * len);
        for _ in 0..batch {
            let u: f64 = rng.random::<f64>();
            let mut acc = 0.0;
            // rounding can leave u above the last sum: then the last chain that can be drawn
            let mut chain = (0..self.chains.len())
                .rev()
                .find(|&c| self.chain_prob(c, rare, share) > 0.0)
                .unwrap_or(0);
            for c in 0..self.chains.len() {
                acc += self.chain_prob(c, rare, share);
                if u < acc {
                    chain = c;
                    break;
                }
            }
            let toks = &self.chains[chain].tokens;
            let start = toks[rng.random_range(0..toks.len())];
            out.extend(self.chains[chain].sequence(start, len));
        }
        out
    }
}
