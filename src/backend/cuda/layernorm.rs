//! Launchers for `cuda/layernorm.cu`: non-parametric layernorm forward and backward, fp32,
//! one warp per row. The math is [`crate::backend::cpu::layernorm::layernorm_fwd`] /
//! [`crate::backend::cpu::layernorm::layernorm_bwd`].
//!
//! Buffers (fp32 row-major, caller-owned, no two aliasing): `x`, `out`, `dy`, `xhat`, `dx`
//! `[n, d]`; `mean`, `rstd` `[n]`. Each view must hold at least the elements the shape needs;
//! only those are touched.
//!
//! Two versions of the kernels give the same bits ([`LnVersion`]); the benches compare their
//! speed, and [`DEFAULT_VERSION`] is the one the executor launches.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};

/// Rows per block (one warp each), `LN_WARPS` in the kernel file.
const LN_WARPS: u32 = 4;

/// A version of the layernorm kernels (`cuda/layernorm.cu`). Both do the same fp32 operations
/// in the same order, so they give the same bits; they differ in memory traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LnVersion {
    /// Every pass over a row re-reads it from memory (`*_reread`): any d.
    Reread,
    /// The row is read once into registers when d ≤ 2048 and the float4 path applies; other
    /// rows as [`LnVersion::Reread`].
    Cached,
}

impl LnVersion {
    /// Both versions.
    pub const ALL: [LnVersion; 2] = [LnVersion::Reread, LnVersion::Cached];

    /// The kernel-name suffix of this version.
    fn suffix(self) -> &'static str {
        match self {
            LnVersion::Reread => "_reread",
            LnVersion::Cached => "",
        }
    }
}

/// The version the executor launches: the register-cached one, which the GPU tests found
/// bit-identical to the re-reading one and the benches 1.3–1.8× faster at OLMo-1B's shape on an
/// H200 (docs/gpu-results.md).
pub const DEFAULT_VERSION: LnVersion = LnVersion::Cached;

/// The kernels of `cuda/layernorm.cu`, bound to a stream.
pub struct LayerNormKernels {
    fwd_fn: CudaFunction,
    fwd_res_fn: CudaFunction,
    bwd_fn: CudaFunction,
    stream: Arc<CudaStream>,
}

