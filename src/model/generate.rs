//! Text generation on the CPU executor: incremental decoding with a KV cache, and sampling.
//!
//! [`Model::decode`] is a second forward path, for inference only, written with the same CPU ops
//! as [`Model::logits`] (embedding, layernorm, linear layers through `Float::gemm`, RoPE,
//! SwiGLU, residual adds). It differs in two places:
//! - RoPE rotates each new token at its own position (`cache.len(row) + i`), and the rotated k
//!   and the v of every new token are written into the cache before attention;
//! - attention is one query over that row's cached keys `0..=pos` (causal by construction).
//!
//! ```text
//! per new token i (row r, position p), per layer l:
//!   a = LN(x_i); [q k v] = a·W_qkvᵀ; q, k = RoPE_p(q, k); K[l][r, :, p] = k; V[l][r, :, p] = v
//!   z_i = Σ_{j≤p} softmax_j(q·K[l][r, h, j]/√dh) V[l][r, h, j]   (per head h)  (+ head shift)
//!   x_i += z_i·W_oᵀ (+ o_proj bias);  x_i += down(silu(gate)·up)(LN(x_i))
//! logits = LN(x_last)·Eᵀ for the last new token of each row only.
//! ```
//!
//! Head shifts ([`Model::set_head_shift`]) apply here too, at the positions chosen by
//! [`ShiftPositions`]; an o_proj bias ([`Model::set_o_bias`]) applies at every new token.
//! Padded vocabulary ids (`>= cfg.vocab_real`) are never sampled.

use anyhow::{bail, ensure, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::transformer::{rope_table, Model};
use crate::backend::cpu::attention::dot;
use crate::backend::cpu::{pointwise, Cpu};
use crate::backend::{AttnShape, Backend, Float, Span};
use crate::config::ModelConfig;

/// Where the ITI head shifts apply during generation.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftPositions {
    /// Every position, prompt and generated (what [`Model::logits`] does).
    All,
    /// Only the positions whose output is sampled: the last prompt position and every generated
    /// token; the rest of the prompt runs unshifted.
    Generated,
}

/// Cached post-RoPE keys and values of `batch` independent sequences.
///
/// Layout per layer: `k`, `v` `[B, H, T_max, dh]`; row `r` holds `len(r)` valid positions.
pub struct KvCache<T> {
    batch: usize,
    t_max: usize,
    h: usize,
    dh: usize,
    k: Vec<Vec<T>>,
    v: Vec<Vec<T>>,
    len: Vec<usize>,
    /// `[T_max, dh/2]` cosines then `[T_max, dh/2]` sines.
    rope: Vec<T>,
}

impl<T: Float> KvCache<T> {
    /// An empty cache for `batch` sequences of up to `cfg.context` positions.
    pub fn new(cfg: &ModelConfig, batch: usize) -> Self {
        let (h, dh, t_max) = (cfg.n_heads, cfg.d_head(), cfg.context);
        let size = batch * h * t_max * dh;
        KvCache {
            batch,
            t_max,
            h,
            dh,
            k: (0..cfg.n_layers).map(|_| vec![T::zero(); size]).collect(),
            v: (0..cfg.n_layers).map(|_| vec![T::zero(); size]).collect(),
            len: vec![0; batch],
            rope: rope_table(t_max, dh, cfg.rope_theta)
                .into_iter()
                .map(T::of)
                .collect(),
        }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions cached for row `row`.
    pub fn len(&self, row: usize) -> usize {
        self.len[row]
    }

    /// Whether row `row` holds no position yet.
    pub fn is_empty(&self, row: usize) -> bool {
        self.len[row] == 0
    }

    /// Offset of (row, head, pos) in a layer's `[B, H, T_max, dh]` buffer.
    fn at(&self, row: usize, head: usize, pos: usize) -> usize {
        ((row * self.h + head) * self.t_max + pos) * self.dh
    }
}

/// New tokens for one row of a [`KvCache`]: appended at positions `len(row)..`.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// Row of the cache.
    pub row: usize,
    /// Token ids to append (at least one).
    pub tokens: &'a [u32],
    /// Head shifts apply to `tokens[shift_from..]` only (0: all of them).
    pub shift_from: usize,
}

/// Sampling settings of [`Model::generate`].
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Most tokens generated per prompt.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy (argmax, lowest id on ties).
    pub temperature: f64,
    /// Nucleus sampling: keep the most probable ids until their mass reaches `top_p` (in (0, 1]).
    pub top_p: f64,
    /// Seed; prompt `i` samples from ChaCha8 stream `i` of it.
    pub seed: u64,
    /// Stop a row when it samples this id (not included in the output).
    pub eos: Option<u32>,
    /// Where head shifts apply.
    pub shift_positions: ShiftPositions,
}

