//! Executors: the small set of ops the model is written over, and the trait each executor
//! implements.
//!
//! The forward and backward pass ([`crate::model::Model`]) are written once against
//! [`Backend`]; the CPU executor ([`cpu::Cpu`]) runs them on host memory in f32 (training) or f64
//! (gradient checks), and a device executor implements the same trait with device buffers and
//! no host synchronisation inside a step (only [`Backend::sum`] and [`Backend::download`] read
//! back).
//!
//! Conventions shared by every op:
//! - all tensors are row-major; `N = B·T` rows of activations, `D = d_model`, `F = d_ff`,
//!   `V = vocab_size`, `H` heads of width `dh = D / H`;
//! - a weight matrix is `[out, in]` as PyTorch stores it, so a linear layer is `y = x · Wᵀ`;
//! - parameters and their gradients each live in ONE flat buffer (see
//!   [`crate::model::params`]); ops address a weight through a [`Span`] / [`SpanMut`]
//!   (buffer, offset, length);
//! - an op writes its outputs (overwrite) unless its doc says it accumulates (`+=`);
//! - scalars (eps, scales) are passed as f64 and rounded to the executor's precision;
//! - every reduction sums in a fixed order, so results are bit-identical from run to run.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod ops;
pub mod profile;
pub mod tensor;

use anyhow::Result;

pub use crate::float::Float;
pub use ops::Pointwise;
pub use tensor::{Shape, Tensor, TensorMut};

/// A read-only range `[off, off + len)` of a buffer: how ops address one weight inside the flat
/// parameter buffer.
#[derive(Debug)]
pub struct Span<'a, B: ?Sized> {
    /// The whole buffer.
    pub buf: &'a B,
    /// First element.
    pub off: usize,
    /// Number of elements.
    pub len: usize,
}

impl<B: ?Sized> Clone for Span<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for Span<'_, B> {}

impl<'a, B: ?Sized> Span<'a, B> {
    /// The range `[off, off + len)` of `buf`.
    pub fn new(buf: &'a B, off: usize, len: usize) -> Self {
        Span { buf, off, len }
    }
}

/// A writable range `[off, off + len)` of a buffer: how ops address one weight's gradient inside
/// the flat gradient buffer.
#[derive(Debug)]
pub struct SpanMut<'a, B: ?Sized> {
    /// The whole buffer.
    pub buf: &'a mut B,
    /// First element.
    pub off: usize,
    /// Number of elements.
    pub len: usize,
}

impl<'a, B: ?Sized> SpanMut<'a, B> {
    /// The range `[off, off + len)` of `buf`.
    pub fn new(buf: &'a mut B, off: usize, len: usize) -> Self {
        SpanMut { buf, off, len }
    }
}

/// Shape of one attention call: `b` sequences of `t` positions, `h` heads of width `dh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Batch size B.
    pub b: usize,
    /// Sequence length T.
    pub t: usize,
    /// Number of heads H.
    pub h: usize,
    /// Head width dh (even).
    pub dh: usize,
}

impl AttnShape {
    /// Model width `D = H·dh`.
    pub fn d(&self) -> usize {
        self.h * self.dh
    }
    /// Rows `N = B·T`.
    pub fn n(&self) -> usize {
        self.b * self.t
    }
}

/// Shape of a KV cache (one layer's keys, or values): `rows` independent sequences of up to
/// `t_max` positions, `h` heads of width `dh`, laid out `[rows, h, t_max, dh]` row-major, so
/// (row, head, pos) starts at `((row·h + head)·t_max + pos)·dh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    /// Sequences (cache rows).
    pub rows: usize,
    /// Positions per sequence (the model's context).
    pub t_max: usize,
    /// Number of heads H.
    pub h: usize,
    /// Head width dh (even).
    pub dh: usize,
}

