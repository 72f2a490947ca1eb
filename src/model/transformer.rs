//! The OLMo v1 decoder, forward and backward, written once over [`Backend`] ops.
//!
//! ```text
//! x₀ = E[ids]                                   res[0]            [N, D]
//! per layer l:
//!   a = LN(res[2l]);  qkv = a·W_qkvᵀ (clamped to [−c, c] with clip_qkv = c); RoPE(q, k);
//!   z = causal_attn(qkv) (+ head shift)
//!   res[2l+1] = res[2l] + z·W_oᵀ (+ o_proj bias)
//!   m = LN(res[2l+1]); gu = m·W_guᵀ; h = silu(gate)·up
//!   res[2l+2] = res[2l+1] + h·W_downᵀ
//! logits = LN(res[2L])·Hᵀ                        [N, V] (H = E tied, lm_head untied; all V
//!                                                 rows, padding included;
//!                                                 the loss's in bf16 on the GPU: Backend::Logits;
//!                                                 Model::logits's at full precision)
//! loss = mean over N of CE(logits, targets)
//! ```
//! `N = B·T`. A batch of training tokens is `B` rows of `T + 1` ids: inputs `row[..T]`, targets
//! `row[1..]`.
//!
//! With `clip_qkv` the backward needs the clamp's input, which the forward overwrites (clamp and
//! RoPE work in place on `qkv`): it recomputes `a·W_qkvᵀ` into one scratch buffer shared by the
//! layers (one extra `[N, D]·[D, 3D]` product per layer, about 6% of a step's matmul FLOPs at
//! F = 4D) rather than keeping a mask per layer. An untied model's embedding gradient is zeroed
//! before the embedding backward accumulates into it (tied, the head's gradient is there first).
//!
//! Activations live in a workspace allocated once per (batch, seq) shape (two shapes are kept,
//! e.g. training and validation), so a step allocates nothing on the executor; its tensors are
//! listed once, in [`super::workspace::table`].

use super::params::ParamLayout;
use super::workspace::Workspace;
use crate::backend::{AttnShape, Backend, Float, Pointwise, Span, Tensor, TensorMut};
use crate::config::ModelConfig;
use anyhow::{bail, ensure, Context, Result};

/// The RoPE table for `t` positions of heads of width `dh`: angles `pos·θ^(−2i/dh)` computed in
/// f64, then cos and sin rounded to the executor's precision. Layout `[T, dh/2]` cos, then sin.
pub fn rope_table(t: usize, dh: usize, theta: f64) -> Vec<f64> {
    let half = dh / 2;
    let mut out = vec![0.0; 2 * t * half];
    for pos in 0..t {
        for i in 0..half {
            let inv_freq = theta.powf(-((2 * i) as f64) / dh as f64);
            let a = pos as f64 * inv_freq;
            out[pos * half + i] = a.cos();
            out[t * half + pos * half + i] = a.sin();
        }
    }
    out
}

/// An OLMo v1 model bound to an executor: configuration, parameter layout, activation
/// workspaces and optional ITI head shifts. Parameters and gradients are owned by the caller as
/// two flat executor buffers laid out by [`Model::layout`].
pub struct Model<B: Backend> {
    /// Shape of the model.
    pub cfg: ModelConfig,
    /// Where each tensor sits in the flat parameter (and gradient) buffer.
    pub layout: ParamLayout,
    backend: B,
    /// Workspaces by shape, most recently used last (at most [`Model::MAX_WORKSPACES`]).
    workspaces: Vec<Workspace<B>>,
    /// Per layer, an optional `[H, dh]` shift added to `hook_z` at every position.
    head_shift: Vec<Option<B::Buf>>,
    /// Per layer, an optional `[D]` bias added to the o_proj output at every position.
    o_bias: Vec<Option<B::Buf>>,
    /// Host scratch for input ids and targets.
    host_ids: Vec<u32>,
    host_targets: Vec<u32>,
    /// Rows whose losses [`Model::start_forward_backward`] queued and
    /// [`Model::finish_forward_backward`] has not read yet.
    pending_loss: Option<usize>,
}

impl<B: Backend> Model<B> {
    /// How many (batch, seq) workspaces are kept at once.
    pub const MAX_WORKSPACES: usize = 2;

