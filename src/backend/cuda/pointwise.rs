//! Launchers for `cuda/pointwise.cu`: SwiGLU forward/backward, rotary embedding
//! forward/backward and the `clip_qkv` clamp forward/backward, fp32, element-wise (grid-stride:
//! any grid gives the same result). The math is [`crate::backend::cpu::pointwise::swiglu_fwd`],
//! [`crate::backend::cpu::pointwise::swiglu_bwd`], [`crate::backend::cpu::pointwise::rope`],
//! [`crate::backend::cpu::pointwise::clamp`] and [`crate::backend::cpu::pointwise::clamp_bwd`].
//!
//! Buffers (fp32 row-major, caller-owned): `gu` / `dgu` `[n, 2f]` (gate then up per row), `h` /
//! `dh` `[n, f]`; `qkv` `[B·T, 3D]` rotated in place on its q and k thirds; `table` `[T, dh/2]`
//! cosines then `[T, dh/2]` sines ([`crate::model::transformer::rope_table`] rounded to f32).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};
use crate::backend::AttnShape;

const PW_THREADS: u32 = 256;

/// The kernels of `cuda/pointwise.cu`, bound to a stream.
pub struct PointwiseKernels {
    swiglu_fwd_fn: CudaFunction,
    swiglu_bwd_fn: CudaFunction,
    rope_fn: CudaFunction,
    add_fn: CudaFunction,
    add_rows_fn: CudaFunction,
    clamp_fn: CudaFunction,
    clamp_bwd_fn: CudaFunction,
    stream: Arc<CudaStream>,
    max_blocks: u32,
}

