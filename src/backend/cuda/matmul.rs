//! Launchers for `cuda/matmul.cu`: the three GEMMs of a linear layer `y = x · Wᵀ` on the
//! tensor cores. The math is [`crate::backend::cpu::matmul::forward`],
//! [`crate::backend::cpu::matmul::backward_x`] and [`crate::backend::cpu::matmul::backward_w`];
//! here the operands are rounded to bf16 (round to nearest, ties to even) as they are staged into
//! shared memory and multiplied with fp32 accumulation (wmma bf16 16x16x16).
//!
//! Buffers (row-major, caller-owned; the output must not alias an input): `x`, `dx` `[m, k]`;
//! `W`, `dW` `[n, k]`; `y`, `dy` `[m, n]`, all fp32 except that `y` (forward) and `dy`
//! (backward) may be bf16 ([`MmElem`]): the output layer's logits and their gradient, which the
//! model stores in bf16. A bf16 operand is widened on load (exact) and the kernels round every
//! operand to bf16 anyway, so the bf16 variants give bit for bit what the fp32 kernels give on
//! the same values; a bf16 `y` is the fp32 result rounded to nearest, ties to even.
//!
//! A view may start at any element offset (weights are ranges of one flat parameter buffer).
//! Operands are loaded 4 elements at a time (16 bytes fp32, 8 bytes bf16) where the buffer is
//! aligned to that and its leading dimension and contiguous extent are multiples of 4; outputs
//! are stored 16 bytes at a time where the buffer is 16-byte aligned and the row length a
//! multiple of 4 (fp32) or 8 (bf16); scalar accesses elsewhere. Each view must hold at least the
//! elements the shape needs; only those are touched.
//!
//! Tiling: one block of 256 threads per 128x128 output tile, K-steps of 32, double-buffered bf16
//! shared memory. Each output element is summed by one block in a fixed order (no atomics, no
//! split-k), so two launches give the same bits.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaBackend};