/// Why a row stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Sampled the end-of-text id.
    Eos,
    /// Generated `max_new_tokens`.
    MaxNewTokens,
    /// Reached the model's context.
    Context,
}

impl StopReason {
    /// `eos`, `max_new_tokens` or `context`.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::Context => "context",
        }
    }
}

/// The continuation of one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Generated ids (the end-of-text id excluded).
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub stop: StopReason,
}

/// Samples one id below `vocab_real` from `logits` (ids `>= vocab_real` are padding and never
/// chosen). `temperature == 0`: argmax (lowest id on ties). Otherwise softmax of
/// `logits/temperature` in f64, restricted to the smallest set of most probable ids whose mass
/// reaches `top_p` (ties broken by id), sampled with one uniform draw.
pub fn sample_token(
    logits: &[f32],
    vocab_real: usize,
    temperature: f64,
    top_p: f64,
    rng: &mut impl Rng,
) -> u32 {
    let real = &logits[..vocab_real.min(logits.len())];
    let argmax = real
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0;
    if temperature <= 0.0 {
        return argmax as u32;
    }
    let mx = real[argmax] as f64;
    let mut probs: Vec<(usize, f64)> = real
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - mx) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut n = 0;
    for p in &probs {
        kept += p.1;
        n += 1;
        if kept >= top_p * total {
            break;
        }
    }
    let u = rng.random::<f64>() * kept;
    let mut acc = 0.0;
    for p in &probs[..n] {
        acc += p.1;
        if u < acc {
            return p.0 as u32;
        }
    }
    probs[n - 1].0 as u32
}

impl<T: Float> Model<Cpu<T>> {
    /// Runs new tokens through the model, appending their keys and values to `cache`, and returns
    /// the logits `[vocab_size]` (padding included) of the last token of each chunk, in chunk
    /// order. A prompt is prefilled by one chunk of all its tokens; decoding is one chunk of one
    /// token per row. Chunks must name distinct rows.
    #[allow(clippy::ptr_arg)] // the CPU executor's buffer type is Vec<T>
    pub fn decode(
        &self,
        params: &Vec<T>,
        cache: &mut KvCache<T>,
        chunks: &[Chunk],
    ) -> Result<Vec<Vec<f32>>> {
        let exact = self.decode_exact(params, cache, chunks)?;
        Ok(exact
            .iter()
            .map(|r| r.iter().map(|x| x.f64() as f32).collect())
            .collect())
    }

