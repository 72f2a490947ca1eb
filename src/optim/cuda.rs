//! AdamW with its moments in device memory: the optimizer state of a GPU run, updated by the
//! kernels of [`crate::backend::cuda::adamw`] (the same math as [`crate::optim::AdamW`], whose
//! state it uploads and downloads).

use anyhow::{anyhow, bail, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

use crate::backend::cuda::adamw::{grad_norm_partials_len, AdamWKernels, Clip};
use crate::backend::cuda::CudaDevice;
use crate::optim::adamw::{AdamW, AdamWConfig};

/// AdamW with its moments on the device: the GPU counterpart of [`AdamW`].
pub struct CudaAdamW {
    kernels: AdamWKernels,
    /// Hyper-parameters.
    pub cfg: AdamWConfig,
    /// First moment (n fp32).
    pub m: CudaSlice<f32>,
    /// Second moment (n fp32).
    pub v: CudaSlice<f32>,
    /// Updates applied so far.
    pub step: u64,
    /// Elements `[0, no_decay_len)` get no weight decay.
    pub no_decay_len: usize,
    norm: CudaSlice<f32>,
    partials: CudaSlice<f64>,
}

impl CudaAdamW {
    /// Fresh (zero) moments for `n` parameters.
    pub fn new(gpu: &CudaDevice, cfg: AdamWConfig, n: usize, no_decay_len: usize) -> Result<Self> {
        let s = gpu.stream();
        let alloc = |what: &str, e| anyhow!("cannot allocate AdamW {what} ({n} elements): {e}");
        Ok(CudaAdamW {
            kernels: AdamWKernels::new(gpu)?,
            cfg,
            m: s.alloc_zeros::<f32>(n).map_err(|e| alloc("m", e))?,
            v: s.alloc_zeros::<f32>(n).map_err(|e| alloc("v", e))?,
            step: 0,
            no_decay_len,
            norm: s.alloc_zeros::<f32>(1).map_err(|e| alloc("norm", e))?,
            partials: s
                .alloc_zeros::<f64>(grad_norm_partials_len(n).max(1))
                .map_err(|e| alloc("norm partials", e))?,
        })
    }

    /// Uploads a host optimizer state (e.g. from a checkpoint).
    pub fn from_host(gpu: &CudaDevice, host: &AdamW) -> Result<Self> {
        let mut o = Self::new(gpu, host.cfg, host.m.len(), host.no_decay_len)?;
        let s = gpu.stream();
        s.memcpy_htod(&host.m, &mut o.m)
            .map_err(|e| anyhow!("cannot upload AdamW m: {e}"))?;
        s.memcpy_htod(&host.v, &mut o.v)
            .map_err(|e| anyhow!("cannot upload AdamW v: {e}"))?;
        o.step = host.step;
        Ok(o)
    }

    /// Downloads the state (synchronises the stream).
    pub fn to_host(&self) -> Result<AdamW> {
        let s = self.kernels.stream();
        Ok(AdamW {
            cfg: self.cfg,
            m: s.clone_dtoh(&self.m)
                .map_err(|e| anyhow!("cannot download AdamW m: {e}"))?,
            v: s.clone_dtoh(&self.v)
                .map_err(|e| anyhow!("cannot download AdamW v: {e}"))?,
            step: self.step,
            no_decay_len: self.no_decay_len,
        })
    }

    /// ‖grads‖₂ into the device scalar [`Self::norm`] (no host sync).
    pub fn grad_norm(&mut self, grads: &CudaSlice<f32>) -> Result<()> {
        let need = grad_norm_partials_len(grads.len());
        if self.partials.len() < need {
            self.partials = self
                .kernels
                .stream()
                .alloc_zeros::<f64>(need)
                .map_err(|e| anyhow!("cannot allocate grad-norm scratch: {e}"))?;
        }
        self.kernels.grad_norm(
            &grads.as_view(),
            &mut self.partials,
            &mut self.norm.as_view_mut(),
        )
    }

    /// The device scalar holding the last [`Self::grad_norm`] result.
    pub fn norm(&self) -> &CudaSlice<f32> {
        &self.norm
    }

    /// One full update, like [`AdamW::update`] with clipping: computes ‖grads‖ on the device,
    /// then one fused step scaled by `clip_scale(‖grads‖, max_norm)`, writing the bf16 copy of
    /// the params when given. No host sync.
    pub fn update(
        &mut self,
        params: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        params_bf16: Option<&mut CudaSlice<bf16>>,
        lr: f32,
        max_norm: f32,
    ) -> Result<()> {
        if params.len() != self.m.len() {
            bail!(
                "CudaAdamW::update: {} params but the optimizer holds {}",
                params.len(),
                self.m.len()
            );
        }
        self.grad_norm(grads)?;
        self.step += 1;
        let args = self.cfg.step_args(lr, 1.0, self.step, self.no_decay_len);
        let mut bf = params_bf16.map(|b| b.as_view_mut());
        self.kernels.step(
            &mut params.as_view_mut(),
            &grads.as_view(),
            &mut self.m.as_view_mut(),
            &mut self.v.as_view_mut(),
            bf.as_mut(),
            &args,
            Clip::DeviceNorm {
                norm: &self.norm,
                max_norm,
            },
        )
    }
}