impl CacheShape {
    /// Model width `D = H·dh`.
    pub fn d(&self) -> usize {
        self.h * self.dh
    }
    /// Elements of one layer's key (or value) cache: `rows·H·t_max·dh`.
    pub fn len(&self) -> usize {
        self.rows * self.h * self.t_max * self.dh
    }
    /// Whether the cache holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The scalars of one AdamW update ([`Backend::adamw`]), with the bias corrections precomputed
/// (the GPU kernel takes the same struct; [`crate::optim::AdamWConfig::step_args`] builds it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepArgs {
    /// Learning rate of this step.
    pub lr: f32,
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Weight decay.
    pub weight_decay: f32,
    /// Gradient multiplier (global-norm clipping).
    pub clip_scale: f32,
    /// 1 − β1ᵗ.
    pub bias1: f32,
    /// 1 − β2ᵗ.
    pub bias2: f32,
    /// Elements below this index are not decayed.
    pub no_decay_len: u64,
}

/// Per-token metadata of the decode ops: an id buffer `[n, 3]` holding, for new token `i`,
/// `meta[3i] = row` (its cache row), `meta[3i + 1] = pos` (its position in that row) and
/// `meta[3i + 2] = shifted` (1: the ITI head shift applies to it, 0: not).
pub const DECODE_META: usize = 3;

/// An executor: owns memory of its own kind and runs the model's ops on it.
///
/// Buffer arguments are checked for length by the executor (an error, not a panic, when a
/// buffer is too short for the stated shape).
pub trait Backend {
    /// Element type of host-side uploads and downloads.
    type Elem: Float;
    /// An owned buffer of floats.
    type Buf;
    /// An owned buffer of token ids (u32).
    type Ids;
    /// An owned buffer of the loss's logits `[n, V]` as the executor stores them: its float
    /// buffer on the CPU; bf16 on the GPU, with fp32 math inside the ops that read them, which
    /// halves the largest activation of a step (1.65 GB instead of 3.3 GB at OLMo-1B, 8 × 2048).
    /// Logits handed to callers (`Model::logits`, decoding) are computed at full precision with
    /// [`Backend::matmul_fwd`] instead.
    type Logits;
    /// A point in the executor's sequence of work, for timing ops ([`profile::Profiled`]).
    type Mark;

    /// Short description, e.g. `cpu-f32`.
    fn name(&self) -> String;

    // ----- memory -----

    /// A zero-filled buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// Number of floats in `buf`.
    fn buf_len(&self, buf: &Self::Buf) -> usize;
    /// Sets every element of `buf` to zero.
    fn zero(&self, buf: &mut Self::Buf) -> Result<()>;
    /// Copies `host` into the front of `dst` (`host.len() <= len(dst)`).
    fn upload(&self, host: &[Self::Elem], dst: &mut Self::Buf) -> Result<()>;
    /// Copies the whole of `src` to the host.
    fn download(&self, src: &Self::Buf) -> Result<Vec<Self::Elem>>;
    /// A zero-filled id buffer of `len` ids.
    fn alloc_ids(&self, len: usize) -> Result<Self::Ids>;
    /// Copies `host` into the front of `dst`.
    fn upload_ids(&self, host: &[u32], dst: &mut Self::Ids) -> Result<()>;
    /// A zero-filled logits buffer of `len` values.
    fn alloc_logits(&self, len: usize) -> Result<Self::Logits>;
    /// Device memory in use (bytes) when the executor has its own memory, else `None`.
    fn memory_in_use(&self) -> Result<Option<usize>> {
        Ok(None)
    }

    /// A mark after all the work queued so far, without waiting for it: the CPU's clock now (its
    /// ops have run by the time they return); on the GPU an event recorded on the stream.
    fn mark(&self) -> Result<Self::Mark>;
    /// Seconds of executor time from `start` to `end` (marks taken in that order); waits until
    /// the work before `end` has run.
    fn seconds_between(&self, start: &Self::Mark, end: &Self::Mark) -> Result<f64>;
    /// Called by the training loop as each step starts (`Some(step)`, after validation) and as
    /// it ends (`None`, after the optimizer update). Executors ignore it, except
    /// [`profile::Profiled`], which times the ops of the steps it was asked to profile.
    fn on_step(&self, _step: Option<u64>) -> Result<()> {
        Ok(())
    }

