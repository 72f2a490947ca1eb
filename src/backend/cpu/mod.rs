//! The CPU executor: host vectors, the `gemm` crate for the GEMMs, rayon over independent rows
//! or (batch, head) pairs for the rest. Generic over [`Float`]: f32 trains the demo, f64 checks
//! gradients.
//!
//! Determinism: every output element is computed by exactly one task, and every sum runs in a
//! fixed index order (GEMM included: `gemm` splits work over output tiles only, never over `k`), so
//! two runs give bit-identical results whatever the thread count.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod layernorm;
pub mod matmul;
pub mod pointwise;

use super::{AttnShape, Backend, CacheShape, Float, Pointwise, Span, SpanMut, Tensor, TensorMut};
use anyhow::{bail, Result};
use std::marker::PhantomData;

/// The CPU executor over scalar type `T` (f32 or f64).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu<T> {
    /// Round matmul and attention operands to bf16 first, as the GPU's tensor cores see them.
    bf16_operands: bool,
    _t: PhantomData<T>,
}

impl<T: Float> Cpu<T> {
    /// A CPU executor (threads come from rayon's global pool, GEMMs included).
    pub fn new() -> Self {
        Cpu {
            bf16_operands: false,
            _t: PhantomData,
        }
    }

    /// A CPU executor that rounds the operands of matmul (x, W, dy) and attention (q, k, v,
    /// dz) to bf16 (round to nearest even) before computing in `T`, as the CUDA executor does
    /// when it stages them for the tensor cores (the GPU also rounds the attention
    /// probabilities, which this does not), and stores the logits in bf16 as the CUDA executor
    /// does. It predicts, on any machine, what that precision
    /// choice does to training (`tests/precision.rs`).
    pub fn with_bf16_operands() -> Self {
        Cpu {
            bf16_operands: true,
            _t: PhantomData,
        }
    }

    /// `v` as the op computes on it: rounded to bf16 when [`Cpu::with_bf16_operands`], else
    /// borrowed unchanged.
    fn operand<'a>(&self, v: &'a [T]) -> std::borrow::Cow<'a, [T]> {
        if self.bf16_operands {
            std::borrow::Cow::Owned(
                v.iter()
                    .map(|&x| T::of(half::bf16::from_f64(x.f64()).to_f64()))
                    .collect(),
            )
        } else {
            std::borrow::Cow::Borrowed(v)
        }
    }
}

/// Errors unless `have >= need`; `what` names the buffer.
fn need(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        bail!("cpu executor: buffer {what} holds {have} elements, the op needs {need}");
    }
    Ok(())
}

/// The slice a [`Span`] addresses, bounds-checked.
fn span<'a, T>(what: &str, s: &Span<'a, Vec<T>>, need_len: usize) -> Result<&'a [T]> {
    if s.len < need_len || s.off + s.len > s.buf.len() {
        bail!(
            "cpu executor: span {what} [{}, {}+{}) of a buffer of {} does not hold the {need_len} elements the op needs",
            s.off,
            s.off,
            s.len,
            s.buf.len()
        );
    }
    Ok(&s.buf[s.off..s.off + need_len])
}

/// The slice a [`SpanMut`] addresses, bounds-checked.
fn span_mut<'a, T>(what: &str, s: SpanMut<'a, Vec<T>>, need_len: usize) -> Result<&'a mut [T]> {
    if s.len < need_len || s.off + s.len > s.buf.len() {
        bail!(
            "cpu executor: span {what} [{}, {}+{}) of a buffer of {} does not hold the {need_len} elements the op needs",
            s.off,
            s.off,
            s.len,
            s.buf.len()
        );
    }
    Ok(&mut s.buf[s.off..s.off + need_len])
}

/// The host elements a view names (an error, not a panic, when it runs past its buffer).
fn host<'a, T>(t: &Tensor<'a, Vec<T>>) -> Result<&'a [T]> {
    let r = t.range();
    let have = t.buf.len();
    t.buf
        .get(r.clone())
        .ok_or_else(|| anyhow::anyhow!("cpu executor: a view of {r:?} in a buffer of {have}"))
}

/// The host elements a written view names.
fn host_mut<'b, T>(t: &'b mut TensorMut<'_, Vec<T>>) -> Result<&'b mut [T]> {
    let r = t.range();
    let have = t.buf.len();
    t.buf
        .get_mut(r.clone())
        .ok_or_else(|| anyhow::anyhow!("cpu executor: a view of {r:?} in a buffer of {have}"))
}