/// Element type of a matmul's `y` (forward) or `dy` (backward): `f32`, or `half::bf16` for the
/// logits. Sealed: the kernels exist for these two only.
pub trait MmElem: cudarc::driver::DeviceRepr + sealed::Sealed {
    /// Whether this is bf16 (selects the `_bf16` kernel variant).
    const BF16: bool;
}
impl MmElem for f32 {
    const BF16: bool = false;
}
impl MmElem for half::bf16 {
    const BF16: bool = true;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

/// Output tile edge (rows and columns), `MM_BM` / `MM_BN` in the kernel file.
const TILE: usize = 128;
/// Threads per block, `MM_THREADS` in the kernel file.
const THREADS: u32 = 256;

/// The kernels of `cuda/matmul.cu`, bound to the backend's stream.
pub struct MatmulKernels {
    /// `[fp32, bf16]` variants of each kernel, indexed by [`MmElem::BF16`].
    fwd_fn: [CudaFunction; 2],
    bwd_x_fn: [CudaFunction; 2],
    bwd_w_fn: [CudaFunction; 2],
    stream: Arc<CudaStream>,
}

/// Launch shape for an output of `rows x cols` (both at least 1): one block per 128x128 tile,
/// on a 1-D grid (the kernel rasters the tiles in groups of 8 tile-rows).
fn config(op: &str, rows: usize, cols: usize) -> Result<LaunchConfig> {
    let tiles = rows.div_ceil(TILE) * cols.div_ceil(TILE);
    if tiles > i32::MAX as usize {
        bail!("{op}: output {rows}x{cols} needs {tiles} tiles, more than one launch holds");
    }
    Ok(LaunchConfig {
        grid_dim: (tiles as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Errors unless every dimension and every buffer length fits the kernel's 32-bit arguments
/// (element indices are computed in 64 bits inside the kernel).
fn check_shape(op: &str, m: usize, k: usize, n: usize) -> Result<()> {
    let lim = u32::MAX as usize - TILE;
    if m > lim || k > lim || n > lim {
        bail!("{op}: shape m={m} k={k} n={n} is out of range (each at most {lim})");
    }
    for (what, a, b) in [("m·k", m, k), ("n·k", n, k), ("m·n", m, n)] {
        if a.checked_mul(b).is_none() {
            bail!("{op}: {what} = {a}·{b} overflows");
        }
    }
    Ok(())
}

impl MatmulKernels {
    /// Looks the kernels up in the `matmul` module.
    pub fn new(gpu: &CudaBackend) -> Result<Self> {
        let f = |name: &str| gpu.function("matmul", name);
        Ok(MatmulKernels {
            fwd_fn: [f("matmul_fwd")?, f("matmul_fwd_bf16")?],
            bwd_x_fn: [f("matmul_bwd_x")?, f("matmul_bwd_x_bf16")?],
            bwd_w_fn: [f("matmul_bwd_w")?, f("matmul_bwd_w_bf16")?],
            stream: gpu.stream().clone(),
        })
    }

    /// y[m, n] = x[m, k] · W[n, k]ᵀ (overwrite).
    ///
    /// `y` `[m, n]` (fp32, or bf16: each value rounded to nearest) is written; `x` `[m, k]` and
    /// `w` `[n, k]` are read. k = 0 writes zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<Y: MmElem>(
        &self,
        y: &mut CudaViewMut<'_, Y>,
        x: &CudaView<'_, f32>,
        w: &CudaView<'_, f32>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        check_shape("matmul_fwd", m, k, n)?;
        need_len("matmul_fwd y", y.len(), m * n)?;
        need_len("matmul_fwd x", x.len(), m * k)?;
        need_len("matmul_fwd w", w.len(), n * k)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let cfg = config("matmul_fwd", m, n)?;
        let (m32, k32, n32) = (m as u32, k as u32, n as u32);
        let mut b = self.stream.launch_builder(&self.fwd_fn[Y::BF16 as usize]);
        b.arg(y).arg(x).arg(w).arg(&m32).arg(&k32).arg(&n32);
        // SAFETY: matches `matmul_fwd(float*, const float*, const float*, u32 m, u32 k, u32 n)`
        // (`matmul_fwd_bf16`: `__nv_bfloat16*` y, the type of `y` here);
        // buffer lengths checked above; the kernel touches only y[..m·n], x[..m·k], w[..n·k].
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("matmul_fwd launch failed: {e}"))?;
        Ok(())
    }

    /// dx[m, k] = dy[m, n] · W[n, k] (overwrite).
    ///
    /// `dx` `[m, k]` is written; `dy` `[m, n]` (fp32 or bf16) and `w` `[n, k]` are read.
    /// n = 0 writes zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_x<D: MmElem>(
        &self,
        dx: &mut CudaViewMut<'_, f32>,
        dy: &CudaView<'_, D>,
        w: &CudaView<'_, f32>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<()> {
        check_shape("matmul_bwd_x", m, k, n)?;
        need_len("matmul_bwd_x dx", dx.len(), m * k)?;
        need_len("matmul_bwd_x dy", dy.len(), m * n)?;
        need_len("matmul_bwd_x w", w.len(), n * k)?;
        if m == 0 || k == 0 {
            return Ok(());
        }
        let cfg = config("matmul_bwd_x", m, k)?;
        let (m32, k32, n32) = (m as u32, k as u32, n as u32);
        let mut b = self.stream.launch_builder(&self.bwd_x_fn[D::BF16 as usize]);
        b.arg(dx).arg(dy).arg(w).arg(&m32).arg(&k32).arg(&n32);
        // SAFETY: matches `matmul_bwd_x(float*, const float*, const float*, u32 m, u32 k,
        // u32 n)` (`matmul_bwd_x_bf16`: `const __nv_bfloat16*` dy, the type of `dy` here);
        // buffer lengths checked above.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("matmul_bwd_x launch failed: {e}"))?;
        Ok(())
    }

    /// dW[n, k] (+)= dy[m, n]ᵀ · x[m, k]; `+=` when `accumulate`, else overwrite.
    ///
    /// `dw` `[n, k]` is written (read first when `accumulate`: `dW = old + Σ`, the old value
    /// added once after the whole sum over m); `dy` `[m, n]` (fp32 or bf16) and `x` `[m, k]`
    /// are read. m = 0 writes zeros (overwrite) or leaves `dw` as it was (accumulate).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_w<D: MmElem>(
        &self,
        dw: &mut CudaViewMut<'_, f32>,
        dy: &CudaView<'_, D>,
        x: &CudaView<'_, f32>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Result<()> {
        check_shape("matmul_bwd_w", m, k, n)?;
        need_len("matmul_bwd_w dw", dw.len(), n * k)?;
        need_len("matmul_bwd_w dy", dy.len(), m * n)?;
        need_len("matmul_bwd_w x", x.len(), m * k)?;
        if n == 0 || k == 0 {
            return Ok(());
        }
        let cfg = config("matmul_bwd_w", n, k)?;
        let (m32, k32, n32, acc) = (m as u32, k as u32, n as u32, accumulate as i32);
        let mut b = self.stream.launch_builder(&self.bwd_w_fn[D::BF16 as usize]);
        b.arg(dw)
            .arg(dy)
            .arg(x)
            .arg(&m32)
            .arg(&k32)
            .arg(&n32)
            .arg(&acc);
        // SAFETY: matches `matmul_bwd_w(float*, const float*, const float*, u32 m, u32 k, u32 n,
        // int accumulate)` (`matmul_bwd_w_bf16`: `const __nv_bfloat16*` dy, the type of `dy`
        // here); buffer lengths checked above.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("matmul_bwd_w launch failed: {e}"))?;
        Ok(())
    }
}
