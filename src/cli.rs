//! What the commands share: how an error reaches the user, and the flags that mean the same on
//! every command that takes them (flattened into each command's arguments).

use std::path::PathBuf;

use crate::backend::device::{Device, DeviceArg};

/// Runs a command's body. An error prints as one `error: ...` line with its chain of causes (no
/// backtrace, whatever `RUST_BACKTRACE` says) and the process exits with status 1.
pub fn run(body: impl FnOnce() -> anyhow::Result<()>) {
    if let Err(e) = body() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `--device`, as every command that runs the model takes it.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct DeviceFlag {
    /// Where to run: auto (the GPU when this build has compiled kernels, libcuda is present and
    /// the kernels load on a device; else the CPU, saying why), cpu, or cuda (the GPU, or an
    /// error).
    #[arg(long = "device", value_enum, value_name = "DEVICE", default_value_t = DeviceArg::Auto)]
    pub arg: DeviceArg,
}

impl DeviceFlag {
    /// The executor the flag names ([`Device::select`]).
    pub fn select(self) -> anyhow::Result<Device> {
        Device::select(self.arg)
    }
}

/// `--checkpoint`, as the commands that read one model take it.
#[derive(clap::Args, Clone, Debug)]
pub struct CheckpointFlag {
    /// Checkpoint directory (ours, or a Hugging Face OLMo v1 release: single or sharded
    /// safetensors), or run directory (its latest).
    #[arg(long = "checkpoint", value_name = "DIR", default_value = "runs/demo")]
    pub path: PathBuf,
}
