//! Ops described once: each family is an enum whose variants hold the op's operands as shaped
//! views ([`Tensor`], [`TensorMut`]) and which answers, for every executor alike, the op's shape
//! rule ([`Pointwise::check`]: the shapes agree and each view fits its buffer), its label and the
//! bytes it moves. [`Backend::pointwise`](super::Backend::pointwise) checks and then hands the
//! op to the executor's [`Backend::run_pointwise`](super::Backend::run_pointwise), so an
//! executor only computes; the profiler ([`super::profile::Profiled`]) times any op from its
//! description, with no code per op.
//!
//! Families converted so far: pointwise. The others (memory, norm, matmul, attention, loss,
//! optimizer, decode) are still methods of [`Backend`](super::Backend) with positional sizes.
//!
//! Adding a pointwise op: a variant here (its math in the doc comment, its shape rule in
//! `check`, its label and bytes), its CPU reference in `backend/cpu/pointwise.rs` and its arm in
//! the CPU executor's `run_pointwise`, its kernel in `cuda/pointwise.cu` with its launcher in
//! `backend/cuda/pointwise.rs` and its arm in the CUDA executor's `run_pointwise`; then its test
//! and bench.

use anyhow::{bail, Result};

use super::tensor::{check_fits, Tensor, TensorMut};
use super::AttnShape;

/// Row-wise and element-wise ops (CPU: `backend/cpu/pointwise.rs`; GPU: `cuda/pointwise.cu`).
/// Every view is fp32 (the executor's float) and row-major.
#[derive(Debug)]
pub enum Pointwise<'a, B: ?Sized> {
    /// Residual add: `out[i] = a[i] + b[i]`; all three `[n]`.
    Add {
        /// `[n]`, written.
        out: TensorMut<'a, B>,
        /// `[n]`.
        a: Tensor<'a, B>,
        /// `[n]`.
        b: Tensor<'a, B>,
    },
    /// Adds one row vector to every row, in place: `x[i, :] += v` for `x` `[n, d]`, `v` `[d]`
    /// (an o_proj bias; the ITI head shift of one layer, flattened `[H·dh]`).
    AddRows {
        /// `[n, d]`, updated.
        x: TensorMut<'a, B>,
        /// `[d]`.
        v: Tensor<'a, B>,
    },
    /// Clamp in place, for `clip_qkv`: `x[i] = −c` where `x[i] < −c`, `c` where `x[i] > c`,
    /// unchanged otherwise (NaN stays NaN); `c > 0`. Exact: no arithmetic.
    Clamp {
        /// `[n]`, updated.
        x: TensorMut<'a, B>,
        /// The bound.
        c: f64,
    },
    /// Clamp backward in place on `dx`, from the clamp's input `x`: `dx[i]` is kept where
    /// `−c ≤ x[i] ≤ c` and set to 0 elsewhere (NaN included), as PyTorch's `clamp_backward`
    /// (the gradient passes at `x = ±c` exactly).
    ClampBwd {
        /// `[n]`, updated.
        dx: TensorMut<'a, B>,
        /// `[n]`, the clamp's input.
        x: Tensor<'a, B>,
        /// The bound.
        c: f64,
    },
    /// Rotary embedding, in place on the q and k thirds of `qkv` `[B, T, 3D]` (v untouched).
    /// `table` is `[T, dh]`: `[T, dh/2]` cosines then `[T, dh/2]` sines of `pos·θ^(−2i/dh)`.
    /// For each head, with `x1 = x[..dh/2]`, `x2 = x[dh/2..]` (HF's rotate-half layout), forward:
    /// `out1 = x1·cos − x2·sin`, `out2 = x2·cos + x1·sin`; backward (`transpose`, the
    /// transposed rotation, on the gradient): `dx1 = dy1·cos + dy2·sin`, `dx2 = dy2·cos − dy1·sin`.
    Rope {
        /// `[B, T, 3D]`, updated.
        qkv: TensorMut<'a, B>,
        /// `[T, dh]`.
        table: Tensor<'a, B>,
        /// Batch, positions, heads and head width.
        s: AttnShape,
        /// The backward (transposed) rotation.
        transpose: bool,
    },
    /// SwiGLU forward: `gu` `[n, 2f]` holds gate then up per row; `h = silu(gate)·up` `[n, f]`
    /// with `silu(g) = g·σ(g)`.
    SwigluFwd {
        /// `[n, f]`, written.
        h: TensorMut<'a, B>,
        /// `[n, 2f]`.
        gu: Tensor<'a, B>,
    },
    /// SwiGLU backward: `dgate = dh·up·σ(g)(1 + g(1 − σ(g)))`, `dup = dh·silu(g)`, written to
    /// `dgu` `[n, 2f]`.
    SwigluBwd {
        /// `[n, 2f]`, written.
        dgu: TensorMut<'a, B>,
        /// `[n, f]`.
        dh: Tensor<'a, B>,
        /// `[n, 2f]`, the forward's input.
        gu: Tensor<'a, B>,
    },
}

/// Errors unless `got` is `want` (the op's shape rule).
fn rule(op: &str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        bail!("{op}: {what} has shape {got:?}, the op needs {want:?}");
    }
    Ok(())
}

/// Errors unless `dims` has rank 2; returns them.
fn rank2(op: &str, what: &str, dims: &[usize]) -> Result<(usize, usize)> {
    match *dims {
        [a, b] => Ok((a, b)),
        _ => bail!("{op}: {what} has shape {dims:?}, the op needs a matrix"),
    }
}

