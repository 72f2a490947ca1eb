//! What the GPU benches (`benches/kernels.rs`, `matmul.rs`, `attention.rs`) share: criterion's
//! settings, the GPU-or-CPU-fallback entry point, device buffer filling and the best-of-5 timer.
//!
//! Included by each bench with `mod common;` (a folder below `benches/` is not a bench target of
//! its own); not every bench uses every helper.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use baddata::backend::cuda::CudaDevice;
use criterion::Criterion;
use cudarc::driver::{CudaSlice, DeviceRepr};

/// Criterion with `warm_up` warm-up, `measurement` measurement time and 10 samples, overridable
/// on the command line (e.g. `--measurement-time 5`).
pub fn criterion(warm_up: Duration, measurement: Duration) -> Criterion {
    Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sample_size(10)
        .configure_from_args()
}

/// Runs a bench binary: `gpu` on device 0 when it opens (a failure exits with status 1),
/// otherwise one line "`what` skipped (reason); benchmarking `fallback` instead" and `cpu`, so
/// `cargo bench` works anywhere; with `BADDATA_GPU_REQUIRED=1` a missing GPU exits with status
/// 1 instead. Ends with criterion's final summary.
pub fn run_benches(
    mut c: Criterion,
    what: &str,
    fallback: &str,
    gpu: impl FnOnce(&mut Criterion, &CudaDevice) -> Result<()>,
    cpu: impl FnOnce(&mut Criterion),
) {
    match CudaDevice::open(0) {
        Ok(be) => {
            if let Err(e) = gpu(&mut c, &be) {
                eprintln!("{what} failed: {e:#}");
                std::process::exit(1);
            }
        }
        Err(e) if std::env::var("BADDATA_GPU_REQUIRED").is_ok_and(|v| v == "1") => {
            eprintln!("BADDATA_GPU_REQUIRED=1 but no usable GPU: {e:#}");
            std::process::exit(1);
        }
        Err(e) => {
            println!("{what} skipped ({e:#}); benchmarking {fallback} instead");
            cpu(&mut c);
        }
    }
    c.final_summary();
}

/// Fills a device buffer by tiling a random host block over it.
pub fn fill<T: DeviceRepr>(be: &CudaDevice, buf: &mut CudaSlice<T>, block: &[T]) -> Result<()> {
    let n = buf.len();
    let mut i = 0;
    while i < n {
        let k = block.len().min(n - i);
        be.stream()
            .memcpy_htod(&block[..k], &mut buf.slice_mut(i..i + k))
            .map_err(|e| anyhow!("fill: {e}"))?;
        i += k;
    }
    Ok(())
}

/// Best-of-5 seconds per call (`calls` calls each) of `f`, synchronising around each batch.
pub fn best_time(be: &CudaDevice, calls: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        be.synchronize()?;
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        be.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(best)
}

/// Wall time of `iters` calls of `f`, synchronising before and after (criterion's
/// `iter_custom`); a failed launch or synchronisation panics, as criterion expects a time.
pub fn timed_launches(be: &CudaDevice, iters: u64, f: &mut impl FnMut() -> Result<()>) -> Duration {
    be.synchronize().expect("sync");
    let t = Instant::now();
    for _ in 0..iters {
        f().expect("launch");
    }
    be.synchronize().expect("sync");
    t.elapsed()
}
