//! Text generation on either executor: incremental decoding with a KV cache, and sampling.
//!
//! [`Model::decode`] is a second forward path, for inference only, written once over the
//! [`Backend`] ops (embedding, layernorm, linear layers, SwiGLU, residual adds, plus the two
//! decode ops [`Backend::kv_append`] and [`Backend::attention_decode`]). It differs from
//! [`Model::logits`] in two places:
//! - RoPE rotates each new token at its own position (`cache.len(row) + i`), and the rotated k
//!   and the v of every new token are written into the cache before attention (`kv_append`);
//! - attention is one query over that row's cached keys `0..=pos` (causal by construction;
//!   `attention_decode`, which also adds the head shift to the tokens flagged for it).
//!
//! ```text
//! per new token i (row r, position p), per layer l:
//!   a = LN(x_i); [q k v] = a·W_qkvᵀ (clamped with clip_qkv); q, k = RoPE_p(q, k);
//!   K[l][r, :, p] = k; V[l][r, :, p] = v
//!   z_i = Σ_{j≤p} softmax_j(q·K[l][r, h, j]/√dh) V[l][r, h, j]   (per head h)  (+ head shift)
//!   x_i += z_i·W_oᵀ (+ o_proj bias);  x_i += down(silu(gate)·up)(LN(x_i))
//! logits = LN(x_last)·Hᵀ (H = E tied, lm_head untied) for the last new token of each chunk
//! only (gathered on the executor, then [chunks, V] copied to the host).
//! ```
//!
//! Head shifts ([`Model::set_head_shift`]) apply here too, at the positions chosen by
//! [`ShiftPositions`]; an o_proj bias ([`Model::set_o_bias`]) applies at every new token.
//! Sampling runs on the host; padded vocabulary ids (`>= cfg.vocab_real`) are never sampled.

use std::any::Any;

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::transformer::{rope_table, Model};
use crate::backend::{Backend, CacheShape, Float, Pointwise, Span, Tensor, TensorMut, DECODE_META};
use crate::config::ModelConfig;

/// Where the ITI head shifts apply during generation.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftPositions {
    /// Every position, prompt and generated (what Model::logits does).
    All,
    /// Only the positions whose output is sampled: the last prompt position and every generated
    /// token; the rest of the prompt runs unshifted.
    Generated,
}

/// Buffers of a [`KvCache`] on its executor, allocated by the first [`Model::decode`].
struct CacheStore<B: Backend> {
    /// Per layer, keys and values `[B, H, T_max, dh]` (post-RoPE keys).
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    /// `[T_max, dh/2]` cosines then `[T_max, dh/2]` sines.
    rope: B::Buf,
    /// Activations of one decode call, reused while the calls fit.
    scratch: Option<Scratch<B>>,
}

/// Activations of one [`Model::decode`] call of up to `cap` new tokens (`m <= rows` chunks).
struct Scratch<B: Backend> {
    cap: usize,
    ids: B::Ids,
    /// `[cap, 3]` per-token (row, pos, shifted), see [`DECODE_META`].
    meta: B::Ids,
    /// Index of the last token of each chunk `[rows]`.
    last: B::Ids,
    x: B::Buf,
    xm: B::Buf,
    tmp: B::Buf,
    ln: B::Buf,
    mean: B::Buf,
    rstd: B::Buf,
    qkv: B::Buf,
    z: B::Buf,
    gu: B::Buf,
    hid: B::Buf,
    /// Last tokens' residual, layernorm and logits: `[rows, D]`, `[rows]`, `[rows, V]`.
    xl: B::Buf,
    lnl: B::Buf,
    meanl: B::Buf,
    rstdl: B::Buf,
    logits: B::Buf,
}

impl<B: Backend> Scratch<B> {
    fn new(be: &B, cfg: &ModelConfig, cap: usize, rows: usize) -> Result<Self> {
        let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
        Ok(Scratch {
            cap,
            ids: be.alloc_ids(cap)?,
            meta: be.alloc_ids(cap * DECODE_META)?,
            last: be.alloc_ids(rows)?,
            x: be.alloc(cap * d)?,
            xm: be.alloc(cap * d)?,
            tmp: be.alloc(cap * d)?,
            ln: be.alloc(cap * d)?,
            mean: be.alloc(cap)?,
            rstd: be.alloc(cap)?,
            qkv: be.alloc(cap * 3 * d)?,
            z: be.alloc(cap * d)?,
            gu: be.alloc(cap * 2 * f)?,
            hid: be.alloc(cap * f)?,
            xl: be.alloc(rows * d)?,
            lnl: be.alloc(rows * d)?,
            meanl: be.alloc(rows)?,
            rstdl: be.alloc(rows)?,
            logits: be.alloc(rows * v)?,
        })
    }
}