    /// A model of shape `cfg` on executor `backend` (the config is validated).
    pub fn new(cfg: ModelConfig, backend: B) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(&cfg);
        let head_shift = (0..cfg.n_layers).map(|_| None).collect();
        let o_bias = (0..cfg.n_layers).map(|_| None).collect();
        Ok(Model {
            cfg,
            layout,
            backend,
            workspaces: Vec::new(),
            head_shift,
            o_bias,
            host_ids: Vec::new(),
            host_targets: Vec::new(),
            pending_loss: None,
        })
    }

    /// The executor.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A zero-filled executor buffer of the size of the parameter vector (for params or grads).
    pub fn alloc_params(&self) -> Result<B::Buf> {
        self.backend.alloc(self.layout.len())
    }

    /// Sets (or with `None` clears) the ITI shift of layer `layer`: a `[H, dh]` vector (flattened,
    /// `d_model` values) added to every position's `blocks.{layer}.attn.hook_z` before `o_proj`.
    /// Shifts apply to [`Model::loss`] and [`Model::logits`]; [`Model::forward_backward`] refuses
    /// to run while any is set.
    pub fn set_head_shift(&mut self, layer: usize, shift: Option<&[B::Elem]>) -> Result<()> {
        self.head_shift[layer] = self.layer_vector("head shift", "n_heads·d_head", layer, shift)?;
        Ok(())
    }

    /// The head shift of layer `layer` (`[H, dh]` flattened), if one is set.
    pub fn head_shift(&self, layer: usize) -> Option<&B::Buf> {
        self.head_shift.get(layer).and_then(|s| s.as_ref())
    }

    /// Removes every head shift.
    pub fn clear_head_shifts(&mut self) {
        self.head_shift.iter_mut().for_each(|s| *s = None);
    }

    /// Sets (or with `None` clears) an o_proj bias of layer `layer`: a `[D]` vector added to every
    /// position's attention output right after `o_proj` (`res[2l+1] = res[2l] + z·W_oᵀ + b`). The
    /// model has no such bias; this is for inference only, like the head shifts: a head shift `s`
    /// at every position equals the bias `b = W_o·s`, since o_proj is linear. Applies to
    /// [`Model::loss`], [`Model::logits`] and the KV-cache decode path (every position);
    /// [`Model::forward_backward`] refuses to run while any is set.
    pub fn set_o_bias(&mut self, layer: usize, bias: Option<&[B::Elem]>) -> Result<()> {
        self.o_bias[layer] = self.layer_vector("o_proj bias", "d_model", layer, bias)?;
        Ok(())
    }

    /// The executor copy of a per-layer `[D]` vector for [`Model::set_head_shift`] and
    /// [`Model::set_o_bias`] (`None` stays `None`), after checking `layer < n_layers` and that
    /// `values` holds `d_model` values. `what` names the vector in errors, `expected` the meaning
    /// of its length.
    fn layer_vector(
        &self,
        what: &str,
        expected: &str,
        layer: usize,
        values: Option<&[B::Elem]>,
    ) -> Result<Option<B::Buf>> {
        ensure!(
            layer < self.cfg.n_layers,
            "{what}: layer {layer} out of range (the model has {} layers)",
            self.cfg.n_layers
        );
        let Some(v) = values else {
            return Ok(None);
        };
        ensure!(
            v.len() == self.cfg.d_model,
            "{what} for layer {layer}: expected {expected} = {} values, got {}",
            self.cfg.d_model,
            v.len()
        );
        let mut buf = self.backend.alloc(v.len())?;
        self.backend.upload(v, &mut buf)?;
        Ok(Some(buf))
    }

    /// The o_proj bias of layer `layer` (`[D]`), if one is set.
    pub fn o_bias(&self, layer: usize) -> Option<&B::Buf> {
        self.o_bias.get(layer).and_then(|b| b.as_ref())
    }

    /// An activation of the most recent forward pass, under its TransformerLens name:
    /// `blocks.{l}.hook_resid_pre` / `hook_resid_post` `[B, T, D]`, `blocks.{l}.attn.hook_z`
    /// `[B, T, H, dh]` (after any head shift), `blocks.{l}.mlp.hook_post` `[B, T, F]`. Returns the
    /// buffer and its (batch, seq); `None` for an unknown name or before any forward pass.
    /// After [`Model::forward_backward`] the activations are those of the forward half.
    pub fn activation(&self, name: &str) -> Option<(&B::Buf, usize, usize)> {
        let ws = self.workspaces.last()?;
        let rest = name.strip_prefix("blocks.")?;
        let (l, hook) = rest.split_once('.')?;
        let l: usize = l.parse().ok()?;
        if l >= self.cfg.n_layers {
            return None;
        }
        let buf = match hook {
            "hook_resid_pre" => &ws.res[2 * l],
            "hook_resid_post" => &ws.res[2 * l + 2],
            "attn.hook_z" => &ws.layers[l].z,
            "mlp.hook_post" => &ws.layers[l].h,
            _ => return None,
        };
        Some((buf, ws.batch, ws.seq))
    }

    /// Checks the shape and ids of a call; `per_row` is T+1 for training rows, T for inputs.
    fn check_tokens(
        &self,
        what: &str,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        per_row: usize,
    ) -> Result<()> {
        ensure!(batch > 0, "{what}: batch must be positive");
        ensure!(
            seq > 0 && seq <= self.cfg.context,
            "{what}: sequence length {seq} must be in 1..={} (the model's context)",
            self.cfg.context
        );
        ensure!(
            tokens.len() == batch * per_row,
            "{what}: expected batch·{} = {} token ids ({batch} rows of {per_row}), got {}",
            if per_row == seq { "seq" } else { "(seq+1)" },
            batch * per_row,
            tokens.len()
        );
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.cfg.vocab_size)
        {
            bail!(
                "{what}: token id {t} at index {i} is not below the vocabulary size {}",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    /// Moves the workspace for (batch, seq) to the end of the list, creating it if needed.
    fn select_workspace(&mut self, batch: usize, seq: usize) -> Result<()> {
        // any pass overwrites the losses a started pass left to read
        self.pending_loss = None;
        if let Some(i) = self
            .workspaces
            .iter()
            .position(|w| w.batch == batch && w.seq == seq)
        {
            let ws = self.workspaces.remove(i);
            self.workspaces.push(ws);
        } else {
            if self.workspaces.len() >= Self::MAX_WORKSPACES {
                self.workspaces.remove(0);
            }
            let ws = Workspace::new(&self.backend, &self.cfg, batch, seq)
                .with_context(|| format!("allocating activations for batch {batch} × seq {seq}"))?;
            self.workspaces.push(ws);
        }
        Ok(())
    }

    /// Splits training rows of `seq + 1` ids into inputs and targets and uploads them.
    fn upload_rows(&mut self, tokens: &[u32], batch: usize, seq: usize) -> Result<()> {
        self.host_ids.clear();
        self.host_targets.clear();
        for row in tokens.chunks_exact(seq + 1).take(batch) {
            self.host_ids.extend_from_slice(&row[..seq]);
            self.host_targets.extend_from_slice(&row[1..]);
        }
        let ws = self.workspaces.last_mut().context("no workspace")?;
        self.backend.upload_ids(&self.host_ids, &mut ws.ids)?;
        self.backend
            .upload_ids(&self.host_targets, &mut ws.targets)?;
        Ok(())
    }

    fn check_params(&self, what: &str, buf: &B::Buf) -> Result<()> {
        let n = self.backend.buf_len(buf);
        ensure!(
            n == self.layout.len(),
            "{what}: buffer holds {n} values, the model has {} parameters",
            self.layout.len()
        );
        Ok(())
    }

    /// Forward pass up to the final layernorm (`lnf`), on the current (last) workspace.
    fn forward(&mut self, params: &B::Buf) -> Result<()> {
        let be = &self.backend;
        let cfg = &self.cfg;
        let lay = &self.layout;
        let ws = self.workspaces.last_mut().context("no workspace")?;
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let n = ws.batch * ws.seq;
        let s = AttnShape {
            b: ws.batch,
            t: ws.seq,
            h: cfg.n_heads,
            dh: cfg.d_head(),
        };
        let eps = cfg.layer_norm_eps;
        let wte = lay.embed.of(params);
        let n_layers = cfg.n_layers;
        be.embedding_fwd(&mut ws.res[0], &ws.ids, wte, n, d)?;
        if let Some(a) = ws.layers.first_mut() {
            be.layernorm_fwd(
                &mut a.ln1,
                &mut a.mean1,
                &mut a.rstd1,
                &ws.res[0],
                n,
                d,
                eps,
            )?;
        }
        for (l, lo) in lay.layers.iter().enumerate() {
            let (before, after) = ws.res.split_at_mut(2 * l + 1);
            let x = &before[2 * l];
            let (mid, rest) = after.split_at_mut(1);
            let x_mid = &mut mid[0];
            let x_out = &mut rest[0];
            let (this, next) = ws.layers.split_at_mut(l + 1);
            let a = &mut this[l];
            // Attention sublayer: x_mid = x + o(attn(rope(qkv(LN(x))))); a.ln1 = LN(x) is
            // already there (written with the previous layer's residual add, or above).
            be.matmul_fwd(&mut a.qkv, &a.ln1, lo.qkv.of(params), n, d, 3 * d)?;
            if let Some(c) = cfg.clip_qkv {
                be.pointwise(Pointwise::Clamp {
                    x: TensorMut::new(&mut a.qkv, [n, 3 * d]),
                    c,
                })?;
            }
            be.pointwise(Pointwise::Rope {
                qkv: TensorMut::new(&mut a.qkv, [s.b, s.t, 3 * d]),
                table: Tensor::new(&ws.rope, [s.t, s.dh]),
                s,
                transpose: false,
            })?;
            // The ITI head shift, when set, is added to z inside the attention op.
            let shift = self.head_shift[l].as_ref().map(|v| Span::new(v, 0, d));
            be.attention_fwd(&mut a.z, &mut a.lse, &a.qkv, s, shift)?;
            // o_proj output goes to x_out (free until the MLP writes it), then the residual add.
            be.matmul_fwd(x_out, &a.z, lo.o.of(params), n, d, d)?;
            if let Some(bias) = &self.o_bias[l] {
                be.pointwise(Pointwise::AddRows {
                    x: TensorMut::new(&mut *x_out, [n, d]),
                    v: Tensor::new(bias, [d]),
                })?;
            }
            // x_mid = x + o_proj output, fused with the MLP's layernorm of x_mid.
            // MLP sublayer: x_out = x_mid + down(swiglu(gate_up(LN(x_mid)))).
            be.add_layernorm_fwd(
                x_mid,
                &mut a.ln2,
                &mut a.mean2,
                &mut a.rstd2,
                x,
                x_out,
                n,
                d,
                eps,
            )?;
            be.matmul_fwd(&mut a.gu, &a.ln2, lo.gate_up.of(params), n, d, 2 * f)?;
            be.pointwise(Pointwise::SwigluFwd {
                h: TensorMut::new(&mut a.h, [n, f]),
                gu: Tensor::new(&a.gu, [n, 2 * f]),
            })?;
            // The down output goes to lnf (free until the final LN) as scratch.
            be.matmul_fwd(&mut ws.lnf, &a.h, lo.down.of(params), n, f, d)?;
            // x_out = x_mid + down output, fused with the next layer's layernorm of x_out (the
            // last layer's sum feeds the final layernorm, which writes lnf itself).
            match next.first_mut() {
                Some(b) => be.add_layernorm_fwd(
                    x_out,
                    &mut b.ln1,
                    &mut b.mean1,
                    &mut b.rstd1,
                    x_mid,
                    &ws.lnf,
                    n,
                    d,
                    eps,
                )?,
                _ => be.pointwise(Pointwise::Add {
                    out: TensorMut::new(x_out, [n, d]),
                    a: Tensor::new(x_mid, [n, d]),
                    b: Tensor::new(&ws.lnf, [n, d]),
                })?,
            }
        }
        let last = &ws.res[2 * n_layers];
        be.layernorm_fwd(&mut ws.lnf, &mut ws.meanf, &mut ws.rstdf, last, n, d, eps)
    }

    /// The loss's logits from the forward pass's final layernorm: `ws.logits = lnf·Hᵀ` (bf16 on
    /// the GPU), `H` the output layer.
    fn loss_logits(&mut self, params: &B::Buf) -> Result<()> {
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let ws = self.workspaces.last_mut().context("no workspace")?;
        let wte = self.layout.head.of(params);
        let n = ws.batch * ws.seq;
        self.backend
            .logits_fwd(&mut ws.logits, &ws.lnf, wte, n, d, v)
    }

    /// Mean cross-entropy of training rows (`batch` rows of `seq + 1` ids), forward only (for
    /// validation). Head shifts, if set, apply.
    pub fn loss(
        &mut self,
        params: &B::Buf,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<f64> {
        self.check_tokens("loss", tokens, batch, seq, seq + 1)?;
        self.check_params("loss: parameters", params)?;
        self.select_workspace(batch, seq)?;
        self.upload_rows(tokens, batch, seq)?;
        self.forward(params)?;
        self.loss_logits(params)?;
        let be = &self.backend;
        let ws = self.workspaces.last_mut().context("no workspace")?;
        let n = batch * seq;
        be.cross_entropy(
            &mut ws.logits,
            &mut ws.losses,
            &ws.targets,
            n,
            self.cfg.vocab_size,
            None,
        )?;
        Ok(be.sum(&ws.losses, n)? / n as f64)
    }

    /// Logits `[batch, seq, vocab_size]` (row-major, all vocab rows including padding) for input
    /// ids `[batch, seq]`, copied to the host. Head shifts, if set, apply.
    pub fn logits(
        &mut self,
        params: &B::Buf,
        ids: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>> {
        let exact = self.logits_exact(params, ids, batch, seq)?;
        Ok(exact.iter().map(|x| x.f64() as f32).collect())
    }

    /// [`Model::logits`] in the executor's own precision (e.g. f64 on `Cpu<f64>`), for checks
    /// that need more than f32.
    pub fn logits_exact(
        &mut self,
        params: &B::Buf,
        ids: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<B::Elem>> {
        self.check_tokens("logits", ids, batch, seq, seq)?;
        self.check_params("logits: parameters", params)?;
        self.select_workspace(batch, seq)?;
        let ws = self.workspaces.last_mut().context("no workspace")?;
        self.backend.upload_ids(ids, &mut ws.ids)?;
        self.forward(params)?;
        // At the executor's float precision (fp32 on the GPU, not the loss's bf16): callers
        // compare, sample from and take KL divergences of these.
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let be = &self.backend;
        let ws = self.workspaces.last_mut().context("no workspace")?;
        let rows = ws.batch * ws.seq;
        ws.ensure_infer_logits(be)?;
        let out = ws
            .infer_logits
            .as_mut()
            .context("inference logits not allocated")?;
        let head = self.layout.head.of(params);
        be.matmul_fwd(out, &ws.lnf, head, rows, d, v)?;
        let mut all = be.download(out)?;
        all.truncate(batch * seq * v);
        Ok(all)
    }

    /// One forward and backward pass over training rows (`batch` rows of `seq + 1` ids; inputs
    /// `row[..seq]`, targets `row[1..]`). Returns the mean loss over the `batch·seq` positions.
    ///
    /// Gradients are those of `grad_scale · mean_loss`: with `k` micro-batches per optimizer step
    /// pass `grad_scale = 1/k`, `accumulate = false` on the first and `true` on the rest, and
    /// `grads` then holds the gradient of the mean over all micro-batches. With `accumulate`
    /// false every gradient element is overwritten (no zeroing needed).
    ///
    /// This is [`Model::start_forward_backward`] then [`Model::finish_forward_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        params: &B::Buf,
        grads: &mut B::Buf,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        accumulate: bool,
        grad_scale: f64,
    ) -> Result<f64> {
        self.start_forward_backward(params, grads, tokens, batch, seq, accumulate, grad_scale)?;
        self.finish_forward_backward()
    }

    /// Reads the mean loss of the pass [`Model::start_forward_backward`] queued: on the GPU this
    /// waits for the whole pass (the step's one synchronisation before the optimizer).
    pub fn finish_forward_backward(&mut self) -> Result<f64> {
        let n = self
            .pending_loss
            .take()
            .context("finish_forward_backward: no pass was started")?;
        let ws = self.workspaces.last().context("no workspace")?;
        Ok(self.backend.sum(&ws.losses, n)? / n as f64)
    }

    /// Queues the forward and backward pass of [`Model::forward_backward`] without reading the
    /// loss back, so the caller can prepare the next batch while an asynchronous executor runs
    /// it; then call [`Model::finish_forward_backward`] (before any other pass on this model).
    #[allow(clippy::too_many_arguments)]
    pub fn start_forward_backward(
        &mut self,
        params: &B::Buf,
        grads: &mut B::Buf,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        accumulate: bool,
        grad_scale: f64,
    ) -> Result<()> {
        ensure!(
            self.head_shift.iter().all(|s| s.is_none()),
            "forward_backward: head shifts are set; they are for inference only (clear them first)"
        );
        ensure!(
            self.o_bias.iter().all(|b| b.is_none()),
            "forward_backward: o_proj biases are set; they are for inference only (clear them first)"
        );
        self.check_tokens("forward_backward", tokens, batch, seq, seq + 1)?;
        self.check_params("forward_backward: parameters", params)?;
        self.check_params("forward_backward: gradients", grads)?;
        self.select_workspace(batch, seq)?;
        self.upload_rows(tokens, batch, seq)?;
        self.forward(params)?;
        self.loss_logits(params)?;

        let be = &self.backend;
        let cfg = &self.cfg;
        let lay = &self.layout;
        let ws = self.workspaces.last_mut().context("no workspace")?;
        ws.ensure_grad(be)?;
        let (d, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
        let n = batch * seq;
        let s = AttnShape {
            b: batch,
            t: seq,
            h: cfg.n_heads,
            dh: cfg.d_head(),
        };
        let g = ws.grad.as_mut().context("no gradient scratch")?;

        // Loss and dlogits = grad_scale/N · (softmax − onehot), in place.
        be.cross_entropy(
            &mut ws.logits,
            &mut ws.losses,
            &ws.targets,
            n,
            v,
            Some(grad_scale / n as f64),
        )?;

        // Head: dlnf = dlogits·H, dH (+)= dlogitsᵀ·lnf (H the embedding when tied).
        be.logits_bwd(
            &mut g.dln,
            lay.head.of_mut(grads),
            &ws.logits,
            &ws.lnf,
            lay.head.of(params),
            n,
            d,
            v,
            accumulate,
        )?;
        be.layernorm_bwd(&mut g.dres, &g.dln, &ws.lnf, &ws.rstdf, n, d, false)?;

        for (lo, a) in lay.layers.iter().zip(ws.layers.iter()).rev() {
            // MLP: dres holds dL/d res[2l+2] (= dL/d down output, and flows on to res[2l+1]).
            be.matmul_bwd_x(&mut g.dh, &g.dres, lo.down.of(params), n, f, d)?;
            be.matmul_bwd_w(lo.down.of_mut(grads), &g.dres, &a.h, n, f, d, accumulate)?;
            be.pointwise(Pointwise::SwigluBwd {
                dgu: TensorMut::new(&mut g.dgu, [n, 2 * f]),
                dh: Tensor::new(&g.dh, [n, f]),
                gu: Tensor::new(&a.gu, [n, 2 * f]),
            })?;
            be.matmul_bwd_x(&mut g.dln, &g.dgu, lo.gate_up.of(params), n, d, 2 * f)?;
            be.matmul_bwd_w(
                lo.gate_up.of_mut(grads),
                &g.dgu,
                &a.ln2,
                n,
                d,
                2 * f,
                accumulate,
            )?;
            be.layernorm_bwd(&mut g.dres, &g.dln, &a.ln2, &a.rstd2, n, d, true)?;
            // Attention: dres now holds dL/d res[2l+1].
            be.matmul_bwd_x(&mut g.dz, &g.dres, lo.o.of(params), n, d, d)?;
            be.matmul_bwd_w(lo.o.of_mut(grads), &g.dres, &a.z, n, d, d, accumulate)?;
            be.attention_bwd(&mut g.dqkv, &g.dz, &a.z, &a.qkv, &a.lse, s)?;
            be.pointwise(Pointwise::Rope {
                qkv: TensorMut::new(&mut g.dqkv, [s.b, s.t, 3 * d]),
                table: Tensor::new(&ws.rope, [s.t, s.dh]),
                s,
                transpose: true,
            })?;
            if let Some(c) = cfg.clip_qkv {
                // The clamp's input, recomputed (the forward clamped and rotated it in place).
                let pre = g.qkv_pre.as_mut().context("no clip_qkv scratch")?;
                be.matmul_fwd(pre, &a.ln1, lo.qkv.of(params), n, d, 3 * d)?;
                be.pointwise(Pointwise::ClampBwd {
                    dx: TensorMut::new(&mut g.dqkv, [n, 3 * d]),
                    x: Tensor::new(&*pre, [n, 3 * d]),
                    c,
                })?;
            }
            be.matmul_bwd_x(&mut g.dln, &g.dqkv, lo.qkv.of(params), n, d, 3 * d)?;
            be.matmul_bwd_w(
                lo.qkv.of_mut(grads),
                &g.dqkv,
                &a.ln1,
                n,
                d,
                3 * d,
                accumulate,
            )?;
            be.layernorm_bwd(&mut g.dres, &g.dln, &a.ln1, &a.rstd1, n, d, true)?;
        }
        // Embedding: dE += scatter of dL/d res[0] (untied: onto zeros, or the earlier
        // micro-batches' sum).
        if !cfg.tie_word_embeddings && !accumulate {
            be.zero_range(lay.embed.of_mut(grads))?;
        }
        be.embedding_bwd(lay.embed.of_mut(grads), &ws.ids, &g.dres, n, d)?;
        self.pending_loss = Some(n);
        Ok(())
    }
}