    /// Sum of the first `n` elements of `x`, accumulated in f64 in a fixed order (the CPU: index
    /// order), read back to the host (the step's one synchronisation point: the loss).
    fn sum(&self, x: &Self::Buf, n: usize) -> Result<f64>;

    // ----- ops -----

    /// Embedding lookup. `out[i, :] = wte[ids[i], :]`; `out` `[n, d]`, `wte` `[V, d]`, `ids`
    /// `[n]` (ids are checked `< V` by the caller).
    fn embedding_fwd(
        &self,
        out: &mut Self::Buf,
        ids: &Self::Ids,
        wte: Span<Self::Buf>,
        n: usize,
        d: usize,
    ) -> Result<()>;

    /// Embedding backward, ACCUMULATES: `dwte[ids[i], :] += dout[i, :]` for i in order.
    fn embedding_bwd(
        &self,
        dwte: SpanMut<Self::Buf>,
        ids: &Self::Ids,
        dout: &Self::Buf,
        n: usize,
        d: usize,
    ) -> Result<()>;

    /// Non-parametric layernorm over rows of `x` `[n, d]`:
    /// `mean = Σx/d`, `var = Σ(x−mean)²/d` (biased), `rstd = 1/√(var+eps)`,
    /// `out = (x − mean)·rstd`. Saves `mean`, `rstd` `[n]`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_fwd(
        &self,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()>;

    /// Residual add fused with the layernorm of its result: `sum = a + b` (the next residual
    /// stream, `[n, d]`), then [`Backend::layernorm_fwd`] of `sum` into `out`, `mean`, `rstd`.
    /// The default runs the two ops; an executor may fuse them into one pass (the GPU does).
    #[allow(clippy::too_many_arguments)]
    fn add_layernorm_fwd(
        &self,
        sum: &mut Self::Buf,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        a: &Self::Buf,
        b: &Self::Buf,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        self.pointwise(Pointwise::Add {
            out: TensorMut::new(sum, [n * d]),
            a: Tensor::new(a, [n * d]),
            b: Tensor::new(b, [n * d]),
        })?;
        self.layernorm_fwd(out, mean, rstd, sum, n, d, eps)
    }

    /// Layernorm backward from its output `xhat` (= the normalised input) and `rstd`:
    /// `dx = rstd·(dy − mean(dy) − xhat·mean(dy·xhat))` per row. Accumulates into `dx` when
    /// `accumulate`, else overwrites.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_bwd(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        xhat: &Self::Buf,
        rstd: &Self::Buf,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<()>;

    // ----- described ops (see [`ops`]) -----

    /// Runs a pointwise op ([`ops::Pointwise`]) after checking its shape rule and that its views
    /// fit their buffers.
    fn pointwise(&self, op: Pointwise<'_, Self::Buf>) -> Result<()> {
        op.check(|b| self.buf_len(b))?;
        self.run_pointwise(op)
    }

