//! CUDA executor: the embedded kernel modules (compiled by `build.rs` from `cuda/*.cu`), loaded
//! into one CUDA context with one stream, and typed launchers per kernel family.
//!
//! The driver library (libcuda) is opened at run time (cudarc's `dynamic-loading`), so a binary
//! built here runs on any machine: without a driver, [`open_context`] returns an error and the
//! caller falls back to the CPU (see [`crate::backend::device`]).

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod decode;
pub mod embedding;
pub mod executor;
pub mod layernorm;
pub mod matmul;
pub mod pointwise;

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// The CUDA modules embedded in this binary: (`.cu` file stem, fatbin with sm_80 and sm_90
/// code and compute_90 PTX). Empty when the crate was built without nvcc.
pub use embedded::KERNELS;

/// Whether the CUDA executor (the whole training step: matmul, attention and the executor's glue)
/// has passed its GPU tests (`tests/gpu_step.rs` and the correctness script; see
/// docs/gpu-results.md). It has, in full, on an H200 (2026-11-28); were it `false`,
/// `--device auto` would stay on the CPU and only an explicit `--device cuda` run the GPU path.
pub const EXECUTOR_VERIFIED: bool = true;

/// Whether this build embeds compiled kernels (`build.rs` found nvcc and compiled `cuda/`).
pub const fn kernels_compiled() -> bool {
    cfg!(baddata_kernels)
}

/// Whether the CUDA driver library (libcuda) can be loaded. cudarc panics on first use of the
/// driver API when it cannot, so check this before anything else.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names; no driver call is made.
    unsafe { sys::is_culib_present() }
}

/// Opens CUDA device `ordinal` after checking, in order, that kernels were compiled into this
/// build, that libcuda is present, that a device exists, and that every embedded module loads
/// on it (a GPU older than sm_80 has no binary). Each failure is an error saying which.
pub fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !kernels_compiled() {
        bail!(
            "this build has no CUDA kernels (nvcc was missing or failed when it was built; \
             run tools/setup-cuda.sh and rebuild)"
        );
    }
    if !driver_present() {
        bail!("the CUDA driver library (libcuda) is not present on this machine");
    }
    let count = CudaContext::device_count()
        .map_err(|e| anyhow!("the CUDA driver failed to initialise: {e}"))?;
    if count <= 0 {
        bail!("the CUDA driver reports no device");
    }
    if ordinal >= count as usize {
        bail!("CUDA device {ordinal} requested but only {count} present");
    }
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| anyhow!("cannot create a context on CUDA device {ordinal}: {e}"))?;
    load_modules(&ctx)?;
    Ok(ctx)
}

/// Loads every embedded module into `ctx`, in [`KERNELS`] order.
pub fn load_modules(ctx: &Arc<CudaContext>) -> Result<Vec<(&'static str, Arc<CudaModule>)>> {
    let mut out = Vec::with_capacity(KERNELS.len());
    for &(name, bytes) in KERNELS {
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()))
            .map_err(|e| {
                let cc = ctx
                    .compute_capability()
                    .map(|(a, b)| format!("sm_{a}{b}"))
                    .unwrap_or_else(|_| "unknown".into());
                anyhow!(
                    "cannot load CUDA module `{name}` on this GPU ({cc}; the kernels are built \
                     for sm_80, sm_90 and compute_90 PTX): {e}"
                )
            })?;
        out.push((name, module));
    }
    Ok(out)
}

/// One device, its kernel modules and the stream every launch goes to.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Vec<(&'static str, Arc<CudaModule>)>,
    sm_count: u32,
}

impl CudaDevice {
    /// Loads the embedded modules into `ctx` and uses its default stream.
    pub fn new(ctx: Arc<CudaContext>) -> Result<Self> {
        let modules = load_modules(&ctx)?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| anyhow!("cannot read the multiprocessor count: {e}"))?
            .max(1) as u32;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            ctx,
            stream,
            modules,
            sm_count,
        })
    }

    /// Opens device `ordinal` (see [`open_context`]) and loads the modules.
    pub fn open(ordinal: usize) -> Result<Self> {
        Self::new(open_context(ordinal)?)
    }

    /// The CUDA context.
    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream all launchers use; allocate and copy on it too.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Number of streaming multiprocessors (sizes grid-stride launches).
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The kernel `name` (an `extern "C"` function) of module `module` (a `.cu` file stem).
    pub fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let (_, m) = self
            .modules
            .iter()
            .find(|(n, _)| *n == module)
            .with_context(|| format!("no CUDA module `{module}` embedded in this build"))?;
        m.load_function(name)
            .map_err(|e| anyhow!("no kernel `{name}` in CUDA module `{module}`: {e}"))
    }

    /// Waits until all work queued on the stream is done.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("CUDA stream synchronize failed: {e}"))
    }

    /// One line for logs: GPU name, compute capability, memory.
    pub fn describe(&self) -> String {
        describe_context(&self.ctx)
    }
}

/// Errors unless a device buffer `what` holding `have` elements has at least the `need` an op
/// needs.
pub(crate) fn need_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        bail!("cuda executor: buffer {what} holds {have} elements, the op needs {need}");
    }
    Ok(())
}

/// "CUDA device 0: NAME (sm_XY, 132 SMs), 79.1 GiB, 78.5 GiB free" (fields that cannot be
/// read are left out).
pub fn describe_context(ctx: &Arc<CudaContext>) -> String {
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
    let mut s = format!("CUDA device {}: {name}", ctx.ordinal());
    if let Ok((a, b)) = ctx.compute_capability() {
        s.push_str(&format!(" (sm_{a}{b}"));
        if let Ok(n) =
            ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        {
            s.push_str(&format!(", {n} SMs"));
        }
        s.push(')');
    }
    if let Ok((free, total)) = ctx.mem_get_info() {
        s.push_str(&format!(
            ", {:.1} GiB, {:.1} GiB free",
            gib(total),
            gib(free)
        ));
    }
    s
}