impl PointwiseKernels {
    /// Looks the kernels up in the `pointwise` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Ok(PointwiseKernels {
            swiglu_fwd_fn: gpu.function("pointwise", "swiglu_fwd")?,
            swiglu_bwd_fn: gpu.function("pointwise", "swiglu_bwd")?,
            rope_fn: gpu.function("pointwise", "rope")?,
            add_fn: gpu.function("pointwise", "add_f32")?,
            add_rows_fn: gpu.function("pointwise", "add_rows_f32")?,
            clamp_fn: gpu.function("pointwise", "clamp_f32")?,
            clamp_bwd_fn: gpu.function("pointwise", "clamp_bwd_f32")?,
            stream: gpu.stream().clone(),
            // 2048 resident threads per SM on sm_80/sm_90: 8 blocks of 256, a few waves' worth.
            max_blocks: gpu.sm_count() * 8 * 4,
        })
    }

    /// Grid-stride launch shape for `work` items (at least one block).
    fn config(&self, work: usize) -> LaunchConfig {
        let blocks = work
            .div_ceil(PW_THREADS as usize)
            .clamp(1, self.max_blocks as usize);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (PW_THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `h[i, j] = silu(gu[i, j])·gu[i, f + j]` for `h` `[n, f]`, `gu` `[n, 2f]`.
    pub fn swiglu_fwd(
        &self,
        h: &mut CudaViewMut<'_, f32>,
        gu: &CudaView<'_, f32>,
        n: usize,
        f: usize,
    ) -> Result<()> {
        need_len("swiglu_fwd h", h.len(), n * f)?;
        need_len("swiglu_fwd gu", gu.len(), n * 2 * f)?;
        if n * f == 0 {
            return Ok(());
        }
        let (n64, f64_) = (n as u64, f as u64);
        let cfg = self.config(if f % 4 == 0 { n * f / 4 } else { n * f });
        let mut b = self.stream.launch_builder(&self.swiglu_fwd_fn);
        b.arg(h).arg(gu).arg(&n64).arg(&f64_);
        // SAFETY: matches `swiglu_fwd(float*, const float*, u64, u64)`; sizes checked above.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("swiglu_fwd launch failed: {e}"))?;
        Ok(())
    }

    /// `dgate = dh·up·σ(g)(1 + g(1 − σ(g)))`, `dup = dh·silu(g)` into `dgu` `[n, 2f]`
    /// (overwrite), from `dh` `[n, f]` and the forward input `gu` `[n, 2f]`.
    pub fn swiglu_bwd(
        &self,
        dgu: &mut CudaViewMut<'_, f32>,
        dh: &CudaView<'_, f32>,
        gu: &CudaView<'_, f32>,
        n: usize,
        f: usize,
    ) -> Result<()> {
        need_len("swiglu_bwd dgu", dgu.len(), n * 2 * f)?;
        need_len("swiglu_bwd dh", dh.len(), n * f)?;
        need_len("swiglu_bwd gu", gu.len(), n * 2 * f)?;
        if n * f == 0 {
            return Ok(());
        }
        let (n64, f64_) = (n as u64, f as u64);
        let cfg = self.config(if f % 4 == 0 { n * f / 4 } else { n * f });
        let mut b = self.stream.launch_builder(&self.swiglu_bwd_fn);
        b.arg(dgu).arg(dh).arg(gu).arg(&n64).arg(&f64_);
        // SAFETY: matches `swiglu_bwd(float*, const float*, const float*, u64, u64)`; sizes
        // checked above.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("swiglu_bwd launch failed: {e}"))?;
        Ok(())
    }

    /// Rotary embedding in place on the q and k thirds of `qkv` `[B·T, 3D]`:
    /// `(x1, x2) -> (x1·c − x2·s, x2·c + x1·s)` per head (rotate-half).
    pub fn rope_fwd(
        &self,
        qkv: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, f32>,
        s: AttnShape,
    ) -> Result<()> {
        self.rope(qkv, table, s, false)
    }

    /// Rotary backward in place on the q and k thirds of `dqkv` (the inverse rotation):
    /// `(y1, y2) -> (y1·c + y2·s, y2·c − y1·s)`.
    pub fn rope_bwd(
        &self,
        dqkv: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, f32>,
        s: AttnShape,
    ) -> Result<()> {
        self.rope(dqkv, table, s, true)
    }

    fn rope(
        &self,
        qkv: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, f32>,
        s: AttnShape,
        transpose: bool,
    ) -> Result<()> {
        let op = if transpose { "rope_bwd" } else { "rope_fwd" };
        if s.dh == 0 || s.dh % 2 != 0 || s.t == 0 {
            bail!(
                "{op}: head width {} must be even and non-zero, T={} non-zero",
                s.dh,
                s.t
            );
        }
        if s.d() > u32::MAX as usize / 3 || s.t > u32::MAX as usize {
            bail!("{op}: shape {s:?} is out of range");
        }
        need_len(&format!("{op} qkv"), qkv.len(), s.n() * 3 * s.d())?;
        need_len(&format!("{op} table"), table.len(), s.t * s.dh)?;
        if s.n() * s.d() == 0 {
            return Ok(());
        }
        let (n64, t32, d32, dh32, tr) = (
            s.n() as u64,
            s.t as u32,
            s.d() as u32,
            s.dh as u32,
            transpose as i32,
        );
        let cfg = self.config(s.n() * s.d());
        let mut b = self.stream.launch_builder(&self.rope_fn);
        b.arg(qkv)
            .arg(table)
            .arg(&n64)
            .arg(&t32)
            .arg(&d32)
            .arg(&dh32)
            .arg(&tr);
        // SAFETY: matches `rope(float*, const float*, u64, u32, u32, u32, int)`; qkv holds
        // n·3D and table T·dh elements (checked above).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("{op} launch failed: {e}"))?;
        Ok(())
    }

    /// Residual add `out[i] = a[i] + b[i]` for `i < n`.
    pub fn add(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        n: usize,
    ) -> Result<()> {
        need_len("add out", out.len(), n)?;
        need_len("add a", a.len(), n)?;
        need_len("add b", b.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.config(n.div_ceil(4));
        let n64 = n as u64;
        let mut l = self.stream.launch_builder(&self.add_fn);
        l.arg(out).arg(a).arg(b).arg(&n64);
        // SAFETY: matches `add_f32(float*, const float*, const float*, u64)`; sizes checked.
        unsafe { l.launch(cfg) }.map_err(|e| anyhow!("add launch failed: {e}"))?;
        Ok(())
    }

    /// Row broadcast `x[r, c] += v[c]` for `x` `[n, d]`, `v` `[d]`.
    pub fn add_rows(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        v: &CudaView<'_, f32>,
        n: usize,
        d: usize,
    ) -> Result<()> {
        need_len("add_rows x", x.len(), n * d)?;
        need_len("add_rows v", v.len(), d)?;
        if n == 0 || d == 0 {
            return Ok(());
        }
        let cfg = self.config(n * d);
        let (n64, d64) = (n as u64, d as u64);
        let mut l = self.stream.launch_builder(&self.add_rows_fn);
        l.arg(x).arg(v).arg(&n64).arg(&d64);
        // SAFETY: matches `add_rows_f32(float*, const float*, u64, u64)`; sizes checked.
        unsafe { l.launch(cfg) }.map_err(|e| anyhow!("add_rows launch failed: {e}"))?;
        Ok(())
    }

    /// Clamp in place: `x[i] = −c` below `−c`, `c` above `c` (NaN unchanged), `i < n`.
    pub fn clamp(&self, x: &mut CudaViewMut<'_, f32>, n: usize, c: f32) -> Result<()> {
        need_len("clamp x", x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.config(n.div_ceil(4));
        let n64 = n as u64;
        let mut l = self.stream.launch_builder(&self.clamp_fn);
        l.arg(x).arg(&n64).arg(&c);
        // SAFETY: matches `clamp_f32(float*, u64, float)`; size checked.
        unsafe { l.launch(cfg) }.map_err(|e| anyhow!("clamp launch failed: {e}"))?;
        Ok(())
    }

    /// Clamp backward in place on `dx`: kept where `−c ≤ x[i] ≤ c`, 0 elsewhere, `i < n`.
    pub fn clamp_bwd(
        &self,
        dx: &mut CudaViewMut<'_, f32>,
        x: &CudaView<'_, f32>,
        n: usize,
        c: f32,
    ) -> Result<()> {
        need_len("clamp_bwd dx", dx.len(), n)?;
        need_len("clamp_bwd x", x.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let cfg = self.config(n.div_ceil(4));
        let n64 = n as u64;
        let mut l = self.stream.launch_builder(&self.clamp_bwd_fn);
        l.arg(dx).arg(x).arg(&n64).arg(&c);
        // SAFETY: matches `clamp_bwd_f32(float*, const float*, u64, float)`; sizes checked.
        unsafe { l.launch(cfg) }.map_err(|e| anyhow!("clamp_bwd launch failed: {e}"))?;
        Ok(())
    }
}
