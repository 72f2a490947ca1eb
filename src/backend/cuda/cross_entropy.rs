//! Launcher for `cuda/cross_entropy.cu`: fused softmax cross-entropy, one block per row, the
//! gradient written over the logits (no probability tensor). The math is
//! [`crate::backend::cpu::cross_entropy::cross_entropy`] on the same bf16 values, in fp32.
//!
//! Buffers (caller-owned): `logits` `[n, V]` bf16 (overwritten by the gradient, rounded to bf16,
//! when a grad scale is given; untouched otherwise), `targets` `[n]` u32, `losses` `[n]` fp32.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{
    CudaFunction, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};

use super::{need_len, CudaDevice};

const CE_THREADS: u32 = 256;

/// The kernel of `cuda/cross_entropy.cu`, bound to a stream.
pub struct CrossEntropyKernels {
    f: CudaFunction,
    stream: Arc<CudaStream>,
}

impl CrossEntropyKernels {
    /// Looks the kernel up in the `cross_entropy` module.
    pub fn new(gpu: &CudaDevice) -> Result<Self> {
        Ok(CrossEntropyKernels {
            f: gpu.function("cross_entropy", "cross_entropy_fwd_bwd")?,
            stream: gpu.stream().clone(),
        })
    }

    /// Per row `i < n` of `logits` `[n, v]`: `losses[i] = logsumexp(logits_i) − logits_i[t_i]`;
    /// with `grad_scale = Some(s)` the row is overwritten by `s·(softmax(logits_i) − onehot(t_i))`
    /// rounded to bf16 (computed in fp32).
    /// Targets must be below `v` (checked by the caller on the host; a target that is not gives
    /// a NaN loss).
    pub fn forward_backward(
        &self,
        logits: &mut CudaViewMut<'_, half::bf16>,
        losses: &mut CudaViewMut<'_, f32>,
        targets: &CudaView<'_, u32>,
        n: usize,
        v: usize,
        grad_scale: Option<f32>,
    ) -> Result<()> {
        if v == 0 || v > u32::MAX as usize || n > i32::MAX as usize {
            bail!("cross_entropy: shape n={n} V={v} is out of range");
        }
        need_len("cross_entropy logits", logits.len(), n * v)?;
        need_len("cross_entropy losses", losses.len(), n)?;
        need_len("cross_entropy targets", targets.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (n32, v32) = (n as u32, v as u32);
        let scale = grad_scale.unwrap_or(0.0);
        let has_grad = grad_scale.is_some() as i32;
        let cfg = LaunchConfig {
            grid_dim: (n32, 1, 1),
            block_dim: (CE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.f);
        b.arg(logits)
            .arg(losses)
            .arg(targets)
            .arg(&n32)
            .arg(&v32)
            .arg(&scale)
            .arg(&has_grad);
        // SAFETY: matches `cross_entropy_fwd_bwd(__nv_bfloat16*, float*, const u32*, u32, u32, float,
        // int)`; logits hold n·V, losses and targets n elements (checked above); one block per
        // row.
        unsafe { b.launch(cfg) }.map_err(|e| anyhow!("cross_entropy launch failed: {e}"))?;
        Ok(())
    }
}
