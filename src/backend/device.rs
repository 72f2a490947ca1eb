//! Choosing where to run: `--device auto|cpu|cuda`.
//!
//! `auto` takes the GPU when this build has compiled kernels, libcuda is present, a device
//! exists, the kernels load on it and the CUDA executor has been verified on a GPU
//! ([`cuda::EXECUTOR_VERIFIED`]); otherwise it prints one line on stderr saying why and runs on
//! the CPU. `cuda` turns any of those failures into an error (never a panic).

use std::sync::Arc;

use anyhow::Result;
use cudarc::driver::CudaContext;

use super::cpu::Cpu;
use super::cuda;
use super::cuda::executor::CudaExecutor;
use super::cuda::CudaDevice;
use super::Backend;

/// Work generic over the executor, run on whichever one a [`Device`] names
/// ([`Device::run`]): the one place that turns a device into an executor.
pub trait ExecutorJob {
    /// What the work returns.
    type Output;
    /// Does the work on `be`.
    fn run<B: Backend<Elem = f32> + 'static>(self, be: B) -> Result<Self::Output>;
}

/// The `--device` command-line choice.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    /// The GPU when usable, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU, or an error.
    Cuda,
}

/// The executor a run uses.
#[derive(Clone)]
pub enum Device {
    /// The CPU reference executor.
    Cpu,
    /// CUDA device (ordinal 0), its embedded kernels known to load.
    Cuda(Arc<CudaContext>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "Cpu"),
            Device::Cuda(ctx) => write!(f, "Cuda({})", ctx.ordinal()),
        }
    }
}

impl Device {
    /// Picks the executor for `arg` (see the module docs).
    pub fn select(arg: DeviceArg) -> Result<Device> {
        match arg {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => Ok(Device::Cuda(
                cuda::open_context(0).map_err(|e| e.context("--device cuda"))?,
            )),
            DeviceArg::Auto => match cuda::open_context(0) {
                Ok(_) if !cuda::EXECUTOR_VERIFIED => {
                    eprintln!(
                        "device: running on the CPU: a GPU is present, but the CUDA executor has not \
                         yet passed its GPU tests (docs/gpu-results.md); pass --device cuda to use it anyway"
                    );
                    Ok(Device::Cpu)
                }
                Ok(ctx) => Ok(Device::Cuda(ctx)),
                Err(e) => {
                    eprintln!("device: running on the CPU: {e:#}");
                    Ok(Device::Cpu)
                }
            },
        }
    }

    /// Runs `job` on this device's executor: the CPU reference executor, or the CUDA executor
    /// on the context.
    pub fn run<J: ExecutorJob>(&self, job: J) -> Result<J::Output> {
        match self {
            Device::Cpu => job.run(Cpu::<f32>::new()),
            Device::Cuda(ctx) => job.run(CudaExecutor::new(CudaDevice::new(ctx.clone())?)?),
        }
    }

    /// Whether this is the GPU.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// One line for logs: the GPU's name, compute capability and memory, or the CPU threads.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!(
                "CPU ({} threads)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            Device::Cuda(ctx) => cuda::describe_context(ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a usable GPU (the development machines and CI), `auto` falls back to the CPU and
    /// `cuda` is an error that names the reason. On a machine with libcuda this checks only
    /// that `cpu` is honoured and `cuda` either works or explains itself.
    #[test]
    fn select_falls_back_or_explains() {
        assert!(matches!(
            Device::select(DeviceArg::Cpu).unwrap(),
            Device::Cpu
        ));
        if cuda::driver_present() && cuda::kernels_compiled() {
            if let Err(e) = Device::select(DeviceArg::Cuda) {
                assert!(format!("{e:#}").contains("--device cuda"), "{e:#}");
            }
            return;
        }
        assert!(matches!(
            Device::select(DeviceArg::Auto).unwrap(),
            Device::Cpu
        ));
        let err = format!("{:#}", Device::select(DeviceArg::Cuda).unwrap_err());
        let reason = if !cuda::kernels_compiled() {
            "no CUDA kernels"
        } else {
            "libcuda"
        };
        assert!(
            err.contains(reason),
            "error should mention {reason:?}: {err}"
        );
        assert!(err.contains("--device cuda"), "{err}");
        assert!(Device::Cpu.describe().starts_with("CPU ("));
    }
}