/// Cached post-RoPE keys and values of `batch` independent sequences, in the memory of the
/// executor that decodes with it (on the GPU: device memory). `T` is that executor's element
/// type ([`Backend::Elem`]): `KvCache<f32>` serves `Model<Cpu<f32>>` and the CUDA executor alike.
///
/// Layout per layer: `k`, `v` `[B, H, T_max, dh]` ([`CacheShape`]); row `r` holds `len(r)`
/// valid positions. The buffers are allocated by the first [`Model::decode`] on the cache, on
/// that model's executor; decoding later with a model on another kind of executor is an error.
pub struct KvCache<T> {
    shape: CacheShape,
    n_layers: usize,
    rope_theta: f64,
    len: Vec<usize>,
    /// A `CacheStore<B>` of the executor `B` that first decoded with this cache.
    store: Option<Box<dyn Any>>,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Float> KvCache<T> {
    /// An empty cache for `batch` sequences of up to `cfg.context` positions.
    pub fn new(cfg: &ModelConfig, batch: usize) -> Self {
        KvCache {
            shape: CacheShape {
                rows: batch,
                t_max: cfg.context,
                h: cfg.n_heads,
                dh: cfg.d_head(),
            },
            n_layers: cfg.n_layers,
            rope_theta: cfg.rope_theta,
            len: vec![0; batch],
            store: None,
            _elem: std::marker::PhantomData,
        }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.shape.rows
    }

    /// Positions cached for row `row`.
    pub fn len(&self, row: usize) -> usize {
        self.len[row]
    }

    /// Whether row `row` holds no position yet.
    pub fn is_empty(&self, row: usize) -> bool {
        self.len[row] == 0
    }

    /// Shape of each layer's key (and value) buffer.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// The cache buffers on `be`, allocated (zero-filled, with the RoPE table) on first use.
    fn store<B: Backend<Elem = T> + 'static>(&mut self, be: &B) -> Result<&mut CacheStore<B>> {
        if self.store.is_none() {
            let c = self.shape;
            let alloc = || be.alloc(c.len());
            let k = (0..self.n_layers).map(|_| alloc()).collect::<Result<_>>()?;
            let v = (0..self.n_layers).map(|_| alloc()).collect::<Result<_>>()?;
            let table: Vec<T> = rope_table(c.t_max, c.dh, self.rope_theta)
                .into_iter()
                .map(T::of)
                .collect();
            let mut rope = be.alloc(table.len())?;
            be.upload(&table, &mut rope)?;
            self.store = Some(Box::new(CacheStore::<B> {
                k,
                v,
                rope,
                scratch: None,
            }));
        }
        self.store
            .as_mut()
            .and_then(|s| s.downcast_mut::<CacheStore<B>>())
            .with_context(|| {
                format!(
                    "decode: this KV cache holds buffers of another executor (not {})",
                    be.name()
                )
            })
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

impl<B: Backend + 'static> Model<B> {
    /// Runs new tokens through the model, appending their keys and values to `cache`, and returns
    /// the logits `[vocab_size]` (padding included) of the last token of each chunk, in chunk
    /// order. A prompt is prefilled by one chunk of all its tokens; decoding is one chunk of one
    /// token per row. Chunks must name distinct rows.
    pub fn decode(
        &self,
        params: &B::Buf,
        cache: &mut KvCache<B::Elem>,
        chunks: &[Chunk],
    ) -> Result<Vec<Vec<f32>>> {
        let exact = self.decode_exact(params, cache, chunks)?;
        Ok(exact
            .iter()
            .map(|r| r.iter().map(|x| x.f64() as f32).collect())
            .collect())
    }

    /// [`Model::decode`] with the logits in the executor's precision.
    pub fn decode_exact(
        &self,
        params: &B::Buf,
        cache: &mut KvCache<B::Elem>,
        chunks: &[Chunk],
    ) -> Result<Vec<Vec<B::Elem>>> {
        let cfg = &self.cfg;
        let lay = &self.layout;
        let be = self.backend();
        let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
        let have = be.buf_len(params);
        ensure!(
            have == lay.len(),
            "decode: parameters hold {have} values, the model has {}",
            lay.len()
        );
        let c = cache.shape;
        ensure!(
            c.h == cfg.n_heads
                && c.dh == cfg.d_head()
                && c.t_max == cfg.context
                && cache.n_layers == cfg.n_layers,
            "decode: the cache was made for another model shape"
        );
        // Flatten the chunks: per new token its id and (row, position, shifted).
        let mut ids = Vec::new();
        let mut meta = Vec::new();
        let mut last = Vec::new();
        let mut seen = vec![false; c.rows];
        for ch in chunks {
            ensure!(
                ch.row < c.rows,
                "decode: row {} out of range (cache of {})",
                ch.row,
                c.rows
            );
            ensure!(!seen[ch.row], "decode: row {} appears twice", ch.row);
            seen[ch.row] = true;
            ensure!(
                !ch.tokens.is_empty(),
                "decode: row {} has no tokens",
                ch.row
            );
            let start = cache.len[ch.row];
            ensure!(
                start + ch.tokens.len() <= c.t_max,
                "decode: row {} would hold {} positions, more than the context ({})",
                ch.row,
                start + ch.tokens.len(),
                c.t_max
            );
            for (i, &t) in ch.tokens.iter().enumerate() {
                if t as usize >= v {
                    bail!("decode: token id {t} is not below the vocabulary size {v}");
                }
                ids.push(t);
                meta.extend([
                    ch.row as u32,
                    (start + i) as u32,
                    (i >= ch.shift_from) as u32,
                ]);
            }
            last.push((ids.len() - 1) as u32);
        }
        let n = ids.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let m = last.len();
        let st = cache.store(be)?;
        if st.scratch.as_ref().map_or(true, |s| s.cap < n) {
            st.scratch = None; // free the smaller one first
            st.scratch = Some(Scratch::new(be, cfg, n, c.rows)?);
        }
        let CacheStore {
            k,
            v: vc,
            rope,
            scratch,
        } = st;
        let w = scratch.as_mut().expect("allocated above");
        be.upload_ids(&ids, &mut w.ids)?;
        be.upload_ids(&meta, &mut w.meta)?;
        be.upload_ids(&last, &mut w.last)?;
        let eps = cfg.layer_norm_eps;
        be.embedding_fwd(&mut w.x, &w.ids, lay.embed.of(params), n, d)?;
        for (l, lo) in lay.layers.iter().enumerate() {
            be.layernorm_fwd(&mut w.ln, &mut w.mean, &mut w.rstd, &w.x, n, d, eps)?;
            be.matmul_fwd(&mut w.qkv, &w.ln, lo.qkv.of(params), n, d, 3 * d)?;
            if let Some(c) = cfg.clip_qkv {
                be.pointwise(Pointwise::Clamp {
                    x: TensorMut::new(&mut w.qkv, [n, 3 * d]),
                    c,
                })?;
            }
            // RoPE of each token at its own position, then its k and v into the cache.
            be.kv_append(&mut w.qkv, &mut k[l], &mut vc[l], rope, &w.meta, n, c)?;
            // One query per (token, head) over the row's cached positions 0..=pos, the head
            // shift added to the flagged tokens.
            let shift = self.head_shift(l).map(|s| Span::new(s, 0, d));
            be.attention_decode(&mut w.z, &w.qkv, &k[l], &vc[l], &w.meta, n, c, shift)?;
            be.matmul_fwd(&mut w.tmp, &w.z, lo.o.of(params), n, d, d)?;
            if let Some(bias) = self.o_bias(l) {
                be.pointwise(Pointwise::AddRows {
                    x: TensorMut::new(&mut w.tmp, [n, d]),
                    v: Tensor::new(bias, [d]),
                })?;
            }
            be.add_layernorm_fwd(
                &mut w.xm,
                &mut w.ln,
                &mut w.mean,
                &mut w.rstd,
                &w.x,
                &w.tmp,
                n,
                d,
                eps,
            )?;
            be.matmul_fwd(&mut w.gu, &w.ln, lo.gate_up.of(params), n, d, 2 * f)?;
            be.pointwise(Pointwise::SwigluFwd {
                h: TensorMut::new(&mut w.hid, [n, f]),
                gu: Tensor::new(&w.gu, [n, 2 * f]),
            })?;
            be.matmul_fwd(&mut w.tmp, &w.hid, lo.down.of(params), n, f, d)?;
            be.pointwise(Pointwise::Add {
                out: TensorMut::new(&mut w.x, [n, d]),
                a: Tensor::new(&w.xm, [n, d]),
                b: Tensor::new(&w.tmp, [n, d]),
            })?;
        }
        // Final layernorm and the output layer on the last token of each chunk only: the gather
        // `xl[k] = x[last[k]]` is an embedding lookup in the table `x` `[n, D]`.
        be.embedding_fwd(&mut w.xl, &w.last, Span::new(&w.x, 0, n * d), m, d)?;
        be.layernorm_fwd(&mut w.lnl, &mut w.meanl, &mut w.rstdl, &w.xl, m, d, eps)?;
        be.matmul_fwd(&mut w.logits, &w.lnl, lay.head.of(params), m, d, v)?;
        let mut host = be.download(&w.logits)?;
        host.truncate(m * v);
        for ch in chunks {
            cache.len[ch.row] += ch.tokens.len();
        }
        Ok(host.chunks_exact(v).map(|r| r.to_vec()).collect())
    }

    /// Continues each prompt (a batch of independent sequences) by sampling with `opts`; prompt
    /// `i` uses RNG stream `first_index + i` of `opts.seed`, so results do not depend on how
    /// prompts are batched. Prompts are prefilled together, then every unfinished row advances
    /// one token per step. A row stops at `eos`, after `max_new_tokens`, or when the context is
    /// full. Errors name the prompt (`first_index + i`) that is empty or longer than the context.
    pub fn generate(
        &self,
        params: &B::Buf,
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
        let mut cache = KvCache::<B::Elem>::new(cfg, prompts.len());
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