fn config(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(LN_WARPS), 1, 1),
        block_dim: (32 * LN_WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_shape(op: &str, n: usize, d: usize) -> Result<()> {
    if d == 0 || n > u32::MAX as usize - 32 || d > u32::MAX as usize {
        bail!("{op}: shape n={n} d={d} is out of range");
    }
    Ok(())
}

impl LayerNormKernels {
    /// Looks the [`DEFAULT_VERSION`] kernels up in the `layernorm` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Self::with_version(gpu, DEFAULT_VERSION)
    }

    /// Looks the kernels of version `v` up in the `layernorm` module.
    pub fn with_version(gpu: &CudaDevice, v: LnVersion) -> Result<Self> {
        let f = |name: &str| gpu.function("layernorm", &format!("{name}{}", v.suffix()));
        Ok(LayerNormKernels {
            fwd_fn: f("layernorm_fwd")?,
            fwd_res_fn: f("layernorm_fwd_residual")?,
            bwd_fn: f("layernorm_bwd")?,
            stream: gpu.stream().clone(),
        })
    }

    /// Per row of `x` `[n, d]`: `mean = Σx/d`, `var = Σ(x − mean)²/d`, `rstd = 1/√(var+eps)`,
    /// `out = (x − mean)·rstd`; writes `out` `[n, d]`, `mean` and `rstd` `[n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        mean: &mut CudaViewMut<'_, f32>,
        rstd: &mut CudaViewMut<'_, f32>,
        x: &CudaView<'_, f32>,
        n: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        check_shape("layernorm_fwd", n, d)?;
        need_len("layernorm_fwd out", out.len(), n * d)?;
        need_len("layernorm_fwd x", x.len(), n * d)?;
        need_len("layernorm_fwd mean", mean.len(), n)?;
        need_len("layernorm_fwd rstd", rstd.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, d32) = (n as u32, d as u32);
        let mut b = self.stream.launch_builder(&self.fwd_fn);
        b.arg(out)
            .arg(mean)
            .arg(rstd)
            .arg(x)
            .arg(&n32)
            .arg(&d32)
            .arg(&eps);
        // SAFETY: matches `layernorm_fwd(float*, float*, float*, const float*, u32, u32,
        // float)`; buffer sizes checked above; row r < n is handled by one warp.
        unsafe { b.launch(config(n)) }.map_err(|e| anyhow!("layernorm_fwd launch failed: {e}"))?;
        Ok(())
    }

    /// Residual add fused with [`Self::forward`]: `xsum = a + b` (all `[n, d]`; written, the
    /// next residual stream), then the layernorm of `xsum` into `out`, `mean`, `rstd`, as
    /// `add` followed by `layernorm_fwd` on the CPU. `xsum` must not alias `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        mean: &mut CudaViewMut<'_, f32>,
        rstd: &mut CudaViewMut<'_, f32>,
        xsum: &mut CudaViewMut<'_, f32>,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
        n: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        check_shape("layernorm_fwd_residual", n, d)?;
        need_len("layernorm_fwd_residual out", out.len(), n * d)?;
        need_len("layernorm_fwd_residual xsum", xsum.len(), n * d)?;
        need_len("layernorm_fwd_residual a", a.len(), n * d)?;
        need_len("layernorm_fwd_residual b", b.len(), n * d)?;
        need_len("layernorm_fwd_residual mean", mean.len(), n)?;
        need_len("layernorm_fwd_residual rstd", rstd.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, d32) = (n as u32, d as u32);
        let mut l = self.stream.launch_builder(&self.fwd_res_fn);
        l.arg(out)
            .arg(mean)
            .arg(rstd)
            .arg(xsum)
            .arg(a)
            .arg(b)
            .arg(&n32)
            .arg(&d32)
            .arg(&eps);
        // SAFETY: matches `layernorm_fwd_residual(float*, float*, float*, float*, const float*,
        // const float*, u32, u32, float)`; buffer sizes checked above.
        unsafe { l.launch(config(n)) }
            .map_err(|e| anyhow!("layernorm_fwd_residual launch failed: {e}"))?;
        Ok(())
    }

    /// Per row: `dx (+)= rstd·(dy − mean(dy) − xhat·mean(dy·xhat))` from the forward output
    /// `xhat` `[n, d]` and `rstd` `[n]`; `+=` when `accumulate`, else overwrite.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        dx: &mut CudaViewMut<'_, f32>,
        dy: &CudaView<'_, f32>,
        xhat: &CudaView<'_, f32>,
        rstd: &CudaView<'_, f32>,
        n: usize,
        d: usize,
        accumulate: bool,
    ) -> Result<()> {
        check_shape("layernorm_bwd", n, d)?;
        need_len("layernorm_bwd dx", dx.len(), n * d)?;
        need_len("layernorm_bwd dy", dy.len(), n * d)?;
        need_len("layernorm_bwd xhat", xhat.len(), n * d)?;
        need_len("layernorm_bwd rstd", rstd.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, d32, acc) = (n as u32, d as u32, accumulate as i32);
        let mut b = self.stream.launch_builder(&self.bwd_fn);
        b.arg(dx)
            .arg(dy)
            .arg(xhat)
            .arg(rstd)
            .arg(&n32)
            .arg(&d32)
            .arg(&acc);
        // SAFETY: matches `layernorm_bwd(float*, const float*, const float*, const float*,
        // u32, u32, int)`; buffer sizes checked above.
        unsafe { b.launch(config(n)) }.map_err(|e| anyhow!("layernorm_bwd launch failed: {e}"))?;
        Ok(())
    }
}