impl<B: ?Sized> Pointwise<'_, B> {
    /// The op's name, as the profile and errors show it.
    pub fn name(&self) -> &'static str {
        match self {
            Pointwise::Add { .. } => "add",
            Pointwise::AddRows { .. } => "add_rows",
            Pointwise::Clamp { .. } => "clamp_fwd",
            Pointwise::ClampBwd { .. } => "clamp_bwd",
            Pointwise::Rope {
                transpose: false, ..
            } => "rope_fwd",
            Pointwise::Rope {
                transpose: true, ..
            } => "rope_bwd",
            Pointwise::SwigluFwd { .. } => "swiglu_fwd",
            Pointwise::SwigluBwd { .. } => "swiglu_bwd",
        }
    }

    /// The op and the shape of its first operand, e.g. `swiglu_fwd 16384×8192`: the profile's
    /// row label.
    pub fn label(&self) -> String {
        let shape = match self {
            Pointwise::Add { out, .. } => out.shape,
            Pointwise::AddRows { x, .. } => x.shape,
            Pointwise::Clamp { x, .. } => x.shape,
            Pointwise::ClampBwd { dx, .. } => dx.shape,
            Pointwise::Rope { qkv, .. } => qkv.shape,
            Pointwise::SwigluFwd { h, .. } => h.shape,
            Pointwise::SwigluBwd { dh, .. } => dh.shape,
        };
        format!("{} {shape}", self.name())
    }

    /// Bytes the op reads and writes at 4 bytes an element (each operand once; an in-place
    /// operand twice).
    pub fn bytes(&self) -> u64 {
        let elems = match self {
            Pointwise::Add { out, .. } => 3 * out.shape.len(),
            Pointwise::AddRows { x, v } => 2 * x.shape.len() + v.shape.len(),
            Pointwise::Clamp { x, .. } => 2 * x.shape.len(),
            Pointwise::ClampBwd { dx, .. } => 3 * dx.shape.len(),
            // q and k rotated in place (two thirds of qkv), and the table
            Pointwise::Rope { qkv, table, .. } => 4 * qkv.shape.len() / 3 + table.shape.len(),
            Pointwise::SwigluFwd { h, gu } => h.shape.len() + gu.shape.len(),
            Pointwise::SwigluBwd { dgu, dh, gu } => {
                dgu.shape.len() + dh.shape.len() + gu.shape.len()
            }
        };
        4 * elems as u64
    }

    /// The op's shape rule, and that every view fits its buffer (`len` gives a buffer's length
    /// in elements).
    pub fn check(&self, len: impl Fn(&B) -> usize) -> Result<()> {
        let op = self.name();
        let fits = |what: &str, range: std::ops::Range<usize>, have: usize| {
            check_fits(op, what, range, have)
        };
        match self {
            Pointwise::Add { out, a, b } => {
                rule(op, "a", a.shape.dims(), out.shape.dims())?;
                rule(op, "b", b.shape.dims(), out.shape.dims())?;
                fits("out", out.range(), len(out.buf))?;
                fits("a", a.range(), len(a.buf))?;
                fits("b", b.range(), len(b.buf))
            }
            Pointwise::AddRows { x, v } => {
                let (_, d) = rank2(op, "x", x.shape.dims())?;
                rule(op, "v", v.shape.dims(), &[d])?;
                fits("x", x.range(), len(x.buf))?;
                fits("v", v.range(), len(v.buf))
            }
            Pointwise::Clamp { x, c } => {
                if c.is_nan() || *c <= 0.0 {
                    bail!("{op}: the bound must be positive, got {c}");
                }
                fits("x", x.range(), len(x.buf))
            }
            Pointwise::ClampBwd { dx, x, c } => {
                if c.is_nan() || *c <= 0.0 {
                    bail!("{op}: the bound must be positive, got {c}");
                }
                rule(op, "x", x.shape.dims(), dx.shape.dims())?;
                fits("dx", dx.range(), len(dx.buf))?;
                fits("x", x.range(), len(x.buf))
            }
            Pointwise::Rope { qkv, table, s, .. } => {
                if s.dh % 2 != 0 {
                    bail!("{op}: head width {} is odd", s.dh);
                }
                rule(op, "qkv", qkv.shape.dims(), &[s.b, s.t, 3 * s.d()])?;
                rule(op, "table", table.shape.dims(), &[s.t, s.dh])?;
                fits("qkv", qkv.range(), len(qkv.buf))?;
                fits("table", table.range(), len(table.buf))
            }
            Pointwise::SwigluFwd { h, gu } => {
                let (n, f) = rank2(op, "h", h.shape.dims())?;
                rule(op, "gu", gu.shape.dims(), &[n, 2 * f])?;
                fits("h", h.range(), len(h.buf))?;
                fits("gu", gu.range(), len(gu.buf))
            }
            Pointwise::SwigluBwd { dgu, dh, gu } => {
                let (n, f) = rank2(op, "dh", dh.shape.dims())?;
                rule(op, "dgu", dgu.shape.dims(), &[n, 2 * f])?;
                rule(op, "gu", gu.shape.dims(), &[n, 2 * f])?;
                fits("dgu", dgu.range(), len(dgu.buf))?;
                fits("dh", dh.range(), len(dh.buf))?;
                fits("gu", gu.range(), len(gu.buf))
            }
        }
    }
}