    /// Runs a pointwise op whose shapes [`Backend::pointwise`] has checked (executors implement
    /// this; callers use [`Backend::pointwise`]).
    fn run_pointwise(&self, op: Pointwise<'_, Self::Buf>) -> Result<()>;

    /// Sets the range `x` addresses to zero (an untied model's embedding gradient, before the
    /// embedding backward accumulates into it).
    fn zero_range(&self, x: SpanMut<Self::Buf>) -> Result<()>;

    /// Linear layer: `y[m, n] = x[m, k] · W[n, k]ᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_fwd(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: Span<Self::Buf>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()>;

    /// Input gradient of a linear layer: `dx[m, k] = dy[m, n] · W[n, k]` (overwrites).
    #[allow(clippy::too_many_arguments)]
    fn matmul_bwd_x(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: Span<Self::Buf>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()>;

    /// Weight gradient of a linear layer: `dW[n, k] (+)= dy[m, n]ᵀ · x[m, k]`; `+=` when
    /// `accumulate` (gradient accumulation over micro-batches), else overwrite.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bwd_w(
        &self,
        dw: SpanMut<Self::Buf>,
        dy: &Self::Buf,
        x: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// The output layer: `logits[m, v] = x[m, d] · E[v, d]ᵀ` with `E` the embedding (tied) or
    /// `lm_head.weight` (untied), as
    /// [`Backend::matmul_fwd`], stored at the logits' precision (the GPU rounds to bf16).
    #[allow(clippy::too_many_arguments)]
    fn logits_fwd(
        &self,
        logits: &mut Self::Logits,
        x: &Self::Buf,
        wte: Span<Self::Buf>,
        m: usize,
        d: usize,
        v: usize,
    ) -> Result<()>;

    /// The output layer's backward from `dlogits` `[m, v]` (what [`Backend::cross_entropy`]
    /// wrote over the logits), `E` as in [`Backend::logits_fwd`]: `dx[m, d] = dlogits · E` (overwrite) and
    /// `dE[v, d] (+)= dlogitsᵀ · x` (`+=` when `accumulate`), as [`Backend::matmul_bwd_x`] and
    /// [`Backend::matmul_bwd_w`] compute them.
    #[allow(clippy::too_many_arguments)]
    fn logits_bwd(
        &self,
        dx: &mut Self::Buf,
        dwte: SpanMut<Self::Buf>,
        dlogits: &Self::Logits,
        x: &Self::Buf,
        wte: Span<Self::Buf>,
        m: usize,
        d: usize,
        v: usize,
        accumulate: bool,
    ) -> Result<()>;

    /// Causal attention forward. `qkv` `[B, T, 3D]` (q ‖ k ‖ v per row, head `h` at columns
    /// `h·dh..(h+1)·dh` of each third); writes `z` `[B, T, H, dh]` (= `[N, D]`, the o_proj input,
    /// hook `blocks.{l}.attn.hook_z`) and `lse` `[B, H, T]`, the log-sum-exp of each row of scaled
    /// scores, so the `T×T` matrix is never stored:
    /// `z_i = Σ_{j≤i} softmax_j(q_i·k_j/√dh) v_j`.
    ///
    /// With `shift` (a `[H·dh]` vector: the ITI head shift of this layer) every row of `z` then
    /// gets `z[b, t, :] += shift` (the GPU does it in the kernel's epilogue, not as a separate
    /// pass); `lse` is unaffected. For inference only: [`Backend::attention_bwd`] assumes an
    /// unshifted `z`.
    fn attention_fwd(
        &self,
        z: &mut Self::Buf,
        lse: &mut Self::Buf,
        qkv: &Self::Buf,
        s: AttnShape,
        shift: Option<Span<Self::Buf>>,
    ) -> Result<()>;

    /// Causal attention backward (recomputes probabilities from `lse`); overwrites `dqkv`
    /// `[B, T, 3D]`. With `p_ij = exp(q_i·k_j/√dh − lse_i)`, `Δ_i = dz_i·z_i`:
    /// `dv_j = Σ_i p_ij dz_i`, `ds_ij = p_ij (dz_i·v_j − Δ_i)`, `dq_i = Σ_j ds_ij k_j/√dh`,
    /// `dk_j = Σ_i ds_ij q_i/√dh`.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dz: &Self::Buf,
        z: &Self::Buf,
        qkv: &Self::Buf,
        lse: &Self::Buf,
        s: AttnShape,
    ) -> Result<()>;

    /// Fused softmax cross-entropy over rows of `logits` `[n, v]` with `targets` `[n]`:
    /// `losses[i] = logsumexp(logits_i) − logits_i[target_i]`. When `grad_scale` is `Some(s)`,
    /// the logits are overwritten by their gradient `s·(softmax(logits_i) − onehot(target_i))`
    /// (for a mean loss over `n` rows, `s = 1/n`), stored at the logits' precision.
    fn cross_entropy(
        &self,
        logits: &mut Self::Logits,
        losses: &mut Self::Buf,
        targets: &Self::Ids,
        n: usize,
        v: usize,
        grad_scale: Option<f64>,
    ) -> Result<()>;

    // ----- incremental decoding (inference only) -----

    /// RoPE at explicit positions, then the KV-cache write, for `n` new tokens.
    /// `qkv` `[n, 3D]` (q ‖ k ‖ v per token, as [`ops::Pointwise::Rope`]); `meta` `[n, 3]` (see
    /// [`DECODE_META`]: row, pos, shifted); `table` `[c.t_max, dh/2]` cosines then
    /// `[c.t_max, dh/2]` sines (the model's RoPE table for `t_max` positions).
    /// For token `i` at position `p = meta[3i + 1]` of row `r = meta[3i]`, per head, the q and k
    /// parts are rotated in place exactly as [`ops::Pointwise::Rope`] rotates position `p`
    /// (`x1·cos − x2·sin`, `x2·cos + x1·sin`), then the rotated k and the v of head `hh` are
    /// copied to `k_cache[r, hh, p, :]` and `v_cache[r, hh, p, :]` (layout [`CacheShape`]).
    /// Tokens must write distinct (row, pos) slots; every other cache element is left as it was.
    #[allow(clippy::too_many_arguments)]
    fn kv_append(
        &self,
        qkv: &mut Self::Buf,
        k_cache: &mut Self::Buf,
        v_cache: &mut Self::Buf,
        table: &Self::Buf,
        meta: &Self::Ids,
        n: usize,
        c: CacheShape,
    ) -> Result<()>;

    /// Attention of `n` new tokens over their rows' cached keys and values (after
    /// [`Backend::kv_append`] wrote them): for token `i` (row `r`, position `p` from `meta`) and
    /// head `hh`, with `q` the (rotated) q part of head `hh` of `qkv[i]`,
    /// `z[i, hh, :] = Σ_{j≤p} softmax_j(q·K[r, hh, j]/√dh) V[r, hh, j]`
    /// (causal by construction: positions after `p` are never read). `z` `[n, H, dh]` (= `[n, D]`,
    /// hook `blocks.{l}.attn.hook_z`). With `shift` (`[H·dh]`, this layer's ITI head shift),
    /// `z[i, :] += shift` for the tokens whose `meta[3i + 2]` is non-zero (fused: the GPU adds it
    /// as it writes `z`).
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        z: &mut Self::Buf,
        qkv: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        meta: &Self::Ids,
        n: usize,
        c: CacheShape,
        shift: Option<Span<Self::Buf>>,
    ) -> Result<()>;

    // ----- optimizer -----

    /// Squared L2 norm of the first `n` elements of `g`, read back to the host: f64 partial sums
    /// over fixed chunks, added in chunk order, so the result is the same on every run. The CPU
    /// sums as [`crate::optim::adamw::global_norm`] (4,096-element chunks); the GPU uses
    /// 16,384-element chunks, so the two agree to f64 rounding, not bit for bit.
    fn norm_sq(&self, g: &Self::Buf, n: usize) -> Result<f64>;

    /// One AdamW update over the first `n` elements of the flat buffers, element by element as
    /// [`crate::optim::adamw::adamw_reference`] (same formula, same order of operations):
    /// `g ← clip_scale·g`; decoupled decay for indices `>= no_decay_len`; moments; bias-corrected
    /// step. Updates `p`, `m`, `v` in place.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        n: usize,
        args: &StepArgs,
    ) -> Result<()>;
}