impl<T: Float> Backend for Cpu<T> {
    type Elem = T;
    type Buf = Vec<T>;
    type Ids = Vec<u32>;
    /// The CPU keeps logits at its own precision, in an ordinary buffer.
    type Logits = Vec<T>;
    /// The wall clock: CPU ops have finished when they return.
    type Mark = std::time::Instant;

    fn name(&self) -> String {
        format!("cpu-{}", std::any::type_name::<T>())
    }

    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        Ok(vec![T::zero(); len])
    }

    fn buf_len(&self, buf: &Vec<T>) -> usize {
        buf.len()
    }

    fn zero(&self, buf: &mut Vec<T>) -> Result<()> {
        buf.iter_mut().for_each(|x| *x = T::zero());
        Ok(())
    }

    fn upload(&self, host: &[T], dst: &mut Vec<T>) -> Result<()> {
        need("upload destination", dst.len(), host.len())?;
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }

    fn download(&self, src: &Vec<T>) -> Result<Vec<T>> {
        Ok(src.clone())
    }

    fn alloc_ids(&self, len: usize) -> Result<Vec<u32>> {
        Ok(vec![0; len])
    }

    fn upload_ids(&self, host: &[u32], dst: &mut Vec<u32>) -> Result<()> {
        need("ids destination", dst.len(), host.len())?;
        dst[..host.len()].copy_from_slice(host);
        Ok(())
    }

    fn alloc_logits(&self, len: usize) -> Result<Vec<T>> {
        self.alloc(len)
    }

    fn mark(&self) -> Result<std::time::Instant> {
        Ok(std::time::Instant::now())
    }

    fn seconds_between(&self, start: &std::time::Instant, end: &std::time::Instant) -> Result<f64> {
        Ok(end.saturating_duration_since(*start).as_secs_f64())
    }

    fn sum(&self, x: &Vec<T>, n: usize) -> Result<f64> {
        need("sum input", x.len(), n)?;
        Ok(x[..n].iter().fold(0.0f64, |a, &v| a + v.f64()))
    }

    fn embedding_fwd(
        &self,
        out: &mut Vec<T>,
        ids: &Vec<u32>,
        wte: Span<Vec<T>>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        need("embedding out", out.len(), n * d)?;
        need("embedding ids", ids.len(), n)?;
        let w = span("wte", &wte, wte.len)?;
        embedding::embedding_fwd(&mut out[..n * d], &ids[..n], w, d)
    }

    fn embedding_bwd(
        &self,
        dwte: SpanMut<Vec<T>>,
        ids: &Vec<u32>,
        dout: &Vec<T>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        need("embedding dout", dout.len(), n * d)?;
        need("embedding ids", ids.len(), n)?;
        let len = dwte.len;
        let dw = span_mut("dwte", dwte, len)?;
        embedding::embedding_bwd(dw, &ids[..n], &dout[..n * d], d)
    }

    fn layernorm_fwd(
        &self,
        out: &mut Vec<T>,
        mean: &mut Vec<T>,
        rstd: &mut Vec<T>,
        x: &Vec<T>,
        n: usize,
        d: usize,
        eps: f64,
    ) -> Result<()> {
        need("layernorm out", out.len(), n * d)?;
        need("layernorm x", x.len(), n * d)?;
        need("layernorm mean", mean.len(), n)?;
        need("layernorm rstd", rstd.len(), n)?;
        layernorm::layernorm_fwd(
            &mut out[..n * d],
            &mut mean[..n],
            &mut rstd[..n],
            &x[..n * d],
            d,
            T::of(eps),
        );
        Ok(())
    }

    fn layernorm_bwd(
        &self,
        dx: &mut Vec<T>,
        dy: &Vec<T>,
        xhat: &Vec<T>,
        rstd: &Vec<T>,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<()> {
        need("layernorm dx", dx.len(), n * d)?;
        need("layernorm dy", dy.len(), n * d)?;
        need("layernorm xhat", xhat.len(), n * d)?;
        need("layernorm rstd", rstd.len(), n)?;
        layernorm::layernorm_bwd(
            &mut dx[..n * d],
            &dy[..n * d],
            &xhat[..n * d],
            &rstd[..n],
            d,
            accumulate,
        );
        Ok(())
    }

    fn run_pointwise(&self, op: Pointwise<'_, Vec<T>>) -> Result<()> {
        match op {
            Pointwise::Add { mut out, a, b } => {
                pointwise::add(host_mut(&mut out)?, host(&a)?, host(&b)?)
            }
            Pointwise::AddRows { mut x, v } => pointwise::add_rows(host_mut(&mut x)?, host(&v)?),
            Pointwise::Clamp { mut x, c } => pointwise::clamp(host_mut(&mut x)?, T::of(c)),
            Pointwise::ClampBwd { mut dx, x, c } => {
                pointwise::clamp_bwd(host_mut(&mut dx)?, host(&x)?, T::of(c))
            }
            Pointwise::Rope {
                mut qkv,
                table,
                s,
                transpose,
            } => pointwise::rope(host_mut(&mut qkv)?, host(&table)?, s, transpose),
            Pointwise::SwigluFwd { mut h, gu } => {
                let f = h.shape.dims()[1];
                pointwise::swiglu_fwd(host_mut(&mut h)?, host(&gu)?, f)
            }
            Pointwise::SwigluBwd { mut dgu, dh, gu } => {
                let f = dh.shape.dims()[1];
                pointwise::swiglu_bwd(host_mut(&mut dgu)?, host(&dh)?, host(&gu)?, f)
            }
        }
        Ok(())
    }

    fn zero_range(&self, x: SpanMut<Vec<T>>) -> Result<()> {
        let len = x.len;
        span_mut("zero_range x", x, len)?
            .iter_mut()
            .for_each(|v| *v = T::zero());
        Ok(())
    }

    fn matmul_fwd(
        &self,
        y: &mut Vec<T>,
        x: &Vec<T>,
        w: Span<Vec<T>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        need("matmul y", y.len(), m * n)?;
        need("matmul x", x.len(), m * k)?;
        let w = span("matmul w", &w, n * k)?;
        matmul::forward(
            &mut y[..m * n],
            &self.operand(&x[..m * k]),
            &self.operand(w),
            m,
            k,
            n,
        );
        Ok(())
    }

    fn matmul_bwd_x(
        &self,
        dx: &mut Vec<T>,
        dy: &Vec<T>,
        w: Span<Vec<T>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        need("matmul dx", dx.len(), m * k)?;
        need("matmul dy", dy.len(), m * n)?;
        let w = span("matmul w", &w, n * k)?;
        matmul::backward_x(
            &mut dx[..m * k],
            &self.operand(&dy[..m * n]),
            &self.operand(w),
            m,
            k,
            n,
        );
        Ok(())
    }

    fn matmul_bwd_w(
        &self,
        dw: SpanMut<Vec<T>>,
        dy: &Vec<T>,
        x: &Vec<T>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        need("matmul dy", dy.len(), m * n)?;
        need("matmul x", x.len(), m * k)?;
        let dw = span_mut("matmul dw", dw, n * k)?;
        matmul::backward_w(
            dw,
            &self.operand(&dy[..m * n]),
            &self.operand(&x[..m * k]),
            m,
            k,
            n,
            accumulate,
        );
        Ok(())
    }

    fn logits_fwd(
        &self,
        logits: &mut Vec<T>,
        x: &Vec<T>,
        wte: Span<Vec<T>>,
        m: usize,
        d: usize,
        v: usize,
    ) -> Result<()> {
        self.matmul_fwd(logits, x, wte, m, d, v)?;
        if self.bf16_operands {
            // Stored in bf16, as the CUDA executor stores them (the backward rounds dlogits as
            // a matmul operand anyway).
            let rounded = self.operand(&logits[..m * v]).into_owned();
            logits[..m * v].copy_from_slice(&rounded);
        }
        Ok(())
    }

    fn logits_bwd(
        &self,
        dx: &mut Vec<T>,
        dwte: SpanMut<Vec<T>>,
        dlogits: &Vec<T>,
        x: &Vec<T>,
        wte: Span<Vec<T>>,
        m: usize,
        d: usize,
        v: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.matmul_bwd_x(dx, dlogits, wte, m, d, v)?;
        self.matmul_bwd_w(dwte, dlogits, x, m, d, v, accumulate)
    }

    fn attention_fwd(
        &self,
        z: &mut Vec<T>,
        lse: &mut Vec<T>,
        qkv: &Vec<T>,
        s: AttnShape,
        shift: Option<Span<Vec<T>>>,
    ) -> Result<()> {
        need("attention z", z.len(), s.n() * s.d())?;
        need("attention lse", lse.len(), s.n() * s.h)?;
        need("attention qkv", qkv.len(), s.n() * 3 * s.d())?;
        attention::forward(z, lse, &self.operand(qkv), s);
        if let Some(v) = shift {
            let v = span("attention shift", &v, s.d())?;
            pointwise::add_rows(&mut z[..s.n() * s.d()], v);
        }
        Ok(())
    }

    fn attention_bwd(
        &self,
        dqkv: &mut Vec<T>,
        dz: &Vec<T>,
        z: &Vec<T>,
        qkv: &Vec<T>,
        lse: &Vec<T>,
        s: AttnShape,
    ) -> Result<()> {
        need("attention dqkv", dqkv.len(), s.n() * 3 * s.d())?;
        need("attention dz", dz.len(), s.n() * s.d())?;
        need("attention z", z.len(), s.n() * s.d())?;
        need("attention lse", lse.len(), s.n() * s.h)?;
        need("attention qkv", qkv.len(), s.n() * 3 * s.d())?;
        attention::backward(dqkv, &self.operand(dz), z, &self.operand(qkv), lse, s);
        Ok(())
    }

    fn cross_entropy(
        &self,
        logits: &mut Vec<T>,
        losses: &mut Vec<T>,
        targets: &Vec<u32>,
        n: usize,
        v: usize,
        grad_scale: Option<f64>,
    ) -> Result<()> {
        need("cross_entropy logits", logits.len(), n * v)?;
        need("cross_entropy losses", losses.len(), n)?;
        need("cross_entropy targets", targets.len(), n)?;
        cross_entropy::cross_entropy(
            &mut logits[..n * v],
            &mut losses[..n],
            &targets[..n],
            v,
            grad_scale.map(T::of),
        )
    }

    fn kv_append(
        &self,
        qkv: &mut Vec<T>,
        k_cache: &mut Vec<T>,
        v_cache: &mut Vec<T>,
        table: &Vec<T>,
        meta: &Vec<u32>,
        n: usize,
        c: CacheShape,
    ) -> Result<()> {
        if c.dh == 0 || c.dh % 2 != 0 {
            bail!("kv_append: head width {} must be even and non-zero", c.dh);
        }
        let m = decode::read_meta(meta, n, c)?;
        need("kv_append qkv", qkv.len(), n * 3 * c.d())?;
        need("kv_append k_cache", k_cache.len(), c.len())?;
        need("kv_append v_cache", v_cache.len(), c.len())?;
        need("kv_append table", table.len(), c.t_max * c.dh)?;
        decode::kv_append(&mut qkv[..n * 3 * c.d()], k_cache, v_cache, table, &m, c);
        Ok(())
    }

    fn attention_decode(
        &self,
        z: &mut Vec<T>,
        qkv: &Vec<T>,
        k_cache: &Vec<T>,
        v_cache: &Vec<T>,
        meta: &Vec<u32>,
        n: usize,
        c: CacheShape,
        shift: Option<Span<Vec<T>>>,
    ) -> Result<()> {
        let m = decode::read_meta(meta, n, c)?;
        need("attention_decode z", z.len(), n * c.d())?;
        need("attention_decode qkv", qkv.len(), n * 3 * c.d())?;
        need("attention_decode k_cache", k_cache.len(), c.len())?;
        need("attention_decode v_cache", v_cache.len(), c.len())?;
        let shift = match &shift {
            Some(s) => Some(span("attention_decode shift", s, c.d())?),
            None => None,
        };
        decode::attention_decode(&mut z[..n * c.d()], qkv, k_cache, v_cache, &m, c, shift);
        Ok(())
    }

    fn norm_sq(&self, g: &Vec<T>, n: usize) -> Result<f64> {
        need("norm_sq input", g.len(), n)?;
        Ok(adamw::norm_sq(&g[..n]))
    }

    fn adamw(
        &self,
        p: &mut Vec<T>,
        g: &Vec<T>,
        m: &mut Vec<T>,
        v: &mut Vec<T>,
        n: usize,
        args: &crate::backend::StepArgs,
    ) -> Result<()> {
        need("adamw params", p.len(), n)?;
        need("adamw grads", g.len(), n)?;
        need("adamw m", m.len(), n)?;
        need("adamw v", v.len(), n)?;
        adamw::adamw(&mut p[..n], &g[..n], &mut m[..n], &mut v[..n], args);
        Ok(())
    }
}