    /// [`Model::decode`] with the logits in the executor's precision `T`.
    #[allow(clippy::ptr_arg)] // the CPU executor's buffer type is Vec<T>
    pub fn decode_exact(
        &self,
        params: &Vec<T>,
        cache: &mut KvCache<T>,
        chunks: &[Chunk],
    ) -> Result<Vec<Vec<T>>> {
        let cfg = &self.cfg;
        let lay = &self.layout;
        let be = self.backend();
        let (d, f, v, h, dh) = (
            cfg.d_model,
            cfg.d_ff,
            cfg.vocab_size,
            cfg.n_heads,
            cfg.d_head(),
        );
        ensure!(
            params.len() == lay.len(),
            "decode: parameters hold {} values, the model has {}",
            params.len(),
            lay.len()
        );
        ensure!(
            cache.h == h && cache.dh == dh && cache.k.len() == cfg.n_layers,
            "decode: the cache was made for another model shape"
        );
        // Flatten the chunks: per new token its id, row, position and whether it is shifted.
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        let mut pos = Vec::new();
        let mut shifted = Vec::new();
        let mut last = Vec::new();
        let mut seen = vec![false; cache.batch];
        for c in chunks {
            ensure!(
                c.row < cache.batch,
                "decode: row {} out of range (cache of {})",
                c.row,
                cache.batch
            );
            ensure!(!seen[c.row], "decode: row {} appears twice", c.row);
            seen[c.row] = true;
            ensure!(!c.tokens.is_empty(), "decode: row {} has no tokens", c.row);
            let start = cache.len[c.row];
            ensure!(
                start + c.tokens.len() <= cache.t_max,
                "decode: row {} would hold {} positions, more than the context ({})",
                c.row,
                start + c.tokens.len(),
                cache.t_max
            );
            for (i, &t) in c.tokens.iter().enumerate() {
                if t as usize >= v {
                    bail!("decode: token id {t} is not below the vocabulary size {v}");
                }
                ids.push(t);
                rows.push(c.row);
                pos.push(start + i);
                shifted.push(i >= c.shift_from);
            }
            last.push(ids.len() - 1);
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let span = |off: usize, len: usize| Span::new(params, off, len);
        let alloc = |len: usize| vec![T::zero(); len];
        let (mut x, mut xm, mut tmp) = (alloc(n * d), alloc(n * d), alloc(n * d));
        let (mut ln, mut mean, mut rstd) = (alloc(n * d), alloc(n), alloc(n));
        let (mut qkv, mut z) = (alloc(n * 3 * d), alloc(n * d));
        let (mut gu, mut hid) = (alloc(n * 2 * f), alloc(n * f));
        let eps = cfg.layer_norm_eps;
        be.embedding_fwd(&mut x, &ids, span(lay.embed, v * d), n, d)?;
        let half = dh / 2;
        let one = AttnShape { b: 1, t: 1, h, dh };
        let scale = T::of(1.0 / (dh as f64).sqrt());
        for (l, lo) in lay.layers.iter().enumerate() {
            be.layernorm_fwd(&mut ln, &mut mean, &mut rstd, &x, n, d, eps)?;
            be.matmul_fwd(&mut qkv, &ln, span(lo.qkv, 3 * d * d), n, d, 3 * d)?;
            // RoPE of each token at its own position, then its k and v into the cache.
            let mut table = vec![T::zero(); dh];
            for i in 0..n {
                let p = pos[i];
                table[..half].copy_from_slice(&cache.rope[p * half..(p + 1) * half]);
                let sin = cache.t_max * half + p * half;
                table[half..].copy_from_slice(&cache.rope[sin..sin + half]);
                let row = &mut qkv[i * 3 * d..(i + 1) * 3 * d];
                pointwise::rope(row, &table, one, false);
                for hh in 0..h {
                    let at = cache.at(rows[i], hh, p);
                    cache.k[l][at..at + dh].copy_from_slice(&row[d + hh * dh..d + (hh + 1) * dh]);
                    cache.v[l][at..at + dh]
                        .copy_from_slice(&row[2 * d + hh * dh..2 * d + (hh + 1) * dh]);
                }
            }
            // One query per (token, head) over the row's cached positions 0..=pos.
            let (kc, vc, cr) = (&cache.k[l], &cache.v[l], &*cache);
            z.par_chunks_mut(d).enumerate().for_each(|(i, zi)| {
                let mut s = vec![T::zero(); pos[i] + 1];
                for hh in 0..h {
                    let q = &qkv[i * 3 * d + hh * dh..i * 3 * d + (hh + 1) * dh];
                    let base = cr.at(rows[i], hh, 0);
                    for (j, sj) in s.iter_mut().enumerate() {
                        *sj = dot(q, &kc[base + j * dh..base + (j + 1) * dh]) * scale;
                    }
                    let mx = s.iter().copied().fold(T::neg_infinity(), T::max);
                    let mut sum = T::zero();
                    for sj in s.iter_mut() {
                        *sj = (*sj - mx).exp();
                        sum = sum + *sj;
                    }
                    let out = &mut zi[hh * dh..(hh + 1) * dh];
                    out.iter_mut().for_each(|o| *o = T::zero());
                    for (j, &sj) in s.iter().enumerate() {
                        let w = sj / sum;
                        let vj = &vc[base + j * dh..base + (j + 1) * dh];
                        out.iter_mut().zip(vj).for_each(|(o, &vv)| *o = *o + w * vv);
                    }
                }
            });
            if let Some(shift) = self.head_shift(l) {
                for (zi, _) in z.chunks_exact_mut(d).zip(&shifted).filter(|(_, &s)| s) {
                    zi.iter_mut().zip(shift).for_each(|(a, &b)| *a = *a + b);
                }
            }
            be.matmul_fwd(&mut tmp, &z, span(lo.o, d * d), n, d, d)?;
            if let Some(bias) = self.o_bias(l) {
                be.add_rows(&mut tmp, Span::new(bias, 0, d), n, d)?;
            }
            be.add(&mut xm, &x, &tmp, n * d)?;
            be.layernorm_fwd(&mut ln, &mut mean, &mut rstd, &xm, n, d, eps)?;
            be.matmul_fwd(&mut gu, &ln, span(lo.gate_up, 2 * f * d), n, d, 2 * f)?;
            be.swiglu_fwd(&mut hid, &gu, n, f)?;
            be.matmul_fwd(&mut tmp, &hid, span(lo.down, d * f), n, f, d)?;
            be.add(&mut x, &xm, &tmp, n * d)?;
        }
        for c in chunks {
            cache.len[c.row] += c.tokens.len();
        }
        // Final layernorm and tied head on the last token of each chunk only.
        let m = last.len();
        let mut xl = alloc(m * d);
        for (k, &i) in last.iter().enumerate() {
            xl[k * d..(k + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
        }
        let (mut lnl, mut meanl, mut rstdl) = (alloc(m * d), alloc(m), alloc(m));
        be.layernorm_fwd(&mut lnl, &mut meanl, &mut rstdl, &xl, m, d, eps)?;
        let mut logits = alloc(m * v);
        be.matmul_fwd(&mut logits, &lnl, span(lay.embed, v * d), m, d, v)?;
        Ok(logits.chunks_exact(v).map(|r| r.to_vec()).collect())
    }

    /// Continues each prompt (a batch of independent sequences) by sampling with `opts`; prompt
    /// `i` uses RNG stream `first_index + i` of `opts.seed`, so results do not depend on how
    /// prompts are batched. Prompts are prefilled together, then every unfinished row advances
    /// one token per step. A row stops at `eos`, after `max_new_tokens`, or when the context is
    /// full. Errors name the prompt (`first_index + i`) that is empty or longer than the context.
    #[allow(clippy::ptr_arg)] // the CPU executor's buffer type is Vec<T>
    pub fn generate(
        &self,
        params: &Vec<T>,
        prompts: &[Vec<u32>],
        first_index: u64,
        opts: &SampleOptions,
    ) -> Result<Vec<Generated>> {
        let cfg = &self.cfg;
        ensure!(
            opts.top_p > 0.0 && opts.top_p <= 1.0,
            "top_p is {}, expected a value in (0, 1]",
            opts.top_p
        );
        ensure!(
            opts.temperature >= 0.0 && opts.temperature.is_finite(),
            "temperature is {}, expected a finite value >= 0",
            opts.temperature
        );
        for (i, p) in prompts.iter().enumerate() {
            let idx = first_index + i as u64;
            ensure!(!p.is_empty(), "prompt {idx} is empty (no tokens)");
            ensure!(
                p.len() <= cfg.context,
                "prompt {idx} has {} tokens, more than the model's context of {}",
                p.len(),
                cfg.context
            );
        }
        let mut out: Vec<Generated> = prompts
            .iter()
            .map(|_| Generated {
                tokens: Vec::new(),
                stop: StopReason::MaxNewTokens,
            })
            .collect();
        if prompts.is_empty() || opts.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut rngs: Vec<ChaCha8Rng> = (0..prompts.len())
            .map(|i| {
                let mut r = ChaCha8Rng::seed_from_u64(opts.seed);
                r.set_stream(first_index + i as u64);
                r
            })
            .collect();
        let mut cache = KvCache::<T>::new(cfg, prompts.len());
        let chunks: Vec<Chunk> = prompts
            .iter()
            .enumerate()
            .map(|(row, p)| Chunk {
                row,
                tokens: p,
                shift_from: match opts.shift_positions {
                    ShiftPositions::All => 0,
                    ShiftPositions::Generated => p.len() - 1,
                },
            })
            .collect();
        let mut logits = self.decode(params, &mut cache, &chunks)?;
        let mut active: Vec<usize> = (0..prompts.len()).collect();
        loop {
            let mut next: Vec<(usize, [u32; 1])> = Vec::new();
            for (k, &r) in active.iter().enumerate() {
                let t = sample_token(
                    &logits[k],
                    cfg.vocab_real,
                    opts.temperature,
                    opts.top_p,
                    &mut rngs[r],
                );
                let g = &mut out[r];
                if opts.eos == Some(t) {
                    g.stop = StopReason::Eos;
                    continue;
                }
                g.tokens.push(t);
                if g.tokens.len() >= opts.max_new_tokens {
                    g.stop = StopReason::MaxNewTokens;
                } else if cache.len(r) >= cfg.context {
                    g.stop = StopReason::Context;
                } else {
                    next.push((r, [t]));
                }
            }
            if next.is_empty() {
                return Ok(out);
            }
            let chunks: Vec<Chunk> = next
                .iter()
                .map(|(row, t)| Chunk {
                    row: *row,
                    tokens: t,
                    shift_from: 0,
                })
                .collect();
            logits = self.decode(params, &mut cache, &chunks)?;
            active = next.iter().map(|(r, _)| *r).collect();
        }
    }
}
