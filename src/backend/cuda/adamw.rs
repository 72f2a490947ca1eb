//! Launchers for `cuda/adamw.cu`: the fused AdamW step and the deterministic global gradient
//! norm, over flat fp32 device buffers (the math is [`crate::optim::adamw::adamw_reference`]).
//!
//! Buffers: params, grads, m, v are `n` fp32 each, owned by the caller (or by
//! [`crate::optim::cuda::CudaAdamW`] for m and v); the optional bf16 copy of the params is `n`
//! bf16, written only. Clipping needs no host sync: [`AdamWKernels::grad_norm`] writes ‖g‖ to
//! device memory and [`AdamWKernels::step`] reads it there ([`Clip::DeviceNorm`]).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::bf16;

use super::CudaDevice;
use crate::backend::StepArgs;

// SAFETY: StepArgs is #[repr(C)] Pod (eight f32 then one u64, 40 bytes); `cuda/adamw.cu`
// mirrors it as `AdamWArgs` and static_asserts the size.
unsafe impl DeviceRepr for StepArgs {}

/// Elements reduced by one block in the first level of the grad norm (`GRAD_NORM_CHUNK`).
pub const GRAD_NORM_CHUNK: usize = 16384;
const GRAD_NORM_THREADS: u32 = 256;
const GRAD_NORM_FINISH_THREADS: u32 = 1024;
const STEP_THREADS: u32 = 256;

/// Number of fp64 partial sums the grad norm of `n` elements needs as scratch.
pub fn grad_norm_partials_len(n: usize) -> usize {
    n.div_ceil(GRAD_NORM_CHUNK)
}

/// Where the AdamW step takes its gradient multiplier from.
#[derive(Clone, Copy)]
pub enum Clip<'a> {
    /// `StepArgs::clip_scale`, as computed on the host.
    Host,
    /// Computed on the device from the norm in `norm[0]` exactly as
    /// [`crate::optim::adamw::clip_scale`]`(norm, max_norm)`; overrides `StepArgs::clip_scale`.
    DeviceNorm {
        /// One fp32: ‖g‖, e.g. written by [`AdamWKernels::grad_norm`].
        norm: &'a CudaSlice<f32>,
        /// Clip threshold; `<= 0` turns clipping off.
        max_norm: f32,
    },
}

/// The three kernels of `cuda/adamw.cu`, bound to a stream.
pub struct AdamWKernels {
    step_fn: CudaFunction,
    partials_fn: CudaFunction,
    finish_fn: CudaFunction,
    stream: Arc<CudaStream>,
    max_blocks: u32,
}

impl AdamWKernels {
    /// The stream the kernels launch on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Looks the kernels up in the `adamw` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        let step_fn = gpu.function("adamw", "adamw_step")?;
        // The grid-stride step launches exactly one resident wave: as many blocks as fit on
        // every SM at once (more would run as a second, partial wave).
        let per_sm = step_fn
            .occupancy_max_active_blocks_per_multiprocessor(STEP_THREADS, 0, None)
            .map_err(|e| anyhow!("occupancy query for adamw_step failed: {e}"))?
            .max(1);
        Ok(AdamWKernels {
            step_fn,
            partials_fn: gpu.function("adamw", "grad_norm_partials")?,
            finish_fn: gpu.function("adamw", "grad_norm_finish")?,
            stream: gpu.stream().clone(),
            max_blocks: gpu.sm_count() * per_sm,
        })
    }

    /// One AdamW update, in place on `p`, `m`, `v` (all `n` fp32), reading `g` (`n` fp32) and
    /// writing the updated params rounded to bf16 (round to nearest even) into `p_bf16` when
    /// given. One launch; asynchronous on the stream.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        p: &mut CudaViewMut<'_, f32>,
        g: &CudaView<'_, f32>,
        m: &mut CudaViewMut<'_, f32>,
        v: &mut CudaViewMut<'_, f32>,
        p_bf16: Option<&mut CudaViewMut<'_, bf16>>,
        args: &StepArgs,
        clip: Clip<'_>,
    ) -> Result<()> {
        let n = p.len();
        if g.len() != n || m.len() != n || v.len() != n {
            bail!(
                "adamw_step: buffer lengths differ: params {n}, grads {}, m {}, v {}",
                g.len(),
                m.len(),
                v.len()
            );
        }
        if let Some(b) = &p_bf16 {
            if b.len() != n {
                bail!(
                    "adamw_step: bf16 params copy has {} elements, params {n}",
                    b.len()
                );
            }
        }
        if n == 0 {
            return Ok(());
        }
        let null: u64 = 0;
        let n64 = n as u64;
        let (max_norm, norm_ok) = match clip {
            Clip::Host => (0.0f32, true),
            Clip::DeviceNorm { norm, max_norm } => (max_norm, !norm.is_empty()),
        };
        if !norm_ok {
            bail!("adamw_step: the grad-norm buffer is empty");
        }
        let blocks =
            (n.div_ceil(4).div_ceil(STEP_THREADS as usize)).clamp(1, self.max_blocks as usize);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (STEP_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.step_fn);
        b.arg(p).arg(g).arg(m).arg(v);
        match p_bf16 {
            Some(pb) => b.arg(pb),
            None => b.arg(&null),
        };
        b.arg(&n64).arg(args);
        match clip {
            Clip::Host => b.arg(&null),
            Clip::DeviceNorm { norm, .. } => b.arg(norm),
        };
        b.arg(&max_norm);
        // SAFETY: argument order and types match `adamw_step` in cuda/adamw.cu; all buffers
        // hold n elements (checked above) and the kernel touches only [0, n).
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("adamw_step launch failed: {e}"))?;
        Ok(())
    }

    /// ‖g‖₂ into `out[0]` (fp32), summed in fp64 in fixed chunks ([`GRAD_NORM_CHUNK`] per
    /// block, then one block over the partials in order): deterministic, no atomics.
    /// `partials` is scratch of at least [`grad_norm_partials_len`]`(g.len())` elements.
    pub fn grad_norm(
        &self,
        g: &CudaView<'_, f32>,
        partials: &mut CudaSlice<f64>,
        out: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let n = g.len();
        let nparts = grad_norm_partials_len(n);
        if partials.len() < nparts {
            bail!(
                "grad_norm: scratch has {} partials, {n} elements need {nparts}",
                partials.len()
            );
        }
        if out.is_empty() {
            bail!("grad_norm: the output buffer is empty");
        }
        if nparts > i32::MAX as usize {
            bail!("grad_norm: {n} elements is too many for one launch");
        }
        let n64 = n as u64;
        let np64 = nparts as u64;
        if nparts > 0 {
            let cfg = LaunchConfig {
                grid_dim: (nparts as u32, 1, 1),
                block_dim: (GRAD_NORM_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(&self.partials_fn);
            b.arg(g).arg(&n64).arg(&mut *partials);
            // SAFETY: matches `grad_norm_partials(const float*, u64, double*)`; one block per
            // chunk writes partials[block] < nparts <= partials.len().
            unsafe { b.launch(cfg) }
                .map_err(|e| anyhow!("grad_norm_partials launch failed: {e}"))?;
        }
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (GRAD_NORM_FINISH_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.finish_fn);
        b.arg(&*partials).arg(&np64).arg(out);
        // SAFETY: matches `grad_norm_finish(const double*, u64, float*)`; reads nparts
        // partials, writes out[0].
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("grad_norm_finish launch failed: {e}"))?;
        Ok(())
    }
}
