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
//! Tiling: one block of 256 threads per 128x128 output tile, K-steps of 32. Each output element
//! is summed by one block in a fixed order (no atomics, no split-k), so two launches give the
//! same bits.
//!
//! Two versions give the same bits ([`MmVersion`]): [`MmVersion::Staged`] reads the fp32
//! operands and rounds them as it stages them (double-buffered, through registers);
//! [`MmVersion::Async`] first copies each operand to bf16 in a scratch buffer this struct owns
//! (`matmul_to_bf16`, leading dimension padded to a multiple of 8; a bf16 `dy` whose layout
//! allows it is read as it is) and multiplies the copies with a 4-stage `cp.async` pipeline.
//! The benches compare them; [`DEFAULT_VERSION`] is the one the executor launches.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use half::bf16;

use super::{need_len, CudaDevice};

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
/// Dynamic shared memory of the `*_async` kernels, `MM2_SMEM_BYTES` in the kernel file: 4
/// stages of a 128x40 and a 128x40 bf16 tile.
const ASYNC_SMEM: u32 = 4 * 2 * 128 * 40 * 2;

/// A version of the matmul kernels (`cuda/matmul.cu`). Both multiply the same bf16-rounded
/// values in the same order, so they give the same bits; they differ in how operands reach
/// shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmVersion {
    /// fp32 operands loaded into registers and rounded to bf16 as they are stored to shared
    /// memory, double-buffered (`matmul_fwd`, ...).
    Staged,
    /// bf16 copies of the operands (scratch owned by [`MatmulKernels`]) fetched by `cp.async`
    /// into a 4-stage shared-memory pipeline (`matmul_fwd_async`, ...).
    Async,
    /// [`MmVersion::Async`] for products of at least [`AUTO_MIN_ROWS`] token rows (training,
    /// prefill), [`MmVersion::Staged`] below (decoding a few tokens, where copying the weights
    /// to bf16 on every call would cost more than the product).
    Auto,
}

impl MmVersion {
    /// The two kernel versions ([`MmVersion::Auto`] picks one of them per product).
    pub const ALL: [MmVersion; 2] = [MmVersion::Staged, MmVersion::Async];
}

/// Token rows (m) from which [`MmVersion::Auto`] launches the async version.
pub const AUTO_MIN_ROWS: usize = 256;

/// The version the executor launches: [`MmVersion::Auto`], so training runs the async version,
/// which the GPU tests found bit-identical to the staged one on every product and the bench
/// 1.72× faster over OLMo-1B's 15 products on an H200 (docs/gpu-results.md). It costs the
/// operand scratch ([`async_scratch_elements`], counted by [`crate::perf::cuda_train_memory`]).
pub const DEFAULT_VERSION: MmVersion = MmVersion::Auto;

/// The kernels of `cuda/matmul.cu`, bound to the backend's stream.
pub struct MatmulKernels {
    version: MmVersion,
    /// `[fp32, bf16]` variants of each kernel, indexed by [`MmElem::BF16`].
    fwd_fn: [CudaFunction; 2],
    bwd_x_fn: [CudaFunction; 2],
    bwd_w_fn: [CudaFunction; 2],
    /// Version 2: `[fp32 y, bf16 y]` forward, and the two backward products.
    fwd_async_fn: [CudaFunction; 2],
    bwd_x_async_fn: CudaFunction,
    bwd_w_async_fn: CudaFunction,
    /// Operand copies to bf16 from `[fp32, bf16]` sources.
    to_bf16_fn: [CudaFunction; 2],
    stream: Arc<CudaStream>,
    /// Version 2's operand copies (both operands of one product, A first); grown on demand.
    scratch: Mutex<Option<CudaSlice<bf16>>>,
}

/// Launch shape for an output of `rows x cols` (both at least 1): one block per 128x128 tile,
/// on a 1-D grid (the kernel rasters the tiles in groups of 8 tile-rows), with `smem` bytes of
/// dynamic shared memory.
fn config(op: &str, rows: usize, cols: usize, smem: u32) -> Result<LaunchConfig> {
    let tiles = rows.div_ceil(TILE) * cols.div_ceil(TILE);
    if tiles > i32::MAX as usize {
        bail!("{op}: output {rows}x{cols} needs {tiles} tiles, more than one launch holds");
    }
    Ok(LaunchConfig {
        grid_dim: (tiles as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem,
    })
}

/// Elements of bf16 scratch the async version keeps for the three products of a linear layer
/// with `m` rows, `k` inputs and `n` outputs: the largest of the three products' operand copies.
/// `dy_as_is`: `dy` is bf16 and read as it is (the logits' gradient, when `n` is a multiple of
/// 8), so only the other operand is copied in the backward products.
pub fn async_scratch_elements(m: usize, k: usize, n: usize, dy_as_is: bool) -> usize {
    let dy = (!dy_as_is).then_some((m, n));
    let fwd = scratch_elems(Some((m, k)), Some((n, k)));
    let bwd_x = scratch_elems(dy, Some((n, k)));
    let bwd_w = scratch_elems(dy, Some((m, k)));
    fwd.max(bwd_x).max(bwd_w)
}

/// `c` rounded up to a multiple of 8: the leading dimension of a bf16 operand copy.
fn ld8(c: usize) -> usize {
    c.div_ceil(8) * 8
}

/// Elements of version 2's scratch for a product whose operands are `a` and `b` (each `(rows,
/// contiguous extent)`, or `None` when it is read as it is): the sum of the padded copies.
fn scratch_elems(a: Option<(usize, usize)>, b: Option<(usize, usize)>) -> usize {
    let e = |o: Option<(usize, usize)>| o.map_or(0, |(r, c)| r * ld8(c));
    e(a) + e(b)
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
    /// Looks the [`DEFAULT_VERSION`] kernels up in the `matmul` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Self::with_version(gpu, DEFAULT_VERSION)
    }

    /// Looks the kernels up, launching `version` (benches and tests compare the versions).
    pub fn with_version(gpu: &CudaDevice, version: MmVersion) -> Result<Self> {
        let f = |name: &str| gpu.function("matmul", name);
        let fwd_async_fn = [f("matmul_fwd_async")?, f("matmul_fwd_async_bf16")?];
        let bwd_x_async_fn = f("matmul_bwd_x_async")?;
        let bwd_w_async_fn = f("matmul_bwd_w_async")?;
        for (name, func) in [
            ("matmul_fwd_async", &fwd_async_fn[0]),
            ("matmul_fwd_async_bf16", &fwd_async_fn[1]),
            ("matmul_bwd_x_async", &bwd_x_async_fn),
            ("matmul_bwd_w_async", &bwd_w_async_fn),
        ] {
            func.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                ASYNC_SMEM as i32,
            )
            .map_err(|e| {
                anyhow!(
                    "matmul: cannot give kernel `{name}` {ASYNC_SMEM} bytes of shared memory: {e}"
                )
            })?;
        }
        Ok(MatmulKernels {
            version,
            fwd_fn: [f("matmul_fwd")?, f("matmul_fwd_bf16")?],
            bwd_x_fn: [f("matmul_bwd_x")?, f("matmul_bwd_x_bf16")?],
            bwd_w_fn: [f("matmul_bwd_w")?, f("matmul_bwd_w_bf16")?],
            fwd_async_fn,
            bwd_x_async_fn,
            bwd_w_async_fn,
            to_bf16_fn: [f("matmul_to_bf16")?, f("matmul_to_bf16_from_bf16")?],
            stream: gpu.stream().clone(),
            scratch: Mutex::new(None),
        })
    }

    /// The version these kernels launch.
    pub fn version(&self) -> MmVersion {
        self.version
    }

    /// Elements of bf16 scratch version 2 keeps for the largest product launched so far (0
    /// for version 1, or before any launch).
    pub fn scratch_elements(&self) -> usize {
        self.scratch
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|b| b.len()))
            .unwrap_or(0)
    }

    /// Version 2's scratch, at least `elems` long (grown, never shrunk).
    fn scratch(
        &self,
        op: &str,
        elems: usize,
    ) -> Result<std::sync::MutexGuard<'_, Option<CudaSlice<bf16>>>> {
        let mut guard = self
            .scratch
            .lock()
            .map_err(|_| anyhow!("{op}: the operand scratch lock is poisoned"))?;
        if guard.as_ref().map_or(true, |b| b.len() < elems) {
            // SAFETY: every element a kernel reads is written by matmul_to_bf16 first, in stream
            // order (the padding too, as zeros, though the kernels never read it).
            let buf = unsafe { self.stream.alloc::<bf16>(elems.max(8)) }.map_err(|e| {
                anyhow!("{op}: cannot allocate {elems} bf16 elements of operand scratch: {e}")
            })?;
            *guard = Some(buf);
        }
        Ok(guard)
    }

    /// dst[r·ld8(cols) + c] = bf16(src[r·cols + c]) (`matmul_to_bf16`).
    fn to_bf16<T: MmElem>(
        &self,
        dst: &mut CudaViewMut<'_, bf16>,
        src: &CudaView<'_, T>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let chunks = rows * ld8(cols) / 8;
        if chunks == 0 {
            return Ok(());
        }
        let blocks = chunks.div_ceil(THREADS as usize).min(4096) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r32, c32, ld32) = (rows as u32, cols as u32, ld8(cols) as u32);
        let mut b = self
            .stream
            .launch_builder(&self.to_bf16_fn[T::BF16 as usize]);
        b.arg(dst).arg(src).arg(&r32).arg(&c32).arg(&ld32);
        // SAFETY: matches `matmul_to_bf16(__nv_bfloat16*, const float*, u32 rows, u32 cols,
        // u32 ld)` (`_from_bf16`: a bf16 source); the callers size dst to rows·ld8(cols) and
        // src to rows·cols; dst is a scratch slice starting at a multiple of 8 elements.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("matmul_to_bf16 launch failed: {e}"))?;
        Ok(())
    }

    /// Version 2 of a backward product: `out` from `dy` `[m, n]` (read as it is when
    /// [`Self::readable_as_is`], else copied to bf16) and `other` `[other_rows, k]` (copied): `W`
    /// for `dx = dy·W` (`accumulate` `None`), `x` for `dW (+)= dyᵀ·x` (`Some`).
    #[allow(clippy::too_many_arguments)]
    fn backward_async<D: MmElem>(
        &self,
        op: &str,
        cfg: LaunchConfig,
        out: &mut CudaViewMut<'_, f32>,
        dy: &CudaView<'_, D>,
        other: &CudaView<'_, f32>,
        other_rows: usize,
        m: usize,
        k: usize,
        n: usize,
        accumulate: Option<i32>,
    ) -> Result<()> {
        let dy_as_is = self.readable_as_is(dy, n);
        let a = (!dy_as_is).then_some((m, n));
        let mut guard = self.scratch(op, scratch_elems(a, Some((other_rows, k))))?;
        let scratch = guard
            .as_mut()
            .with_context(|| format!("{op}: scratch missing"))?;
        let (mut ds, mut os) = scratch.split_at_mut(scratch_elems(a, None));
        self.to_bf16(&mut os, other, other_rows, k)?;
        let (m32, k32, n32) = (m as u32, k as u32, n as u32);
        let (ldd, ldo) = (if dy_as_is { n } else { ld8(n) } as u32, ld8(k) as u32);
        let f = match accumulate {
            None => &self.bwd_x_async_fn,
            Some(_) => &self.bwd_w_async_fn,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(out);
        if dy_as_is {
            b.arg(dy);
        } else {
            self.to_bf16(&mut ds, dy, m, n)?;
            b.arg(&mut ds);
        }
        b.arg(&mut os)
            .arg(&m32)
            .arg(&k32)
            .arg(&n32)
            .arg(&ldd)
            .arg(&ldo);
        if let Some(acc) = &accumulate {
            b.arg(acc);
        }
        // SAFETY: matches `matmul_bwd_x_async(float* dx, const bf16* dy, const bf16* w, u32 m,
        // u32 k, u32 n, u32 lddy, u32 ldw)` and `matmul_bwd_w_async(float* dw, const bf16* dy,
        // const bf16* x, u32 m, u32 k, u32 n, u32 lddy, u32 ldx, int accumulate)`; the callers
        // checked the buffer lengths; dy is bf16 with ld n (readable_as_is: 16-byte aligned, n a
        // multiple of 8) or its copy with ld ld8(n); os holds other_rows·ld8(k) elements; the
        // copies start at multiples of 8 elements of the scratch, so they are 16-byte aligned.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("{op}_async launch failed: {e}"))?;
        Ok(())
    }

    /// Whether a product over `m` token rows runs the async version.
    fn is_async(&self, m: usize) -> bool {
        match self.version {
            MmVersion::Staged => false,
            MmVersion::Async => true,
            MmVersion::Auto => m >= AUTO_MIN_ROWS,
        }
    }

    /// Whether version 2 can read `v` (`[rows, cols]`) as it is: bf16, cols a multiple of 8
    /// and the view 16-byte aligned.
    fn readable_as_is<T: MmElem>(&self, v: &CudaView<'_, T>, cols: usize) -> bool {
        T::BF16 && cols % 8 == 0 && {
            let (ptr, _sync) = v.device_ptr(&self.stream);
            ptr % 16 == 0
        }
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
        let (m32, k32, n32) = (m as u32, k as u32, n as u32);
        if self.is_async(m) {
            let op = "matmul_fwd";
            let cfg = config(op, m, n, ASYNC_SMEM)?;
            let lk = ld8(k);
            let mut guard = self.scratch(op, scratch_elems(Some((m, k)), Some((n, k))))?;
            let scratch = guard.as_mut().context("matmul_fwd: scratch missing")?;
            let (mut xs, rest) = scratch.split_at_mut(m * lk);
            let mut ws = rest;
            self.to_bf16(&mut xs, x, m, k)?;
            self.to_bf16(&mut ws, w, n, k)?;
            let lk32 = lk as u32;
            let mut b = self
                .stream
                .launch_builder(&self.fwd_async_fn[Y::BF16 as usize]);
            b.arg(y)
                .arg(&mut xs)
                .arg(&mut ws)
                .arg(&m32)
                .arg(&k32)
                .arg(&n32);
            b.arg(&lk32).arg(&lk32);
            // SAFETY: matches `matmul_fwd_async(float*, const bf16*, const bf16*, u32 m, u32 k,
            // u32 n, u32 ldx, u32 ldw)` (`_bf16`: a bf16 y); xs holds m·lk and ws n·lk elements,
            // written just above, both 16-byte aligned (scratch offsets are multiples of 8).
            unsafe { b.launch(cfg) }.map_err(|e| anyhow!("matmul_fwd_async launch failed: {e}"))?;
            return Ok(());
        }
        let cfg = config("matmul_fwd", m, n, 0)?;
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
        let (m32, k32, n32) = (m as u32, k as u32, n as u32);
        if self.is_async(m) {
            let cfg = config("matmul_bwd_x", m, k, ASYNC_SMEM)?;
            return self.backward_async("matmul_bwd_x", cfg, dx, dy, w, n, m, k, n, None);
        }
        let cfg = config("matmul_bwd_x", m, k, 0)?;
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
        let (m32, k32, n32, acc) = (m as u32, k as u32, n as u32, accumulate as i32);
        if self.is_async(m) {
            let cfg = config("matmul_bwd_w", n, k, ASYNC_SMEM)?;
            return self.backward_async("matmul_bwd_w", cfg, dw, dy, x, m, m, k, n, Some(acc));
        }
        let cfg = config("matmul_bwd_w", n, k, 0)?;
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
